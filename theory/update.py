"""The victim's update: one exact full-batch gradient step, and its first-order prediction.

    θ' = θ − η ∇_θ L_D(θ)                                  (exact step)
    f_θ'(x) ≈ f_θ(x) − η J_θ(x) J_θ(D)ᵀ r_D                (empirical-NTK prediction)

``J_θ(D)ᵀ r_D = ∇_θ L_D`` for any loss whose output-gradient is ``r_D``, so the prediction
is the directional derivative of ``f(x; ·)`` at ``θ`` along ``−η ∇L_D``, computed with one
``torch.func.jvp``. The exact step is built with ``torch.func.grad`` and stays
differentiable, so constructions can optimise *through* it (second order).
"""

from __future__ import annotations

from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch.func import grad, jvp

from theory.models import Net, Params

Loss = Literal["cross_entropy", "square"]


def output_loss(out: torch.Tensor, y: torch.Tensor, loss: Loss) -> torch.Tensor:
    """Mean cross-entropy (``y`` class ids) or ``½ mean ‖out − y‖²`` (``y`` targets)."""
    if loss == "cross_entropy":
        return F.cross_entropy(out, y)
    if loss == "square":
        if y.shape != out.shape:  # a 1-D target would silently broadcast to (n, n)
            raise ValueError(
                f"square loss needs targets shaped like the outputs {tuple(out.shape)}, got {tuple(y.shape)}"
            )
        return 0.5 * ((out - y) ** 2).sum(dim=1).mean()
    raise ValueError(f"unknown loss {loss!r}; choose 'cross_entropy' or 'square'")


def loss_fn(net: Net, params: Params, x: torch.Tensor, y: torch.Tensor, loss: Loss) -> torch.Tensor:
    return output_loss(net.forward(params, x), y, loss)


def residuals(net: Net, params: Params, x: torch.Tensor, y: torch.Tensor, loss: Loss) -> torch.Tensor:
    """``r_i = ∂L/∂f(x_i)``, shape ``(n, d_out)`` (includes the 1/n of the mean)."""
    with torch.no_grad():
        out = net.forward(params, x)
    return grad(lambda z: output_loss(z, y, loss))(out)


def gradient(net: Net, params: Params, x: torch.Tensor, y: torch.Tensor, loss: Loss) -> Params:
    return grad(lambda p: loss_fn(net, p, x, y, loss))(params)


def gd_step(
    net: Net, params: Params, x: torch.Tensor, y: torch.Tensor, lr: float, loss: Loss, steps: int = 1
) -> Params:
    """``steps`` exact full-batch GD steps on ``(x, y)``; differentiable in ``params``."""
    for _ in range(steps):
        g = gradient(net, params, x, y, loss)
        params = {k: params[k] - lr * g[k] for k in params}
    return params


def ntk_prediction(
    net: Net, params: Params, x_update: torch.Tensor, y_update: torch.Tensor, lr: float, loss: Loss, x: torch.Tensor
) -> torch.Tensor:
    """First-order prediction ``f_θ(x) − η J(x) J(D)ᵀ r_D`` of the post-step outputs at ``x``."""
    g = gradient(net, params, x_update, y_update, loss)
    direction = {k: -lr * g[k] for k in params}
    out, change = cast(tuple[torch.Tensor, torch.Tensor], jvp(lambda p: net.forward(p, x), (params,), (direction,)))
    return out + change


def grad_norm(net: Net, params: Params, x: torch.Tensor, y: torch.Tensor, loss: Loss) -> float:
    g = gradient(net, params, x, y, loss)
    return float(torch.sqrt(cast(torch.Tensor, sum((v**2).sum() for v in g.values()))))
