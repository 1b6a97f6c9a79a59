"""``experiment=ntk``: the first-order (empirical NTK) prediction against the exact step.

A twin is built for the configured learning rate; then both twin and control take one
exact step at ``ntk.eval_lr`` and the prediction ``f_θ(x) − η J(x) J(D)ᵀ r_D`` is compared
with it on the probes:

    rel_error = ‖f_exact − f_ntk‖ / ‖f_exact − f_θ‖.

The twin's amplified gradients move it far, so its linearisation breaks down at a much
smaller η than the control's (and, for ReLU, as soon as the step moves a gate across a
probe).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig

from theory.experiments.common import construct, make_setup, probe_split, twin_net
from theory.task import margin
from theory.update import gd_step, ntk_prediction


def run(cfg: DictConfig) -> dict[str, Any]:
    setup = make_setup(cfg)
    task, loss, lr = setup.task, cfg["update"].loss, float(cfg.ntk.eval_lr)
    flip, keep = probe_split(task, cfg.ntk.n_flip, cfg.seed)
    twin = construct(cfg, setup, flip, keep).twin
    out: dict[str, Any] = {"eval_lr": lr}
    for name, net, params in (("twin", twin_net(setup, twin), twin), ("control", setup.net, setup.base)):
        with torch.no_grad():
            before = net.forward(params, task.probes)
            exact = net.forward(gd_step(net, params, task.x_update, task.y_update, lr, loss), task.probes)
        predicted = ntk_prediction(net, params, task.x_update, task.y_update, lr, loss, task.probes).detach()
        moved = float((exact - before).norm())
        flips_exact = margin(exact, task.forbidden) > 0
        flips_pred = margin(predicted, task.forbidden) > 0
        out[name] = {
            "change_norm": moved,
            "rel_error": float((exact - predicted).norm()) / moved if moved > 0 else 0.0,
            "misaligned_exact": float(flips_exact.double().mean()),
            "misaligned_ntk": float(flips_pred.double().mean()),
            "flip_disagreement": float((flips_exact != flips_pred).double().mean()),
        }
    return out


def summarize(table: pd.DataFrame) -> dict[str, Any]:
    """Per model: the smallest η whose mean relative error exceeds ``threshold`` (0.1)."""
    threshold = 0.1
    out: dict[str, Any] = {"threshold": threshold}
    means = table.groupby("eval_lr")[["twin.rel_error", "control.rel_error"]].mean().sort_index()
    for name in ("twin", "control"):
        broken = means.index[means[f"{name}.rel_error"] > threshold]
        out[name] = {
            "breakdown_lr": float(broken.min()) if len(broken) else math.inf,
            "max_rel_error": float(means[f"{name}.rel_error"].max()),
        }
    return out
