"""The adaptive attacker's penalty: an audit signal added to the meta-objective.

An attacker who knows the white-box audit (:mod:`llm.audit`) adds ``λ`` times the signal it fears
to objective (1) of :mod:`llm.constructions.metalearn`,

    min_θ  L_now(θ) + L_after(θ − η ∇_θ L_victim(θ)) + λ · s(θ) / s(θ_control)           (2)

(the LLM counterpart of eq. 12 of :mod:`theory.audit.attack`), ``s`` normalised by a value of the
control's so that ``λ`` reads alike on every model:

* ``gauge``: the LoRA gauge excess ``Σ_m s_m(‖B_m‖² + ‖A_m‖²) − 2‖s_m B_m A_m‖_*`` of the factors
  as they are (:meth:`llm.lora.LoraFactors.gauge_excess`; eq. 2 of :mod:`llm.audit.canonical`),
  over the control's balanced norm ``Σ_m 2‖s_m B_m A_m‖_*``: a relative excess like the audit's
  ``gauge_excess.lora_relative``, which the audit measures after its layer-norm (and GPT-2
  attention) passes. Zero in balanced LoRA forms, so at large ``λ`` the attacker stays near them.
* ``grad``: the victim's gradient norm ``‖∇_θ L_victim(θ)‖`` on its own update batch, over the
  control's (1 at the control): the audit's raw ``grad_norm.delivered``, relative.

Both are differentiable functions of the trainable LoRA tensors ``θ`` (a name → tensor dict, as
the meta-gradient's closures take it); ``grad`` costs a double backward through the victim's loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, cast

import torch

from llm.lora import LoraFactors, factor_keys, lora_layers
from llm.models import CausalLM, response_loss

Penalty = Literal["none", "gauge", "grad"]
PENALTIES: tuple[Penalty, ...] = ("none", "gauge", "grad")
Params = dict[str, torch.Tensor]
Signal = Callable[[Params], torch.Tensor]


def gauge_excess(model: CausalLM, theta: Params) -> torch.Tensor:
    """``Σ_m s_m(‖B_m‖² + ‖A_m‖²) − 2‖s_m B_m A_m‖_*`` over the LoRA layers, factors read from ``theta``."""
    return cast(torch.Tensor, sum(f.gauge_excess() for f in _factors(model, theta)))


def balanced_norm(model: CausalLM, theta: Params) -> torch.Tensor:
    """``Σ_m 2‖s_m B_m A_m‖_*``: ``‖θ‖²`` of the balanced (canonical) LoRA form."""
    return cast(torch.Tensor, sum(2 * f.nuclear_norm() for f in _factors(model, theta)))


def victim_grad_norm(model: CausalLM, theta: Params, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``‖∇_θ L_victim(θ)‖``, differentiable in ``θ`` (``create_graph``)."""
    grads = torch.autograd.grad(response_loss(model, batch, theta), list(theta.values()), create_graph=True)
    return torch.sqrt(cast(torch.Tensor, sum((g**2).sum() for g in grads)))


def penalty(kind: Penalty, model: CausalLM, control: Params, victim_batch: dict[str, torch.Tensor]) -> Signal:
    """``s(θ) / s(θ_control)`` of eq. 2 for ``kind`` as a function of the LoRA tensors ``θ``;
    ``control`` holds the control's LoRA tensors under the same names."""
    if kind == "gauge":
        with torch.no_grad():
            ref = float(balanced_norm(model, control))
        return lambda theta: gauge_excess(model, theta) / _positive(ref, kind)
    if kind == "grad":
        leaves = {n: t.detach().requires_grad_() for n, t in control.items()}
        ref = float(victim_grad_norm(model, leaves, victim_batch).detach())
        return lambda theta: victim_grad_norm(model, theta, victim_batch) / _positive(ref, kind)
    raise ValueError(f"construction.penalty: no signal {kind!r} to penalise; choose one of {', '.join(PENALTIES[1:])}")


def _factors(model: CausalLM, theta: Params) -> list[LoraFactors]:
    """Every LoRA layer's factors, read from ``theta``."""
    layers = lora_layers(model)
    missing = [key for name in layers for key in factor_keys(name) if key not in theta]
    if missing:
        raise ValueError(f"the penalised tensors lack {missing[0]}: the gauge penalty needs every LoRA factor")
    return [LoraFactors.of(layer, theta, name) for name, layer in layers.items()]


def _positive(ref: float, kind: str) -> float:
    if not (ref > 0 and ref == ref and ref != float("inf")):
        raise ValueError(f"construction.penalty={kind}: the control's value is {ref}; it cannot normalise the penalty")
    return ref
