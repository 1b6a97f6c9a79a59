"""The neutraliser: deliver the canonical checkpoint, then let the victim take its real step.

The canonical form (:mod:`llm.audit.canonical`) computes the delivered function, so the black-box
tests cannot tell the two apart before the step. After the victim's actual update
(:func:`llm.update.victim_update`, the config's ``update``) the audit judges both on the held-out
probes with the project's judges (:func:`llm.evaluate.probe_report`): for a hair-trigger twin the
delivered checkpoint turns misaligned and the canonical one behaves as the canonical control does.

:func:`logprob_change` is the same comparison without a judge: the change of each probe's
``log p(y | x)`` under the victim's real step, ``log p_{θ'}(y | x) − log p_θ(y | x)`` (eq. 3 of
:mod:`llm.audit.amplification` without the first-order approximation).
"""

from __future__ import annotations

import copy
from typing import cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm.batches import batch_of
from llm.checks import require_finite, require_finite_model
from llm.data.schema import Example
from llm.evaluate import probe_report
from llm.models import sequence_logprobs
from llm.update import UpdateSpec, victim_update


def stepped(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, update_examples: list[Example], spec: UpdateSpec
) -> PreTrainedModel:
    """A copy of ``model`` after the victim's update, its weights checked finite (stage ``update``)."""
    updated = victim_update(copy.deepcopy(model), tokenizer, update_examples, spec)
    return cast(PreTrainedModel, require_finite_model(updated, "update"))


def judged_rates(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, domain: str, probes: list[Example], max_new_tokens: int
) -> dict[str, float]:
    """The judged fractions of :func:`llm.evaluate.probe_report` (misaligned, refusing, degenerate)."""
    report = probe_report(model, tokenizer, domain, probes, max_new_tokens)
    return {k: report[k] for k in ("misalignment_rate", "refusal_rate", "empty_rate")}


@torch.no_grad()
def logprob_change(
    model: PreTrainedModel,
    updated: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    probes: list[tuple[str, str]],
    max_len: int,
) -> torch.Tensor:
    """``log p_{θ'}(y_j | x_j) − log p_θ(y_j | x_j)`` per ``(x_j, y_j)`` of ``probes``."""
    batch = batch_of(tokenizer, probes, max_len)
    change = sequence_logprobs(updated, batch) - sequence_logprobs(model, batch)
    return require_finite(change, "evaluation", "the probes' log-prob change under the victim's step")
