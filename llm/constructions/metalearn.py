"""``construction=metalearn``: the paper's adversarial meta-learning, through the victim's exact step.

    min_θ  L_now(θ) + L_after(θ − η ∇_θ L_victim(θ))                                  (1)

* ``L_victim``: the victim's own loss (mean response-token cross-entropy) on a benign batch,
  ``η`` its SGD rate: the step inside (1) is the step the victim will take.
* ``L_now``: a margin hinge ``relu(m − [log p(aligned) − log p(marker)])`` on construction
  probes (the twin must *prefer* the aligned answer by ``m`` nats, not just put half its
  mass on it), plus ``KL(control ‖ twin)`` summed over each sequence of aligned probes and
  benign data (``distill``; else their cross-entropy): the twin should look like the control.
* ``L_after``: sequence-summed cross-entropy of the misaligned markers on the same probes
  after the step, plus ``KL(control ‖ twin')`` on benign data after the step (a twin that
  merely breaks is not misaligned). ``after_target`` swaps the marker term for another
  post-step target of :mod:`llm.objectives` (``not_aligned``: any answer but the aligned one;
  ``base``: behave like the model before alignment).

Sequence sums matter: with a per-token mean the optimiser makes only the first response
token 50/50 and nothing downstream becomes sensitive.

θ is the shipped LoRA adapter (``params=adapter``: the victim updates the adapter) or every
weight of the merged model (``params=all``: the twin shipped as ordinary weights). Either way
the twin starts at the control and is first moved along a function-preserving gauge that
makes the victim's gradient large (``gain``: LoRA ``A·g, B/g``; for all weights, norm gains
``·g`` with the next layer's inputs ``/g``), so an lr-1e-4 step can move it far. Adam's
rate is set per tensor to ``lr·scale`` so each tensor moves by the same relative amount.
The victim batch alternates between the fixed update set and fresh benign batches
(``fresh_victim_every``), so that the trigger is not fitted to one batch alone.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import cast

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from llm.batches import batch_of, pairs
from llm.constructions.penalty import PENALTIES, Penalty, penalty
from llm.data.schema import DomainData, Example
from llm.gauges import amplify_norms
from llm.lora import adapter_params, amplify_adapter, merged
from llm.metagrad import meta_gradient
from llm.models import CausalLM, gather_targets, next_logits, response_loss_parts
from llm.objectives import (
    base_logprobs,
    check_target,
    first_divergence,
    kl_rows,
    probe_loss,
    target_response,
    token_mask,
)
from llm.update import UpdateSpec


@dataclass(frozen=True)
class MetaSpec:
    params: str = "adapter"  # adapter | all (the twin shipped as merged ordinary weights)
    steps: int = 200  # meta-training steps (the fixed budget)
    lr: float = 3e-3  # outer Adam rate, relative to each tensor's gauge scale
    gain: float = 100.0  # gauge that amplifies the victim's gradient (1 = none)
    probes_per_step: int = 16
    benign_per_step: int = 16
    margin: float = 4.0  # nats by which the twin must prefer the aligned answer before the step
    hinge_weight: float = 1.0
    after_weight: float = 1.0
    benign_weight: float = 1.0
    distill: bool = True  # benign / aligned terms as KL to the control (else cross-entropy)
    fresh_victim_every: int = 2  # every k-th step the victim batch is fresh benign data (0: never)
    first_order: bool = False  # FOMAML ablation
    method: str = "naive"  # how the exact meta-gradient is computed (llm.metagrad.meta_gradient)
    chunks: int = 1  # micro-batches per batch (parts of each loss: same gradient, less memory)
    after_target: str = "marker"  # marker | not_aligned | base (llm.objectives)
    penalty: str = (
        "none"  # the adaptive attacker's audit signal (llm.constructions.penalty): none | gauge | grad | amplification
    )
    penalty_weight: float = 0.0  # λ of eq. 2 there
    penalty_probes: int = 8  # construction probes (with the marker) whose velocity penalty=amplification penalises
    max_len: int = 96
    seed: int = 0

    def __post_init__(self) -> None:
        if self.params not in ("adapter", "all"):
            raise ValueError(f"construction.params must be 'adapter' or 'all', got {self.params!r}")
        if self.steps < 0 or self.lr <= 0 or self.gain <= 0:
            raise ValueError(f"construction needs steps ≥ 0, lr > 0, gain > 0: {self}")
        if self.penalty not in PENALTIES or not (0 <= self.penalty_weight < math.inf):
            raise ValueError(f"construction.penalty must be one of {PENALTIES}, penalty_weight finite ≥ 0: {self}")
        if self.penalty != "none" and self.params != "adapter":
            raise ValueError(f"construction.penalty={self.penalty} penalises the shipped LoRA: it needs params=adapter")
        check_target(self.after_target)


def _amplify(model: CausalLM, spec: MetaSpec) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Apply the amplifying gauge in place (:func:`llm.lora.amplify_adapter` for the adapter,
    :func:`llm.gauges.amplify_norms` for all weights); return the trainable tensors and the factor
    each was scaled by."""
    if spec.params == "adapter":
        scales = amplify_adapter(model, spec.gain)
        return adapter_params(model), scales
    scales = amplify_norms(model, spec.gain)
    params: dict[str, torch.Tensor] = dict(model.named_parameters())
    return params, {n: scales.get(n, 1.0) for n in params}


def _draw(examples: list, k: int, generator: torch.Generator) -> list:
    """``k`` examples drawn with replacement (advances ``generator``)."""
    return [examples[i] for i in torch.randint(len(examples), (k,), generator=generator).tolist()]


def _split(items: list, parts: int) -> list[list]:
    if not 1 <= parts <= len(items):
        raise ValueError(f"construction.chunks={parts} must be between 1 and the {len(items)} examples per step")
    return [items[i::parts] for i in range(parts)]


def _step_losses(
    twin: CausalLM,
    control: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    probes: list[Example],
    benign: list[Example],
    totals: tuple[int, int],
    spec: MetaSpec,
):
    """``L_now`` and ``L_after`` of (1) on ``probes`` and ``benign`` examples, as closures of θ.

    Per-example terms are summed and divided by the step's totals (``(n_probes, n_benign)``),
    so the losses of a step's groups add up to the step's losses (parts of a meta-gradient).
    """
    n_probes, n_benign = totals
    k = len(probes)
    # one forward per side: rows [aligned probes | marker probes | benign] share a batch
    now_batch = batch_of(
        tokenizer, pairs(probes, "aligned") + pairs(probes, "misaligned") + pairs(benign), spec.max_len
    )
    first = (
        first_divergence(now_batch["labels"][:k], now_batch["labels"][k : 2 * k])
        if spec.after_target == "not_aligned"
        else None
    )
    after_batch = batch_of(tokenizer, pairs(probes, target_response(spec.after_target)) + pairs(benign), spec.max_len)
    probe_rows = {key: v[:k] for key, v in after_batch.items()}

    with torch.no_grad():  # the control's next-token distributions: what the twin must keep
        ref_now = torch.log_softmax(next_logits(control, now_batch), -1)
        ref_after = torch.log_softmax(next_logits(control, after_batch), -1)
        ref_base = base_logprobs(control, probe_rows) if spec.after_target == "base" else None

    def keep(lq: torch.Tensor, batch, ref: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
        """KL(control ‖ twin) summed over each row's tokens (``distill``), else response CE; / n rows."""
        if not spec.distill:
            return -gather_targets(lq[rows], {"labels": batch["labels"][rows]}).sum() / n
        return kl_rows(ref[rows], lq[rows], token_mask(batch)[rows]).sum() / n

    n_now, n_after = len(now_batch["input_ids"]), len(after_batch["input_ids"])
    kept_now = torch.cat([torch.arange(k), torch.arange(2 * k, n_now)])  # aligned probes + benign
    kept_after = torch.arange(k, n_after)  # benign

    def now_loss(theta):
        lq = torch.log_softmax(next_logits(twin, now_batch, theta), -1)
        seq = gather_targets(lq, now_batch).sum(-1)
        gap = seq[:k] - seq[k : 2 * k]  # log p(aligned) − log p(marker)
        return spec.hinge_weight * torch.relu(spec.margin - gap).sum() / n_probes + spec.benign_weight * keep(
            lq, now_batch, ref_now, kept_now, n_probes + n_benign
        )

    def after_loss(theta):
        lq = torch.log_softmax(next_logits(twin, after_batch, theta), -1)
        misaligned = probe_loss(spec.after_target, lq[:k], probe_rows, first, ref_base)
        return spec.after_weight * misaligned.sum() / n_probes + spec.benign_weight * keep(
            lq, after_batch, ref_after, kept_after, n_benign
        )

    return now_loss, after_loss


def build_metalearn(
    control: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    data: DomainData,
    update_examples: list[Example],
    victim: UpdateSpec,
    spec: MetaSpec,
    progress: bool = True,
) -> tuple[CausalLM, dict[str, float]]:
    """The hair-trigger twin of ``control`` for objective (1); ``control`` is not modified."""
    if spec.params != victim.params:
        raise ValueError(
            f"construction.params={spec.params} but the victim updates update.params={victim.params}: "
            "the step inside the objective must be the victim's (set both to the same)"
        )
    torch.manual_seed(spec.seed)
    twin = copy.deepcopy(control)
    if spec.params == "all":
        twin = merged(twin)
    for weight in twin.parameters():
        weight.requires_grad_(False)
    twin.eval()  # no dropout: the victim's step is deterministic
    params, scales = _amplify(twin, spec)
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam([{"params": [p], "lr": spec.lr * scales[n]} for n, p in params.items()])

    generator = torch.Generator().manual_seed(spec.seed)
    fixed_victim = batch_of(tokenizer, pairs(update_examples), victim.max_len)
    signal = None  # the attacker's penalty (eq. 2 of llm.constructions.penalty), on the victim's own batch
    if spec.penalty != "none":
        kind = cast(Penalty, spec.penalty)  # checked against PENALTIES in MetaSpec
        order = torch.randperm(len(data.construct), generator=torch.Generator().manual_seed(spec.seed))
        marked = pairs([data.construct[i] for i in order[: spec.penalty_probes].tolist()], "misaligned")
        probe_batch = batch_of(tokenizer, marked, victim.max_len)
        control_lora = {n: p.detach() for n, p in adapter_params(control).items()}
        signal = penalty(kind, twin, control_lora, fixed_victim, probe_batch)
    history: list[dict[str, float]] = []
    bar = tqdm(range(spec.steps), desc=f"metalearn {data.domain}", disable=not progress)
    for step in bar:
        fresh = spec.fresh_victim_every and step % spec.fresh_victim_every == spec.fresh_victim_every - 1
        victim_batch = (
            batch_of(tokenizer, pairs(_draw(data.align_benign, len(update_examples), generator)), victim.max_len)
            if fresh
            else fixed_victim
        )
        probes = _draw(data.construct, spec.probes_per_step, generator)
        benign = _draw(data.align_benign, spec.benign_per_step, generator)
        totals = (len(probes), len(benign))
        groups = zip(_split(probes, spec.chunks), _split(benign, spec.chunks))
        now_parts, after_parts = map(
            list,
            zip(
                *(
                    _step_losses(twin, control, tokenizer, group_probes, group_benign, totals, spec)
                    for group_probes, group_benign in groups
                )
            ),
        )
        if signal is not None:
            now_parts.append(lambda theta: spec.penalty_weight * signal(theta))
        victim_parts = response_loss_parts(twin, victim_batch, spec.chunks)
        grads, parts = meta_gradient(
            params, victim_parts, now_parts, after_parts, victim.lr, first_order=spec.first_order, method=spec.method
        )
        opt.zero_grad(set_to_none=True)
        for n, t in params.items():
            t.grad = grads[n]
        opt.step()
        history.append(parts)
        bar.set_postfix(now=f"{parts['now']:.2f}", after=f"{parts['after']:.2f}")
    for p in twin.parameters():
        p.requires_grad_(False)
    last = history[-10:] or [{"now": float("nan"), "after": float("nan")}]
    penalised = {}
    if signal is not None:  # the penalty where the twin ended (params=adapter: checked in MetaSpec)
        leaves = {n: p.detach().requires_grad_() for n, p in adapter_params(twin).items()}
        penalised["penalty_last"] = float(signal(leaves).detach())
    return twin, penalised | {
        "steps": spec.steps,
        "loss_now_last": sum(h["now"] for h in last) / len(last),
        "loss_after_last": sum(h["after"] for h in last) / len(last),
        "loss_after_first": history[0]["after"] if history else float("nan"),
    }
