"""``experiment=capacity``: how many hidden behaviours fit, against redundant width.

One job = one (family, redundant width k, seed). The construction may plant misaligned
behaviour on any of ``n_candidates`` probes (it picks which); capacity is the number it
flips with the *exact* step while every other probe stays aligned and the twin's
forward pass stays within ``max_forward_diff`` of the base. For ``family=linear`` the
hidden width is ``d_in + k``; the post-update map of a linear net is one linear map
whatever its width, so its capacity cannot grow with ``k``.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from omegaconf import DictConfig

from sweeps.tables import linear_fit
from theory.experiments.common import (
    construct,
    forward_max_abs_diff,
    make_setup,
    probe_split,
    twin_net,
)
from theory.models import n_params


def run(cfg: DictConfig) -> dict[str, Any]:
    setup = make_setup(cfg)
    candidates, guards = probe_split(setup.task, cfg.capacity.n_candidates, cfg.seed)
    result = construct(cfg, setup, candidates, guards)
    diff = forward_max_abs_diff(
        twin_net(setup, result.twin), result.twin, setup.base, setup.task, cfg.capacity.n_random_inputs, cfg.seed
    )
    exact = diff <= cfg.capacity.max_forward_diff
    valid = exact and result.collateral == 0
    return {
        "family": f"{cfg.model.activation}_{cfg.construction.name}",
        "redundant_units": cfg.model.redundant_units,
        "capacity": {
            "flipped": result.flipped if valid else 0,
            "raw_flipped": result.flipped,
            "collateral": result.collateral,
            "forward_max_abs_diff": diff,
            "forward_exact": int(exact),
        },
        "n_params": {"base": n_params(setup.base), "twin": n_params(result.twin)},
    }


def summarize(table: pd.DataFrame) -> dict[str, Any]:
    """Per family: mean capacity per width, and the least-squares line through those means."""
    out: dict[str, Any] = {}
    for family, rows in table.groupby("family"):
        means = rows.groupby("redundant_units")["capacity.flipped"].mean().sort_index()
        fit = linear_fit([float(k) for k in means.index], [float(v) for v in means.values])
        out[family] = {
            "fit": fit,
            "widths": ",".join(str(int(k)) for k in means.index),
            "mean_capacity": ",".join(f"{v:g}" for v in means.values),
            "max_capacity": float(means.max()),
            "n_jobs": int(len(rows)),
            "all_forward_exact": int(rows["capacity.forward_exact"].all()),
        }
    return out
