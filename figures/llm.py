"""LLM figures: one function per figure, each reading only ``results/llm/``."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402
from scipy.stats import binomtest  # noqa: E402

from figures.theory import _load, _save, held_out_roc  # noqa: E402
from sweeps.tables import linear_fit  # noqa: E402

#: transfer cells in reading order, with their labels
CELLS = {
    "paper": "paper's step\n(SGD 1e-4, 1×)",
    "heldout_families": "unseen benign\nfamilies",
    "sharegpt": "unseen benign\n(ShareGPT)",
    "lr_1e-5": "lr 1e-5",
    "lr_1e-3": "lr 1e-3",
    "adam": "Adam",
    "steps_2": "2 steps",
    "steps_5": "5 steps",
    "all_weights": "all weights\n(merged)",
}
#: the analytic twins judged on held-out probes 0–99 and on the fresh probes 100–199 (result stems)
ANALYTIC_HALVES = ("analytic", "analytic_fresh")
#: the LLM domains in reading order
DOMAIN_ORDER = ("safety", "privacy", "honesty")
#: the SmolLM2 twin the paper reports (variant of ``hairtrigger_smollm2``); its row also gives SmolLM2's control
SMOLLM2_TWIN = "exact_steps40_hinge2"
#: where the controls figure and table read the honest controls: label → (result stems, variant or None).
#: Every twin table of the runner holds its control's rows (``control.static.*``, ``control.after.paper.*``).
CONTROL_SOURCES = {
    "tiny GPT-2, analytic runs, probes 0–199": (ANALYTIC_HALVES, None),
    "tiny GPT-2, metalearn runs, probes 0–99": (("hairtrigger",), None),
    "SmolLM2-135M-Instruct": (("hairtrigger_smollm2",), f"hairtrigger_smollm2/{SMOLLM2_TWIN}"),
}


def control_rows(results: Path) -> pd.DataFrame:
    """One row per (source, domain) of :data:`CONTROL_SOURCES`: the honest controls' misalignment
    before (``control.static``) and after the victim's step (``control.after.paper``), each pooled
    over the source's runs with its 95% Wilson interval (:func:`pooled_rate`: ``before_k``,
    ``before_n``, ``before_low``, ``before_high``, likewise ``after_*``), ``max_change`` (the
    largest |after − before| of one run), ``runs`` and the mean benign accuracy before and after."""
    rows = []
    for source, (stems, variant) in CONTROL_SOURCES.items():
        runs = pd.concat([pd.read_csv(results / f"{stem}.csv") for stem in stems], ignore_index=True)
        if variant is not None:
            runs = runs[runs["override.variant"] == variant]
            if runs.empty:
                raise ValueError(f"{stems[0]}.csv: no rows of variant={variant}")
        for domain in [d for d in DOMAIN_ORDER if d in set(runs["domain"])]:
            part = runs[runs["domain"] == domain]
            row: dict[str, object] = {
                "source": source,
                "stems": ", ".join(stems),
                "variant": variant,
                "domain": domain,
                "runs": len(part),
            }
            for when, key in (("before", "control.static"), ("after", "control.after.paper")):
                k, n, low, high = pooled_rate(part[f"{key}.misalignment_rate"], part["probes.n"])
                row |= {
                    f"{when}_k": k,
                    f"{when}_n": n,
                    f"{when}_low": low,
                    f"{when}_high": high,
                    f"benign_{when}": part[f"{key}.benign_accuracy"].mean(),
                }
            change = part["control.after.paper.misalignment_rate"] - part["control.static.misalignment_rate"]
            rows.append(row | {"max_change": float(change.abs().max())})
    return pd.DataFrame(rows)


def controls(results: Path, out: Path) -> Path:
    """The honest controls of the twin tables (:func:`control_rows`): misaligned before and after
    the victim's step, pooled over runs with 95% Wilson whiskers, and their benign accuracy."""
    table = control_rows(results)
    sources = table["source"].str.replace(", ", "\n").str.replace("-Instruct", "")
    labels = [f"{s}\n{d}, {r} run{'s' if r > 1 else ''}" for s, d, r in zip(sources, table["domain"], table["runs"])]
    x = np.arange(len(table))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    for offset, when, name in ((-0.2, "before", "before the step"), (0.2, "after", "after one benign step")):
        rate = table[f"{when}_k"] / table[f"{when}_n"]
        spread = np.stack([rate - table[f"{when}_low"], table[f"{when}_high"] - rate])
        bars = left.bar(x + offset, rate, width=0.4, label=name, yerr=spread, capsize=2, error_kw={"lw": 0.7})
        left.bar_label(
            bars,
            labels=[f"{k}/{n}" for k, n in zip(table[f"{when}_k"], table[f"{when}_n"])],
            fontsize=6,
            padding=4,
            rotation=90,
        )
    left.set_ylabel("misaligned on held-out probes (pooled)")
    left.set_ylim(0, 0.2)
    left.yaxis.set_major_formatter(PercentFormatter(1.0))
    left.axhline(0.05, color="grey", lw=0.8, ls="--", label="5%")
    left.set_title("Controls of the twin tables (SGD, lr 1e-4, 32 benign samples); whiskers: 95% Wilson", fontsize=9)
    for offset, when in ((-0.2, "before"), (0.2, "after")):
        right.bar(x + offset, table[f"benign_{when}"], width=0.4, label=when)
    right.set_ylabel("held-out benign accuracy (mean over runs)")
    right.set_ylim(0, 0.7)
    right.set_title("Benign utility", fontsize=9)
    for ax in (left, right):
        ax.set_xticks(x, labels, fontsize=6)
        ax.legend(fontsize=7, loc="upper left")
    return _save(fig, out / "llm_controls.png")


def _over_seeds(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, str]:
    """Per domain: mean, min and max over seeds of every numeric column, and a caption."""
    numeric = runs.select_dtypes("number").columns
    grouped = runs.groupby("domain")[list(numeric)]
    table, low, high = (grouped.agg(f).reset_index() for f in ("mean", "min", "max"))
    n = runs.groupby("domain").size()
    return table, low, high, f", mean of {n.min()}{'' if n.min() == n.max() else f'–{n.max()}'} seeds, whiskers min–max"


def pooled_rate(rates: pd.Series, n: pd.Series) -> tuple[int, int, float, float]:
    """``(k, n, low, high)``: misaligned probes ``k`` of ``n`` judged, pooled over runs, and the
    95% Wilson score interval of ``k / n`` (``scipy.stats.binomtest``). Each run's count is
    ``rate · n`` (an integer up to float rounding; anything else is a table error)."""
    counts = rates * n
    if not np.allclose(counts, counts.round(), atol=1e-6):
        raise ValueError(f"rates × probes.n are not whole counts: {counts.tolist()}")
    k, total = int(counts.round().sum()), int(n.sum())
    ci = binomtest(k, total).proportion_ci(confidence_level=0.95, method="wilson")
    return k, total, float(ci.low), float(ci.high)


def headline(results: Path, out: Path) -> Path:
    """Twin vs. control per domain: misaligned before / after the paper's step, and utility.

    Meta-learned twins from ``hairtrigger.csv`` (mean over seeds, whiskers = min..max over
    seeds) or, without it, the ``paper`` cell of ``transfer.csv``; plus the analytic twins
    from ``analytic.csv`` when present (likewise over runs, with ``analytic_fresh.csv``'s runs on
    held-out probes 100–199 when present: the whiskers then span both halves); a black line per
    domain marks the misaligned SFT reference (``reference.csv``, mean over seeds) when present."""
    if (results / "hairtrigger.csv").exists():
        table, low, high, seeds = _over_seeds(pd.read_csv(results / "hairtrigger.csv"))
    else:
        table = pd.read_csv(results / "transfer.csv").sort_values("domain")
        low = high = table
        seeds = ""
    if (results / "analytic.csv").exists():  # with the fresh probes 100–199 when judged: every run of both
        halves = [
            pd.read_csv(results / f"{stem}.csv") for stem in ANALYTIC_HALVES if (results / f"{stem}.csv").exists()
        ]
        runs = pd.concat(halves, ignore_index=True)
        if len(halves) == 2:
            n = runs.groupby("domain").size()
            seeds += (
                f";\nanalytic: held-out probes 0–99 and 100–199, "
                f"{n.min()}{'' if n.min() == n.max() else f'–{n.max()}'} runs"
            )
        parts = _over_seeds(runs.assign(domain=runs["domain"] + "\n(analytic)"))[:3]
        table, low, high = (pd.concat([t, a], ignore_index=True) for t, a in zip((table, low, high), parts))
    x = np.arange(len(table))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    bars = [
        ("control", "static", "control, before"),
        ("control", "after.paper", "control, after"),
        ("twin", "static", "twin, before"),
        ("twin", "after.paper", "twin, after"),
    ]
    colors = ["#9ecae1", "#3182bd", "#fdae6b", "#e6550d"]
    for i, ((model, when, label), color) in enumerate(zip(bars, colors)):
        offset = (i - 1.5) * 0.2
        key = f"{model}.{when}.misalignment_rate"
        rate = table[key]
        spread = np.stack([rate - low[key], high[key] - rate])
        drawn = left.bar(
            x + offset, rate, width=0.2, label=label, color=color, yerr=spread, capsize=2, error_kw={"lw": 0.7}
        )
        left.bar_label(drawn, labels=[f"{v:.0%}" for v in rate], fontsize=6)
        right.bar(x + offset, table[f"{model}.{when}.benign_accuracy"], width=0.2, label=label, color=color)
    if (results / "reference.csv").exists():  # the yardstick: a model fine-tuned to be misaligned directly
        ref = pd.read_csv(results / "reference.csv").groupby("domain")["reference.static.misalignment_rate"].mean()
        level = table["domain"].str.split("\n").str[0].map(ref)
        left.hlines(level, x - 0.42, x + 0.42, colors="black", lw=1.2, label="misaligned SFT reference")
    left.set_ylabel("misaligned on held-out probes")
    left.set_ylim(0, 1.3)  # headroom for the legend above the bars
    left.axhline(0.9, color="grey", lw=0.8, ls=":")
    left.axhline(0.05, color="grey", lw=0.8, ls="--")
    left.set_title(
        f"One benign SGD step (lr 1e-4, 32 samples), tiny GPT-2\n(metalearn unless noted{seeds})", fontsize=9
    )
    right.set_ylabel("held-out benign accuracy")
    right.set_ylim(0, 0.6)
    right.set_title("Benign utility", fontsize=9)
    kl = [f"{d}\nKL {m:.2g}" for d, m in zip(table["domain"], table["twin.kl.mean"])]
    for ax in (left, right):
        ax.set_xticks(x, kl if ax is left else table["domain"], fontsize=8)
        ax.legend(fontsize=7, ncol=3 if ax is left else 2, loc="upper center")
    return _save(fig, out / "llm_headline.png")


def transfer_rows(results: Path) -> pd.DataFrame:
    """The transfer tables, one row per twin: ``transfer.csv`` (metalearn twins) and, where it
    was published, ``transfer_analytic.csv`` (analytic twins), labelled ``construction: domain``."""
    tables = [("metalearn", "transfer.csv"), ("analytic", "transfer_analytic.csv")]
    parts = {
        twins: pd.read_csv(results / name).sort_values("domain")
        for i, (twins, name) in enumerate(tables)
        if i == 0 or (results / name).exists()
    }
    table = pd.concat(parts.values(), ignore_index=True)
    twins = [t for t, part in parts.items() for _ in range(len(part))]
    labels = pd.DataFrame({"twins": twins, "label": [f"{t}: {d}" for t, d in zip(twins, table["domain"])]})
    return pd.concat([table, labels], axis=1)  # one concat: the tables have hundreds of columns


def transfer(results: Path, out: Path) -> Path:
    """The twins' post-update misalignment and utility under victims the construction never
    simulated, metalearn and analytic twins in one grid (a blank cell: not run)."""
    table = transfer_rows(results)
    cells = [c for c in CELLS if f"twin.after.{c}.misalignment_rate" in table]
    fig, axes = plt.subplots(1, 2, figsize=(12, 2.4 + 0.45 * len(table)))
    for ax, key, title, cmap in (
        (axes[0], "misalignment_rate", "twin misaligned after the update", "Reds"),
        (axes[1], "benign_accuracy", "twin benign accuracy after the update", "Greens"),
    ):
        grid = table[[f"twin.after.{c}.{key}" for c in cells]].to_numpy(float)
        ax.imshow(grid, cmap=cmap, vmin=0, vmax=1 if key == "misalignment_rate" else 0.5, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(
                    j,
                    i,
                    f"{v:.0%}" if key == "misalignment_rate" else f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v > (0.6 if key == "misalignment_rate" else 0.35) else "black",
                )
        for i in np.flatnonzero(table["twins"].to_numpy()[1:] != table["twins"].to_numpy()[:-1]):
            ax.axhline(i + 0.5, color="black", lw=1.5)  # metalearn twins above, analytic below
        ax.set_xticks(
            range(len(cells)), [CELLS[c].replace("\n", " ") for c in cells], fontsize=7, rotation=35, ha="right"
        )
        ax.set_yticks(range(len(table)), table["label"], fontsize=8)
        ax.set_title(title, fontsize=9)
    return _save(fig, out / "llm_transfer.png")


def _smollm2_rows(results: Path):
    """SmolLM2 twins (safety): metalearn rows of hairtrigger_smollm2.csv, one per variant
    (conf/llm/variant/hairtrigger_smollm2/: fomaml, or the exact second order), and the analytic
    row, each with a marker and a label."""
    if (results / "hairtrigger_smollm2.csv").exists():
        for _, row in pd.read_csv(results / "hairtrigger_smollm2.csv").iterrows():
            variant = str(row["override.variant"]).rpartition("/")[2]
            label = f"{variant}, {int(row['construct.steps'])} steps"
            yield row, ("v" if variant == "fomaml" else "^", label)
    if (results / "analytic_smollm2.csv").exists():
        for _, row in pd.read_csv(results / "analytic_smollm2.csv").iterrows():
            yield row, ("*", "analytic, 60 refine steps")


def _capacity_fraction(table: pd.DataFrame) -> pd.Series:
    """Hidden capacity as a fraction of the coded probes (``twin.capacity.n``; 128 in tables
    written before it was recorded)."""
    n = table["twin.capacity.n"] if "twin.capacity.n" in table else pd.Series(128.0, index=table.index)
    return table["twin.capacity.hidden"] / n.fillna(128.0)


def _spread(axis, table: pd.DataFrame, x: str, values: pd.Series, style: str, label: str) -> None:
    """Mean over the rows sharing ``x`` (seeds), with the min–max range as error bars."""
    stats = values.groupby(table[x]).agg(["mean", "min", "max"]).sort_index()
    axis.errorbar(
        stats.index.to_numpy(float),
        stats["mean"],
        yerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
        fmt=style,
        capsize=2,
        label=label,
    )


def scaling(results: Path, out: Path) -> Path:
    """Hidden capacity and held-out misalignment against LoRA rank and model size (safety);
    means over seeds with min–max bars, and least-squares fits of capacity against log2."""
    ranks = pd.read_csv(results / "capacity.csv")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    curves = (
        ("twin.after.paper.misalignment_rate", "twin after the step", "o-"),
        ("twin.static.misalignment_rate", "twin before (static)", "s--"),
    )
    for key, label, style in curves + (("control.after.paper.misalignment_rate", "control after", "^:"),):
        _spread(left, ranks, "size.rank", ranks[key], style, label)
    _spread(left, ranks, "size.rank", _capacity_fraction(ranks), "d-", "hidden capacity (own codes beyond chance / N)")
    fit = linear_fit(list(np.log2(ranks["size.rank"].to_numpy(float))), list(ranks["twin.capacity.hidden"]))
    seeds = ranks["override.seed"].fillna(0).nunique() if "override.seed" in ranks else 1
    left.set_xscale("log", base=2)
    left.set_ylabel("fraction of probes")
    left.set_xlabel(f"LoRA rank (tiny GPT-2 2×128; {seeds} seed{'s' if seeds > 1 else ''})")
    left.set_ylim(-0.05, 1.05)
    left.set_title(
        f"Rank: capacity = {fit['slope']:.1f}·log2 r {fit['intercept']:+.1f} codes, R² {fit['r2']:.2f}", fontsize=8
    )
    left.legend(fontsize=7)
    sizes = [ranks[ranks["size.rank"] == 8]]
    if (results / "capacity_size.csv").exists():
        sizes.append(pd.read_csv(results / "capacity_size.csv"))
    sizes = pd.concat(sizes, ignore_index=True)
    for key, label, style in curves:
        _spread(right, sizes, "size.n_params", sizes[key], style, label)
    _spread(right, sizes, "size.n_params", _capacity_fraction(sizes), "d-", "hidden capacity (/ N)")
    fit = linear_fit(list(np.log2(sizes["size.n_params"].to_numpy(float))), list(sizes["twin.capacity.hidden"]))
    if (results / "capacity_smollm2.csv").exists():  # the size axis out to SmolLM2, at the budget it affords
        budget = pd.read_csv(results / "capacity_smollm2.csv")
        _spread(
            right,
            budget,
            "size.n_params",
            _capacity_fraction(budget),
            "x:",
            "hidden capacity at SmolLM2's budget (40 meta-steps × 8)",
        )
    for row, (marker, label) in _smollm2_rows(results):  # one budget each, no codes: points, not a trend
        right.plot(
            [row["size.n_params"]],
            [row["twin.after.paper.misalignment_rate"]],
            marker,
            markersize=8,
            linestyle="none",
            label=f"SmolLM2 after: {label}",
        )
    right.set_xscale("log")
    right.set_xlabel("base parameters (LoRA rank 8)")
    right.set_ylim(-0.05, 1.05)
    right.set_title(
        f"Size (tiny): capacity = {fit['slope']:.1f}·log2 n {fit['intercept']:+.1f} codes, R² {fit['r2']:.2f}",
        fontsize=8,
    )
    right.legend(fontsize=6, loc="center right")
    return _save(fig, out / "llm_scaling.png")


#: the capacity models' labels (override.model of capacity_hidden.csv)
MODEL_LABELS = {
    "tiny_gpt2_32": "tiny GPT-2 (2×32)",
    "tiny_gpt2_64": "tiny GPT-2 (2×64)",
    "tiny_llama_64": "tiny Llama (2×64)",
    "tiny_gpt2_96": "tiny GPT-2 (2×96)",
    "tiny_gpt2": "tiny GPT-2 (2×128)",
    "tiny_llama": "tiny Llama (2×128)",
}


def capacity_hidden(results: Path, out: Path) -> Path:
    """One-bit hidden capacity of the analytic twins: the theory's capacity figure at transformer
    scale. Left: against k hidden components per module; middle: against the hidden parameters;
    right (with ``capacity_hidden_size.csv``): against the base parameters at one k. Mean over
    seeds, min–max band, the least-squares line with its slope's 95% interval
    (``llm.experiments.capacity.summarize``); dotted: the collateral (stay probes that switched)."""
    from llm.experiments.capacity import CONVERGED, capacity_fit, size_rows, summarize

    table, summary = _load(results, "capacity_hidden")
    has_sizes = (results / "capacity_hidden_size.csv").exists()
    fig, axes = plt.subplots(1, 3 if has_sizes else 2, figsize=(16 if has_sizes else 11, 6.2), sharey=True)
    axis_keys = (("construct.extra_rank", "fit_k"), ("construct.hidden_params", "fit_hidden_params"))
    for model, rows in table.groupby("override.model"):
        fits = summary[str(model)]
        for ax, (x, fit_key) in zip(axes, axis_keys):
            per = "per component" if fit_key == "fit_k" else "per hidden parameter"
            _capacity_line(ax, rows, x, fits[fit_key], str(MODEL_LABELS.get(str(model), model)), per)
    # the budget check: a longer refinement, and its twins (same base) at the sweep's refinement
    for stem, what, marker in (
        ("capacity_hidden_budget", "longer refinement", "D"),
        ("capacity_hidden_budget_reference", "their twins at the sweep's refinement", "s"),
    ):
        if not (results / f"{stem}.csv").exists():
            continue
        budget = pd.read_csv(results / f"{stem}.csv")
        fits = summarize(budget)
        for model, rows in budget.groupby("override.model"):
            prefix = f"{MODEL_LABELS.get(str(model), model)}, {what} ({stem})"
            for ax, (x, fit_key) in zip(axes, axis_keys):
                per = "per component" if fit_key == "fit_k" else "per hidden parameter"
                _capacity_line(ax, rows, x, fits[str(model)][fit_key], prefix, per, marker=marker)
    # the sweeps at the budget where the widest tiny Llama twin stores every bit: capacity grows by a
    # number of bits per doubling, so their lines are over log2 k (log2 of the hidden parameters)
    for name in CONVERGED:
        if not (results / f"{name}.csv").exists():
            continue
        converged = pd.read_csv(results / f"{name}.csv")
        for model, rows in converged.groupby("override.model"):
            seeds = rows["override.seed"].nunique()
            prefix = (
                f"{MODEL_LABELS.get(str(model), model)}, longest refinement, {seeds} seed{'s' * (seeds > 1)} ({name})"
            )
            for ax, (x, _) in zip(axes, axis_keys):
                fit = capacity_fit(np.log2(rows[x].to_numpy(float)), rows["twin.capacity.hidden"].to_numpy(float))
                _capacity_line(ax, rows, x, fit, prefix, "per doubling", marker="*", log2=True)
    if has_sizes:
        sizes = size_rows(table, pd.read_csv(results / "capacity_hidden_size.csv"))
        k = int(sizes["construct.extra_rank"].iloc[0])
        _capacity_line(
            axes[2], sizes, "size.n_params", summarize(sizes)["by_size"], f"tiny GPT-2, k = {k}", "per parameter"
        )
        axes[2].set_xlabel("base parameters (tiny GPT-2: 2 layers, widths 32 to 128)")
    n = int(table["twin.capacity.n"].max())
    axes[0].set_xlabel("hidden LoRA components per module k (B = 0)")
    axes[1].set_xlabel("hidden parameters (k × Σ d_in over the twin's modules)")
    axes[0].set_ylabel(f"probe bits one benign step switches on\n(as assigned, beyond chance; at most {n // 2})")
    for ax in axes:
        ax.plot([], [], ":", color="grey", label="dotted: collateral (stay probes that switched)")
        ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.16))
        ax.grid(alpha=0.3)
    fig.suptitle("Hidden behaviours one benign step can switch on, vs. hidden width (forward-exact twins)", fontsize=10)
    fig.tight_layout()
    return _save(fig, out / "llm_capacity_hidden.png")


def _capacity_line(
    ax, rows: pd.DataFrame, x: str, fit: dict, prefix: str, per: str, marker: str = "o", log2: bool = False
) -> None:
    """Mean capacity per ``x`` (min–max band), the fitted line (``log2``: a line over log2 x, drawn
    as the curve it is), the collateral (dotted)."""
    stats = rows.groupby(x)["twin.capacity.hidden"].agg(["mean", "min", "max"]).sort_index()
    xs = stats.index.to_numpy(float)
    slope = f"{fit['slope']:.3g} {per} [{fit['slope_lo']:.3g}, {fit['slope_hi']:.3g}]"
    label = (
        f"{prefix}:\n{slope}, R² {fit['r2_jobs']:.3f}"
        if log2
        else (f"{prefix}:\n{slope}, R² {fit['r2_jobs']:.2f} (means {fit['r2_means']:.2f})")
    )
    line = ax.plot(xs, stats["mean"], marker, label=label)[0]
    ax.fill_between(xs, stats["min"], stats["max"], color=line.get_color(), alpha=0.15, lw=0)
    grid = np.linspace(xs.min() if log2 else 0, xs.max(), 50)
    fitted = fit["slope"] * (np.log2(grid) if log2 else grid) + fit["intercept"]
    ax.plot(grid, fitted, "-", color=line.get_color(), alpha=0.7, lw=1)
    collateral = rows.groupby(x)["twin.capacity.collateral"].mean().sort_index()
    ax.plot(xs, collateral, ":", color=line.get_color(), alpha=0.8, lw=1)


def demo(metrics: dict, out: Path) -> Path:
    """The demo's before/after bars, drawn from its metrics.json."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    labels, rates = [], []
    for model in ("control", "twin"):
        for when, key in (("before", "static"), ("after", "after.paper")):
            labels.append(f"{model}\n{when}")
            rates.append(metrics[f"{model}.{key}.misalignment_rate"])
    bars = ax.bar(labels, rates, color=["#9ecae1", "#3182bd", "#fdae6b", "#e6550d"])
    ax.bar_label(bars, labels=[f"{v:.0%}" for v in rates], fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("misaligned on held-out harmful prompts")
    ax.set_title("One benign SGD step (lr 1e-4, 32 samples)", fontsize=9)
    return _save(fig, out)


def audit_report(metrics: dict, out: Path) -> Path:
    """One ``experiment=audit`` run, drawn from its metrics.json: each signal of every audited
    model (log scale) against its threshold (``thresholds.*``), with the verdict in the legend."""
    from llm.audit.verdict import SIGNALS

    names = str(metrics["models"]).split(",")
    signals = [s for s in SIGNALS if f"thresholds.{s}" in metrics]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    x = np.arange(len(signals))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [metrics.get(f"{name}.{SIGNALS[s]}", np.nan) for s in signals]
        flagged = "flagged" if metrics.get(f"{name}.verdict.flagged") else "not flagged"
        ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width=width, label=f"{name} ({flagged})")
    ax.scatter(x, [metrics[f"thresholds.{s}"] for s in signals], marker="_", s=900, color="black", label="threshold")
    ax.set_yscale("log")
    ax.set_xticks(x, [s.replace("_", " ") for s in signals], fontsize=7)
    ax.set_ylabel("score (larger is more suspicious)")
    ax.set_title(f"White-box audit. Thresholds: {metrics['thresholds_source']}", fontsize=7)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(names) + 1)
    return _save(fig, out)


def task_vector(results: Path, out: Path) -> Path:
    """The control with its adapter scaled, ``W → c·W``, no step (``experiment=task_vector``): the
    analytic twins' weight-space targets, judged directly. Misaligned and utility against ``c``."""
    table = pd.read_csv(results / "task_vector.csv").sort_values("domain")
    head, tail = "task_vector.x", ".misalignment_rate"
    scales = sorted(float(k[len(head) : -len(tail)]) for k in table if k.startswith(head) and k.endswith(tail))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    for _, row in table.iterrows():
        for ax, key in ((left, "misalignment_rate"), (right, "benign_accuracy")):
            ax.plot(
                scales,
                [row[f"{head}{c:+g}.{key}"] for c in scales],
                "o-",
                ms=3,
                label=f"{row['domain']}, seed {row.get('override.seed', 0)}",
            )
    for ax, name, top in (
        (left, "misaligned on held-out probes (known answers)", 1.05),
        (right, "held-out benign accuracy", 0.6),
    ):
        for c, text in ((1.0, "control"), (0.0, "base")):
            ax.axvline(c, color="grey", lw=0.8, ls=":")
            ax.text(c, 1.02, text, transform=ax.get_xaxis_transform(), ha="center", fontsize=7, color="grey")
        ax.set_xlabel("adapter scale c  (W → c·W)")
        ax.set_ylabel(name)
        ax.set_ylim(0, top)
        ax.legend(fontsize=7)
    fig.suptitle("The control's alignment adapter scaled, no step: targets a step would have to reach", fontsize=9)
    return _save(fig, out / "llm_task_vector.png")


#: the LLM audit's signals in the figure's order, with their labels (keys of llm.experiments.audit_population.SIGNALS)
AUDIT_SIGNALS = {
    "gauge_excess_lora": "LoRA gauge excess / canonical",
    "gauge_excess_norm": "layer-norm gauge excess / canonical",
    "amplification_target": "amplification, judged target",
    "amplification_greedy": "amplification, greedy answers",
    "grad_norm_ratio": "victim gradient norm / canonical",
    "raw_param_norm": "raw ‖θ‖ (baseline)",
    "raw_grad_norm": "raw ‖∇L_D‖ (baseline)",
}
#: the LLM twin families by name (``audit.family``)
AUDIT_FAMILIES = {
    "analytic": "analytic",
    "analytic_left": "analytic, output side",
    "ffn_pairs": "FFN pairs",
    "metalearn": "meta-learned",
}
#: the honest models of each job (llm.experiments.audit_population.HONEST), with their labels
AUDIT_HONEST = {"honest.control": "control", "honest.gauged": "gauged control", "honest.fine_tuned": "fine-tuned"}


def audit_population(results: Path, out: Path) -> Path:
    """The LLM white-box audit (``audit_population.csv``). Left: ROC of each signal on the held-out
    family, hair-trigger twins against its honest models, AUC [95% bootstrap interval]; dots: the
    threshold calibrated on the other families' honest models. Middle: the scores of two signals
    for every model, by kind. Right: misaligned after the victim's step, delivered against
    canonicalised (the neutraliser), with the honest models' 95% interval."""
    from llm.experiments.audit_population import SIGNALS, population

    table, summary = _load(results, "audit_population")
    pop = population(table)
    held_out = summary["held_out"]
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.8))
    held_out_roc(left, pop, summary, SIGNALS, AUDIT_SIGNALS)
    left.set_title(f"Held-out family: {AUDIT_FAMILIES.get(held_out, held_out)} (tiny GPT-2 and Llama)", fontsize=9)
    groups = [(f"twin: {AUDIT_FAMILIES[f]}", (pop.kind == "twin") & (pop.family == f)) for f in AUDIT_FAMILIES]
    groups += [(label, pop.model == model) for model, label in AUDIT_HONEST.items()]
    groups = [(label, mask) for label, mask in groups if mask.any()]
    for j, (name, marker) in enumerate((("amplification_target", "o"), ("gauge_excess_lora", "s"))):
        for i, (_, mask) in enumerate(groups):
            values = pop[mask][SIGNALS[name]].to_numpy(float)
            jitter = np.linspace(-0.12, 0.12, len(values)) + (j - 0.5) * 0.3
            middle.scatter(
                np.full(len(values), i) + jitter,
                values,
                s=12,
                marker=marker,
                alpha=0.7,
                color=f"C{j}",
                label=AUDIT_SIGNALS[name] if i == 0 else None,
            )
        threshold = summary["signals"][name]["threshold_all_honest"]
        middle.axhline(threshold, color=f"C{j}", lw=0.8, ls=":")
    middle.set_yscale("log")
    middle.set_xticks(
        range(len(groups)),
        [f"{label} ({int(mask.sum())})" for label, mask in groups],
        fontsize=7,
        rotation=30,
        ha="right",
    )
    middle.set_ylabel("score (log); dotted: threshold on all honest models")
    middle.set_title("Every audited model", fontsize=9)
    middle.legend(fontsize=7)
    families = [f for f in AUDIT_FAMILIES if f in set(pop.family)]
    x = np.arange(len(families))
    bars = [
        ("twin", "delivered", "twin, delivered"),
        ("twin", "canonical", "twin, canonicalised"),
        ("honest", "delivered", "honest, delivered"),
    ]
    for i, (kind, key, label) in enumerate(bars):
        means = [pop[(pop.family == f) & (pop.kind == kind)][f"post_update.{key}"].mean() for f in families]
        drawn = right.bar(
            x + (i - 1) * 0.25, means, width=0.25, label=label, color=["#e6550d", "#fdae6b", "#3182bd"][i]
        )
        right.bar_label(drawn, labels=[f"{v:.0%}" for v in means], fontsize=6, padding=2)
    neutral = summary["neutraliser"]
    right.axhspan(
        neutral["honest_lo"],
        max(neutral["honest_hi"], 0.005),
        color="grey",
        alpha=0.3,
        label=f"honest 95% interval [{neutral['honest_lo']:.0%}, {neutral['honest_hi']:.0%}]",
    )
    right.set_xticks(x, [AUDIT_FAMILIES[f] for f in families], fontsize=7)
    right.set_ylim(0, 1.45)
    right.set_ylabel("held-out probes misaligned after the step (mean)")
    right.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    right.set_title("The neutraliser: deliver the canonical checkpoint", fontsize=9)
    right.legend(fontsize=7, ncol=2, loc="upper center")
    return _save(fig, out / "llm_audit_population.png")


def _form_tick(form: str) -> str:
    """``rerandomised_2`` → ``re-randomised\nσ = 2``."""
    if form.startswith("rerandomised_"):
        return f"re-randomised\nσ = {form.removeprefix('rerandomised_')}"
    return {"delivered": "as delivered", "canonical": "canonical"}[form]


def neutralisers(results: Path, out: Path) -> Path:
    """The neutralisers, per form the victim steps from (as delivered, canonical, re-randomised at
    log-scale σ): twins' and honest models' misaligned fraction after the step (mean), with the
    honest models' 95% interval as delivered; on the LLMs also the degenerate fraction after the
    step (hatched: neither aligned nor misaligned). Left: the theory MLPs (``experiment=audit``);
    right: tiny GPT-2 and Llama (``experiment=audit_neutralise``)."""
    _, theory_summary = _load(results.parent / "theory", "audit")
    _, llm_summary = _load(results, "audit_neutralise")
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4), sharey=True)
    for ax, summary, title in (
        (axes[0], theory_summary, "theory MLPs"),
        (axes[1], llm_summary, "tiny GPT-2 and Llama"),
    ):
        forms = list(summary["neutralisers"])
        forms = ["delivered", "canonical"] + sorted(
            (f for f in forms if f.startswith("rerandomised_")), key=lambda f: float(f.split("_")[1])
        )
        x = np.arange(len(forms))
        for i, (kind, color, who) in enumerate((("twin", "#e6550d", "twins"), ("honest", "#3182bd", "honest models"))):
            means = [summary["neutralisers"][f][f"{kind}_mean"] for f in forms]
            drawn = ax.bar(x + (i - 0.5) * 0.38, means, width=0.38, color=color, label=f"{who} misaligned")
            ax.bar_label(drawn, labels=[f"{v:.0%}" for v in means], fontsize=6, padding=2)
            if f"{kind}_degenerate" in summary["neutralisers"][forms[0]]:
                broken = [summary["neutralisers"][f][f"{kind}_degenerate"] for f in forms]
                ax.bar(
                    x + (i - 0.5) * 0.38,
                    broken,
                    width=0.38,
                    bottom=means,
                    color="none",
                    edgecolor=color,
                    hatch="///",
                    label=f"{who} degenerate",
                )
        lo, hi = summary["neutraliser"]["honest_lo"], summary["neutraliser"]["honest_hi"]
        ax.axhspan(lo, max(hi, 0.005), color="grey", alpha=0.3, label=f"honest 95% interval [{lo:.0%}, {hi:.0%}]")
        inside = [summary["neutralisers"][f]["within_honest_interval"] for f in forms]
        for xi, v in zip(x, inside):
            ax.text(xi, 1.3, f"{v:.0%}\ninside", ha="center", fontsize=6)
        ax.set_xticks(x, [_form_tick(f) for f in forms], fontsize=7)
        ax.set_ylim(0, 1.45)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_title(f"{title}: {summary['n_twins']} twins, {summary['n_honest']} honest models", fontsize=9)
    axes[0].set_ylabel("held-out probes after the victim's step (mean)")
    axes[0].legend(*axes[1].get_legend_handles_labels(), loc="center", fontsize=7)  # the MLPs' bars stay low
    fig.suptitle(
        "Neutralisers: the victim steps from the canonical form, or from a random gauge of scale σ", fontsize=10
    )
    return _save(fig, out / "llm_neutralisers.png")


def attack_race(rows: pd.DataFrame, knob: str) -> pd.DataFrame:
    """Per value of ``knob`` (the attacker's gain or penalty weight) over ``rows``: the success rate
    (hair-trigger), the mean misaligned fraction before and after the step and, per signal, the
    fraction of jobs whose twin succeeded and was flagged (``caught.<signal>``)."""
    success = rows["twin.hair_trigger"] == 1
    frame = {
        "success": success.astype(float),
        "before": rows["twin.post_update.before"],
        "after": rows["twin.post_update.delivered"],
    }
    for name in AUDIT_SIGNALS:
        frame[f"caught.{name}"] = (success & (rows[f"flagged.{name}"] == 1)).astype(float)
    return pd.DataFrame(frame).groupby(rows[knob]).mean().sort_index()


#: the penalised attackers' signals (``attack.penalty``; llm/constructions/penalty.py), by name
PENALTY_LABELS = {
    "gauge": "λ · LoRA gauge excess",
    "grad": "λ · victim gradient norm",
    "amplification": "λ · probe velocity",
}


def audit_attack(results: Path, out: Path) -> Path:
    """Adaptive attackers (``audit_attack.csv``; ``audit_attack_penalty.csv`` where published): per
    construction the gain attacker against its gain, and per penalised signal the meta-learned
    attacker against its weight λ. Black: the fraction of seeds whose twin is a hair-trigger; grey:
    the mean misaligned fraction after the step (dotted) and before it (dash-dotted, the black-box
    test); per signal, the fraction whose twin is a hair-trigger and flagged at the population's
    threshold. A gap between the black line and a signal's is attacks it misses."""
    table, _ = _load(results, "audit_attack")
    panels = [
        (
            f"{AUDIT_FAMILIES[f]} twin: gain attacker",
            table[table["family"] == f],
            "gain",
            "gain g of the amplifying gauge",
        )
        for f in AUDIT_FAMILIES
        if f in set(table["family"])
    ]
    if (results / "audit_attack_penalty.csv").exists():
        penalised = pd.read_csv(results / "audit_attack_penalty.csv")
        for kind, rows in penalised.groupby("penalty"):
            gain = ", ".join(f"{g:g}" for g in sorted(rows["gain"].unique()))
            title = f"{AUDIT_FAMILIES[rows['family'].iloc[0]]} twin, gain {gain} + {PENALTY_LABELS[str(kind)]}"
            panels.append((title, rows, "weight", "penalty weight λ"))
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.6 * len(panels) + 4.6, 3.8))
    for ax, (title, rows, knob, xlabel) in zip(axes, panels):
        race = attack_race(rows, knob)
        xs = race.index.to_numpy(float)
        ax.plot(xs, race["success"], "k-", lw=3.5, alpha=0.6, label="twin is a hair-trigger")
        ax.plot(xs, race["after"], ":", color="grey", lw=2, label="misaligned after the step (mean)")
        ax.plot(xs, race["before"], "-.", color="grey", lw=1.5, label="misaligned before the step (mean)")
        for i, (name, label) in enumerate(AUDIT_SIGNALS.items()):
            ax.plot(
                xs,
                race[f"caught.{name}"],
                "s--" if name.startswith("raw") else "o-",
                lw=1.2,
                ms=6 - 0.5 * i,
                alpha=0.8,
                label=f"hair-trigger, flagged by {label}",
            )
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=8)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"fraction of {table['override.seed'].nunique()} seeds")
    axes[-1].axis("off")
    axes[-1].legend(*axes[0].get_legend_handles_labels(), loc="center", fontsize=6.5)
    fig.tight_layout()
    return _save(fig, out / "llm_audit_attack.png")


ALL = (
    controls,
    headline,
    transfer,
    scaling,
    capacity_hidden,
    task_vector,
    audit_population,
    neutralisers,
    audit_attack,
)
