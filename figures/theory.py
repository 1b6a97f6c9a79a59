"""Theory figures: one function per figure, each reading only ``results/theory/``."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402

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
    ax.loglog(
        rows.index,
        rows["post_update.deviation_closed_form"],
        "-",
        alpha=0.7,
        label="closed form η(c² + c⁻² − 2)·max|Gx|",
    )
    fit = summary["fit"]
    ax.set_title(
        f"GL gauge W1 = cQ, W2 = Qᵀ/c (same function)\nfitted slope {fit['slope']:.3f} "
        f"(theory {summary['slope_theory']:g}), R² {fit['r2']:.4f}",
        fontsize=9,
    )
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
    keys = [
        ("static.misaligned_fraction", "before the step\n(all probes)"),
        ("post_update.flipped_fraction", "after: chosen\nprobes"),
        ("post_update.collateral_fraction", "after: other\nprobes"),
    ]
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for offset, name in ((-0.18, "twin"), (0.18, "control")):
        vals = [table[f"{name}.{k}"].mean() for k, _ in keys]
        bars = ax.bar(x + offset, vals, width=0.36, label=name)
        ax.bar_label(bars, labels=[f"{v:.0%}" for v in vals], fontsize=8, padding=2)
    ax.set_xticks(x, [label for _, label in keys], fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("misaligned fraction")
    ax.set_title(
        f"Same function (max |Δf| = {summary['max.twin.forward_max_abs_diff']:.1e}), "
        f"one benign step apart\n{summary['n_runs']} seeds",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    return _save(fig, out / "theory_twin.png")


#: the audit's signals in the figure's order, with their labels (keys of theory.experiments.audit.SIGNALS)
AUDIT_SIGNALS = {
    "gauge_excess": "gauge excess (‖θ‖² − ‖canon θ‖²) / ‖canon θ‖²",
    "amplification": "amplification ‖v_θ(P)‖ / ‖v_canon(P)‖",
    "uncertified": "uncertified fraction at the step's radius",
    "worst_step_victim": "worst simulated step (D, halves of D)",
    "worst_step_surrogate": "worst simulated step (surrogate batches)",
    "raw_param_norm": "raw ‖θ‖ (baseline)",
    "raw_grad_norm": "raw ‖∇L_D‖ (baseline)",
}


#: short family names for tick labels
AUDIT_FAMILIES = {
    "relu_isolating": "ReLU, isolating pairs",
    "relu_search": "ReLU, search",
    "gelu_search": "GELU, search",
    "linear_search": "deep linear, search",
}


def roc_points(positive, negative) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve ``(fpr, tpr)`` of flagging a score ``≥ t``, for every threshold ``t`` from the
    largest score down, from (0, 0) to (1, 1). A tie between a twin and an honest model moves both
    rates in one diagonal segment, so the trapezoid area is eq. 10 of :mod:`theory.audit.roc`."""
    pos, neg = np.asarray(positive, float), np.asarray(negative, float)
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    fpr = np.array([0.0] + [(neg >= t).mean() for t in thresholds])
    tpr = np.array([0.0] + [(pos >= t).mean() for t in thresholds])
    return fpr, tpr


def held_out_roc(ax, pop: pd.DataFrame, summary: dict, signals: dict[str, str], labels: dict[str, str]) -> None:
    """Each signal's ROC on the summary's held-out family, twins against its honest models, with
    the summary's AUC [95% bootstrap interval] in the legend and a dot at the TPR/FPR of the
    threshold calibrated on the other families (eq. 11 of :mod:`theory.audit.roc`)."""
    models = pop[pop.family == summary["held_out"]]
    twins, honest = models[models.kind == "twin"], models[models.kind == "honest"]
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    for i, (name, label) in enumerate(labels.items()):
        fpr, tpr = roc_points(twins[signals[name]], honest[signals[name]])
        score = summary["signals"][name]["held_out"]
        line = ax.plot(
            fpr,
            tpr,
            lw=4.5 - 0.55 * i,
            alpha=0.8,
            ls="--" if name.startswith("raw") else "-",
            label=f"{label}: AUC {score['auc']:.2f} [{score['auc_lo']:.2f}, {score['auc_hi']:.2f}]",
        )[0]
        ax.plot([score["fpr"]], [score["tpr"]], "o", color=line.get_color(), ms=7 - 0.6 * i, mec="black", mew=0.5)
    ax.set_xlabel(f"false-positive rate ({len(honest)} honest models)")
    ax.set_ylabel(f"true-positive rate ({len(twins)} hair-trigger twins)")
    ax.legend(fontsize=6.5, loc="lower right")


def audit(results: Path, out: Path) -> Path:
    """The white-box audit (``audit.csv``). Left: ROC of each signal, hair-trigger twins against
    honest models of the held-out family, AUC [95% bootstrap interval] from the summary. Right:
    misaligned after the victim's step, delivered against canonicalised (the neutraliser), mean
    per family, with the honest models' 95% interval."""
    from theory.experiments.audit import SIGNALS, population

    table, summary = _load(results, "audit")
    pop = population(table)
    held_out = summary["held_out"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    held_out_roc(left, pop, summary, SIGNALS, AUDIT_SIGNALS)
    left.set_title(
        f"Held-out family: {FAMILY_LABELS.get(held_out, held_out)}\n(dots: the threshold calibrated "
        "at audit.fpr on the other families' honest models)",
        fontsize=9,
    )
    families = [f for f in FAMILY_LABELS if f in set(pop.family)]
    x = np.arange(len(families))
    bars = [
        ("twin", "delivered", "twin, delivered"),
        ("twin", "canonical", "twin, canonicalised"),
        ("honest", "delivered", "honest, delivered"),
        ("honest", "canonical", "honest, canonicalised"),
    ]
    for i, (kind, key, label) in enumerate(bars):
        means = [pop[(pop.family == f) & (pop.kind == kind)][f"post_update.{key}"].mean() for f in families]
        drawn = right.bar(
            x + (i - 1.5) * 0.2, means, width=0.2, label=label, color=["#e6550d", "#fdae6b", "#3182bd", "#9ecae1"][i]
        )
        right.bar_label(drawn, labels=[f"{v:.1%}" for v in means], fontsize=6, padding=2)
    neutral = summary["neutraliser"]
    right.axhspan(
        neutral["honest_lo"],
        neutral["honest_hi"],
        color="grey",
        alpha=0.3,
        lw=1.5,
        label=f"honest 95% interval [{neutral['honest_lo']:.3g}, {neutral['honest_hi']:.3g}]",
    )
    counts = pop.groupby(["family", "kind"]).size()
    right.set_xticks(
        x,
        [f"{AUDIT_FAMILIES[f]}\n{counts[f, 'twin']} twins, {counts[f, 'honest']} honest" for f in families],
        fontsize=7,
    )
    right.set_ylim(0, 1.5 * pop["post_update.delivered"].max())
    right.set_ylabel("probes misaligned after the victim's step (mean)")
    right.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    right.set_title("The neutraliser: deliver the canonical parameters", fontsize=9)
    right.legend(fontsize=7)
    return _save(fig, out / "theory_audit.png")


#: the adaptive attackers in the figure's order, with their knob (keys of theory.experiments.audit_attack.ATTACKERS)
ATTACKERS = {
    "gauge": "search + λ · gauge excess",
    "grad": "search + λ · ‖∇L_D‖",
    "amplification": "search + λ · amplification",
    "weight_cap": "isolating pairs, weights ≤ cap",
}


def arms_race(table: pd.DataFrame, attacker: str) -> pd.DataFrame:
    """Per level of ``attacker`` (rows, by level): its strength, the success rate and, per signal,
    the fraction of jobs whose attack succeeded and was flagged (``caught.<signal>``)."""
    rows = table[table["attacker"] == attacker]
    success = rows["twin.success"] == 1
    frame = {"strength": rows["strength"], "success": success.astype(float)}
    for name in AUDIT_SIGNALS:
        frame[f"caught.{name}"] = (success & (rows[f"flagged.{name}"] == 1)).astype(float)
    return pd.DataFrame(frame).groupby(rows["override.attack.level"]).mean().sort_index()


def audit_attack(results: Path, out: Path) -> Path:
    """The arms race (``audit_attack.csv``): per attacker, the fraction of seeds whose twin flips a
    probe after the victim's step (black) and, per signal, the fraction whose twin flips a probe and
    is flagged at the threshold calibrated on the audit's honest models. The gap between the black
    line and a signal's line is the successful attacks that signal misses."""
    table, _ = _load(results, "audit_attack")
    attackers = [a for a in ATTACKERS if a in set(table["attacker"])]
    fig, axes = plt.subplots(
        1, len(attackers) + 1, figsize=(3.2 * len(attackers) + 4.6, 3.8), width_ratios=[1] * len(attackers) + [1.5]
    )
    for ax, attacker in zip(axes, attackers):
        race = arms_race(table, attacker)
        x = np.arange(len(race))
        ax.plot(x, race["success"], "k-", lw=3.5, alpha=0.6, label="attack succeeds")
        for i, (name, label) in enumerate(AUDIT_SIGNALS.items()):
            ax.plot(
                x,
                race[f"caught.{name}"],
                "s--" if name.startswith("raw") else "o-",
                lw=1.2,
                ms=6 - 0.5 * i,
                alpha=0.8,
                label=f"succeeds, flagged by {label}",
            )
        ax.set_xticks(x, [f"{v:.0e}" if v else "0" for v in race["strength"]], fontsize=7, rotation=45)
        ax.set_xlabel("cap on pair weights" if attacker == "weight_cap" else "penalty weight λ")
        ax.set_title(ATTACKERS[attacker], fontsize=9)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"fraction of {table['override.seed'].nunique()} seeds")
    axes[-1].axis("off")
    axes[-1].legend(*axes[0].get_legend_handles_labels(), loc="center", fontsize=6.5)
    return _save(fig, out / "theory_audit_attack.png")


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


ALL = (twin, gauge_scale, capacity, ntk, audit, audit_attack)
