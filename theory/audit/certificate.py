"""A sound certificate: how far ANY parameter step of norm ≤ ρ can move each probe's margin.

Two-layer net ``f(x) = W2 σ(a) + b2``, ``a = W1 x + b1``; forbidden margin
``m = min_{c≠f} m_c``, ``m_c = (e_f − e_c)·f(x)``. Take any step ``Δ = (ΔW1, Δb1, ΔW2, Δb2)`` with
``‖Δ‖ ≤ ρ``, split as ``α = ‖(ΔW1, Δb1)‖``, ``β = ‖(ΔW2, Δb2)‖`` (``α² + β² ≤ ρ²``). Write
``x̃ = (x, 1)`` and ``h̃ = (σ(a), 1)`` (without the 1 for a bias-free net), ``e = e_f − e_c``,
``w = W2ᵀ e``. Then

    Δm_c = eᵀW2 Δh + eᵀ(ΔW2 h + Δb2) + eᵀ ΔW2 Δh,   Δh = σ(a + Δa) − σ(a),  Δa_k = (ΔW1, Δb1)_k · x̃.

* ``|Δa_k| ≤ ‖(ΔW1, Δb1)_k‖ ‖x̃‖ ≤ ρ‖x̃‖``, so ``|Δh_k| ≤ L_k |Δa_k|`` with ``L_k`` the Lipschitz
  constant of σ on ``[a_k − ρ‖x̃‖, a_k + ρ‖x̃‖]`` (:func:`lipschitz_on_interval`; a ReLU unit
  that stays inactive on the whole interval has ``L_k = 0``, one that may flip has 1).
* ``|eᵀW2 Δh| ≤ ‖x̃‖ Σ_k |w_k| L_k ‖(ΔW1, Δb1)_k‖ ≤ A_c α``, ``A_c = ‖x̃‖ ‖(L_k w_k)_k‖`` (Cauchy–Schwarz).
* ``|eᵀ(ΔW2 h + Δb2)| ≤ (‖M_f‖ + ‖M_c‖) ‖h̃‖ ≤ B β``, ``B = √2 ‖h̃‖``, with ``M = (ΔW2, Δb2)``.
* ``|eᵀ ΔW2 Δh| ≤ √2 β ‖Δh‖ ≤ √2 L_max ‖x̃‖ α β``.

With ``A α + B β ≤ ρ √(A² + B²)`` and ``αβ ≤ ρ²/2``:

    |Δm| ≤ max_c |Δm_c| ≤ max_c ρ √(A_c² + B²) + ½ K ρ²,   K = √2 L_max ‖x̃‖.            (eq. 8)

Eq. 8 has the form ``‖∇_θ m‖ ρ + ½ K ρ²``: for σ linear, ``√(A_c² + B²)`` is exactly
``‖∇_θ m_c‖``; for ReLU it also counts the units whose gate the step could flip, which is what
makes it sound at the non-smooth points. It holds for any σ with a known Lipschitz constant
on each interval. A probe is **certified** when ``m + bound < 0``: no step in the ball makes it
misaligned. ``min`` over classes is 1-Lipschitz in the sup norm, so eq. 8 bounds ``|Δm|`` itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from theory.models import ACTIVATIONS, Net, Params
from theory.task import drop_class, margin

_SQRT2 = math.sqrt(2.0)
#: float64 slack added to every Lipschitz constant (σ' is evaluated, not proved, at the endpoints)
_SLACK = 1e-12


def _gelu_slope(z: torch.Tensor) -> torch.Tensor:
    """GELU'(z) = Φ(z) + z φ(z)."""
    phi = torch.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    return 0.5 * (1.0 + torch.erf(z / _SQRT2)) + z * phi


def lipschitz_on_interval(activation: str, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``sup_{z∈[lo, hi]} |σ'(z)|``, elementwise (a sound Lipschitz constant of σ on the interval).

    ReLU: 0 if ``hi ≤ 0`` else 1. Leaky ReLU (slope 0.1): 0.1 if ``hi ≤ 0`` else 1. Linear: 1.
    GELU: GELU'' = φ(z)(2 − z²) vanishes only at ±√2, so |GELU'| is largest at an endpoint or at
    a critical point inside the interval (GELU'(√2) ≈ 1.129, GELU'(−√2) ≈ −0.129).
    """
    if activation == "linear":
        return torch.ones_like(lo)
    if activation == "relu":
        return (hi > 0).to(lo.dtype)
    if activation == "leaky_relu":
        return torch.where(hi > 0, 1.0, 0.1).to(lo.dtype)
    if activation == "gelu":
        best = torch.maximum(_gelu_slope(lo).abs(), _gelu_slope(hi).abs())
        for crit in (_SQRT2, -_SQRT2):
            inside = (lo <= crit) & (crit <= hi)
            value = float(_gelu_slope(torch.tensor(crit, dtype=lo.dtype)).abs())
            best = torch.where(inside, torch.clamp(best, min=value), best)
        return best + _SLACK
    raise ValueError(f"no Lipschitz bound for activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")


@dataclass(frozen=True)
class Certificate:
    """Per probe: ``margin`` m(θ), ``bound`` on |Δm| over the ball (eq. 8), ``slope`` its linear
    coefficient ``max_c √(A_c² + B²)``, ``curvature`` K; ``certified`` = ``margin + bound < 0``."""

    rho: float
    margin: torch.Tensor
    bound: torch.Tensor
    slope: torch.Tensor
    curvature: torch.Tensor

    @property
    def certified(self) -> torch.Tensor:
        return self.margin + self.bound < 0

    @property
    def certified_fraction(self) -> float:
        return float(self.certified.double().mean())


def margin_certificate(net: Net, params: Params, probes: torch.Tensor, forbidden: int, rho: float) -> Certificate:
    """Eq. 8 for every probe of a two-layer net (any activation of :data:`ACTIVATIONS`)."""
    net = net.fitted(params)
    if net.n_layers != 2:
        raise ValueError(f"certificate: eq. 8 is derived for two-layer nets, got {net.n_layers} layers")
    if not (rho >= 0 and math.isfinite(rho)):
        raise ValueError(f"certificate: radius must be finite and ≥ 0, got {rho}")
    w1, w2 = params["W1"], params["W2"]
    bias = "b1" in params
    with torch.no_grad():
        x_tilde = torch.cat([probes, torch.ones(len(probes), 1, dtype=probes.dtype)], 1) if bias else probes
        pre = probes @ w1.T + (params["b1"] if bias else 0.0)  # (n, h)
        h = ACTIVATIONS[net.activation](pre)
        h_tilde = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], 1) if bias else h
        radius = rho * x_tilde.norm(dim=1, keepdim=True)  # |Δa_k| ≤ ρ‖x̃‖
        lip = lipschitz_on_interval(net.activation, pre - radius, pre + radius)  # (n, h)
        e_rows = w2[forbidden] - drop_class(w2.T, forbidden).T  # (C−1, h): w = W2ᵀ(e_f − e_c)
        a_coef = x_tilde.norm(dim=1, keepdim=True) * torch.sqrt((lip**2) @ (e_rows.T**2))  # (n, C−1)
        b_coef = _SQRT2 * h_tilde.norm(dim=1, keepdim=True)  # (n, 1)
        slope = torch.sqrt(a_coef**2 + b_coef**2).max(dim=1).values
        curvature = _SQRT2 * lip.max(dim=1).values * x_tilde.norm(dim=1)
        bound = rho * slope + 0.5 * curvature * rho**2
        m = margin(net.forward(params, probes), forbidden)
    return Certificate(rho, m, bound, slope, curvature)
