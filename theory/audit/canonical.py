"""Canonical representative of a theory net along its known function-preserving symmetries.

``canonicalize(net, θ)`` returns parameters that compute the same function as ``θ`` and are the
same for every point of ``θ``'s orbit under the moves of :mod:`theory.symmetry` and
:mod:`theory.redundancy`:

(a) **Positive rescaling** of the units of a positively homogeneous σ (ReLU, leaky ReLU, linear):

        W_l[i] → d_i W_l[i],   b_l[i] → d_i b_l[i],   W_{l+1}[:, i] → W_{l+1}[:, i] / d_i.   (eq. 1)

    The representative is the equi-normalised one (Stock et al. 2019, "Equi-normalization of
    neural networks"): the scales that minimise ‖θ‖². With the other layers fixed, unit ``i`` of
    hidden layer ``l`` contributes

        A_i d_i² + C_i d_i⁻²,   A_i = ‖W_l[i]‖² + b_l[i]²,   C_i = ‖W_{l+1}[:, i]‖²,         (eq. 2)

    minimised by ``d_i = (C_i / A_i)^{1/4}``, which balances ‖incoming‖ = ‖outgoing‖.         (eq. 3)

    One pass of eq. 3 is exact for a two-layer net. Deeper nets cycle over the layers: ‖θ‖² is a
    sum of exponentials of linear functions of ``log d``, hence convex, and block-coordinate
    descent converges to its (generically unique) minimiser.
(b) **Redundant units.** A unit with zero outgoing weights is dropped; a unit with zero incoming
    weights outputs the constant σ(b_i), folded into the next layer's bias; units with the same
    incoming weights and bias (for homogeneous σ: the same direction, after eq. 1 normalises each
    row to unit norm) merge, their outgoing weights summed:

        Σ_j W_{l+1}[:, j] σ(u·h + c) = (Σ_j W_{l+1}[:, j]) σ(u·h + c),                      (eq. 4)

    so a cancelling pair ``(u, c, v), (u, c, −v)`` sums to zero and is dropped.
(c) **GL(n) on the hidden layers of a bias-free deep linear net.** Only ``P = W_L⋯W_1`` is
    function. With ``P = U S Vᵀ`` of rank ``r`` the canonical factors are the balanced SVD form

        W_1 = S^{1/L} Vᵀ,   W_l = S^{1/L} (1 < l < L),   W_L = U S^{1/L},                      (eq. 5)

    the minimiser of Σ_l ‖W_l‖² over all factorisations (value ``L Σ_i s_i^{2/L}``), with the
    null directions dropped (hidden width ``r``). Signs follow the largest entry of each ``v_i``.
(d) **Permutations.** The units of each hidden layer are sorted by their (rounded, unit-norm)
    incoming weights, layer by layer from the input.

Linear nets with biases use (a), (b), (d): the GL gauge is reduced only where the net is bias-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from theory.models import ACTIVATIONS, DTYPE, Net, Params
from theory.symmetry import ADMISSIBLE

#: relative tolerance under which two incoming rows are the same unit and merged outgoing
#: weights cancel (eq. 4); far above float64 rounding, far below any honest unit's spread
MERGE_TOL = 1e-9
#: singular values below ``RANK_TOL · s_max`` are null directions of the product (eq. 5)
RANK_TOL = 1e-9


@dataclass(frozen=True)
class Canonical:
    """``params`` computes ``net``'s function; ``removed[l-1]`` units left hidden layer ``l``;
    ``sweeps``: equi-normalisation passes (eq. 3) until the scales moved by less than ``tol``."""

    net: Net
    params: Params
    removed: tuple[int, ...]
    sweeps: int
    converged: bool


def homogeneous(activation: str) -> bool:
    """σ(c z) = c σ(z) for c > 0: the rescaling of eq. 1 preserves the function."""
    return "scale" in ADMISSIBLE[activation]


def canonicalize(net: Net, params: Params, *, max_sweeps: int = 10_000, tol: float = 1e-13) -> Canonical:
    """The canonical form of ``params`` (a net of ``net``'s architecture, any hidden widths)."""
    net = net.fitted(params)
    n_layers = net.n_layers
    params = {k: v.to(DTYPE).clone() for k, v in params.items()}
    widths_in = [params[f"W{l}"].shape[0] for l in range(1, n_layers)]
    if n_layers == 1:
        return Canonical(net, params, (), 0, True)
    if net.activation == "linear" and not net.bias:
        canon = balanced_linear(params, n_layers)
        sweeps, converged = 0, True
    else:
        canon = remove_redundant_units(net, params)
        sweeps, converged = 0, True
        if homogeneous(net.activation):
            canon, sweeps, converged = equi_normalize(canon, n_layers, max_sweeps, tol)
        canon = sort_units(canon, n_layers)
    removed = tuple(w - canon[f"W{l}"].shape[0] for l, w in enumerate(widths_in, start=1))
    return Canonical(net.fitted(canon), canon, removed, sweeps, converged)


def balanced_linear(params: Params, n_layers: int) -> Params:
    """Eq. 5: the balanced rank-``r`` factorisation of ``P = W_L⋯W_1`` (at least one unit)."""
    product = params["W1"]
    for l in range(2, n_layers + 1):
        product = params[f"W{l}"] @ product
    u, s, vh = torch.linalg.svd(product, full_matrices=False)
    rank = max(1, int((s > RANK_TOL * float(s[0])).sum()) if float(s[0]) > 0 else 1)
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    if float(s[0]) == 0.0:
        s = torch.zeros_like(s)
    # sign convention: the largest-|·| entry of each right singular vector is positive
    lead = vh.gather(1, vh.abs().argmax(dim=1, keepdim=True)).squeeze(1)
    sign = torch.where(lead < 0, -1.0, 1.0).to(DTYPE)
    u, vh = u * sign, vh * sign[:, None]
    root = s ** (1.0 / n_layers)
    canon = {"W1": root[:, None] * vh}
    for l in range(2, n_layers):
        canon[f"W{l}"] = torch.diag(root)
    canon[f"W{n_layers}"] = u * root
    return canon


def _drop_units(params: Params, layer: int, keep: torch.Tensor) -> Params:
    out = dict(params)
    out[f"W{layer}"] = params[f"W{layer}"][keep]
    if f"b{layer}" in params:
        out[f"b{layer}"] = params[f"b{layer}"][keep]
    out[f"W{layer + 1}"] = params[f"W{layer + 1}"][:, keep]
    return out


def _zero_unit(params: Params, layer: int) -> Params:
    """A layer with every unit removed keeps one zero unit (σ(0) = 0 contributes nothing)."""
    out = dict(params)
    out[f"W{layer}"] = torch.zeros(1, params[f"W{layer}"].shape[1], dtype=DTYPE)
    if f"b{layer}" in params:
        out[f"b{layer}"] = torch.zeros(1, dtype=DTYPE)
    out[f"W{layer + 1}"] = torch.zeros(params[f"W{layer + 1}"].shape[0], 1, dtype=DTYPE)
    return out


def _fold_constant_units(net: Net, params: Params, layer: int) -> Params:
    """Units with zero incoming weights output σ(b_i) for every input: move
    ``W_{l+1}[:, i] σ(b_i)`` into ``b_{l+1}`` (a bias-free net has σ(0) = 0 there) and drop them."""
    constant = (params[f"W{layer}"] == 0).all(dim=1)
    if not bool(constant.any()):
        return params
    out = dict(params)
    if f"b{layer}" in params and f"b{layer + 1}" in params:
        value = ACTIVATIONS[net.activation](params[f"b{layer}"][constant])
        out[f"b{layer + 1}"] = params[f"b{layer + 1}"] + params[f"W{layer + 1}"][:, constant] @ value
    return _drop_units(out, layer, ~constant)


def _merge_layer(net: Net, params: Params, layer: int) -> Params:
    """Eq. 4 on hidden ``layer``: normalise rows (homogeneous σ), merge equal rows, drop zero sums."""
    w, w_next = params[f"W{layer}"], params[f"W{layer + 1}"]
    rows = torch.cat([w, params[f"b{layer}"][:, None]], dim=1) if f"b{layer}" in params else w
    if homogeneous(net.activation):  # eq. 1 with d_i = 1/‖row_i‖ (rows are non-zero here)
        norms = rows.norm(dim=1)
        rows, w_next = rows / norms[:, None], w_next * norms
    groups: list[list[int]] = []
    for i in range(rows.shape[0]):
        for group in groups:
            ref = rows[group[0]]
            if float((rows[i] - ref).norm()) <= MERGE_TOL * max(float(ref.norm()), 1e-300):
                group.append(i)
                break
        else:
            groups.append([i])
    keep_rows, keep_cols = [], []
    for group in groups:
        col = w_next[:, group].sum(dim=1)
        parts = float(w_next[:, group].norm(dim=0).sum())
        if float(col.norm()) > MERGE_TOL * parts:
            keep_rows.append(rows[group[0]])
            keep_cols.append(col)
    if not keep_rows:
        return _zero_unit(params, layer)
    out = dict(params)
    stacked = torch.stack(keep_rows)
    if f"b{layer}" in params:
        out[f"W{layer}"], out[f"b{layer}"] = stacked[:, :-1].contiguous(), stacked[:, -1].contiguous()
    else:
        out[f"W{layer}"] = stacked
    out[f"W{layer + 1}"] = torch.stack(keep_cols, dim=1)
    return out


def remove_redundant_units(net: Net, params: Params) -> Params:
    """(b) on every hidden layer, repeated until no layer changes (dropping a unit of layer
    ``l+1`` can leave a unit of layer ``l`` with zero outgoing weights)."""
    n_layers = net.n_layers
    while True:
        before = [params[f"W{l}"].shape[0] for l in range(1, n_layers)]
        for layer in range(1, n_layers):
            params = _fold_constant_units(net, params, layer)
            if params[f"W{layer}"].shape[0] == 0:
                params = _zero_unit(params, layer)
                continue
            if params[f"W{layer}"].shape[0] == 1 and not bool(params[f"W{layer}"].any()):
                continue  # the zero unit of an emptied layer
            params = _merge_layer(net, params, layer)
        if [params[f"W{l}"].shape[0] for l in range(1, n_layers)] == before:
            return params


def equi_normalize(
    params: Params, n_layers: int, max_sweeps: int = 10_000, tol: float = 1e-13
) -> tuple[Params, int, bool]:
    """Eqs. 2-3, layer by layer, until every scale of a pass satisfies ``|log d_i| ≤ tol``.

    Returns the parameters, the number of passes and whether they converged. Units with zero
    incoming or outgoing weights (an emptied layer's zero unit) keep ``d_i = 1``.
    """
    params = dict(params)
    for sweep in range(1, max_sweeps + 1):
        largest = 0.0
        for l in range(1, n_layers):
            incoming = (params[f"W{l}"] ** 2).sum(dim=1)
            if f"b{l}" in params:
                incoming = incoming + params[f"b{l}"] ** 2
            outgoing = (params[f"W{l + 1}"] ** 2).sum(dim=0)
            live = (incoming > 0) & (outgoing > 0)
            log_d = torch.zeros_like(incoming)
            log_d[live] = 0.25 * (torch.log(outgoing[live]) - torch.log(incoming[live]))
            d = torch.exp(log_d)
            params[f"W{l}"] = params[f"W{l}"] * d[:, None]
            if f"b{l}" in params:
                params[f"b{l}"] = params[f"b{l}"] * d
            params[f"W{l + 1}"] = params[f"W{l + 1}"] / d
            largest = max(largest, float(log_d.abs().max()))
        if largest <= tol:
            return params, sweep, True
    return params, max_sweeps, False


def sort_units(params: Params, n_layers: int, digits: int = 8) -> Params:
    """(d): units of each hidden layer in lexicographic order of their unit-norm incoming row
    (weights then bias), rounded to ``digits`` so that rounding noise cannot reorder them."""
    params = dict(params)
    for l in range(1, n_layers):
        rows = params[f"W{l}"]
        if f"b{l}" in params:
            rows = torch.cat([rows, params[f"b{l}"][:, None]], dim=1)
        unit = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-300)
        keys = [tuple(round(float(v), digits) for v in row) for row in unit]
        order = torch.tensor(sorted(range(len(keys)), key=keys.__getitem__), dtype=torch.long)
        params = _drop_units(params, l, order)
    return params


def layer_sq_norms(params: Params) -> dict[str, float]:
    """``‖W_l‖² + ‖b_l‖²`` per layer ``l`` (keys ``layer1``, …)."""
    out: dict[str, float] = {}
    for key, value in params.items():
        name = f"layer{key[1:]}"
        out[name] = out.get(name, 0.0) + float((value**2).sum())
    return dict(sorted(out.items(), key=lambda kv: int(kv[0][5:])))


def gauge_excess(params: Params, canon: Params) -> dict[str, float]:
    """``‖θ_l‖² − ‖canon θ_l‖²`` per layer and in ``total`` (the excess a gauge or redundant units
    add over the canonical form; ≥ 0 in total for two-layer nets, layers may trade)."""
    before, after = layer_sq_norms(params), layer_sq_norms(canon)
    excess = {name: before[name] - after.get(name, 0.0) for name in before}
    excess["total"] = sum(before.values()) - sum(after.values())
    return excess


def function_residual(net: Net, params: Params, canonical: Canonical, x: torch.Tensor) -> float:
    """``max |f_canon(x) − f_θ(x)|`` over the rows of ``x``."""
    with torch.no_grad():
        return float((canonical.net.forward(canonical.params, x) - net.fitted(params).forward(params, x)).abs().max())
