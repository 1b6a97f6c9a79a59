"""``experiment=twin``: one hair-trigger twin against its base model and the honest control.

The control is the base model itself; the twin computes the same function (checked on
≥ 10,000 random inputs plus every probe and data point) but, after the same exact GD
step on the same benign set, is misaligned on the chosen probes.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig

from theory.experiments.common import (
    construct,
    forward_max_abs_diff,
    make_setup,
    misaligned,
    probe_split,
    twin_net,
)
from theory.models import n_params, param_norm
from theory.task import accuracy
from theory.update import gd_step, grad_norm


def run(cfg: DictConfig) -> dict[str, Any]:
    setup = make_setup(cfg)
    task, lr, loss = setup.task, cfg["update"].lr, cfg["update"].loss
    flip, keep = probe_split(task, cfg.twin.n_flip, cfg.seed)
    result = construct(cfg, setup, flip, keep)
    net = twin_net(setup, result.twin)
    control_post = gd_step(setup.net, setup.base, task.x_update, task.y_update, lr, loss, cfg["update"].steps)

    def report(name: str, model_net, before, after) -> dict[str, Any]:
        mis_before, mis_after = misaligned(model_net, before, task), misaligned(model_net, after, task)
        with torch.no_grad():
            acc_before = accuracy(model_net.forward(before, task.x_eval), task.y_eval)
            acc_after = accuracy(model_net.forward(after, task.x_eval), task.y_eval)
        return {
            "static.misaligned_fraction": float(mis_before.double().mean()),
            "post_update.flipped_fraction": float(mis_after[flip].double().mean()) if len(flip) else 0.0,
            "post_update.collateral_fraction": float(mis_after[keep].double().mean()) if len(keep) else 0.0,
            "post_update.misaligned_fraction": float(mis_after.double().mean()),
            "benign.accuracy_before": acc_before,
            "benign.accuracy_after": acc_after,
            "param_norm": param_norm(before),
            "update_grad_norm": grad_norm(model_net, before, task.x_update, task.y_update, loss),
            "n_params": n_params(before),
        }

    metrics = {
        "twin": {
            "forward_max_abs_diff": forward_max_abs_diff(
                net, result.twin, setup.base, task, cfg.twin.n_random_inputs, cfg.seed
            ),
            **report("twin", net, result.twin, result.post_update),
        },
        "control": report("control", setup.net, setup.base, control_post),
        "construction": {
            "name": cfg.construction.name,
            "success": int(result.success),
            "steps": result.steps,
            "n_flip": len(flip),
            "n_keep": len(keep),
        },
    }
    return metrics


def report(metrics: dict[str, Any]) -> str:
    """The before/after table ``make demo`` prints."""
    n_flip, n_keep = metrics["construction.n_flip"], metrics["construction.n_keep"]
    rows = [
        ("misaligned probes, before the step", "static.misaligned_fraction", n_flip + n_keep),
        ("chosen probes misaligned after one step", "post_update.flipped_fraction", n_flip),
        ("other probes misaligned after one step", "post_update.collateral_fraction", n_keep),
    ]
    lines = [f"{'':<42}{'control':>12}{'twin':>12}"]
    for label, key, n in rows:
        cells = [f"{round(metrics[f'{m}.{key}'] * n)}/{n}" for m in ("control", "twin")]
        lines.append(f"{label:<42}{cells[0]:>12}{cells[1]:>12}")
    for label, key in (
        ("benign accuracy before", "benign.accuracy_before"),
        ("benign accuracy after", "benign.accuracy_after"),
        ("parameter norm", "param_norm"),
        ("gradient norm on D", "update_grad_norm"),
    ):
        lines.append(f"{label:<42}{metrics[f'control.{key}']:>12.3g}{metrics[f'twin.{key}']:>12.3g}")
    lines.append(
        f"max |f_twin − f_control| before the step: {metrics['twin.forward_max_abs_diff']:.2e} "
        "(random inputs, probes, all data)"
    )
    return "\n".join(lines)


def summarize(table: pd.DataFrame) -> dict[str, Any]:
    cols = [
        "twin.forward_max_abs_diff",
        "twin.post_update.flipped_fraction",
        "twin.post_update.collateral_fraction",
        "control.post_update.flipped_fraction",
    ]
    return {
        "n_runs": len(table),
        **{f"mean.{c}": float(table[c].mean()) for c in cols},
        "max.twin.forward_max_abs_diff": float(table["twin.forward_max_abs_diff"].max()),
        "min.twin.post_update.flipped_fraction": float(table["twin.post_update.flipped_fraction"].min()),
    }
