"""Fitting the hidden components: one Adam minimiser, and the starting points it is run from.

* :func:`preconditioner_init` + :func:`line_search`: the first-order choice of the hidden
  components for a behavioural target, scaled by one global gain scored on the exact post-step loss.
* :func:`fit_undo`: the hidden components (and, with a gauge, its log coordinates) that best move
  the alignment adapter in weight space (:mod:`.weight_space`), from a seeded random start.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from peft.tuners.lora import LoraLayer

from llm import gauges
from llm.constructions.analytic.spec import AnalyticSpec
from llm.constructions.analytic.step import Hidden, Mats, Side, gauged_step_products
from sweeps.errors import NonFiniteError

Shapes = dict[tuple[str, Side], tuple[int, int]]


def minimise(
    loss: Callable[[], torch.Tensor],
    groups: Sequence[dict],
    steps: int,
    label: str,
    every: int,
    progress: bool = False,
    schedule: str = "constant",
    keep_best: bool = False,
) -> list[float]:
    """``steps`` Adam steps on ``loss()`` over the parameter ``groups`` (torch's ``{"params", "lr"}``),
    in place; returns the loss before each step. ``schedule``: ``constant`` lr, or ``cosine`` from
    each group's lr to 0 over the steps (Loshchilov & Hutter 2017, SGDR, eq. 5 without restarts).
    ``keep_best``: the parameters end at the iterate of lowest loss, the loss evaluated once more
    at the last one (Adam at a large constant lr need not end at its best). With ``progress`` the
    loss is printed every ``every`` steps."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown lr schedule {schedule!r}: constant or cosine")
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.Adam(list(groups))
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1)) if schedule == "cosine" else None
    curve: list[float] = []
    best, best_at = math.inf, []
    for step in range(steps):
        opt.zero_grad()
        value = loss()
        curve.append(float(value.detach()))
        if keep_best and curve[-1] < best:
            best, best_at = curve[-1], [p.detach().clone() for p in params]
        value.backward()
        opt.step()
        if decay is not None:
            decay.step()
        if progress and step % every == 0:
            print(f"{label} {step}: {curve[-1]:.3f}", flush=True)
    if keep_best and steps:
        with torch.no_grad():
            last = float(loss())
            if last > best:
                for p, kept in zip(params, best_at):
                    p.copy_(kept)
        if progress:
            kept = f", kept the best iterate ({best:.3f})" if last > best else ""
            print(f"{label} end: {last:.3f}{kept}", flush=True)
    return curve


def preconditioner_init(grads_update: Mats, grads_target: Mats, k: int) -> Mats:
    """First-order optimal input-side components (``(k, in)`` per layer) for lowering the target loss.

    ``δL_target ≈ ⟨H, ΔW⟩ = −η s² tr(Q · sym(Gᵀ H))`` with ``Q = AᵀA``: the rows of ``A`` go
    along the top eigenvectors of ``S = sym(GᵀH)`` with positive eigenvalue ``λ``, weighted
    ``sqrt(λ / λ_max)`` (``λ_max`` over all layers, so that strong layers dominate), then
    globally rescaled so that the largest row norm is 1 (the gain is applied later). The output
    side is the same argument on the transposes.
    """
    eig = {}
    for name, g in grads_update.items():
        h = grads_target[name]
        m = g.T.double() @ h.double()
        vals, vecs = torch.linalg.eigh((m + m.T) / 2)
        eig[name] = (vals.flip(0)[:k], vecs.flip(1)[:, :k])
    top = max(float(v[0]) for v, _ in eig.values())
    out = {}
    for name, (vals, vecs) in eig.items():
        w = (vals.clamp(min=0) / top).sqrt() if top > 0 else torch.zeros_like(vals)
        a = (w[:, None] * vecs.T).to(grads_update[name].dtype)
        if a.shape[0] < k:  # fewer input dims than k: pad with inert zero rows
            a = torch.cat([a, torch.zeros(k - a.shape[0], a.shape[1], dtype=a.dtype)])
        out[name] = a
    return out


def line_search(
    start: Hidden, post_loss: Callable[[Hidden], torch.Tensor], spec: AnalyticSpec, progress: bool = False
) -> tuple[Hidden, float, float]:
    """One global gain over ``spec.line_search`` for the first-order ``start``, scored by the exact
    post-step loss. Returns the scaled components (leaves, ready to refine), the gain and its loss."""
    best_c, best = None, math.inf
    for c in spec.line_search:

        def scaled(a: torch.Tensor, c: float = c) -> torch.Tensor:
            return spec.gain * c * a

        with torch.no_grad():
            value = float(post_loss(start.map(scaled)))
        if progress:
            print(f"line search gain {c:g}: post-step target loss {value:.3f}", flush=True)
        if math.isfinite(value) and value < best:
            best_c, best = c, value
    if best_c is None:
        raise NonFiniteError("construction", "every gain of construction.line_search gave a non-finite post-step loss")
    return start.map(lambda a: (spec.gain * best_c * a).clone().requires_grad_()), spec.gain * best_c, best


def fit_undo(
    shapes: Shapes,
    objective: Callable[[Hidden], torch.Tensor],
    spec: AnalyticSpec,
    progress: bool = False,
    gauge_logs: Sequence[torch.Tensor] = (),
) -> Hidden:
    """The hidden components that minimise ``objective`` (a weight-space objective of the post-step
    adapter): Adam from a seeded random start of rms ``10⁻²`` with the given ``shapes`` (zero rows
    are a saddle of the residual), at ``spec.undo_lr``; the leaves ``gauge_logs`` (a gauge the
    objective reads) are fitted along at ``spec.gauge_lr``. Matrix products only (no forward pass),
    so thousands of steps take seconds.

    What one step can reach (:mod:`llm.lora`, eq. 1): ``B = 0`` and ``A = 0`` components add to
    ``Q`` and ``P`` freely, so ``W' = 0`` is reachable to first order only where ``⟨G, W⟩ > 0``
    (removing the alignment lowers the benign loss locally).
    """
    generator = torch.Generator().manual_seed(spec.seed)
    hidden = Hidden(
        {
            key: (1e-2 * torch.randn(shape, generator=generator)).requires_grad_()
            for key, shape in sorted(shapes.items())
        }
    )
    groups = [{"params": hidden.tensors(), "lr": spec.undo_lr}]
    if gauge_logs:
        groups.append({"params": list(gauge_logs), "lr": spec.gauge_lr})
    minimise(
        lambda: objective(hidden),
        groups,
        spec.undo_steps,
        "undo fit",
        250,
        progress,
        spec.undo_schedule,
        spec.undo_best,
    )
    return hidden


def fit_gauged_undo(
    model: torch.nn.Module,
    layers: dict[str, LoraLayer],
    grads: Mats,
    shapes: Shapes,
    objective: Callable[[Mats], torch.Tensor],
    lr: float,
    spec: AnalyticSpec,
    progress: bool = False,
) -> tuple[Hidden, gauges.GaugeSpec, dict[str, torch.Tensor]]:
    """:func:`fit_undo` with the gauge families of ``spec.undo_gauge`` (:data:`llm.gauges.FAMILIES`)
    as further unknowns: ``objective`` of the post-step products of :func:`.step.gauged_step_products`
    (control's coordinates) after a step of rate ``lr``. Returns the hidden components (in the
    gauge's coordinates), the gauge spec and its fitted log coordinates (:func:`llm.gauges.exp`
    gives the element to apply)."""
    families = gauges.FAMILIES[spec.undo_gauge]
    assert families is not None, "fit_gauged_undo: construction.undo_gauge=none fits no gauge"
    attention, layernorm = families
    gspec = gauges.gauge_spec(model, attention=attention, layernorm=layernorm)
    logs = gauges.identity_logs(gspec)

    def gauged(hidden: Hidden) -> torch.Tensor:
        maps = gauges.gauge_maps(gspec, gauges.exp(logs, gspec), layers)
        return objective(gauged_step_products(layers, grads, hidden, maps, lr))

    return fit_undo(shapes, gauged, spec, progress, list(logs.values())), gspec, logs
