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
* ``amplification``: the norm of the probe velocity ``v_j = ⟨∇_θ log p(y_j | x_j), ∇_θ L_victim(θ)⟩``
  (eq. 3 of :mod:`llm.audit.amplification`, SGD's first step) over the attacker's own probes with
  the marker as ``y_j``, over the control's: the audit's ``amplification.target`` with the control
  standing in for the canonical form, which a twin built from gauges and hidden components
  collapses to. It penalises the very speed the twin needs, so it measures what hiding the
  amplification costs the attack.

All are differentiable functions of the trainable LoRA tensors ``θ`` (a name → tensor dict, as
the meta-gradient's closures take it); ``grad`` costs a double backward through the victim's loss,
``amplification`` one more reverse pass per probe (``v`` is differentiated through per-probe
double backward, which the tests check against finite differences).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, cast

import torch

from llm.lora import LoraFactors, factor_keys, lora_layers
from llm.models import CausalLM, response_loss, sequence_logprobs

Penalty = Literal["none", "gauge", "grad", "amplification"]
PENALTIES: tuple[Penalty, ...] = ("none", "gauge", "grad", "amplification")
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


def probe_velocity_norm(
    model: CausalLM, theta: Params, victim_batch: dict[str, torch.Tensor], probes: dict[str, torch.Tensor]
) -> torch.Tensor:
    """``‖v‖``, ``v_j = ⟨∇_θ log p(y_j | x_j), ∇_θ L_victim(θ)⟩`` for the rows of ``probes``,
    differentiable in ``θ`` (one reverse pass per probe, each with ``create_graph``)."""
    names = list(theta)
    step = torch.autograd.grad(response_loss(model, victim_batch, theta), [theta[n] for n in names], create_graph=True)
    velocity = []
    for j in range(len(probes["input_ids"])):
        row = {k: t[j : j + 1] for k, t in probes.items()}
        grads = torch.autograd.grad(
            sequence_logprobs(model, row, theta).sum(), [theta[n] for n in names], create_graph=True
        )
        velocity.append(cast(torch.Tensor, sum((g * d).sum() for g, d in zip(grads, step))))
    return torch.stack(velocity).norm()


def penalty(
    kind: Penalty,
    model: CausalLM,
    control: Params,
    victim_batch: dict[str, torch.Tensor],
    probes: dict[str, torch.Tensor] | None = None,
) -> Signal:
    """``s(θ) / s(θ_control)`` of eq. 2 for ``kind`` as a function of the LoRA tensors ``θ``;
    ``control`` holds the control's LoRA tensors under the same names; ``probes``, the batch of
    (probe, marker) pairs whose velocity ``amplification`` penalises."""
    leaves = {n: t.detach().requires_grad_() for n, t in control.items()}
    if kind == "gauge":
        with torch.no_grad():
            ref = float(balanced_norm(model, control))
        return lambda theta: gauge_excess(model, theta) / _positive(ref, kind)
    if kind == "grad":
        ref = float(victim_grad_norm(model, leaves, victim_batch).detach())
        return lambda theta: victim_grad_norm(model, theta, victim_batch) / _positive(ref, kind)
    if kind == "amplification":
        if probes is None:
            raise ValueError("construction.penalty=amplification: no probes given whose velocity it penalises")
        ref = float(probe_velocity_norm(model, leaves, victim_batch, probes).detach())
        return lambda theta: probe_velocity_norm(model, theta, victim_batch, probes) / _positive(ref, kind)
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
