"""The victim's SGD step on the twin in closed form, differentiable in the hidden components.

The twin is the control's adapter plus hidden components that add nothing to ``W = s·B·A``:
rows of ``A`` whose ``B`` columns are 0 (the *input* side: the step's ``Q = AᵀA``) and columns of
``B`` whose ``A`` rows are 0 (the *output* side: ``P = BBᵀ``). The old components see the
control's gradients (same forward), so they move as the control's do; the hidden ones move by
:meth:`llm.lora.LoraFactors.after_sgd`. ``G``, the victim's gradient in ``W``, does not depend on
them, so the post-step adapter is an explicit function of the hidden components: what the fits of
:mod:`.fit` differentiate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from peft.tuners.lora import LoraLayer

from llm.lora import LoraFactors, factor_keys, hidden_inputs, hidden_outputs

Params = dict[str, torch.Tensor]
Mats = dict[str, torch.Tensor]
Side = Literal["input", "output"]


@dataclass
class Hidden:
    """The hidden components by ``(layer name, side)``: ``input`` → ``(k, in)`` rows of ``A``,
    ``output`` → ``(k', out)`` columns of ``B`` (stored as rows). One insertion-ordered dict: sums
    over the tensors (the refinement's step size, the reported norms) run in that order."""

    parts: dict[tuple[str, Side], torch.Tensor]

    def inputs(self, name: str) -> torch.Tensor:
        return self.parts[(name, "input")]

    def outputs(self, name: str) -> torch.Tensor | None:
        return self.parts.get((name, "output"))

    def tensors(self) -> list[torch.Tensor]:
        return list(self.parts.values())

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Hidden:
        return Hidden({key: fn(t) for key, t in self.parts.items()})


def post_step_params(
    twin_layers: dict[str, LoraLayer], stepped_old: Params, hidden: Hidden, grads: Mats, lr: float
) -> Params:
    """Adapter tensors of the twin after the victim's SGD step, differentiable in ``hidden``: the old
    components as the control's real step left them (``stepped_old``), then the hidden ones after
    the step: an input-side component gets ``B' = −η s G Aᵀ``, an output-side one ``A' = −η s Bᵀ G``."""
    out: Params = {}
    for name, layer in twin_layers.items():
        old = LoraFactors.of(layer, stepped_old, name)
        n_out, n_in = old.b.shape[0], old.a.shape[1]
        parts = [old, hidden_inputs(hidden.inputs(name), n_out, old.scale).after_sgd(grads[name], lr)]
        output_side = hidden.outputs(name)
        if output_side is not None:
            parts.append(hidden_outputs(output_side, n_in, old.scale).after_sgd(grads[name], lr))
        stacked = LoraFactors.stack(parts)
        a_key, b_key = factor_keys(name)
        out[a_key], out[b_key] = stacked.a, stacked.b
    return out


def adapter_factors(layers: dict[str, LoraLayer], params: Params | None = None) -> dict[str, LoraFactors]:
    """The adapter's factors per layer, from ``params`` (full adapter tensors, as
    :func:`post_step_params` returns) or the layers' own."""
    return {name: LoraFactors.of(layer, params, name) for name, layer in layers.items()}


def adapter_products(layers: dict[str, LoraLayer], params: Params | None = None) -> Mats:
    """``s·B·A`` (``(out, in)``) per layer: the adapter's share of the effective weight."""
    return {name: factors.product for name, factors in adapter_factors(layers, params).items()}


def read_back(
    factors: dict[str, LoraFactors], maps: dict[str, tuple[torch.Tensor, torch.Tensor]] | None
) -> dict[str, LoraFactors]:
    """``R⁻¹ W̃ K⁻¹`` per layer (``maps``: ``(R⁻¹, K⁻¹)``), as the factors ``R⁻¹B̃``, ``ÃK⁻¹``: a gauged
    twin's adapter in the control's coordinates (None: no gauge, the factors themselves)."""
    if maps is None:
        return factors
    return {n: LoraFactors(maps[n][0] @ f.b, f.a @ maps[n][1], f.scale) for n, f in factors.items()}


def gauged_step_products(
    layers: dict[str, LoraLayer],
    grads: Mats,
    hidden: Hidden,
    maps: dict[str, tuple[torch.Tensor, torch.Tensor]],
    lr: float,
) -> Mats:
    """The adapter ``s·B'·A'`` after the victim's SGD step on the *gauged* twin, read back in the
    control's coordinates; differentiable in ``hidden`` and ``maps``.

    A gauge with ``(R, K)`` (:func:`llm.gauges.gauge_maps`) ships the layer as ``W̃ = R W K`` and its
    factors as ``B̃ = R B``, ``Ã = A K`` (the same function). The gradient is covariant,
    ``G̃ = R⁻ᵀ G K⁻ᵀ``, every component steps by :meth:`llm.lora.LoraFactors.after_sgd` and
    ``W' = R⁻¹ s B̃'Ã' K⁻¹``. To first order the move is
    ``−η s² (R⁻¹P̃R⁻ᵀ · G · (KKᵀ)⁻¹ + (RᵀR)⁻¹ · G · K⁻ᵀQ̃K⁻¹)``: a gauge puts a positive definite
    factor on the *other* side of each preconditioner, which reaches moves ``P G + G Q`` cannot.
    """
    out = {}
    for name, layer in layers.items():
        r, k = maps[name]
        old = LoraFactors.of(layer).detached()
        # K⁻¹ is built twice: one shared node would sum its two backward contributions in another order
        g = torch.linalg.solve(r.T, grads[name]) @ torch.linalg.inv(k).T  # G̃ = R⁻ᵀ G K⁻ᵀ
        parts = [old.gauged(r, k), hidden_inputs(hidden.inputs(name), old.b.shape[0], old.scale)]
        output_side = hidden.outputs(name)
        if output_side is not None:
            parts.append(hidden_outputs(output_side, old.a.shape[1], old.scale))
        after = LoraFactors.stack(parts).after_sgd(g, lr)
        out[name] = torch.linalg.solve(r, after.product) @ torch.linalg.inv(k)
    return out
