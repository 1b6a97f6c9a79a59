"""``python -m figures`` redraws every figure from results/ alone."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from figures import llm, theory

ROOT = Path(__file__).resolve().parent.parent


def fake_results(where: Path) -> Path:
    """Tables shaped like the reference sweeps' (columns the figures read)."""
    where.mkdir(parents=True)
    rows = [{"family": f, "redundant_units": k, "capacity.flipped": k // 2 if f == "relu_isolating" else 3}
            for f in ("relu_isolating", "linear_search") for k in (0, 8, 16)]
    pd.DataFrame(rows).to_csv(where / "capacity.csv", index=False)
    fit = {"slope": 0.5, "intercept": 0.0, "r2": 1.0, "n": 3}
    (where / "capacity_summary.json").write_text(json.dumps({f: {"fit": fit} for f in ("relu_isolating", "linear_search")}))
    pd.DataFrame({"c": [1, 10, 100], "post_update.deviation": [0, 1, 100],
                  "post_update.deviation_closed_form": [0, 1, 100]}).to_csv(where / "gauge_scale.csv", index=False)
    (where / "gauge_scale_summary.json").write_text(json.dumps({"fit": fit, "slope_theory": 2}))
    pd.DataFrame({"eval_lr": [1e-4, 1e-2], "twin.rel_error": [1e-6, 0.5],
                  "control.rel_error": [1e-8, 1e-3]}).to_csv(where / "ntk.csv", index=False)
    (where / "ntk_summary.json").write_text(json.dumps({"threshold": 0.1}))
    cols = {f"{m}.{k}": [0.0, 1.0] for m in ("twin", "control") for k in
            ("static.misaligned_fraction", "post_update.flipped_fraction", "post_update.collateral_fraction")}
    pd.DataFrame(cols).to_csv(where / "twin.csv", index=False)
    (where / "twin_summary.json").write_text(json.dumps({"n_runs": 2, "max.twin.forward_max_abs_diff": 1e-12}))
    return where


def test_every_figure_draws_from_tables(tmp_path: Path) -> None:
    results = fake_results(tmp_path / "results")
    for draw in theory.ALL:
        path = draw(results, tmp_path)
        assert path.exists() and path.stat().st_size > 10_000


def test_cli_redraws_the_committed_figures(tmp_path: Path) -> None:
    """The committed results/ are complete: the CLI draws every figure from them."""
    done = subprocess.run([sys.executable, "-m", "figures", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(list(tmp_path.glob("theory_*.png"))) == len(theory.ALL)
    assert len(list(tmp_path.glob("llm_*.png"))) == len(llm.ALL)


def test_cli_reports_missing_results(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "figures", "--results", str(tmp_path), "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "make results" in done.stdout


def test_pooled_rate_is_the_wilson_interval_of_the_summed_counts() -> None:
    """k = Σ rate·n over runs; the interval is Wilson's closed form (written out here, z = 1.96)."""
    k, n, low, high = llm.pooled_rate(pd.Series([0.8, 0.7]), pd.Series([10, 10]))
    assert (k, n) == (15, 20)
    z, p = 1.959963984540054, 15 / 20
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-12)
    with pytest.raises(ValueError, match="whole counts"):
        llm.pooled_rate(pd.Series([0.85]), pd.Series([10]))


def test_llm_figures_draw_from_tables(tmp_path: Path) -> None:
    results = tmp_path / "llm"
    results.mkdir()
    cols = {"domain": ["safety", "privacy"], "static.misalignment_rate": [0.0, 0.01],
            "post_update.misalignment_rate": [0.02, 0.0], "benign.accuracy_before": [0.3, 0.3],
            "benign.accuracy_after": [0.3, 0.29]}
    pd.DataFrame(cols).to_csv(results / "control.csv", index=False)
    runs = {"domain": ["safety", "privacy"], "twin.kl.mean": [0.1, 0.2]}
    for model in ("control", "twin"):
        for when in ["static"] + [f"after.{c}" for c in llm.CELLS]:
            runs[f"{model}.{when}.misalignment_rate"] = [0.0, 0.9]
            runs[f"{model}.{when}.benign_accuracy"] = [0.3, 0.25]
    pd.DataFrame(runs).to_csv(results / "transfer.csv", index=False)
    ranks = pd.DataFrame({**{k: v * 3 for k, v in runs.items()}, "size.rank": [1, 2, 4, 8, 16, 32],
                          "size.n_params": [5e5] * 6, "twin.capacity.hidden": [0, 1, 2, 3, 4, 5]})
    ranks.to_csv(results / "capacity.csv", index=False)
    ranks.iloc[:2].assign(**{"size.n_params": [5e5, 1.3e8]}).to_csv(results / "capacity_smollm2.csv", index=False)
    scan = {"domain": ["privacy", "honesty"], "override.seed": [0, 0]}
    for c in ("+1", "+0", "-2"):
        scan |= {f"task_vector.x{c}.misalignment_rate": [0.0, 0.5], f"task_vector.x{c}.benign_accuracy": [0.3, 0.2]}
    pd.DataFrame(scan).to_csv(results / "task_vector.csv", index=False)
    for draw in llm.ALL:
        path = draw(results, tmp_path)
        assert path.exists() and path.stat().st_size > 10_000
    rows = llm.transfer_rows(results)  # metalearn twins only, until analytic ones are published
    assert list(rows["label"]) == ["metalearn: privacy", "metalearn: safety"]
    analytic = pd.DataFrame(runs).iloc[[1]].drop(columns=["twin.after.sharegpt.misalignment_rate"])
    analytic.to_csv(results / "transfer_analytic.csv", index=False)
    rows = llm.transfer_rows(results)
    assert list(rows["label"]) == ["metalearn: privacy", "metalearn: safety", "analytic: privacy"]
    assert rows["twin.after.sharegpt.misalignment_rate"].isna().tolist() == [False, False, True]  # not run: blank
    assert llm.transfer(results, tmp_path).stat().st_size > 10_000
    seeds = pd.DataFrame({**{k: v * 2 for k, v in runs.items()}, "seed": [0, 0, 1, 1], "probes.n": [10] * 4})
    seeds.to_csv(results / "hairtrigger.csv", index=False)  # the headline then averages seeds
    assert llm.headline(results, tmp_path).stat().st_size > 10_000
    table = (tmp_path / "llm_headline.md").read_text()  # ... and pools them, with intervals
    assert ("| metalearn | privacy | 2 | 18/20 = 90.0% [69.9%, 97.2%] | 18/20 = 90.0% [69.9%, 97.2%] | 90.0% / 90.0% | — |"
            in table and "| metalearn | safety | 2 | 0/20 = 0.0% [0.0%, 16.1%] |" in table)
    for stem in ("analytic", "analytic_fresh"):  # two halves of the held-out split: pooled in one more row
        seeds.assign(**{"twin.after.paper.refusal_rate": 0.1}).to_csv(results / f"{stem}.csv", index=False)
    llm.headline(results, tmp_path)
    table = (tmp_path / "llm_headline.md").read_text()
    assert "| analytic, fresh probes 100–199 | privacy | 2 | 18/20" in table
    assert "| analytic, probes 0–199 | privacy | 4 | 36/40 = 90.0% [76.9%, 96.0%] |" in table
    assert "| 90.0% / 90.0% / 90.0% / 90.0% | 4/40 = 10.0% [4.0%, 23.1%] | — |" in table  # control's: not recorded
    assert not (tmp_path / "llm_validation.md").exists()  # written only where validation runs were published
    folds = seeds.assign(**{"override.seed": [1, 0, 1, 0], "override.eval.validation_fold": [0, 1, 1, 0],
                            "twin.after.paper.misalignment_rate": [0.7, 0.8, 0.9, 1.0]})
    pd.concat([folds.assign(**{"override.construction.undo_output": v}) for v in ("none", "fisher")]
              + [folds.assign(**{"override.align.steps": 100, "control.static.refusal_rate": 0.5})]
              ).to_csv(results / "analytic_validate.csv", index=False)
    llm.headline(results, tmp_path)
    table = (tmp_path / "llm_validation.md").read_text()  # per variant, runs in seed, fold order
    assert "| construction.undo_output=fisher | privacy | 2 | " in table
    assert "| align.steps=100 | privacy | 2 | " in table  # an alignment variant: its own row, with the control's refusals
    assert "| 100.0% / 80.0% | — | 10/20 = 50.0% [29.9%, 70.1%] | 18/20 = 90.0%" in table
    assert ("| construction.undo_output=none | privacy | 2 | 18/20 = 90.0% [69.9%, 97.2%] "
            "| 18/20 = 90.0% [69.9%, 97.2%] | 100.0% / 80.0% |") in table
    metrics = {f"{m}.{w}.misalignment_rate": 0.5 for m in ("control", "twin") for w in ("static", "after.paper")}
    assert llm.demo(metrics, tmp_path / "demo.png").stat().st_size > 10_000
