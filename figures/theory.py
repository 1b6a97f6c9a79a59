"""Theory figures: one function per figure, each reading only ``results/theory/``."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

FAMILY_LABELS = {
    "relu_isolating": "ReLU MLP, closed-form isolating pairs",
    "relu_search": "ReLU MLP, gradient search in the fiber",
    "gelu_search": "GELU MLP, gradient search in the fiber",
    "linear_search": "deep linear net, gradient search (width d+k)",
}


def _load(results: Path, name: str) -> tuple[pd.DataFrame, dict]:
    table = pd.read_csv(results / f"{name}.csv")
    summary = json.loads((results / f"{name}_summary.json").read_text())
    return table, summary


def capacity(results: Path, out: Path) -> Path:
    table, summary = _load(results, "capacity")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for family, rows in table.groupby("family"):
        stats = rows.groupby("redundant_units")["capacity.flipped"].agg(["mean", "min", "max"]).sort_index()
        k = stats.index.to_numpy(dtype=float)
        fit = summary[family]["fit"]
        label = f"{FAMILY_LABELS.get(family, family)}: slope {fit['slope']:.3f}, R² {fit['r2']:.3f}"
        line = ax.plot(k, stats["mean"], "o-", label=label)[0]
        ax.fill_between(k, stats["min"], stats["max"], color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xlabel("redundant units k")
    ax.set_ylabel("probes flipped by one benign step\n(every other probe still aligned)")
    ax.set_title("Hidden behaviours one benign step can switch on, vs. redundant width", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    return _save(fig, out / "theory_capacity.png")


def gauge_scale(results: Path, out: Path) -> Path:
    table, summary = _load(results, "gauge_scale")
    rows = table.groupby("c")[["post_update.deviation", "post_update.deviation_closed_form"]].mean().sort_index()
    rows = rows[rows.index > 1]  # c = 1 is the control itself (deviation 0: nothing to draw on a log axis)
    fig, ax = plt.subplots(figsize=(5.4, 4.0))
    ax.loglog(rows.index, rows["post_update.deviation"], "o", label="exact step (measured)")
    ax.loglog(rows.index, rows["post_update.deviation_closed_form"], "-", alpha=0.7,
              label="closed form η(c² + c⁻² − 2)·max|Gx|")
    fit = summary["fit"]
    ax.set_title(f"GL gauge W1 = cQ, W2 = Qᵀ/c (same function)\nfitted slope {fit['slope']:.3f} "
                 f"(theory {summary['slope_theory']:g}), R² {fit['r2']:.4f}", fontsize=9)
    ax.set_xlabel("gauge scale c")
    ax.set_ylabel("max |f'_twin − f'_control| after one step")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, out / "theory_gauge_scale.png")


def ntk(results: Path, out: Path) -> Path:
    table, summary = _load(results, "ntk")
    rows = table.groupby("eval_lr")[["twin.rel_error", "control.rel_error"]].mean().sort_index()
    fig, ax = plt.subplots(figsize=(5.4, 4.0))
    for name in ("twin", "control"):
        ax.loglog(rows.index, rows[f"{name}.rel_error"].clip(lower=1e-16), "o-", label=name)
    ax.axhline(summary["threshold"], color="grey", ls="--", lw=1, label=f"breakdown ({summary['threshold']:g})")
    ax.set_xlabel("victim's learning rate η")
    ax.set_ylabel("‖f_exact − f_NTK‖ / ‖f_exact − f_θ‖ on probes")
    ax.set_title("First-order (empirical NTK) prediction vs. exact step", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, out / "theory_ntk.png")


def twin(results: Path, out: Path) -> Path:
    table, summary = _load(results, "twin")
    keys = [("static.misaligned_fraction", "before the step\n(all probes)"),
            ("post_update.flipped_fraction", "after: chosen\nprobes"),
            ("post_update.collateral_fraction", "after: other\nprobes")]
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for offset, name in ((-0.18, "twin"), (0.18, "control")):
        vals = [table[f"{name}.{k}"].mean() for k, _ in keys]
        bars = ax.bar(x + offset, vals, width=0.36, label=name)
        ax.bar_label(bars, labels=[f"{v:.0%}" for v in vals], fontsize=8, padding=2)
    ax.set_xticks(x, [label for _, label in keys], fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("misaligned fraction")
    ax.set_title(f"Same function (max |Δf| = {summary['max.twin.forward_max_abs_diff']:.1e}), "
                 f"one benign step apart\n{summary['n_runs']} seeds", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, out / "theory_twin.png")


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


ALL = (twin, gauge_scale, capacity, ntk)
