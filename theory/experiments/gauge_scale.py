"""``experiment=gauge_scale``: the post-update deviation of a GL gauge grows as c².

Two-layer linear net with ``W2·W1 = I`` (the paper's example): the control is
``W1 = W2 = I``, the twin ``W1 = cQ, W2 = Qᵀ/c`` (Q orthogonal, so c = 1 is the control's
own step). Both compute ``f(x) = x``. One exact square-loss GD step on a benign
regression set (``y = Tx``) gives, by the closed form
``P' = P − η(G W1ᵀW1 + W2W2ᵀG) + η² G W1ᵀW2ᵀG``,

    P'_twin − P'_control = −η (c² + c⁻² − 2) G,

so the deviation grows without bound, with log-log slope 2 for c ≫ 1.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from sweeps.tables import linear_fit
from theory.construct import two_layer_post_update
from theory.models import DTYPE, Net
from theory.update import gd_step


def run(cfg: DictConfig) -> dict[str, Any]:
    g, lr, d = cfg.gauge, cfg["update"].lr, cfg.gauge.d
    gen = torch.Generator().manual_seed(cfg.seed)
    teacher = torch.eye(d, dtype=DTYPE) + g.teacher_scale * torch.randn(d, d, generator=gen, dtype=DTYPE) / d**0.5
    x = torch.randn(g.n_update, d, generator=gen, dtype=DTYPE)
    y = x @ teacher.T
    x_test = torch.randn(g.n_test, d, generator=gen, dtype=DTYPE)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=DTYPE))
    q = q * torch.sign(torch.diagonal(r))

    net = Net((d, d, d), "linear", bias=False)
    control = {"W1": torch.eye(d, dtype=DTYPE), "W2": torch.eye(d, dtype=DTYPE)}
    twin = {"W1": g.c * q, "W2": q.T / g.c}
    post_twin = gd_step(net, twin, x, y, lr, "square")
    post_control = gd_step(net, control, x, y, lr, "square")
    with torch.no_grad():
        forward = float((net.forward(twin, x_test) - x_test).abs().max())
        deviation = float((net.forward(post_twin, x_test) - net.forward(post_control, x_test)).abs().max())
        residual_grad = (x - y).T @ x / g.n_update  # G = ∂L/∂P at P = I
        predicted = float((x_test @ (-lr * (g.c**2 + g.c**-2 - 2) * residual_grad).T).abs().max())
        closed = two_layer_post_update(twin["W1"], twin["W2"], residual_grad, lr)
        closed_err = float((closed - post_twin["W2"] @ post_twin["W1"]).abs().max())
    return {
        "c": float(g.c),
        "forward_max_abs_diff": forward,
        "post_update.deviation": deviation,
        "post_update.deviation_closed_form": predicted,
        "closed_form_max_abs_err": closed_err,
        "control.post_update.change": float((net.forward(post_control, x_test) - x_test).abs().max()),
    }


def summarize(table: pd.DataFrame) -> dict[str, Any]:
    """Log-log slope of deviation vs c over c ≥ 10 (theory: 2)."""
    rows = table[table["c"] >= 10].sort_values("c")
    moved = table[table["post_update.deviation_closed_form"] > 0]  # c = 1 is the control itself
    fit = linear_fit([math.log10(c) for c in rows["c"]], [math.log10(v) for v in rows["post_update.deviation"]])
    return {
        "fit": fit,
        "slope_theory": 2.0,
        "max_deviation": float(table["post_update.deviation"].max()),
        "max_forward_diff": float(table["forward_max_abs_diff"].max()),
        "max_rel_err_vs_closed_form": float(
            np.max(np.abs(moved["post_update.deviation"] / moved["post_update.deviation_closed_form"] - 1))
        ),
    }
