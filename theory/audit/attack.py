"""Adaptive attackers: twins built to hide from the audit's signals.

An attacker who knows the audit adds a penalty on a signal to the construction's objective. The
fiber search (:func:`theory.construct.build_twin`) then minimises

    hinge(θ'(φ)) + λ · s(θ(φ)),                                                            (eq. 12)

with ``hinge`` the flip/keep objective of :mod:`theory.construct` and ``s`` one of

* ``gauge``: the relative gauge excess ``(‖θ‖² − ‖canon θ₀‖²) / ‖canon θ₀‖²``. Every point of the
  fiber computes the control's function, so its canonical form (and norm) is the control's: the
  penalty equals the audit's ``gauge_excess.relative`` exactly;
* ``grad``: the victim's gradient norm ``‖∇L_D(θ)‖`` relative to the canonical control's;
* ``amplification``: the probe velocity ``‖J_θ(P) ∇L_D(θ)‖_F`` (eq. 6) relative to the canonical
  control's, which is eq. 7's ratio for the same reason as above.

Each is differentiable in ``φ`` (the gradient and the velocity are taken with ``torch.func``,
which composes with the outer autograd). ``λ = 0`` runs the plain search's code path. Among the
iterates with the most flips and every keep probe aligned, the twin returned is the one with the
smallest ``λ·s`` (the plain search keeps the first).

The norm-limited attacker is :func:`theory.construct.isolating_pairs_twin` with its pair weights
capped (``max_weight``): no search, a closed form that refuses heavier pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, cast

import torch
from torch.func import jvp

from theory.audit.canonical import canonicalize, layer_sq_norms
from theory.construct import ConstructionResult, LinearFiber, RedundantUnitFiber, build_twin
from theory.models import Net, Params
from theory.task import AlignmentTask
from theory.update import Loss, gradient

Penalty = Literal["gauge", "grad", "amplification"]
PENALTIES: tuple[Penalty, ...] = ("gauge", "grad", "amplification")
Signal = Callable[[Params], torch.Tensor]


def _grad_norm(net: Net, params: Params, task: AlignmentTask, loss: Loss) -> torch.Tensor:
    g = gradient(net, params, task.x_update, task.y_update, loss)
    return torch.sqrt(cast(torch.Tensor, sum((v**2).sum() for v in g.values())))


def _velocity_norm(net: Net, params: Params, task: AlignmentTask, loss: Loss) -> torch.Tensor:
    """``‖J_θ(P) ∇L_D(θ)‖_F`` (eq. 6), differentiable in ``params``."""
    g = gradient(net, params, task.x_update, task.y_update, loss)
    _, v = cast(tuple[torch.Tensor, torch.Tensor], jvp(lambda p: net.forward(p, task.probes), (params,), (g,)))
    return v.norm()


def penalty(kind: Penalty, net: Net, control: Params, task: AlignmentTask, loss: Loss) -> Signal:
    """The signal ``s`` of eq. 12 for ``kind``, normalised by the canonical control's value, as a
    function of a twin's parameters (any width: the net is fitted to them)."""
    canon = canonicalize(net, control)
    if kind == "gauge":
        ref = sum(layer_sq_norms(canon.params).values())
        return lambda p: (cast(torch.Tensor, sum((v**2).sum() for v in p.values())) - ref) / ref
    if kind == "grad":
        ref = float(_grad_norm(canon.net, canon.params, task, loss))
        return lambda p: _grad_norm(net.fitted(p), p, task, loss) / ref
    if kind == "amplification":
        ref = float(_velocity_norm(canon.net, canon.params, task, loss))
        return lambda p: _velocity_norm(net.fitted(p), p, task, loss) / ref
    raise ValueError(f"unknown penalty {kind!r}; choose one of {', '.join(PENALTIES)}")


def penalised_twin(
    net: Net,
    fiber: RedundantUnitFiber | LinearFiber,
    task: AlignmentTask,
    flip: torch.Tensor,
    keep: torch.Tensor,
    lr: float,
    loss: Loss,
    *,
    signal: Signal,
    lam: float,
    max_steps: int,
    opt_lr: float,
    kappa: float,
    seed: int,
) -> ConstructionResult:
    """Eq. 12: :func:`theory.construct.build_twin` (same initialisation, optimiser and hinge; one
    victim step) with ``lam · signal`` added to its objective. ``lam = 0`` is build_twin itself."""
    return build_twin(
        net,
        fiber,
        task,
        flip,
        keep,
        lr,
        loss,
        max_steps=max_steps,
        opt_lr=opt_lr,
        kappa=kappa,
        seed=seed,
        penalty=(lambda p: lam * signal(p)) if lam else None,
    )
