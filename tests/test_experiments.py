"""Tiny end-to-end multiruns of every theory experiment through the real CLI.

Each runs ``python -m theory -m experiment=NAME`` on a shrunken setting, then checks the
per-job ``metrics.json``, the aggregated ``summary.csv``/``summary.json``, resume, and the
joblib launcher.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

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
        "capacity.n_candidates=10",
        "capacity.n_random_inputs=200",
        "family=relu_isolating,linear_search",
        "model.redundant_units=0,4",
        "seed=0",
    ],
}


def sweep(experiment: str, sweep_dir: Path, *extra: str, threads: str = "1") -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "theory",
        "-m",
        f"experiment={experiment}",
        f"hydra.sweep.dir={sweep_dir}",
        f"threads={threads}",
        *SWEEPS[experiment],
        *extra,
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.parametrize("experiment", sorted(SWEEPS))
def test_tiny_multirun(experiment: str, tmp_path: Path) -> None:
    """Every job writes flat metrics; the sweep writes one table and a summary."""
    sweep(experiment, tmp_path)
    jobs = sorted(tmp_path.glob("*/metrics.json"))
    assert len(jobs) >= 2
    for path in jobs:
        metrics = json.loads(path.read_text())
        assert all(isinstance(v, (int, float, str)) for v in metrics.values())
        assert (path.parent / ".hydra" / "config.yaml").exists()
    table = pd.read_csv(tmp_path / "summary.csv")
    assert len(table) == len(jobs)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary


def test_twin_is_forward_equivalent_and_flips(tmp_path: Path) -> None:
    """The tiny twin meets the headline contract: same function, flipped after one step."""
    sweep("twin", tmp_path)
    table = pd.read_csv(tmp_path / "summary.csv")
    assert (table["twin.forward_max_abs_diff"] <= 1e-10).all()
    assert (table["twin.static.misaligned_fraction"] == 0).all()
    assert (table["twin.post_update.flipped_fraction"] >= 0.95).all()
    assert (table["control.post_update.flipped_fraction"] == 0).all()


def test_resume_skips_finished_jobs(tmp_path: Path) -> None:
    """A re-run of the same sweep reuses every metrics.json instead of recomputing."""
    sweep("gauge_scale", tmp_path)
    first = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/metrics.json")}
    again = sweep("gauge_scale", tmp_path)
    assert again.stdout.count("[skip]") == len(first)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/metrics.json")} == first


def test_joblib_runs_two_jobs_in_parallel(tmp_path: Path) -> None:
    """hydra/launcher=joblib runs the jobs in worker processes with one torch thread each."""
    done = sweep("gauge_scale", tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", threads="null")
    threads = {json.loads(p.read_text())["torch_threads"] for p in tmp_path.glob("*/metrics.json")}
    assert threads == {1}
    assert "Joblib" in done.stdout + done.stderr


def test_bad_config_fails_clearly(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "theory", "experiment=twin", "model.family=convnet", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "unknown model.family 'convnet'" in done.stderr


def test_resume_reruns_a_job_whose_settings_changed(tmp_path: Path) -> None:
    """Resume trusts a finished job only if it ran with the same settings. A value that is
    not in the folder name (an experiment file edited since; simulated by editing the record)
    reruns that job instead of silently reusing stale metrics; the thread count does not."""
    sweep("gauge_scale", tmp_path)
    records = sorted(tmp_path.glob("*/settings.json"))
    settings = json.loads(records[0].read_text())
    assert settings["gauge.n_test"] == 50 and settings["gauge.teacher_scale"] == 0.3 and "threads" not in settings
    assert sweep("gauge_scale", tmp_path, threads="2").stdout.count("[skip]") == len(records)
    records[0].write_text(json.dumps(settings | {"gauge.teacher_scale": 0.2}))
    again = sweep("gauge_scale", tmp_path)
    assert again.stdout.count("[skip]") == len(records) - 1
    assert again.stdout.count("[rerun]") == 1 and "gauge.teacher_scale" in again.stdout
    assert json.loads(records[0].read_text())["gauge.teacher_scale"] == 0.3
