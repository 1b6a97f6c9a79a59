"""``python -m figures`` redraws every figure from results/, and each figure plots what the tables say.

The value tests draw each figure from the committed ``results/`` with ``_save`` intercepted, read the
plotted data back from the figure's axes and compare it with the same rows read independently.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer
from scipy.stats import binomtest

from figures import llm, theory

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """``drawn(draw, *args)`` draws one figure (by default from the committed ``results/<app>``) and
    returns its Figure, still open, and the path it was saved to."""
    figures: list[plt.Figure] = []

    def keep(fig: plt.Figure, path: Path) -> Path:
        figures.append(fig)
        fig.savefig(path, dpi=20)  # the file, cheaply: the tests read the axes
        return path

    monkeypatch.setattr(theory, "_save", keep)
    monkeypatch.setattr(llm, "_save", keep)

    def draw(function, *args):
        app = "theory" if function.__module__ == theory.__name__ else "llm"
        path = function(*(args or (RESULTS / app, tmp_path)))
        return figures[-1], path

    yield draw
    for fig in figures:
        plt.close(fig)


def bars(ax) -> list[list[float]]:
    """The heights of each bar series of ``ax``, in drawing order."""
    return [[patch.get_height() for patch in c] for c in ax.containers if isinstance(c, BarContainer)]


def lines(ax) -> list:
    """The labelled data lines of ``ax`` (reference lines such as ``axhline`` are unlabelled)."""
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def read(folder: str, stem: str) -> pd.DataFrame:
    return pd.read_csv(RESULTS / folder / f"{stem}.csv")


# ---------------------------------------------------------------------------------------------- theory


def test_theory_twin_bars_are_the_seed_means(drawn) -> None:
    fig, path = drawn(theory.twin)
    table = read("theory", "twin")
    keys = ("static.misaligned_fraction", "post_update.flipped_fraction", "post_update.collateral_fraction")
    twin, control = bars(fig.axes[0])
    assert twin == pytest.approx([table[f"twin.{k}"].mean() for k in keys])
    assert control == pytest.approx([table[f"control.{k}"].mean() for k in keys])
    assert path.name == "theory_twin.png" and path.exists()


def test_theory_gauge_scale_plots_measured_and_closed_form_deviation(drawn) -> None:
    fig, _ = drawn(theory.gauge_scale)
    table = read("theory", "gauge_scale").groupby("c").mean(numeric_only=True)
    table = table[table.index > 1]
    measured, closed = fig.axes[0].get_lines()[:2]
    assert measured.get_xdata() == pytest.approx(table.index.to_numpy())
    assert measured.get_ydata() == pytest.approx(table["post_update.deviation"].to_numpy())
    assert closed.get_ydata() == pytest.approx(table["post_update.deviation_closed_form"].to_numpy())
    summary = json.loads((RESULTS / "theory" / "gauge_scale_summary.json").read_text())
    assert f"{summary['fit']['slope']:.3f}" in fig.axes[0].get_title()


def test_theory_capacity_plots_the_mean_per_width_of_each_family(drawn) -> None:
    fig, _ = drawn(theory.capacity)
    table = read("theory", "capacity")
    summary = json.loads((RESULTS / "theory" / "capacity_summary.json").read_text())
    plotted = lines(fig.axes[0])
    assert len(plotted) == table["family"].nunique()
    for line, (family, rows) in zip(plotted, table.groupby("family"), strict=True):
        means = rows.groupby("redundant_units")["capacity.flipped"].mean().sort_index()
        assert line.get_xdata() == pytest.approx(means.index.to_numpy(float))
        assert line.get_ydata() == pytest.approx(means.to_numpy())
        assert f"slope {summary[family]['fit']['slope']:.3f}" in line.get_label()


def test_theory_ntk_plots_relative_errors_and_the_breakdown_threshold(drawn) -> None:
    fig, _ = drawn(theory.ntk)
    table = read("theory", "ntk").groupby("eval_lr").mean(numeric_only=True).sort_index()
    twin, control = lines(fig.axes[0])[:2]
    assert twin.get_ydata() == pytest.approx(table["twin.rel_error"].clip(lower=1e-16).to_numpy())
    assert control.get_ydata() == pytest.approx(table["control.rel_error"].clip(lower=1e-16).to_numpy())
    threshold = [line for line in fig.axes[0].get_lines() if "breakdown" in line.get_label()]
    assert threshold and threshold[0].get_ydata()[0] == pytest.approx(0.1)


def _audit_scores(table: pd.DataFrame, family: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Hair-trigger twins' and honest models' ``key`` in ``family``, read from the audit's columns."""
    rows = table[table["family"] == family]
    twins = rows.loc[rows["twin.hair_trigger"] == 1, f"twin.{key}"].to_numpy(float)
    honest_ids = sorted({c.split(".")[1] for c in table if c.startswith("honest.")})
    honest = np.concatenate([rows[f"honest.{i}.{key}"].to_numpy(float) for i in honest_ids])
    return twins, honest


def _check_roc(ax, table: pd.DataFrame, summary: dict, signals: dict, labels: dict) -> None:
    """Each curve's area is the Mann-Whitney AUC of the CSV's scores (every twin-honest pair
    compared, ties half), its legend the summary's AUC and interval, its dot the TPR/FPR at the
    summary's calibrated threshold."""
    curves = [line for line in lines(ax) if "AUC" in line.get_label()]
    assert [c.get_label().split(":")[0] for c in curves] == list(labels.values())
    for curve, name in zip(curves, labels, strict=True):
        twins, honest = _audit_scores(table, summary["held_out"], signals[name])
        pairs = (twins[:, None] > honest[None, :]) + 0.5 * (twins[:, None] == honest[None, :])
        fpr, tpr = curve.get_xdata(), curve.get_ydata()
        assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
        assert np.trapezoid(tpr, fpr) == pytest.approx(pairs.mean())
        score = summary["signals"][name]["held_out"]
        assert score["auc"] == pytest.approx(pairs.mean())
        assert f"AUC {score['auc']:.2f} [{score['auc_lo']:.2f}, {score['auc_hi']:.2f}]" in curve.get_label()
        dot = [line for line in ax.get_lines() if line.get_marker() == "o" and line.get_color() == curve.get_color()][0]
        expected = ((honest > score["threshold"]).mean(), (twins > score["threshold"]).mean())
        assert (dot.get_xdata()[0], dot.get_ydata()[0]) == pytest.approx(expected)


def test_theory_audit_roc_is_each_signal_on_the_held_out_family(drawn) -> None:
    from theory.experiments.audit import SIGNALS

    fig, _ = drawn(theory.audit)
    summary = json.loads((RESULTS / "theory" / "audit_summary.json").read_text())
    _check_roc(fig.axes[0], read("theory", "audit"), summary, SIGNALS, theory.AUDIT_SIGNALS)


def test_llm_audit_roc_is_each_signal_on_the_held_out_family(drawn) -> None:
    from llm.experiments.audit_population import SIGNALS

    fig, _ = drawn(llm.audit_population)
    summary = json.loads((RESULTS / "llm" / "audit_population_summary.json").read_text())
    _check_roc(fig.axes[0], read("llm", "audit_population"), summary, SIGNALS, llm.AUDIT_SIGNALS)


def test_llm_audit_attack_lines_are_the_csv_rates(drawn) -> None:
    """Per construction (gain attacker) and per penalised signal (λ, where that table is published):
    the success, mean-after and mean-before lines and each signal's succeeded-and-flagged line,
    counted here over the CSV's rows knob value by knob value."""
    fig, _ = drawn(llm.audit_attack)
    table = read("llm", "audit_attack")
    panels = [(table[table["family"] == f], "gain") for f in llm.AUDIT_FAMILIES if f in set(table["family"])]
    if (RESULTS / "llm" / "audit_attack_penalty.csv").exists():
        penalised = read("llm", "audit_attack_penalty")
        panels += [(rows, "weight") for _, rows in penalised.groupby("penalty")]
    assert len(fig.axes) == len(panels) + 1
    for ax, (rows, knob) in zip(fig.axes, panels, strict=False):
        drawn_lines = lines(ax)
        assert len(drawn_lines) == 3 + len(llm.AUDIT_SIGNALS)
        values = sorted(rows[knob].unique())
        cells = [rows[rows[knob] == v] for v in values]
        assert list(drawn_lines[0].get_xdata()) == pytest.approx(values)
        assert list(drawn_lines[0].get_ydata()) == pytest.approx([(c["twin.hair_trigger"] == 1).mean() for c in cells])
        for line, key in zip(drawn_lines[1:3], ("delivered", "before"), strict=True):
            assert list(line.get_ydata()) == pytest.approx([c[f"twin.post_update.{key}"].mean() for c in cells])
        for line, name in zip(drawn_lines[3:], llm.AUDIT_SIGNALS, strict=True):
            caught = [((c["twin.hair_trigger"] == 1) & (c[f"flagged.{name}"] == 1)).mean() for c in cells]
            assert list(line.get_ydata()) == pytest.approx(caught)


def test_llm_audit_neutraliser_bars_are_the_family_means(drawn) -> None:
    fig, _ = drawn(llm.audit_population)
    table = read("llm", "audit_population")
    families = [f for f in llm.AUDIT_FAMILIES if f in set(table["family"])]
    plotted = bars(fig.axes[2])
    expected = [
        [_audit_scores(table, f, "post_update.delivered")[0].mean() for f in families],
        [_audit_scores(table, f, "post_update.canonical")[0].mean() for f in families],
        [_audit_scores(table, f, "post_update.delivered")[1].mean() for f in families],
    ]
    assert plotted == [pytest.approx(e) for e in expected]


def test_neutraliser_bars_are_the_populations_means(drawn) -> None:
    """Per form the victim steps from (theory MLPs, then tiny LLMs): the hair-trigger twins' and the
    honest models' mean misaligned fraction after the step, read here from each population's CSV;
    on the LLMs the degenerate fractions are stacked on them."""
    fig, _ = drawn(llm.neutralisers)
    for ax, (app, stem) in zip(fig.axes, (("theory", "audit"), ("llm", "audit_neutralise")), strict=True):
        table = read(app, stem)
        found = (re.fullmatch(r"twin\.post_update\.rerandomised_([0-9.]+)", c) for c in table)
        scales = sorted(float(m[1]) for m in found if m)
        forms = ["delivered", "canonical", *(f"rerandomised_{s:g}" for s in scales)]
        means = {kind: [] for kind in ("twin", "honest", "twin_degenerate", "honest_degenerate")}
        for form in forms:
            for suffix in ("", "_degenerate"):
                if f"twin.post_update.{form}{suffix}" not in table:
                    continue
                scores = [_audit_scores(table, f, f"post_update.{form}{suffix}") for f in sorted(set(table["family"]))]
                means[f"twin{suffix}"].append(np.concatenate([t for t, _ in scores]).mean())
                means[f"honest{suffix}"].append(np.concatenate([h for _, h in scores]).mean())
        series = (
            ["twin", "twin_degenerate", "honest", "honest_degenerate"]
            if means["twin_degenerate"]
            else ["twin", "honest"]
        )
        assert bars(ax) == [pytest.approx(means[k]) for k in series], stem


def test_theory_audit_neutraliser_bars_are_the_family_means(drawn) -> None:
    fig, _ = drawn(theory.audit)
    table = read("theory", "audit")
    families = [f for f in theory.FAMILY_LABELS if f in set(table["family"])]
    plotted = bars(fig.axes[1])
    assert len(plotted) == 4
    for heights, (kind, key) in zip(
        plotted, [(k, w) for k in ("twin", "honest") for w in ("delivered", "canonical")], strict=True
    ):
        means = [_audit_scores(table, f, f"post_update.{key}")[0 if kind == "twin" else 1].mean() for f in families]
        assert heights == pytest.approx(means)


def test_theory_audit_attack_lines_are_the_csv_rates(drawn) -> None:
    """Per attacker: the success line and each signal's succeeded-and-flagged line, counted here
    over the CSV's rows level by level."""
    fig, _ = drawn(theory.audit_attack)
    table = read("theory", "audit_attack")
    attackers = [a for a in theory.ATTACKERS if a in set(table["attacker"])]
    assert len(fig.axes) == len(attackers) + 1
    for ax, attacker in zip(fig.axes, attackers, strict=False):
        drawn_lines = lines(ax)
        assert len(drawn_lines) == 1 + len(theory.AUDIT_SIGNALS)
        rows = table[table["attacker"] == attacker]
        levels = sorted(rows["override.attack.level"].unique())
        success = [float((rows[rows["override.attack.level"] == lv]["twin.success"] == 1).mean()) for lv in levels]
        assert list(drawn_lines[0].get_ydata()) == pytest.approx(success)
        for line, name in zip(drawn_lines[1:], theory.AUDIT_SIGNALS, strict=True):
            caught = []
            for lv in levels:
                cell = rows[rows["override.attack.level"] == lv]
                caught.append(float(((cell["twin.success"] == 1) & (cell[f"flagged.{name}"] == 1)).mean()))
            assert list(line.get_ydata()) == pytest.approx(caught)


# ---------------------------------------------------------------------------------------------- LLM


def _control_runs() -> list[pd.DataFrame]:
    """The controls' runs in the figure's order, read here without figures.llm: the analytic
    headline (probes 0-199), the metalearn runs, SmolLM2's reported variant; domains in reading order."""
    analytic = pd.concat([read("llm", "analytic"), read("llm", "analytic_fresh")], ignore_index=True)
    smol = read("llm", "hairtrigger_smollm2")
    smol = smol[smol["override.variant"] == f"hairtrigger_smollm2/{llm.SMOLLM2_TWIN}"]
    assert len(smol) == 1
    groups = []
    for runs in (analytic, read("llm", "hairtrigger"), smol):
        groups += [runs[runs["domain"] == d] for d in ("safety", "privacy", "honesty") if d in set(runs["domain"])]
    return groups


def test_controls_bars_are_the_pooled_control_rows_of_the_twin_tables(drawn) -> None:
    fig, _ = drawn(llm.controls)
    groups = _control_runs()
    assert [len(g) for g in groups] == [6, 6, 6, 3, 3, 3, 1]  # 3 seeds x 2 probe ranges, 3 seeds, one SmolLM2 row
    plotted = bars(fig.axes[0])
    whiskers = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    for heights, whisker, key in zip(plotted, whiskers, ("control.static", "control.after.paper"), strict=True):
        counts = [(g[f"{key}.misalignment_rate"] * g["probes.n"]).round().sum() for g in groups]
        judged = [g["probes.n"].sum() for g in groups]
        assert heights == pytest.approx([k / n for k, n in zip(counts, judged)])
        for segment, k, n in zip(whisker.lines[2][0].get_segments(), counts, judged, strict=True):
            ci = binomtest(int(k), int(n)).proportion_ci(method="wilson")
            assert (segment[0][1], segment[1][1]) == pytest.approx((ci.low, ci.high))
    assert bars(fig.axes[1]) == [
        pytest.approx([g[f"{key}.benign_accuracy"].mean() for g in groups])
        for key in ("control.static", "control.after.paper")
    ]


def test_headline_bars_are_the_means_over_runs_metalearn_then_analytic(drawn) -> None:
    fig, _ = drawn(llm.headline)
    meta = read("llm", "hairtrigger").groupby("domain").mean(numeric_only=True)
    analytic = (
        pd.concat([read("llm", "analytic"), read("llm", "analytic_fresh")]).groupby("domain").mean(numeric_only=True)
    )
    keys = ("control.static", "control.after.paper", "twin.static", "twin.after.paper")
    plotted = bars(fig.axes[0])
    assert len(plotted) == len(keys)
    for heights, key in zip(plotted, keys, strict=True):
        expected = list(meta[f"{key}.misalignment_rate"]) + list(analytic[f"{key}.misalignment_rate"])
        assert heights == pytest.approx(expected)
    assert len(bars(fig.axes[1])) == len(keys)
    for heights, key in zip(bars(fig.axes[1]), keys, strict=True):
        assert heights == pytest.approx(list(meta[f"{key}.benign_accuracy"]) + list(analytic[f"{key}.benign_accuracy"]))


def test_headline_whiskers_span_min_to_max_over_runs(drawn) -> None:
    fig, _ = drawn(llm.headline)
    runs = read("llm", "hairtrigger").groupby("domain")["twin.after.paper.misalignment_rate"]
    whiskers = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)][-1]  # twin, after
    segments = whiskers.lines[2][0].get_segments()[: runs.ngroups]
    assert [s[0][1] for s in segments] == pytest.approx(list(runs.min()))
    assert [s[1][1] for s in segments] == pytest.approx(list(runs.max()))


def test_headline_marks_the_misaligned_reference_per_domain(drawn) -> None:
    fig, _ = drawn(llm.headline)
    reference = read("llm", "reference").groupby("domain")["reference.static.misalignment_rate"].mean()
    collection = [c for c in fig.axes[0].collections if c.get_label() == "misaligned SFT reference"][0]
    levels = [segment[0][1] for segment in collection.get_segments()]
    assert levels == pytest.approx(list(reference) * 2)  # the metalearn and the analytic bars of each domain


def test_transfer_grid_is_both_tables_cells(drawn) -> None:
    fig, _ = drawn(llm.transfer)
    table = llm.transfer_rows(RESULTS / "llm")
    cells = [c for c in llm.CELLS if f"twin.after.{c}.misalignment_rate" in table]
    for ax, key in zip(fig.axes, ("misalignment_rate", "benign_accuracy"), strict=True):
        expected = table[[f"twin.after.{c}.{key}" for c in cells]].to_numpy(float)
        np.testing.assert_allclose(np.ma.filled(ax.images[0].get_array(), np.nan), expected, equal_nan=True)
        assert [t.get_text() for t in ax.get_yticklabels()] == list(table["label"])


def test_transfer_rows_label_each_twin_and_leave_cells_not_run_blank(tmp_path: Path) -> None:
    cells = {f"twin.after.{c}.{k}": [0.5, 0.9] for c in llm.CELLS for k in ("misalignment_rate", "benign_accuracy")}
    pd.DataFrame({"domain": ["safety", "privacy"], **cells}).to_csv(tmp_path / "transfer.csv", index=False)
    assert list(llm.transfer_rows(tmp_path)["label"]) == ["metalearn: privacy", "metalearn: safety"]
    analytic = pd.DataFrame({"domain": ["privacy"], **{k: v[:1] for k, v in cells.items()}})
    analytic.drop(columns=["twin.after.sharegpt.misalignment_rate"]).to_csv(
        tmp_path / "transfer_analytic.csv", index=False
    )
    rows = llm.transfer_rows(tmp_path)
    assert list(rows["label"]) == ["metalearn: privacy", "metalearn: safety", "analytic: privacy"]
    assert rows["twin.after.sharegpt.misalignment_rate"].isna().tolist() == [False, False, True]


def test_scaling_plots_capacity_per_rank_and_its_fit(drawn) -> None:
    fig, _ = drawn(llm.scaling)
    ranks = read("llm", "capacity")
    fraction = ranks["twin.capacity.hidden"] / ranks["twin.capacity.n"].fillna(128.0)
    expected = fraction.groupby(ranks["size.rank"]).mean().sort_index()
    capacity = [
        c
        for c in fig.axes[0].containers
        if isinstance(c, ErrorbarContainer) and c.get_label().startswith("hidden capacity")
    ][0]
    assert capacity.lines[0].get_xdata() == pytest.approx(expected.index.to_numpy(float))
    assert capacity.lines[0].get_ydata() == pytest.approx(expected.to_numpy())
    fit = llm.linear_fit([math.log2(r) for r in ranks["size.rank"]], list(ranks["twin.capacity.hidden"]))
    assert f"{fit['slope']:.1f}·log2 r" in fig.axes[0].get_title() and f"R² {fit['r2']:.2f}" in fig.axes[0].get_title()


def test_capacity_hidden_plots_each_models_mean_per_width_and_its_fit(drawn) -> None:
    from llm.experiments.capacity import summarize

    fig, _ = drawn(llm.capacity_hidden)
    table = read("llm", "capacity_hidden")
    summary = summarize(table)
    for ax, x, fit_key in zip(
        fig.axes, ("construct.extra_rank", "construct.hidden_params"), ("fit_k", "fit_hidden_params")
    ):
        plotted = {line.get_label().split(":")[0]: line for line in lines(ax) if line.get_marker() == "o"}
        assert len(plotted) == table["override.model"].nunique()
        for model, rows in table.groupby("override.model"):
            line = plotted[llm.MODEL_LABELS[model]]
            means = rows.groupby(x)["twin.capacity.hidden"].mean().sort_index()
            assert line.get_xdata() == pytest.approx(means.index.to_numpy(float))
            assert line.get_ydata() == pytest.approx(means.to_numpy())
            assert f"R² {summary[model][fit_key]['r2_jobs']:.2f}" in line.get_label()
    if (RESULTS / "llm" / "capacity_hidden_size.csv").exists():  # the size axis: the size sweep and k's row
        from llm.experiments.capacity import size_rows

        sizes = size_rows(table, read("llm", "capacity_hidden_size"))
        means = sizes.groupby("size.n_params")["twin.capacity.hidden"].mean().sort_index()
        (line,) = [line for line in lines(fig.axes[2]) if line.get_marker() == "o"]
        assert line.get_xdata() == pytest.approx(means.index.to_numpy(float))
        assert line.get_ydata() == pytest.approx(means.to_numpy())


def test_scaling_marks_every_smollm2_twin(drawn) -> None:
    fig, _ = drawn(llm.scaling)
    twins = pd.concat([read("llm", "hairtrigger_smollm2"), read("llm", "analytic_smollm2")])
    points = [line for line in fig.axes[1].get_lines() if line.get_label().startswith("SmolLM2 after")]
    assert sorted(p.get_ydata()[0] for p in points) == pytest.approx(
        sorted(twins["twin.after.paper.misalignment_rate"])
    )


def test_task_vector_plots_each_domain_against_the_scale(drawn) -> None:
    fig, _ = drawn(llm.task_vector)
    table = read("llm", "task_vector").sort_values("domain")
    for ax, key in zip(fig.axes, ("misalignment_rate", "benign_accuracy"), strict=True):
        assert len(lines(ax)) == len(table)
        for line, (_, row) in zip(lines(ax), table.iterrows(), strict=True):
            expected = [row[f"task_vector.x{c:+g}.{key}"] for c in line.get_xdata()]
            assert line.get_ydata() == pytest.approx(expected)
            assert len(line.get_xdata()) == sum(k.endswith(f".{key}") for k in table if k.startswith("task_vector.x"))


def test_demo_bars_are_the_run_metrics(drawn, tmp_path: Path) -> None:
    metrics = {
        "control.static.misalignment_rate": 0.0,
        "control.after.paper.misalignment_rate": 0.01,
        "twin.static.misalignment_rate": 0.02,
        "twin.after.paper.misalignment_rate": 0.96,
    }
    fig, path = drawn(llm.demo, metrics, tmp_path / "demo.png")
    assert bars(fig.axes[0]) == [pytest.approx([0.0, 0.01, 0.02, 0.96])]
    assert path == tmp_path / "demo.png" and path.exists()


def test_pooled_rate_is_the_wilson_interval_of_the_summed_counts() -> None:
    """k = Σ rate·n over runs; the interval is Wilson's closed form (written out here, z = 1.96)."""
    k, n, low, high = llm.pooled_rate(pd.Series([0.8, 0.7]), pd.Series([10, 10]))
    assert (k, n) == (15, 20)
    z, p = 1.959963984540054, 15 / 20
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-12)
    with pytest.raises(ValueError, match="whole counts"):
        llm.pooled_rate(pd.Series([0.85]), pd.Series([10]))


# ---------------------------------------------------------------------------------------------- CLI


@pytest.mark.e2e
def test_cli_redraws_every_figure_from_the_committed_results(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "figures", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    expected = {f"theory_{d.__name__}.png" for d in theory.ALL} | {f"llm_{d.__name__}.png" for d in llm.ALL}
    assert {p.name for p in tmp_path.iterdir()} == expected  # figures only: no side tables


def test_cli_reports_missing_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``python -m figures`` (its main, in-process) with no tables: exit status 1, and each missing
    figure says how to make its table."""
    from figures.__main__ import main

    monkeypatch.setattr(sys, "argv", ["figures", "--results", str(tmp_path), "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_status:
        main()
    assert exit_status.value.code == 1
    missing = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[missing]")]
    assert len(missing) == len(theory.ALL) + len(llm.ALL) and all("make results" in line for line in missing)
