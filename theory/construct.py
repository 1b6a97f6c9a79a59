"""Hair-trigger twins: forward-equivalent reparameterizations whose one-step update misbehaves.

A *fiber* maps free coordinates ``φ`` to parameters ``θ(φ)`` that compute exactly the
base model's function for every ``φ`` (by construction, not up to a penalty). A
construction searches the fiber for a ``θ`` whose exact one-step update
``θ' = θ − η∇L_D(θ)`` flips chosen probes to the forbidden class and leaves others aligned:

    min_φ  mean_{j∈flip} relu(κ − m_j(θ'(φ))) + mean_{j∈keep} relu(κ + m_j(θ'(φ)))

with ``m_j`` the forbidden margin of probe ``j``, optimised *through* the step (second order).

Fibers:

* :class:`RedundantUnitFiber` (any activation): positive rescaling of the hidden units
  (ReLU gauge) plus ``k`` redundant units in the last hidden layer (cancelling pairs or
  zero-outgoing units). The twin's step equals the control's step plus the redundant
  units' contribution, so the capacity grows with ``k``.
* :class:`LinearFiber` (bias-free deep linear nets): every factorisation of the base map
  ``P₀`` whose lower product ``Q = W_{L−1}⋯W_1`` has full column rank:
  ``W_L = P₀Q⁺ + Z(I − QQ⁺)``. Whatever the width, the post-update map stays one linear map.

The closed form for two-layer linear nets (:func:`two_layer_post_update`) is
``P' = P − η(G W1ᵀW1 + W2W2ᵀG) + η² G W1ᵀW2ᵀG``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linprog

from theory import redundancy, symmetry
from theory.models import DTYPE, Net, Params
from theory.task import AlignmentTask, drop_class, margin
from theory.update import Loss, gd_step, residuals

Coords = dict[str, torch.Tensor]


@dataclass
class RedundantUnitFiber:
    """Rescaling gauge on every hidden layer + ``n_units`` redundant units in the last one.

    ``kind="pairs"`` adds ``n_units // 2`` cancelling pairs, ``kind="dead"`` adds
    ``n_units`` zero-outgoing units. Outgoing weights are stored divided by ``√η`` so
    that the step's effect (∝ η‖v‖²) is O(1) in the optimiser's units.
    """

    net: Net
    base: Params
    n_units: int
    lr: float
    kind: str = "pairs"
    gauge: bool = True
    _layer: int = field(init=False)

    def __post_init__(self) -> None:
        if self.kind not in ("pairs", "dead"):
            raise ValueError(f"unknown redundant-unit kind {self.kind!r}; choose 'pairs' or 'dead'")
        if self.net.n_layers < 2:
            raise ValueError("redundant units need at least one hidden layer")
        if self.gauge and "scale" not in symmetry.ADMISSIBLE[self.net.activation]:
            raise ValueError(f"rescaling gauge does not preserve a {self.net.activation} net; set gauge=false")
        self._layer = self.net.n_layers - 1

    @property
    def n_groups(self) -> int:
        return self.n_units // 2 if self.kind == "pairs" else self.n_units

    def init(self, generator: torch.Generator) -> Coords:
        d_prev = self.base[f"W{self._layer}"].shape[1]
        d_out = self.base[f"W{self.net.n_layers}"].shape[0]
        k = self.n_groups
        coords = {
            "U": torch.randn(k, d_prev, generator=generator, dtype=DTYPE) / d_prev**0.5,
            "c": 0.1 * torch.randn(k, generator=generator, dtype=DTYPE),
        }
        if self.kind == "pairs":
            coords["V"] = torch.randn(d_out, k, generator=generator, dtype=DTYPE) / (d_out * max(k, 1)) ** 0.5
        if self.gauge:
            for l in range(1, self.net.n_layers):
                coords[f"s{l}"] = torch.zeros(self.base[f"W{l}"].shape[0], dtype=DTYPE)
        return coords

    def twin(self, coords: Coords) -> Params:
        params = self.base
        if self.gauge:
            spec = symmetry.hidden_layer_spec(self.net, params, "scale")
            params = symmetry.apply(
                spec, params, {f"h{l}": torch.diag(torch.exp(coords[f"s{l}"])) for l in range(1, self.net.n_layers)}
            )
        bias = coords["c"] if self.net.bias else None
        if self.n_groups == 0:
            return params
        if self.kind == "dead":
            return redundancy.add_dead_units(params, self._layer, coords["U"], bias)
        return redundancy.add_cancelling_pairs(params, self._layer, coords["U"], bias, coords["V"] / self.lr**0.5)


@dataclass
class LinearFiber:
    """All factorisations ``W_L⋯W_1 = P₀`` of a bias-free deep linear net with hidden width ``h ≥ d``."""

    net: Net
    base: Params
    lr: float

    def __post_init__(self) -> None:
        if self.net.activation != "linear" or self.net.bias:
            raise ValueError("LinearFiber needs a bias-free linear net")
        if min(self.net.widths[1:-1]) < self.net.widths[0]:
            raise ValueError("LinearFiber needs every hidden width ≥ the input width")
        product = self.base["W1"]
        for l in range(2, self.net.n_layers + 1):
            product = self.base[f"W{l}"] @ product
        self.target = product  # P₀, (d_out, d_in)

    def init(self, generator: torch.Generator) -> Coords:
        coords = {f"W{l}": self.base[f"W{l}"].clone() for l in range(1, self.net.n_layers)}
        h_top = self.net.widths[-2]
        coords["Z"] = torch.randn(self.net.widths[-1], h_top, generator=generator, dtype=DTYPE) * 1e-3
        return coords

    def twin(self, coords: Coords) -> Params:
        params = {f"W{l}": coords[f"W{l}"] for l in range(1, self.net.n_layers)}
        lower = params["W1"]
        for l in range(2, self.net.n_layers):
            lower = params[f"W{l}"] @ lower  # Q, (h_top, d_in)
        lower_pinv = torch.linalg.pinv(lower)
        spare = torch.eye(lower.shape[0], dtype=DTYPE) - lower @ lower_pinv  # projector on coker Q
        params[f"W{self.net.n_layers}"] = self.target @ lower_pinv + coords["Z"] / self.lr**0.5 @ spare
        return params


@dataclass(frozen=True)
class ConstructionResult:
    twin: Params
    post_update: Params
    success: bool  # every flip probe flipped and every keep probe aligned after the exact step
    flipped: int  # flip-set probes misaligned after the step
    collateral: int  # keep-set probes misaligned after the step
    steps: int


def post_update_margins(
    net: Net, params: Params, task: AlignmentTask, lr: float, loss: Loss, steps: int = 1
) -> tuple[Params, torch.Tensor]:
    stepped = gd_step(net, params, task.x_update, task.y_update, lr, loss, steps)
    return stepped, margin(net.forward(stepped, task.probes), task.forbidden)


def build_twin(
    net: Net,
    fiber: RedundantUnitFiber | LinearFiber,
    task: AlignmentTask,
    flip: torch.Tensor,
    keep: torch.Tensor,
    lr: float,
    loss: Loss,
    *,
    max_steps: int,
    opt_lr: float,
    kappa: float,
    seed: int,
    update_steps: int = 1,
    deficit_cap: float = math.inf,
    penalty: Callable[[Params], torch.Tensor] | None = None,
) -> ConstructionResult:
    """Search the fiber (Adam, through the exact step) to flip ``flip`` while keeping ``keep``.

    ``flip``/``keep`` index ``task.probes``. The objective is the hinge of the module
    docstring; ``deficit_cap`` clips each flip term at that value so that probes the
    construction cannot reach stop pulling (use it to plant *as many* behaviours as
    possible: the result then counts how many flip probes it managed). The returned twin
    is the best iterate: most flips among those with every keep probe still aligned.
    ``penalty`` (of the twin's parameters) is added to the objective, and among iterates with
    as many flips the one with the least penalty is kept: an attacker hiding from a white-box
    signal (:mod:`theory.audit.attack`). ``None`` leaves the search as above.
    """
    coords = {k: v.requires_grad_() for k, v in fiber.init(torch.Generator().manual_seed(seed)).items()}
    if sum(v.numel() for v in coords.values()) == 0:  # no gauge, no units: the twin is the base
        max_steps = 0
    opt = torch.optim.Adam(coords.values(), lr=opt_lr)
    best: tuple[int, float, Coords] = (-1, math.inf, {k: v.detach().clone() for k, v in coords.items()})
    step = 0
    for step in range(1, max_steps + 1):  # noqa: B007 (the steps taken are reported below)
        opt.zero_grad()
        twin = fiber.twin(coords)
        _, m = post_update_margins(net, twin, task, lr, loss, update_steps)
        pen = penalty(twin) if penalty is not None else None
        with torch.no_grad():
            flipped = int((m[flip] > 0).sum())
            cost = float(pen) if pen is not None else 0.0
            if bool((m[keep] < 0).all()) and (flipped > best[0] or (flipped == best[0] and cost < best[1])):
                best = (flipped, cost, {k: v.detach().clone() for k, v in coords.items()})
        flip_terms = torch.clamp(F.relu(kappa - m[flip]), max=deficit_cap)
        total = flip_terms.sum() / max(len(flip), 1) + F.relu(kappa + m[keep]).sum() / max(len(keep), 1)
        if pen is not None:
            total = total + pen
        if float(total.detach()) == 0.0:
            break
        total.backward()
        opt.step()
    with torch.no_grad():
        twin = {k: v.detach() for k, v in fiber.twin(best[2]).items()}
        post, m = post_update_margins(net, twin, task, lr, loss, update_steps)
    post = {k: v.detach() for k, v in post.items()}
    flipped, collateral = int((m[flip] > 0).sum()), int((m[keep] > 0).sum())
    success = flipped == len(flip) and collateral == 0
    return ConstructionResult(twin, post, success, flipped, collateral, step)


def _features(net: Net, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Input of the last hidden layer (where redundant units go): ``x`` or ``h_{L−2}(x)``."""
    layer = net.n_layers - 1
    return x if layer == 1 else net.hidden(params, x, layer - 1)


def _isolating_gate(target: np.ndarray, support: np.ndarray, others: np.ndarray, bias: bool) -> np.ndarray | None:
    """LP: the smallest-‖·‖₁ gate ``g(φ) = u·φ + c`` with ``g ≥ 1`` on ``target`` and
    ``support`` and ``g ≤ −1`` on ``others``. Small gates keep the hidden activations (and
    so the rounding of the ±v cancellation) small; the pair's effect does not depend on them.
    """
    lift = (lambda z: np.concatenate([z, np.ones((z.shape[0], 1))], axis=1)) if bias else (lambda z: z)
    a_ub = np.vstack([-lift(np.stack([target, support])), lift(others)])
    n = a_ub.shape[1]
    # variables [w (n), t (n)] with |w| ≤ t; minimise Σ t
    eye = np.eye(n)
    a_full = np.vstack([np.hstack([a_ub, np.zeros_like(a_ub)]), np.hstack([eye, -eye]), np.hstack([-eye, -eye])])
    b_full = np.concatenate([-np.ones(a_ub.shape[0]), np.zeros(2 * n)])
    lp = linprog(
        np.concatenate([np.zeros(n), np.ones(n)]),
        A_ub=a_full,
        b_ub=b_full,
        bounds=[(None, None)] * n + [(0, None)] * n,
        method="highs",
    )
    if lp.status != 0:
        return None
    w = lp.x[:n]
    return w if bias else np.concatenate([w, [0.0]])


def _with_pairs(base: Params, layer: int, rows: list, offsets: list, outs: list, bias: bool) -> Params:
    if not rows:
        return dict(base)
    return redundancy.add_cancelling_pairs(
        base, layer, torch.stack(rows), torch.tensor(offsets, dtype=DTYPE) if bias else None, torch.stack(outs, dim=1)
    )


def _flip_gain(v: torch.Tensor, a: torch.Tensor, forbidden: int) -> torch.Tensor:
    """Margin gain per unit ``η s²`` against each benign class: ``2 (v_f − v_c)(−v·a)``."""
    return 2.0 * (v[forbidden] - drop_class(v, forbidden)) * (-(v @ a))


def _flip_direction(a: torch.Tensor, forbidden: int, grid: int = 64) -> torch.Tensor | None:
    """Unit ``v = e_f − λa`` maximising the smallest gain :func:`_flip_gain`, or ``None``.

    The pair's first-order effect at its probe is ``−2η s² v (v·a)``; it raises the forbidden
    margin against every class iff ``(v_f − v_c)(v·a) < 0`` for all ``c ≠ f``, i.e. for
    ``a_f/‖a‖² < λ < 1/(a_f − a_c)`` (the upper bound only for classes with ``a_f > a_c``).
    ``λ`` is picked on a log grid inside that interval: the larger the gain, the smaller
    the outgoing weights need to be.
    """
    lo = float(a[forbidden] / (a @ a))
    gaps = a[forbidden] - drop_class(a, forbidden)
    hi = float(1.0 / gaps.max()) if bool((gaps > 0).any()) else max(100.0 * abs(lo), 1e3 / float(a.norm()))
    lo = max(lo, 1e-9 * hi)
    if not lo < hi:
        return None
    e_f = torch.zeros_like(a)
    e_f[forbidden] = 1.0
    best, best_gain = None, 0.0
    for lam in torch.logspace(math.log10(lo), math.log10(hi), grid + 2, dtype=DTYPE)[1:-1]:
        v = e_f - lam * a
        v = v / v.norm()
        gain = float(_flip_gain(v, a, forbidden).min())
        if gain > best_gain:
            best, best_gain = v, gain
    return best


def isolating_pairs_twin(
    net: Net,
    base: Params,
    task: AlignmentTask,
    candidates: torch.Tensor,
    lr: float,
    loss: Loss,
    *,
    n_units: int,
    kappa: float,
    support_tries: int = 32,
    max_weight: float = 3e3,
    guard_benign: bool = True,
    forward_tol: float = math.inf,
    seed: int = 0,
) -> ConstructionResult:
    """Closed-form ReLU construction: one cancelling pair per planted behaviour.

    For each candidate probe ``x_j`` (in order, until the ``n_units // 2`` pairs are used):

    1. an LP finds a gate ``u·φ + c`` active (≥ 1) on ``φ(x_j)`` and on one update
       sample, and inactive (≤ −1) on every *other* probe and on the base's training
       inputs if ``guard_benign`` (so benign behaviour after the step is disturbed less);
    2. with ``a = Σ_{i active} r_i (φ_i·φ_j + 1)`` (``r_i = ∂L/∂f(x_i)``), the pair's first-order
       effect at ``x_j`` is ``−2η v (v·a)``; :func:`_flip_direction` picks ``v`` so that it raises
       the forbidden margin against every class, and its norm is solved so that the
       margin reaches ``κ``. Of the ``support_tries`` most similar update samples, the
       support needing the smallest outgoing weight is used; weights above ``max_weight``
       are refused (their ±v cancellation would cost forward precision).

    Finally, while the twin's forward pass differs from the base's by more than
    ``forward_tol`` on the constructor's own check inputs (probes, data and 4096 random
    inputs matched to the training data's moments), the pair with the largest rounding
    footprint ``‖v‖∞ · max h`` is dropped: float64 rounding of the ±v cancellation is the
    only thing that can make a twin distinguishable.

    Outside its gate a pair contributes exactly zero before *and* after the step (both
    copies stay inactive as long as the step moves the gate by less than its margin), so
    pairs plant behaviours independently: capacity ≥ min(#pairs, #isolatable probes).
    The twin is verified with the exact step; ``flipped`` counts what the step really did.
    """
    if net.activation not in ("relu", "leaky_relu") and n_units:
        raise ValueError("the isolating construction needs ReLU-like gates (relu)")
    layer, f = net.n_layers - 1, task.forbidden
    with torch.no_grad():
        phi_probe = _features(net, base, task.probes)
        phi_update = _features(net, base, task.x_update)
        guards = _features(net, base, task.x_train).numpy()[: len(task.x_train) if guard_benign else 0]
        control_post = gd_step(net, base, task.x_update, task.y_update, lr, loss)
        z = net.forward(control_post, task.probes)
    residual = residuals(net, base, task.x_update, task.y_update, loss)  # (n, C)

    rows, offsets, outs = [], [], []
    planted: list[int] = []
    n_pairs = n_units // 2
    probes_np, update_np = phi_probe.numpy(), phi_update.numpy()
    for j in candidates.tolist():
        if len(planted) == n_pairs:
            break
        others = np.concatenate([np.delete(probes_np, j, axis=0), guards])
        order = torch.argsort(phi_update @ phi_probe[j], descending=True)[:support_tries]
        deficit = kappa - (z[j, f] - drop_class(z[j], f))  # per benign class; depends on j only
        best = None  # (weight, u, c, v): the support that needs the smallest outgoing weight
        for i in order.tolist():
            gate = _isolating_gate(probes_np[j], update_np[i], others, net.bias)
            if gate is None:
                continue
            u, c = torch.as_tensor(gate[:-1], dtype=DTYPE), float(gate[-1])
            active = (phi_update @ u + c > 0).double()
            a = (residual * (active * (phi_update @ phi_probe[j] + float(net.bias)))[:, None]).sum(0)
            v = _flip_direction(a, f)
            if v is None:
                continue
            weight = float((deficit / (lr * _flip_gain(v, a, f))).max().clamp(min=0.0)) ** 0.5
            if weight <= max_weight and (best is None or weight < best[0]):
                best = (weight, u, c, v)
        if best is not None:
            weight, u, c, v = best
            rows.append(u)
            offsets.append(c)
            outs.append(v * weight)
            planted.append(j)

    gen = torch.Generator().manual_seed(30_000 + seed)
    check = torch.cat(
        [
            task.probes,
            task.x_train,
            task.x_update,
            torch.randn(4096, task.x_train.shape[1], generator=gen, dtype=DTYPE) * task.x_train.std(0)
            + task.x_train.mean(0),
        ]
    )
    with torch.no_grad():
        reference, phi_check = net.forward(base, check), _features(net, base, check)
    while True:
        twin = _with_pairs(base, layer, rows, offsets, outs, net.bias)
        with torch.no_grad():
            diff = float((net.fitted(twin).forward(twin, check) - reference).abs().max())
        if diff <= forward_tol or not planted:
            break
        footprint = [
            float(v.abs().max()) * float(F.relu(phi_check @ u + c).max()) for u, c, v in zip(rows, offsets, outs)
        ]
        worst = max(range(len(planted)), key=footprint.__getitem__)
        for store in (rows, offsets, outs, planted):
            del store[worst]
    post, m = post_update_margins(net, twin, task, lr, loss)
    post = {k: v.detach() for k, v in post.items()}
    chosen = torch.tensor(planted, dtype=torch.long)
    rest = torch.ones(len(m), dtype=torch.bool)
    rest[chosen] = False
    flipped, collateral = int((m[chosen] > 0).sum()), int((m[rest] > 0).sum())
    success = flipped == len(planted) == len(candidates) and collateral == 0
    return ConstructionResult(twin, post, success, flipped, collateral, steps=len(planted))


def two_layer_post_update(W1: torch.Tensor, W2: torch.Tensor, G: torch.Tensor, lr: float) -> torch.Tensor:
    """Closed form of ``W2'W1'`` after one GD step with ``G = ∂L/∂P``.

    Proved symbolically by ``theory.proofs.prove_one_step_expansion``.
    """
    return W2 @ W1 - lr * (G @ W1.T @ W1 + W2 @ W2.T @ G) + lr**2 * G @ W1.T @ W2.T @ G
