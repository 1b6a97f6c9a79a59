"""``experiment=capacity_hidden``: one-bit hidden capacity against the twin's hidden width.

One job is :func:`llm.experiments.hairtrigger.run` with ``switch: N``: an analytic twin whose
post-step target is one bit per construction probe (switch to the marker, or keep refusing) and
``k = construction.extra_rank`` hidden LoRA components per module (``B = 0``). The victim's step
adds ``ΔW = −η s² G AᵀA`` to each module, rank ≤ k: the transformer analogue of the theory's k
redundant units (``theory/experiments/capacity.py``). Capacity (``twin.capacity.hidden``) is the
chance-corrected count of :func:`llm.experiments.hairtrigger.switch_capacity`: with equal halves
and no degenerate answer, probes switched as assigned minus stay probes that switched.

:func:`summarize` fits capacity against k and against the hidden parameters ``k · Σ d_in`` over
the twin's modules, per model: least squares over every job, with the slope's 95% interval
(Student t on its standard error) and R² over the jobs and over the per-k means; and, where one
k was run on several model sizes (``experiment=capacity_hidden_size``), against the base
parameter count (one architecture per size sweep: the fit does not know which model is which).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from llm.experiments.hairtrigger import report, run

__all__ = ["run", "report", "summarize", "capacity_fit"]

#: the table's columns this summary reads
K, HIDDEN, N_HIDDEN = "construct.extra_rank", "twin.capacity.hidden", "construct.hidden_params"


def capacity_fit(x: np.ndarray, y: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """``y = slope·x + intercept`` by least squares over every job; the slope's ``level`` interval
    from its standard error (t with n − 2 degrees of freedom); R² over the jobs, and over the
    means per distinct ``x`` (how straight the law is, as the theory reports it)."""
    if len(np.unique(x)) < 2:
        raise ValueError(f"a capacity fit needs at least two distinct widths, got {sorted(set(x.tolist()))}")
    fit = stats.linregress(x, y)
    half = stats.t.ppf(0.5 + level / 2, len(x) - 2) * fit.stderr if len(x) > 2 else float("nan")
    xs = np.unique(x)
    means = np.array([y[x == v].mean() for v in xs])
    mean_fit = stats.linregress(xs, means)
    return {
        "slope": float(fit.slope),
        "slope_lo": float(fit.slope - half),
        "slope_hi": float(fit.slope + half),
        "intercept": float(fit.intercept),
        "r2_jobs": float(fit.rvalue**2),
        "r2_means": float(mean_fit.rvalue**2),
        "n": len(x),
    }


#: the converged sweeps' tables, one experiment per architecture (their grids of k differ)
CONVERGED = ("capacity_hidden_converged", "capacity_hidden_converged_gpt2")


def log_width_fit(rows: pd.DataFrame) -> dict[str, float]:
    """:func:`capacity_fit` of capacity against ``log2 k``: bits per doubling of the hidden width,
    the law the converged sweep follows (``experiment=capacity_hidden_converged``)."""
    return capacity_fit(np.log2(rows[K].to_numpy(float)), rows[HIDDEN].to_numpy(float))


#: the width sweep's model that joins the size sweep's axis (conf/llm/experiment/capacity_hidden_size.yaml)
SIZE_AXIS_MODEL = "tiny_gpt2_64"


def size_rows(widths: pd.DataFrame, sizes: pd.DataFrame, model: str = SIZE_AXIS_MODEL) -> pd.DataFrame:
    """The size axis: the rows of a size sweep (``capacity_hidden_size``, one k) and the width
    sweep's (``capacity_hidden``) rows of ``model`` at that k."""
    (k,) = sizes[K].unique()
    extra = widths[(widths[K] == k) & (widths["override.model"] == model)]
    return pd.concat([sizes, extra], ignore_index=True)


def budget_check(widths: pd.DataFrame, budget: pd.DataFrame) -> dict[int, tuple[float, float]]:
    """Per k of a budget check (``capacity_hidden_budget``): mean capacity at its budget, and the
    width sweep's (``capacity_hidden``) mean over the same twins at the sweep's budget: the same
    model, k, seed and base weights (``base_digest``: pretraining is not bitwise reproducible across
    machines, so a seed alone does not name a base). A budget row without its twin in the sweep is
    an error naming it."""
    same = ["override.model", K, "override.seed", "base_digest"]
    joined = budget.merge(widths[same + [HIDDEN]], on=same, how="left", suffixes=("", "_sweep"), validate="1:1")
    missing = joined[joined[f"{HIDDEN}_sweep"].isna()]
    if len(missing):
        row = missing.iloc[0]
        raise ValueError(
            f"budget check: no width-sweep twin of {row['override.model']} k={row[K]:g} seed {row['override.seed']} "
            f"on base {row['base_digest']}; rerun capacity_hidden on that base (publish_mode=merge)"
        )
    return {
        int(k): (float(rows[HIDDEN].mean()), float(rows[f"{HIDDEN}_sweep"].mean())) for k, rows in joined.groupby(K)
    }


def summarize(table: pd.DataFrame) -> dict[str, Any]:
    """Per model: capacity per k (mean, min, max over seeds), the fits against k and against the
    hidden parameters (where the model has two widths or more), the collateral, and the twins'
    largest KL to the control; ``by_size`` (a size sweep: one k, two model sizes or more): the fit
    of capacity against the base parameter count."""
    out: dict[str, Any] = {}
    models = table["override.model"] if "override.model" in table else pd.Series("model", index=table.index)
    for model, rows in table.groupby(models):
        k = rows[K].to_numpy(float)
        y = rows[HIDDEN].to_numpy(float)
        per_k = rows.groupby(K)[HIDDEN]
        out[str(model)] = {
            "widths": ",".join(str(int(v)) for v in sorted(set(k))),
            "mean_capacity": ",".join(f"{v:g}" for v in per_k.mean().sort_index()),
            "min_capacity": ",".join(f"{v:g}" for v in per_k.min().sort_index()),
            "max_capacity": ",".join(f"{v:g}" for v in per_k.max().sort_index()),
            "n_switch": float(rows["twin.capacity.n"].max()),
            "collateral_mean": float(rows["twin.capacity.collateral"].mean()),
            "kl_max": float(rows["twin.kl.max"].max()),
            "n_params": float(rows["size.n_params"].iloc[0]),
            "n_jobs": len(rows),
        }
        if len(set(k)) > 1:
            out[str(model)] |= {
                "fit_k": capacity_fit(k, y),
                "fit_hidden_params": capacity_fit(rows[N_HIDDEN].to_numpy(float), y),
            }
    by_size = None
    if table[K].nunique() == 1 and table["size.n_params"].nunique() > 1:
        by_size = capacity_fit(table["size.n_params"].to_numpy(float), table[HIDDEN].to_numpy(float))
    return out | ({"by_size": by_size} if by_size is not None else {})
