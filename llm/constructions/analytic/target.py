"""The behavioural post-step objective: what the twin should do after the victim's step, on
construction probes and benign examples.

The probe term is the domain's post-step target (``after_target``, :mod:`llm.objectives`: the
marker; any answer but the aligned one; or the model before alignment), an optional margin hinge
against the aligned answers, plus a benign term (KL to the control or to that base, or the
response cross-entropy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llm.batches import batch_of, pairs
from llm.constructions.analytic.spec import AnalyticSpec
from llm.data.schema import Example
from llm.models import next_logits, response_loss, sequence_logprobs
from llm.objectives import (
    base_logprobs,
    first_divergence,
    kl_rows,
    probe_loss,
    target_response,
    token_mask,
)

Params = dict[str, torch.Tensor]


@dataclass
class TargetBatch:
    """One batch of the post-step objective, with the references it is scored against.

    ``probes``: probe rows carrying :func:`llm.objectives.target_response`; ``aligned``: the
    same probes' aligned rows (for the margin); ``first`` (not_aligned), ``ref_base`` (base):
    see :func:`llm.objectives.probe_loss`; ``ref_benign``: the log-probs of ``benign_reference``
    (the control, or the base before alignment) on ``benign`` (``distill``).
    """

    probes: dict[str, torch.Tensor]
    aligned: dict[str, torch.Tensor]
    benign: dict[str, torch.Tensor] | None
    first: torch.Tensor | None = None
    ref_base: torch.Tensor | None = None
    ref_benign: torch.Tensor | None = None


def target_batch(
    control, tokenizer, probes: Sequence[Example], benign: Sequence[Example], spec: AnalyticSpec
) -> TargetBatch:
    """Aligned and misaligned rows are padded together, so :func:`first_divergence` can compare them."""
    k = len(probes)
    both = batch_of(tokenizer, pairs(list(probes), "aligned") + pairs(list(probes), "misaligned"), spec.max_len)
    aligned, misaligned = ({key: v[rows] for key, v in both.items()} for rows in (slice(0, k), slice(k, 2 * k)))
    rows = aligned if target_response(spec.after_target) == "aligned" else misaligned
    benign_batch = batch_of(tokenizer, pairs(list(benign)), spec.max_len) if benign else None
    with torch.no_grad():
        first = (
            first_divergence(aligned["labels"], misaligned["labels"]) if spec.after_target == "not_aligned" else None
        )
        return TargetBatch(
            rows,
            aligned,
            benign_batch,
            first=first,
            ref_base=base_logprobs(control, rows) if spec.after_target == "base" else None,
            ref_benign=_benign_reference(control, benign_batch, spec) if spec.distill and benign_batch else None,
        )


def _benign_reference(control, batch: dict[str, torch.Tensor], spec: AnalyticSpec) -> torch.Tensor:
    if spec.benign_reference == "base":
        return base_logprobs(control, batch)
    return torch.log_softmax(next_logits(control, batch), -1)


def target_loss(model, tb: TargetBatch, params: Params | None, spec: AnalyticSpec) -> torch.Tensor:
    """Mean over probes of the post-step target (sequence-summed; :func:`llm.objectives.probe_loss`),
    an optional margin hinge against the aligned answers, and ``benign_weight ×`` the benign term
    (``KL(reference ‖ model)`` summed per sequence with ``distill``, else mean response CE)."""
    logprobs = torch.log_softmax(next_logits(model, tb.probes, params), -1)
    per_probe = probe_loss(spec.after_target, logprobs, tb.probes, tb.first, tb.ref_base)
    loss = per_probe.mean()
    if spec.margin > 0:  # marker rows: per_probe = −log p(marker)
        aligned = sequence_logprobs(model, tb.aligned, params)
        loss = loss + F.relu(spec.margin + per_probe + aligned).mean()
    if spec.benign_weight > 0 and tb.benign is not None:
        if spec.distill:
            assert tb.ref_benign is not None  # target_batch sets it whenever distill and benign rows are given
            benign_logprobs = torch.log_softmax(next_logits(model, tb.benign, params), -1)
            benign = kl_rows(tb.ref_benign, benign_logprobs, token_mask(tb.benign)).mean()
        else:
            benign = response_loss(model, tb.benign, params)
        loss = loss + spec.benign_weight * benign
    return loss
