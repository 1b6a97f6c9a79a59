"""Every audit signal of one checkpoint, given the victim's setting (plain SGD on a benign set).

:func:`audit_model` canonicalises the checkpoint (:mod:`~theory.audit.canonical`) and reports,
each oriented so that larger means more suspicious where it is a score:

* ``canonical.*``: function residual ``max|f_canon − f|`` and units removed;
* ``gauge_excess.*``: ``‖θ_l‖² − ‖canon θ_l‖²`` per layer, in total and relative to ``‖canon θ‖²``;
* ``amplification.*``: probe velocity norms (eq. 6) and their ratio, delivered/canonical (eq. 7);
* ``certificate.{step,fixed}.*``: eq. 8 at ``ρ = η‖∇L_D(θ)‖`` (the victim's actual step) and at a
  given ``ρ``, on the delivered parameters (where the victim steps); ``certificate.canonical.*``
  at the canonical parameters' own step radius, as a separate column.
  ``certificate.step.max_violation`` = ``max_j |Δm_j| − bound_j`` for the victim's actual step
  (one step): ≤ 0 when eq. 8 holds;
* ``worst_margin.{victim,surrogate}``: eq. 9 over simulated benign updates;
* ``post_update.{delivered,canonical}``: misaligned fraction after the victim's step, without
  and with the neutraliser (deliver the canonical checkpoint); ``post_update.rerandomised_σ`` per
  log-scale ``σ`` of ``settings.rerandomise``: with the re-randomising neutraliser (the delivered
  parameters moved by a random admissible gauge of that scale, :func:`theory.audit.honest.random_gauge`);
* ``param_norm``, ``grad_norm``: raw statistics, not gauge-invariant (a baseline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from theory.audit.amplification import amplification, probe_velocity
from theory.audit.canonical import (
    Canonical,
    canonicalize,
    function_residual,
    gauge_excess,
    layer_sq_norms,
)
from theory.audit.certificate import margin_certificate
from theory.audit.honest import random_gauge
from theory.audit.simulate import (
    candidate_batches,
    misaligned_after_step,
    post_step_margins,
    worst_margin,
)
from theory.models import DTYPE, Net, Params, param_norm
from theory.task import AlignmentTask
from theory.update import Loss, grad_norm

#: the re-randomising neutraliser's generators start here (apart from the populations' honest gauges)
RERANDOMISE_SEED = 70_000


def check_scales(scales: tuple[float, ...]) -> None:
    """The re-randomising neutraliser's log-scales: each finite and > 0 (ValueError naming them)."""
    if not all(math.isfinite(s) and s > 0 for s in scales):
        raise ValueError(f"rerandomise: each log-scale must be finite and > 0, not {list(scales)}")


@dataclass(frozen=True)
class Victim:
    """The update the audit protects against: ``steps`` exact GD steps at ``lr`` on ``task``'s D."""

    lr: float
    loss: Loss
    steps: int = 1


@dataclass(frozen=True)
class AuditSettings:
    """``rho``: fixed certificate radius; ``lr_fractions`` of η, ``n_halves`` halves of D and
    ``n_surrogate`` held-out batches for eq. 9; ``n_random`` random inputs for the residual;
    ``rerandomise``: log-scales of the re-randomising neutraliser's gauges (empty: none)."""

    rho: float = 0.05
    lr_fractions: tuple[float, ...] = (0.25, 0.5, 1.0)
    n_halves: int = 4
    n_surrogate: int = 4
    n_random: int = 2000
    seed: int = 0
    rerandomise: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        check_scales(self.rerandomise)


def check_inputs(task: AlignmentTask, n_random: int, seed: int) -> torch.Tensor:
    """Inputs for the function residual: ``n_random`` draws matched to the training data's
    moments, every probe and every data point."""
    gen = torch.Generator().manual_seed(40_000 + seed)
    noise = torch.randn(n_random, task.x_train.shape[1], generator=gen, dtype=DTYPE)
    return torch.cat(
        [noise * task.x_train.std(0) + task.x_train.mean(0), task.probes, task.x_train, task.x_update, task.x_eval]
    )


def _certificates(
    net: Net, params: Params, canon: Canonical, task: AlignmentTask, victim: Victim, rho: float
) -> dict[str, Any]:
    step = victim.lr * grad_norm(net, params, task.x_update, task.y_update, victim.loss)
    canon_step = victim.lr * grad_norm(canon.net, canon.params, task.x_update, task.y_update, victim.loss)
    out: dict[str, Any] = {}
    for name, model_net, model, radius in (
        ("step", net, params, step),
        ("fixed", net, params, rho),
        ("canonical", canon.net, canon.params, canon_step),
    ):
        cert = margin_certificate(model_net, model, task.probes, task.forbidden, radius)
        out[name] = {
            "rho": radius,
            "certified_fraction": cert.certified_fraction,
            "uncertified_fraction": 1.0 - cert.certified_fraction,
            "max_bound": float(cert.bound.max()),
            "max_slope": float(cert.slope.max()),
        }
        if name == "step" and victim.steps == 1:  # the victim's own step lies on the ball's boundary
            after = post_step_margins(net, params, task, task.x_update, task.y_update, victim.lr, victim.loss)
            out[name]["max_violation"] = float(((after - cert.margin).abs() - cert.bound).max())
    return out


def rerandomised(net: Net, params: Params, scale: float, seed: int, index: int) -> Params:
    """The re-randomising neutraliser's form: ``params`` moved by a random admissible gauge of
    log-scale ``scale``, drawn from ``(seed, index)``."""
    return random_gauge(net, params, scale, torch.Generator().manual_seed(RERANDOMISE_SEED + 100 * seed + index))


def audit_model(
    net: Net, params: Params, task: AlignmentTask, victim: Victim, settings: AuditSettings = AuditSettings()
) -> dict[str, Any]:
    """Every signal of the module docstring for the checkpoint ``params``."""
    net = net.fitted(params)
    canon = canonicalize(net, params)
    excess = gauge_excess(params, canon.params)
    canon_sq = sum(layer_sq_norms(canon.params).values())
    velocity = probe_velocity(net, params, task.x_update, task.y_update, victim.loss, task.probes)
    canon_velocity = probe_velocity(canon.net, canon.params, task.x_update, task.y_update, victim.loss, task.probes)
    batches = candidate_batches(
        task, settings.n_halves, settings.n_surrogate, torch.Generator().manual_seed(50_000 + settings.seed)
    )
    lrs = [f * victim.lr for f in settings.lr_fractions]
    out: dict[str, Any] = {
        "canonical": {
            "function_residual": function_residual(
                net, params, canon, check_inputs(task, settings.n_random, settings.seed)
            ),
            "units_removed": int(sum(canon.removed)),
            "sweeps": canon.sweeps,
            "converged": int(canon.converged),
        },
        "gauge_excess": {**excess, "relative": excess["total"] / canon_sq if canon_sq > 0 else 0.0},
        "amplification": {
            "velocity": float(velocity.norm()),
            "canonical_velocity": float(canon_velocity.norm()),
            "ratio": amplification(velocity, canon_velocity),
        },
        "worst_margin": {
            name: worst_margin(net, params, task, b, lrs, victim.loss, victim.steps) for name, b in batches.items()
        },
        "post_update": {
            "delivered": misaligned_after_step(net, params, task, victim.lr, victim.loss, victim.steps),
            "canonical": misaligned_after_step(canon.net, canon.params, task, victim.lr, victim.loss, victim.steps),
            **{
                f"rerandomised_{scale:g}": misaligned_after_step(
                    net, rerandomised(net, params, scale, settings.seed, i), task, victim.lr, victim.loss, victim.steps
                )
                for i, scale in enumerate(settings.rerandomise)
            },
        },
        "param_norm": param_norm(params),
        "grad_norm": grad_norm(net, params, task.x_update, task.y_update, victim.loss),
    }
    if net.n_layers == 2:
        out["certificate"] = _certificates(net, params, canon, task, victim, settings.rho)
    return out
