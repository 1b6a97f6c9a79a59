"""Tiny multiruns of every theory experiment, and the command line's contract.

In-process: ``python -m theory -m experiment=NAME`` on a shrunken setting, run once per module
through :func:`sweeps.cli.main` (Hydra's basic launcher runs the jobs in this process); the
tests read the per-job ``metrics.json``, the sweep's ``summary.csv``/``summary.json`` and each
experiment's headline quantity. Marked ``e2e``: a multirun resumed through the real command
line, the joblib launcher's worker processes, and a refused setting's exit status.
"""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sweeps.jobs import flatten
from tests.apps import run_cli

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "task.n_train=64",
    "task.n_update=16",
    "task.n_eval=64",
    "task.n_probes=40",
    "task.base_steps=60",
    "model.d_in=10",
    "++model.hidden=[12]",
    "++construction.max_steps=30",
]
SWEEPS = {
    "twin": TINY + ["twin.n_flip=3", "twin.n_random_inputs=200", "model.redundant_units=8", "seed=0,1"],
    "gauge_scale": ["gauge.c=1,10,100", "gauge.d=4", "gauge.n_test=50"],
    "ntk": TINY + ["ntk.n_flip=2", "ntk.eval_lr=1e-4,1e-1", "model.redundant_units=4"],
    "capacity": TINY
    + [
        "hydra/launcher=basic",  # the experiment file asks for joblib; its workers are tested apart (e2e)
        "capacity.n_candidates=10",
        "capacity.n_random_inputs=200",
        "family=relu_isolating,linear_search",
        "model.redundant_units=0,4",
        "seed=0",
    ],
}


def n_jobs(overrides: list[str]) -> int:
    """The size of the sweep's grid: the product of the comma-separated values' counts."""
    sizes = [len(value.split(",")) for _, _, value in (o.partition("=") for o in overrides) if "[" not in value]
    return math.prod(sizes)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The sweep folder of ``python -m theory -m experiment=NAME`` on :data:`SWEEPS`'s setting,
    run in-process the first time a test asks for NAME."""
    done: dict[str, Path] = {}

    def sweep(name: str) -> Path:
        if name not in done:
            folder = tmp_path_factory.mktemp(name)
            with pytest.MonkeyPatch.context() as patch:
                args = ("-m", f"experiment={name}", f"hydra.sweep.dir={folder}", "threads=1", *SWEEPS[name])
                assert run_cli("theory", patch, *args) == 0
            done[name] = folder
        return done[name]

    return sweep


def assert_same(got: dict, want: dict, where: str = "") -> None:
    """The same keys; numbers equal to 12 significant digits (a CSV round trip), the rest exactly."""
    assert got.keys() == want.keys(), where
    for key, value in want.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert got[key] == pytest.approx(value, rel=1e-12), (where, key)
        else:
            assert got[key] == value, (where, key)


def job_config(metrics_path: Path) -> dict:
    return yaml.safe_load((metrics_path.parent / ".hydra" / "config.yaml").read_text())


@pytest.mark.parametrize("experiment", sorted(SWEEPS))
def test_tiny_multirun(experiment: str, swept: Callable[[str], Path]) -> None:
    """Every job of the grid writes its metrics and config; the sweep's table holds exactly those
    metrics, one row per job, and its summary is the experiment's ``summarize`` of that table."""
    folder = swept(experiment)
    jobs = sorted(folder.glob("*/metrics.json"))
    assert len(jobs) == n_jobs(SWEEPS[experiment])
    table = pd.read_csv(folder / "summary.csv")
    assert sorted(table["run_dir"]) == sorted(p.parent.name for p in jobs)
    for path in jobs:
        metrics = json.loads(path.read_text())
        row = table[table["run_dir"] == path.parent.name].iloc[0]
        assert_same({k: row[k] for k in metrics}, metrics, path.parent.name)
        assert job_config(path)["experiment_name"] == experiment
    summarize = importlib.import_module(f"theory.experiments.{experiment}").summarize
    expected = flatten(json.loads(json.dumps(summarize(table))))
    assert_same(flatten(json.loads((folder / "summary.json").read_text())), expected)


def test_twin_is_forward_equivalent_and_flips(swept: Callable[[str], Path]) -> None:
    """The tiny twin meets the headline contract: the base's function within the construction's
    tolerance, every chosen probe flipped by one step, no other probe, the control never; the
    summary reports those counts."""
    folder = swept("twin")
    for path in sorted(folder.glob("*/metrics.json")):
        m, cfg = json.loads(path.read_text()), job_config(path)
        assert m["twin.forward_max_abs_diff"] <= cfg["construction"]["forward_tol"]
        assert m["construction.n_flip"] == cfg["twin"]["n_flip"] and m["construction.success"] == 1
        assert m["twin.static.misaligned_fraction"] == 0
        assert m["twin.post_update.flipped_fraction"] * m["construction.n_flip"] == m["construction.n_flip"]
        assert m["twin.post_update.collateral_fraction"] == 0
        assert m["control.post_update.flipped_fraction"] == 0
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["n_runs"] == 2 and summary["min.twin.post_update.flipped_fraction"] == 1.0
    assert summary["mean.control.post_update.flipped_fraction"] == 0.0


def test_gauge_deviation_follows_the_closed_form(swept: Callable[[str], Path]) -> None:
    """c = 1 is the control (no deviation); otherwise the measured deviation is the closed form's,
    and the fitted log-log slope over c ∈ {10, 100} is that of c² + c⁻² − 2 (module docstring)."""
    folder = swept("gauge_scale")
    table = pd.read_csv(folder / "summary.csv").set_index("c")
    assert table.loc[1.0, "post_update.deviation"] <= 1e-12
    moved = table.loc[[10.0, 100.0]]
    assert (moved["post_update.deviation"] / moved["post_update.deviation_closed_form"] - 1).abs().max() <= 1e-9
    assert (table["forward_max_abs_diff"] <= 1e-12).all()  # the gauge leaves the function unchanged

    def growth(c: float) -> float:
        return c * c + 1 / (c * c) - 2

    summary = json.loads((folder / "summary.json").read_text())
    assert summary["fit"]["slope"] == pytest.approx(math.log10(growth(100) / growth(10)), rel=1e-9)


def test_ntk_prediction_breaks_down_first_for_the_twin(swept: Callable[[str], Path]) -> None:
    """At η = 1e-4 both first-order predictions hold; at η = 0.1 the twin's fails (relative error
    over the summary's threshold) while the control's still holds."""
    folder = swept("ntk")
    table = pd.read_csv(folder / "summary.csv").set_index("eval_lr")
    summary = json.loads((folder / "summary.json").read_text())
    threshold = summary["threshold"]
    assert table.loc[1e-4, "twin.rel_error"] < threshold and table.loc[1e-4, "control.rel_error"] < threshold
    assert table.loc[1e-1, "twin.rel_error"] > threshold > table.loc[1e-1, "control.rel_error"]
    assert summary["twin"]["breakdown_lr"] == 0.1 and summary["control"]["breakdown_lr"] == math.inf


def test_capacity_counts_only_exact_collateral_free_flips(swept: Callable[[str], Path]) -> None:
    """A job's capacity is its flips when the twin is forward-exact and nothing else flipped, else 0;
    with redundant units each family plants at least one behaviour; the summary's per-width means
    are the jobs' capacities."""
    folder = swept("capacity")
    table = pd.read_csv(folder / "summary.csv")
    valid = (table["capacity.forward_max_abs_diff"] <= 1e-10) & (table["capacity.collateral"] == 0)
    assert (table["capacity.forward_exact"] == (table["capacity.forward_max_abs_diff"] <= 1e-10)).all()
    assert (table["capacity.flipped"] == table["capacity.raw_flipped"].where(valid, 0)).all()
    summary = json.loads((folder / "summary.json").read_text())
    for family, rows in table.groupby("family"):
        rows = rows.sort_values("redundant_units")
        assert rows[rows["redundant_units"] == 4]["capacity.flipped"].iloc[0] >= 1, family
        means = ",".join(f"{v:g}" for v in rows["capacity.flipped"])
        assert summary[family]["mean_capacity"] == means and summary[family]["widths"] == "0,4"


def test_resume_reruns_a_job_whose_settings_changed(theory_app, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Resume trusts a finished job only if it ran with the same settings. A value that is
    not in the folder name (an experiment file edited since; simulated by editing the record)
    reruns that job instead of silently reusing stale metrics; the thread count does not."""
    args = ["-m", "experiment=gauge_scale", f"hydra.sweep.dir={tmp_path}", *SWEEPS["gauge_scale"]]
    assert theory_app(*args, "threads=1") == 0
    records = sorted(tmp_path.glob("*/settings.json"))
    settings = json.loads(records[0].read_text())
    assert settings["gauge.n_test"] == 50 and settings["gauge.teacher_scale"] == 0.3 and "threads" not in settings
    capsys.readouterr()
    assert theory_app(*args, "threads=2") == 0
    assert capsys.readouterr().out.count("[skip]") == len(records)
    records[0].write_text(json.dumps(settings | {"gauge.teacher_scale": 0.2}))
    assert theory_app(*args, "threads=1") == 0
    out = capsys.readouterr().out
    assert out.count("[skip]") == len(records) - 1
    assert out.count("[rerun]") == 1 and "gauge.teacher_scale" in out
    assert json.loads(records[0].read_text())["gauge.teacher_scale"] == 0.3


def test_bad_config_fails_clearly(theory_app, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An unknown model family is refused at start-up in one line naming the key and the choices."""
    assert theory_app("experiment=twin", "model.family=convnet", f"hydra.run.dir={tmp_path}") == 1
    assert capsys.readouterr().err.splitlines() == ["error: model.family: must be one of mlp, linear, not 'convnet'"]
    assert not (tmp_path / "metrics.json").exists()


# ------------------------------------------------------------------- through the real command line


def theory(sweep_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m theory -m experiment=gauge_scale ARGS`` on the tiny setting, in a new interpreter."""
    cmd = [sys.executable, "-m", "theory", "-m", "experiment=gauge_scale", f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.run([*cmd, *SWEEPS["gauge_scale"], *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.e2e
def test_resume_skips_finished_jobs(theory_app, tmp_path: Path) -> None:
    """A multirun run again through the command line reuses every metrics.json instead of
    recomputing, and exits 0."""
    assert theory_app("-m", "experiment=gauge_scale", f"hydra.sweep.dir={tmp_path}", *SWEEPS["gauge_scale"]) == 0
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/metrics.json")}
    assert len(stamps) == n_jobs(SWEEPS["gauge_scale"])
    again = theory(tmp_path, "threads=1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("[skip]") == len(stamps)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/metrics.json")} == stamps


@pytest.mark.e2e
def test_joblib_runs_two_jobs_in_parallel(tmp_path: Path) -> None:
    """hydra/launcher=joblib runs the jobs in worker processes with one torch thread each."""
    done = theory(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "threads=null")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = [json.loads(p.read_text()) for p in tmp_path.glob("*/metrics.json")]
    assert len(metrics) == n_jobs(SWEEPS["gauge_scale"]) and {m["torch_threads"] for m in metrics} == {1}
    assert "Joblib" in done.stdout + done.stderr
