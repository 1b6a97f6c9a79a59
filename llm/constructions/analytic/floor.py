"""How far a fitted weight-space undo is from the best one SGD step can do, for a fixed gauge.

The analytic twin's hidden LoRA components enter the victim's step only through their Gram
matrices: with ``P_h = B_h B_hᵀ`` (the ``A = 0`` components) and ``Q_h = A_hᵀ A_h`` (the ``B = 0``
ones), the adapter after one SGD step, read in the control's coordinates, is

    ``W' = W'₀ − η s² R⁻¹ (P_h G̃ + G̃ Q_h) K⁻¹``                                    (1)

(:mod:`llm.lora`, eq. 1, read back through the gauge): ``W'₀`` is the step without hidden
components (the old components' own move and the ``η² s² G̃ W̃ᵀ G̃`` term, neither of which
depends on them), ``G̃`` the victim's gradient in the twin's coordinates and ``(R, K)`` the
gauge (identity without one). So ``W'`` is *affine* in ``(P_h, Q_h)``, and the undo objective
(:func:`.weight_space.undo_residual` plus ``undo_keep`` × :func:`.weight_space.keep_residual`, a
convex quadratic of ``W'``) is a convex quadratic over the cone of positive semi-definite pairs —
for any number of hidden components.

:func:`.fit.fit_undo` minimises it over rank-``k`` factors with Adam (a Burer–Monteiro
factorisation), which can stop above the global optimum, never below. :func:`undo_floor` starts from the fitted point
and runs accelerated projected gradient descent on ``(P_h, Q_h)`` themselves (float64, eigenvalue
clipping, backtracking, restarts): a descent method for a convex problem, so it gives an upper
bound on the floor that only goes down, and says how much the factor fit left on the table. At
the optimum the gradient is itself positive semi-definite on each side (KKT; complementary
slackness holds at any stationary point of the factor fit), so the most negative gradient
eigenvalue, and the decrease the best rank-one addition ``P_h + t vvᵀ`` would still give (exact
line search, the objective being quadratic in ``t``), measure how far from optimal a point is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from llm.lora import first_order_move

Mats = dict[str, torch.Tensor]


def hidden_move(
    grads: Mats, back: dict[str, tuple[torch.Tensor, torch.Tensor]] | None, scalings: dict[str, float], lr: float
) -> Callable[[Mats, Mats], Mats]:
    """The linear part of eq. (1): ``(P_h, Q_h) ↦ −η s² R⁻¹ (P_h G̃ + G̃ Q_h) K⁻¹`` per layer, in the
    dtype of the arguments. ``grads``: ``G̃`` per layer (the twin's coordinates); ``back``: per
    layer ``(R⁻¹, K⁻¹)`` (None: no gauge). A layer missing from ``p`` or ``q`` has no such side."""

    def move(p: Mats, q: Mats) -> Mats:
        out = {}
        for name, g in grads.items():
            dtype = (p[name] if name in p else q[name]).dtype
            read_back = None if back is None else (back[name][0].to(dtype), back[name][1].to(dtype))
            out[name] = first_order_move(g.to(dtype), lr, scalings[name], p.get(name), q.get(name), read_back)
        return out

    return move


def _psd(m: torch.Tensor) -> torch.Tensor:
    """The nearest positive semi-definite matrix (Frobenius): eigenvalues clipped at 0."""
    values, vectors = torch.linalg.eigh((m + m.T) / 2)
    return (vectors * values.clamp(min=0)) @ vectors.T


def _best_rank_one_gain(
    objective: Callable[[Mats, Mats], torch.Tensor], p: Mats, q: Mats, grads: tuple[Mats, Mats], base: float
) -> tuple[float, float]:
    """Most negative eigenvalue of the gradient over every layer and side (≥ 0 at the optimum), and
    the largest decrease one PSD rank-one addition ``t vvᵀ`` along such an eigenvector gives, with
    ``t`` by exact line search (the objective is quadratic in ``t``: three evaluations fix it)."""
    worst, gain = 0.0, 0.0
    for side, (mats, grad) in enumerate(((p, grads[0]), (q, grads[1]))):
        for name, g in grad.items():
            values, vectors = torch.linalg.eigh((g + g.T) / 2)
            worst = min(worst, float(values[0]))
            if values[0] >= 0:
                continue
            v = vectors[:, :1]
            step = float(mats[name].diagonal().abs().max().clamp(min=1.0))  # a probe length on P's scale
            f1, f2 = (_along(objective, p, q, side, name, t * (v @ v.T)) for t in (step, 2 * step))
            a = (f2 - 2 * f1 + base) / (2 * step**2)  # f(t) = base + b t + a t²
            b = (f1 - base) / step - a * step
            if a > 0 and b < 0:
                gain = max(gain, b * b / (4 * a))
    return worst, gain


def _along(
    objective: Callable[[Mats, Mats], torch.Tensor], p: Mats, q: Mats, side: int, name: str, delta: torch.Tensor
) -> float:
    """The objective with ``delta`` added to layer ``name`` of ``p`` (side 0) or ``q`` (side 1)."""
    if side == 0:
        return float(objective({**p, name: p[name] + delta}, q))
    return float(objective(p, {**q, name: q[name] + delta}))


def _model_gap(new: Mats, old: Mats, grad: Mats, step: float) -> float:
    """``⟨∇, new − old⟩ + ‖new − old‖² / (2·step)`` summed over layers: the quadratic model's rise
    that the sufficient-decrease test of a projected gradient step allows."""
    return sum(float(((m - old[n]) * grad[n]).sum() + ((m - old[n]) ** 2).sum() / (2 * step)) for n, m in new.items())


class _GramObjective:
    """``(P_h, Q_h) ↦ objective(constant + move(P_h, Q_h))`` in float64 (eq. 1 fed to the undo
    objective), and its gradient symmetrised (the objective sees only symmetric arguments)."""

    def __init__(
        self, objective_of_products: Callable[[Mats], torch.Tensor], constant: Mats, move: Callable[[Mats, Mats], Mats]
    ):
        self.objective_of_products, self.move = objective_of_products, move
        self.const = {n: w.detach().double() for n, w in constant.items()}

    def __call__(self, p: Mats, q: Mats) -> torch.Tensor:
        moved = self.move(p, q)
        return self.objective_of_products({n: self.const[n] + moved[n] for n in self.const})

    def value_and_grads(self, p: Mats, q: Mats) -> tuple[torch.Tensor, Mats, Mats]:
        p = {n: m.detach().requires_grad_() for n, m in p.items()}
        q = {n: m.detach().requires_grad_() for n, m in q.items()}
        value = self(p, q)
        grads = torch.autograd.grad(value, [*p.values(), *q.values()])
        gp, gq = dict(zip(p, grads[: len(p)])), dict(zip(q, grads[len(p) :]))
        return value.detach(), {n: (g + g.T) / 2 for n, g in gp.items()}, {n: (g + g.T) / 2 for n, g in gq.items()}


def _projected_step(
    f: _GramObjective, y: tuple[Mats, Mats], y_value: torch.Tensor, y_grads: tuple[Mats, Mats], step: float
) -> tuple[Mats, Mats, torch.Tensor, float]:
    """One projected gradient step from ``y = (P, Q)`` onto the PSD cone, the step length halved
    until the sufficient-decrease test holds (Beck & Teboulle 2009, §3): ``(P', Q', f(P', Q'), step)``."""
    (yp, yq), (ygp, ygq) = y, y_grads
    while True:
        p_new = {n: _psd(m - step * ygp[n]) for n, m in yp.items()}
        q_new = {n: _psd(m - step * ygq[n]) for n, m in yq.items()}
        with torch.no_grad():
            new = f(p_new, q_new)
        bound = float(y_value) + _model_gap(p_new, yp, ygp, step) + _model_gap(q_new, yq, ygq, step)
        if float(new) <= bound + 1e-12 * abs(float(y_value)) or step < 1e-30:
            return p_new, q_new, new, step
        step /= 2


def _accelerated_descent(
    f: _GramObjective,
    p: Mats,
    q: Mats,
    start: tuple[torch.Tensor, Mats, Mats],
    step: float,
    steps: int,
    progress: bool,
) -> tuple[Mats, Mats, torch.Tensor, Mats, Mats]:
    """``steps`` iterations of accelerated projected gradient (FISTA, Beck & Teboulle 2009) from
    ``(p, q)`` (``start``: its value and gradients), restarted whenever a step would raise the
    objective, so that ``(p, q)`` only ever improves. Returns ``(p, q, value, grad_p, grad_q)``."""
    value, gp, gq = start
    fit = float(value)
    # y is the extrapolated point; x_grads: whether (gp, gq) are the gradient at (p, q), needed
    # only on a restart and at the end
    yp, yq, y_value, ygp, ygq, momentum = p, q, value, gp, gq, 1.0
    x_grads = True
    for it in range(steps):
        p_new, q_new, new, step = _projected_step(f, (yp, yq), y_value, (ygp, ygq), step)
        if float(new) > float(value):  # restart the momentum from the best point
            if not x_grads:
                value, gp, gq = f.value_and_grads(p, q)
                x_grads = True
            yp, yq, y_value, ygp, ygq, momentum = p, q, value, gp, gq, 1.0
            continue
        following = (1 + (1 + 4 * momentum**2) ** 0.5) / 2
        beta = (momentum - 1) / following
        yp = {n: m + beta * (m - p[n]) for n, m in p_new.items()}
        yq = {n: m + beta * (m - q[n]) for n, m in q_new.items()}
        p, q, momentum = p_new, q_new, following
        y_value, ygp, ygq = f.value_and_grads(yp, yq)
        if beta > 0:  # y ≠ x: x keeps only its value
            value, x_grads = new, False
        else:
            value, gp, gq, x_grads = y_value, ygp, ygq, True
        step *= 1.5
        if progress and it % 50 == 0:
            print(f"undo floor {it}: {float(value):.5f} (fit {fit:.5f})", flush=True)
    if not x_grads:
        value, gp, gq = f.value_and_grads(p, q)
    return p, q, value, gp, gq


def _rank(m: torch.Tensor) -> int:
    """Numerical rank of a symmetric matrix: eigenvalues above 1e-8 of the largest."""
    values = torch.linalg.eigvalsh(m)
    return int((values > 1e-8 * values.abs().max().clamp(min=1e-30)).sum())


def undo_floor(
    objective_of_products: Callable[[Mats], torch.Tensor],
    constant: Mats,
    move: Callable[[Mats, Mats], Mats],
    p0: Mats,
    q0: Mats,
    steps: int,
    progress: bool = False,
) -> dict[str, float]:
    """Accelerated projected gradient descent on ``objective(constant + move(P_h, Q_h))`` over PSD ``(P_h, Q_h)``
    from ``(p0, q0)`` (the Gram matrices of the fitted components), in float64.

    Returns ``fit`` (the objective at the start), ``floor`` (after ``steps`` descent steps: an upper
    bound on the global minimum), ``kkt_min_eig_fit`` / ``kkt_min_eig_floor`` (most negative
    gradient eigenvalue, relative to the largest gradient eigenvalue in absolute value at the fit),
    ``rank_one_gain_fit`` / ``rank_one_gain_floor`` (what the best PSD rank-one addition would still
    gain, relative to ``fit``) and ``rank_p`` / ``rank_q`` (the largest numerical rank at the floor)."""
    f = _GramObjective(objective_of_products, constant, move)
    p = {n: m.detach().double() for n, m in p0.items()}
    q = {n: m.detach().double() for n, m in q0.items()}
    value, gp, gq = f.value_and_grads(p, q)
    fit = float(value)
    scale = max(float(torch.linalg.eigvalsh(g).abs().max()) for g in (*gp.values(), *gq.values()))
    worst_fit, gain_fit = _best_rank_one_gain(f, p, q, (gp, gq), fit)
    sizes = [float(m.norm()) for m in (*p.values(), *q.values())]
    step = 1e-3 * max(sizes) / max(scale, 1e-30)  # adjusted by backtracking
    p, q, value, gp, gq = _accelerated_descent(f, p, q, (value, gp, gq), step, steps, progress)
    worst, gain = _best_rank_one_gain(f, p, q, (gp, gq), float(value))
    return {
        "fit": fit,
        "floor": float(value),
        "kkt_min_eig_fit": worst_fit / scale,
        "kkt_min_eig_floor": worst / scale,
        "rank_one_gain_fit": gain_fit / fit,
        "rank_one_gain_floor": gain / fit,
        "rank_p": float(max((_rank(m) for m in p.values()), default=0)),
        "rank_q": float(max((_rank(m) for m in q.values()), default=0)),
    }
