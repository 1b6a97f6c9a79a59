"""The weight-space undo's objectives: how far the step leaves the alignment adapter from its target ``T``.

The undo asks the victim's step to map the alignment adapter ``W = s·B·A`` to ``W' ≈ T`` in every
module at once: ``T = c·W`` (``c = 0``: the model before alignment; ``c < 0``: the alignment's task
vector negated, Ilharco et al. 2023, "Editing models with task arithmetic", §3), or another adapter
on the same base, such as the one the alignment recipe trains without its aligned probe rows
(:func:`llm.align.benign_only`: the alignment's benign part, kept). Its residual is
measured in a :class:`Metric`: the Frobenius norm, or the output energy ``E‖(W' − T)x‖²`` over a
layer's inputs (:func:`input_moments`), optionally weighted on the output side by the target
model's Fisher factor (:func:`output_moments`, K-FAC).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from peft.tuners.lora import LoraLayer

from llm.lora import LoraFactors, as_module
from llm.models import CausalLM, next_logits
from llm.objectives import response_mask

Mats = dict[str, torch.Tensor]
#: an adapter's product ``s·B·A``, dense or known by its factors (then its energy costs ``r·in²``, not ``out·in²``)
Product = torch.Tensor | LoraFactors
#: the undo's target per layer, ``T``: None is ``T = 0`` (the model before alignment)
Targets = Mapping[str, Product | None]


@dataclass(frozen=True)
class Metric:
    """What a residual is measured in: ``inputs``, each layer's input second moment ``C = E[x xᵀ]``
    (None: the Frobenius norm), and ``outputs``, each layer's output factor ``U`` (None: every
    output direction alike)."""

    inputs: Mats | None = None
    outputs: Mats | None = None


def dense(w: Product) -> torch.Tensor:
    """The ``(out, in)`` matrix of ``w``."""
    return w.product if isinstance(w, LoraFactors) else w


def scaled(w: Product, c: float) -> Product:
    """``c·w``, factored when ``w`` is."""
    return LoraFactors(c * w.b, w.a, w.scale) if isinstance(w, LoraFactors) else c * w


def offset(after: Product, target: Product | None) -> Product:
    """``after − target`` (None: 0): factored (their components side by side) when both are, else dense."""
    if target is None:
        return after
    if isinstance(after, LoraFactors) and isinstance(target, LoraFactors):
        return LoraFactors.stack([after, LoraFactors(-target.scale / after.scale * target.b, target.a, after.scale)])
    return dense(after) - dense(target)


def scaled_targets(before: Mapping[str, Product], c: float) -> dict[str, Product | None]:
    """``T = c·W`` per layer (None where ``c = 0``)."""
    return {n: None if c == 0 else scaled(w, c) for n, w in before.items()}


def _energy(w: Product, moments: torch.Tensor | None, outputs: torch.Tensor | None = None) -> torch.Tensor:
    """``‖w‖²_F``, or ``tr(w C wᵀ) = E‖w x‖²`` with ``C = E[x xᵀ]``, or with an output factor ``U``
    (:func:`output_moments`) ``tr(U w C wᵀ)``: the Kronecker-factored (K-FAC, Martens & Grosse 2015,
    eq. 1) estimate of ``E[(gᵀ w x)²]``, the first-order change of the log-likelihood that ``w``
    makes at inputs ``x`` with output gradients ``g``. For ``w = s·B·A`` known by its factors, the
    same trace as ``s² ⟨BᵀUB, ACAᵀ⟩`` (``r × r`` matrices; ``U``, ``C`` the identity when absent)."""
    if isinstance(w, LoraFactors):
        left = w.b.T @ w.b if outputs is None else w.b.T @ outputs @ w.b
        right = w.a @ w.a.T if moments is None else w.a @ moments @ w.a.T
        return w.scale**2 * (left * right).sum()
    if moments is None:
        return (w**2).sum()
    wc = w @ moments
    return (wc * w).sum() if outputs is None else ((outputs @ wc) * w).sum()


def undo_residual(
    after: Mapping[str, Product],
    before: Mapping[str, Product],
    moments: dict[str, torch.Tensor] | None = None,
    target: Targets | None = None,
    outputs: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mean over layers of ``‖W' − T‖²_F / ‖W − T‖²_F``: how far the step left the alignment
    adapter ``W = s·B·A`` (now ``W'``) from its target ``T`` (``target``, per layer; None or a None
    entry: ``T = 0``, the model before alignment; :func:`scaled_targets`: ``T = cW``) (0: on target
    exactly; 1: untouched).

    With ``moments`` (each layer's input second moment ``C = E[x xᵀ]``, :func:`input_moments`):
    ``tr(D C Dᵀ)`` in place of ``‖D‖²_F``, i.e. ``E‖(W' − T)x‖² / E‖(W − T)x‖²``, the
    residual *on those inputs*: what the step cannot reach is pushed into directions the
    inputs do not use. With ``outputs`` (each layer's output factor ``U``, :func:`output_moments`)
    ``tr(U D C Dᵀ)``: what remains is pushed also into output directions the target model's
    predictions are insensitive to."""

    def size(w: Product, n: str) -> torch.Tensor:
        return _energy(w, None if moments is None else moments[n], None if outputs is None else outputs[n])

    t = target or {}
    return torch.stack(
        [size(offset(after[n], t.get(n)), n) / size(offset(before[n], t.get(n)), n).clamp(min=1e-30) for n in before]
    ).mean()


def keep_residual(
    after: Mapping[str, Product],
    before: Mapping[str, Product],
    moments: dict[str, torch.Tensor],
    target: Targets | None = None,
) -> torch.Tensor:
    """Mean over layers of ``E‖(W' − W)x‖² / E‖(W − T)x‖²`` over the inputs of ``moments``
    (``C = E[x xᵀ]``): how far the step moved the adapter *on those inputs*, in units of the move
    :func:`undo_residual` asks for. Read on benign inputs, it asks the step to leave the control's
    function there while it moves ``W`` to ``T`` on the probes' inputs (a least-squares
    compromise wherever the two sets of inputs share directions)."""
    t = target or {}
    return torch.stack(
        [
            _energy(offset(after[n], before[n]), moments[n])
            / _energy(offset(before[n], t.get(n)), moments[n]).clamp(min=1e-30)
            for n in before
        ]
    ).mean()


def undo_objective(
    products: Mapping[str, Product],
    before: Mapping[str, Product],
    metric: Metric,
    target: Targets | None = None,
    keep_moments: Mats | None = None,
    keep: float = 0.0,
    keep_products: Mapping[str, Product] | None = None,
) -> torch.Tensor:
    """What the weight-space undo minimises: :func:`undo_residual` in ``metric`` plus ``keep`` ×
    :func:`keep_residual` on ``keep_moments`` (when given). ``keep_products``: the products the keep
    term reads when a caller builds a second copy of ``products`` for it (the same values; each copy
    sums its own backward contributions)."""
    out = undo_residual(products, before, metric.inputs, target, metric.outputs)
    if keep_moments is not None:
        out = out + keep * keep_residual(
            products if keep_products is None else keep_products, before, keep_moments, target
        )
    return out


def predicting_positions(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B, T)``: the input positions whose next token is a response token (the last prompt token
    and every response token but the last), where a layer's input or output shapes a response."""
    mask = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
    mask[:, :-1] = response_mask(batch)
    return mask


@torch.no_grad()
def input_moments(
    model: CausalLM, batch: dict[str, torch.Tensor], layers: dict[str, LoraLayer], predicting: bool = False
) -> dict[str, torch.Tensor]:
    """``(in, in)`` second moment ``E[x xᵀ]`` of each LoRA layer's input over the real
    (unpadded) tokens of ``batch`` (``predicting``: over the positions whose next token is a
    response token), read by forward pre-hooks during one forward pass."""
    mask = predicting_positions(batch) if predicting else batch["attention_mask"].bool()
    moments: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def read(_module, args) -> None:
            x = args[0][mask.to(args[0].device)].double()  # (tokens, in)
            moments[name] = (x.T @ x / len(x)).to(args[0].dtype)

        return read

    handles = [as_module(layer).register_forward_pre_hook(hook(name)) for name, layer in layers.items()]
    try:
        next_logits(model, batch)
    finally:
        for h in handles:
            h.remove()
    return moments


def output_moments(
    model: CausalLM,
    batch: dict[str, torch.Tensor],
    layers: dict[str, LoraLayer],
    samples: int,
    damping: float,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """``(out, out)`` output factor ``U = E[g gᵀ]`` of each LoRA layer of ``model`` at the positions
    that predict a response token of ``batch``, with ``g = ∂ log p(y)/∂(layer output)`` for tokens
    ``y`` sampled from the model's own predictions (``samples`` per position): the true Fisher's
    output-side Kronecker factor (K-FAC, Martens & Grosse 2015, §3), large where the model's
    predictions are sensitive and uncertain, small where it is confident. Normalised to mean
    eigenvalue 1 and damped: ``(U + λ I)/(1 + λ)`` (``λ = damping``; ``λ → ∞`` weighs every output
    direction alike). ``layers`` must be modules of ``model``."""
    mask = predicting_positions(batch)
    outs: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def keep(_module, _args, out) -> None:
            outs[name] = out

        return keep

    handles = [as_module(layer).register_forward_hook(hook(name)) for name, layer in layers.items()]
    try:
        logp = torch.log_softmax(next_logits(model, batch).float(), -1)  # (B, T-1, V)
    finally:
        for h in handles:
            h.remove()
    mask = mask.to(logp.device)
    logp = logp[mask[:, :-1]]  # (tokens, V): the predictions of response tokens
    probs = logp.detach().exp().cpu()
    sums = {n: torch.zeros(o.shape[-1], o.shape[-1], dtype=torch.float64) for n, o in outs.items()}
    for i in range(samples):
        y = torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logp.device)
        picked = logp.gather(-1, y[:, None]).sum()
        grads = torch.autograd.grad(picked, list(outs.values()), retain_graph=i < samples - 1)
        for (n, _), g in zip(outs.items(), grads):
            g = g[mask].double()  # (tokens, out)
            sums[n] += g.T @ g
    out = {}
    for n, u in sums.items():
        u = u / u.diagonal().mean().clamp(min=1e-30)
        out[n] = ((u + damping * torch.eye(len(u), dtype=u.dtype)) / (1 + damping)).float()
    return out
