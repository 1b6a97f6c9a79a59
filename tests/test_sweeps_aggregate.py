"""A sweep's table and its publishing: a failure fails the command, concurrent publishers keep every
row, and a sweep folder used twice summarises only the sweep that just ran."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.synchronize
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sweeps import cli
from sweeps.aggregate import Target, publish

ROOT = Path(__file__).resolve().parent.parent
GAUGE = ["experiment=gauge_scale", "gauge.d=4", "gauge.n_test=50", "threads=1"]


def test_a_failed_summary_fails_the_command(
    theory_app, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import theory.experiments.gauge_scale as experiment

    def broken(table: pd.DataFrame) -> dict:
        raise KeyError("fit.slope")

    monkeypatch.setattr(experiment, "summarize", broken)
    status = theory_app("-m", *GAUGE, "gauge.c=1,10", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert status == 1
    assert capsys.readouterr().err.splitlines() == ["error: aggregate: summarize raised KeyError: 'fit.slope'"]


@pytest.mark.e2e
def test_an_unwritable_publish_target_fails_the_command(tmp_path: Path) -> None:
    """Through the real command line: the exit status is what a Makefile or CI sees."""
    (tmp_path / "a_file").write_text("")
    target = tmp_path / "a_file" / "results"  # below a file: no folder can be made there
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "theory",
            "-m",
            *GAUGE,
            "gauge.c=1,10",
            "publish=true",
            f"results_dir={target}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: publish: {target}"), done.stderr


def _count(table: pd.DataFrame) -> dict:
    return {"rows": len(table)}


def _publish_rows(folder: Path, worker: int, rounds: int, start: multiprocessing.synchronize.Barrier) -> None:
    start.wait()
    for step in range(rounds):
        seed = worker * rounds + step
        table = pd.DataFrame({"override.seed": [str(seed)], "score": [seed / 10], "run_dir": [f"seed={seed}"]})
        publish(table, _count(table), Target(folder, "table", merge=True), summarize=_count)


def test_concurrent_merges_keep_every_row(tmp_path: Path) -> None:
    """Several sweeps publishing into one table at once (publish_mode=merge): no row is lost and
    the summary describes the final table."""
    workers, rounds = 6, 5
    context = multiprocessing.get_context("fork")
    start = context.Barrier(workers)
    procs = [context.Process(target=_publish_rows, args=(tmp_path, w, rounds, start)) for w in range(workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    table = pd.read_csv(tmp_path / "table.csv")
    assert sorted(table["override.seed"]) == list(range(workers * rounds))
    assert json.loads((tmp_path / "table_summary.json").read_text()) == {"rows": workers * rounds}


def test_a_merge_writes_the_overrides_as_they_were_given(tmp_path: Path) -> None:
    """Rows published with ``attack.weight=1,10`` merged with a sweep at ``0.001``: the earlier rows
    keep ``1`` and ``10`` (a table is matched to its experiment's grid by these strings), and a
    rerun of ``1`` replaces its row."""
    target = Target(tmp_path, "table", merge=True)

    def rows(weights: list[str], value: float) -> pd.DataFrame:
        return pd.DataFrame({"override.attack.weight": weights, "score": [value] * len(weights)})

    publish(rows(["1", "10"], 0.0), {}, Target(tmp_path, "table"))
    publish(rows(["0.001"], 1.0), {}, target)
    publish(rows(["1"], 2.0), {}, target)
    written = (tmp_path / "table.csv").read_text().splitlines()
    assert written[1:] == ["10,0.0", "0.001,1.0", "1,2.0"]


def test_a_reused_sweep_folder_summarises_only_its_own_jobs(
    theory_app, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Two grids into one hydra.sweep.dir: the second sweep's table and published table hold its own
    jobs, not the first's; jobs a resumed sweep skips are still its own."""
    sweep, results = tmp_path / "sweep", tmp_path / "results"
    args = ["-m", *GAUGE, f"hydra.sweep.dir={sweep}", "publish=true", f"results_dir={results}"]
    assert theory_app(*args, "gauge.c=1,10") == 0
    assert theory_app(*args, "gauge.c=100,1000") == 0
    assert sorted(pd.read_csv(sweep / "summary.csv")["override.gauge.c"]) == [100, 1000]
    assert sorted(pd.read_csv(results / "gauge_scale.csv")["override.gauge.c"]) == [100, 1000]
    capsys.readouterr()
    assert theory_app(*args, "gauge.c=10,100,10000") == 0
    assert capsys.readouterr().out.count("[skip]") == 2
    assert sorted(pd.read_csv(sweep / "summary.csv")["override.gauge.c"]) == [10, 100, 10000]
    assert len(list(sweep.glob("*/metrics.json"))) == 5  # earlier jobs stay on disk, out of the table
