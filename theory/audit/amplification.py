"""Update amplification: how fast one benign gradient step moves the probes, per unit learning rate.

To first order the victim's step ``θ' = θ − η ∇L_D(θ)`` moves the output at a probe ``x`` by

    f_θ'(x) − f_θ(x) ≈ −η J_θ(x) J_θ(D)ᵀ r_D = −η J_θ(x) ∇L_D(θ)                         (eq. 6)

(:func:`theory.update.ntk_prediction`). ``v(x) = J_θ(x) ∇L_D(θ)`` is the empirical NTK between
the probe and the update set applied to the residuals: the probe *velocity*. It is a directional
derivative, computed with one ``torch.func.jvp``. Orthogonal gauges leave it unchanged (the step
commutes with them); rescalings, GL changes and redundant units do not. The signal is

    amplification = ‖v_θ(P)‖_F / ‖v_canon θ(P)‖_F                                          (eq. 7)

over the probe set ``P``, as delivered against canonical (:mod:`theory.audit.canonical`).
"""

from __future__ import annotations

from typing import cast

import torch
from torch.func import jvp

from theory.models import Net, Params
from theory.update import Loss, gradient


def probe_velocity(
    net: Net, params: Params, x_update: torch.Tensor, y_update: torch.Tensor, loss: Loss, probes: torch.Tensor
) -> torch.Tensor:
    """Eq. 6: ``J_θ(probes) ∇L_D(θ)``, shape ``(n_probes, d_out)``; the step moves the outputs by
    ``−η`` times it to first order."""
    net = net.fitted(params)
    g = gradient(net, params, x_update, y_update, loss)
    _, velocity = cast(tuple[torch.Tensor, torch.Tensor], jvp(lambda p: net.forward(p, probes), (params,), (g,)))
    return velocity.detach()


def amplification(delivered: torch.Tensor, canonical: torch.Tensor) -> float:
    """Eq. 7: the ratio of the probe velocities' Frobenius norms (``inf`` if only the canonical
    one vanishes, 1 if both do)."""
    num, den = float(delivered.norm()), float(canonical.norm())
    if den == 0.0:
        return 1.0 if num == 0.0 else float("inf")
    return num / den
