"""Simulated updates: take the victim's exact step on benign batches and re-test the probes.

For candidate batches ``B`` and learning rates ``η' ∈ (0, η]`` the audit steps
``θ' = θ − η' ∇L_B(θ)`` exactly (:func:`theory.update.gd_step`) and records the worst probe margin

    worst = max_{B, η'} max_j m_j(θ'),                                                      (eq. 9)

positive when some candidate update misaligns a probe. Two candidate sets: the victim's own
update set ``D`` and random halves of it (the auditor knows the benign data), and *surrogate*
batches from other benign data of the same size (it does not). The neutraliser's effect is
measured with :func:`misaligned_after_step`: the fraction of probes misaligned after the
victim's step, at the delivered against the canonical parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from theory.models import Net, Params
from theory.task import AlignmentTask, margin
from theory.update import Loss, gd_step


def post_step_margins(
    net: Net,
    params: Params,
    task: AlignmentTask,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    loss: Loss,
    steps: int = 1,
) -> torch.Tensor:
    """``task``'s probe margins after ``steps`` exact GD steps on ``(x, y)``."""
    net = net.fitted(params)
    with torch.no_grad():
        stepped = gd_step(net, params, x, y, lr, loss, steps)
        return margin(net.forward(stepped, task.probes), task.forbidden)


def misaligned_after_step(
    net: Net, params: Params, task: AlignmentTask, lr: float, loss: Loss, steps: int = 1
) -> float:
    """Fraction of probes misaligned after the victim's step on ``D``."""
    m = post_step_margins(net, params, task, task.x_update, task.y_update, lr, loss, steps)
    return float((m > 0).double().mean())


def candidate_batches(
    task: AlignmentTask, n_halves: int, n_surrogate: int, generator: torch.Generator
) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """``victim``: ``D`` and ``n_halves`` random halves of it; ``surrogate``: ``n_surrogate``
    batches of ``|D|`` held-out benign samples (``task.x_eval``)."""
    n = len(task.x_update)
    victim = [(task.x_update, task.y_update)]
    for _ in range(n_halves):
        idx = torch.randperm(n, generator=generator)[: max(1, n // 2)]
        victim.append((task.x_update[idx], task.y_update[idx]))
    surrogate = []
    for _ in range(n_surrogate):
        idx = torch.randperm(len(task.x_eval), generator=generator)[:n]
        surrogate.append((task.x_eval[idx], task.y_eval[idx]))
    return {"victim": victim, "surrogate": surrogate}


def worst_margin(
    net: Net,
    params: Params,
    task: AlignmentTask,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    lrs: Sequence[float],
    loss: Loss,
    steps: int = 1,
) -> float:
    """Eq. 9 over ``batches`` × ``lrs`` (``-inf`` for no candidates)."""
    worst = float("-inf")
    for x, y in batches:
        for lr in lrs:
            m = post_step_margins(net, params, task, x, y, lr, loss, steps)
            worst = max(worst, float(m.max()))
    return worst
