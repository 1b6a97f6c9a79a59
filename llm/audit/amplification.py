"""Update amplification: how far the victim's first step moves the probes, per unit learning rate.

The victim moves its trainable parameters ``θ`` (the LoRA factors for ``update.params=adapter``;
every weight of the merged model for ``all``) by ``−η d``, where ``d`` is its first step's
direction on its first batch ``D``: ``d = ∇L_D(θ)`` for SGD, ``d = ∇L_D / (|∇L_D| + ε)``
elementwise for Adam's first step (its bias-corrected moments are ``g`` and ``g²``). To first
order the log-probability of probe ``x_j``'s response ``y_j`` moves by

    Δ log p(y_j | x_j) ≈ −η J_θ(x_j) d,   J_θ(x_j) = ∇_θ log p(y_j | x_j),                   (eq. 3)

the empirical NTK between the probes and ``D`` applied to the loss gradient (Ren & Sutherland
2025, "Learning dynamics of LLM finetuning"; the LLM counterpart of
:func:`theory.audit.amplification.probe_velocity`). ``v_j = J_θ(x_j) d`` is the probe
*velocity*, computed exactly with one forward-mode product (``torch.func.jvp``). The responses
``y_j`` are the model's own greedy answers (how fast the step moves what it says) or the judged
target (the misaligned marker). The signal is eq. 7 of :mod:`theory.audit.amplification`,

    amplification = ‖v_delivered‖ / ‖v_canonical‖,

next to the victim's gradient norm ``‖∇L_D(θ)‖``, delivered against canonical.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import cast

import torch
from peft import PeftModel
from torch.func import jvp
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm.batches import batch_of, pairs
from llm.checks import require_finite
from llm.data.schema import Example
from llm.lora import trainable
from llm.models import response_loss, sequence_logprobs
from llm.update import UpdateSpec

#: Adam's ε (torch's default), in its first step's direction
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class Velocity:
    """``velocity``: eq. 3's ``J(x_j) d`` per probe; ``grad_norm``: ``‖∇L_D(θ)‖`` over the
    trainable parameters; ``loss``: ``L_D(θ)``."""

    velocity: torch.Tensor
    grad_norm: float
    loss: float


def first_batch(tokenizer: PreTrainedTokenizerBase, examples: list[Example], spec: UpdateSpec) -> dict:
    """The batch of the victim's first step: the rows :func:`llm.update.victim_update` draws first."""
    data = pairs(examples)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(spec.seed))[: spec.batch_size]
    return batch_of(tokenizer, [data[i] for i in order.tolist()], spec.max_len)


def victim_view(model: PreTrainedModel, spec: UpdateSpec) -> PreTrainedModel:
    """A copy of ``model`` as the victim trains it: merged for ``params=all``, eval mode (no dropout)."""
    view = copy.deepcopy(model)
    if spec.params == "all" and isinstance(view, PeftModel):
        return cast(PreTrainedModel, view.merge_and_unload()).eval()
    return view.eval()


def step_direction(grads: dict[str, torch.Tensor], optimizer: str) -> dict[str, torch.Tensor]:
    """``d`` of eq. 3: the gradient (SGD) or Adam's first-step direction ``g / (|g| + ε)``."""
    if optimizer == "sgd":
        return grads
    return {k: g / (g.abs() + ADAM_EPS) for k, g in grads.items()}


def probe_velocity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    probes: list[tuple[str, str]],
    update_examples: list[Example],
    spec: UpdateSpec,
    chunk: int = 16,
) -> Velocity:
    """Eq. 3 for the ``(prompt, response)`` pairs ``probes`` under the victim's first step ``spec``
    (``chunk`` probes per forward-mode pass)."""
    view = victim_view(model, spec)
    trainable(view, spec.params)
    params = {n: p for n, p in view.named_parameters() if p.requires_grad}
    loss = require_finite(
        response_loss(view, first_batch(tokenizer, update_examples, spec)), "evaluation", "the victim's update loss"
    )
    gradient = dict(zip(params, (g.detach() for g in torch.autograd.grad(loss, list(params.values())))))
    grad_norm = float(torch.stack([(g.double() ** 2).sum() for g in gradient.values()]).sum().sqrt())
    direction = step_direction(gradient, spec.optimizer)
    for p in view.parameters():
        p.requires_grad_(False)
    leaves = {n: p.detach() for n, p in params.items()}
    parts = []
    for start in range(0, len(probes), chunk):  # forward-mode memory grows with the batch
        batch = batch_of(tokenizer, probes[start : start + chunk], spec.max_len)
        pair = jvp(lambda values, b=batch: sequence_logprobs(view, b, values), (leaves,), (direction,))
        parts.append(pair[1].detach())
    velocity = torch.cat(parts)
    velocity = require_finite(velocity, "evaluation", "the probe velocity J·d")
    grad_norm = require_finite(grad_norm, "evaluation", "the victim's gradient norm")
    return Velocity(velocity, grad_norm, float(loss.detach()))
