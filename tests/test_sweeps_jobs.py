"""One job of the harness, run in-process through Hydra: what it prints, where it writes, resume."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import hydra
import pytest
from omegaconf import DictConfig

from sweeps import cli
from sweeps.jobs import execute

EXPERIMENT = """
def run(cfg):
    return {"score": cfg.seed + 0.5, "nested": {"value": 2}}
"""
REPORT = """
def report(metrics):
    return "REPORT score=" + str(metrics["score"])
"""
CONFIG = """\
experiment_name: plain
seed: 0
threads: null
resume: true
publish_mode: replace
hydra:
  run:
    dir: {out}/${{experiment_name}}/${{now:%Y-%m-%d_%H-%M-%S}}
  job:
    chdir: false
"""


@pytest.fixture
def fake_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., int]]:
    """``python -m fakeapp ARGS`` in-process: experiments ``plain`` (no report) and ``reported``."""
    package = tmp_path / "fakeapp"
    (package / "experiments").mkdir(parents=True)
    for path in (package / "__init__.py", package / "experiments" / "__init__.py"):
        path.write_text("")
    (package / "experiments" / "plain.py").write_text(EXPERIMENT)
    (package / "experiments" / "reported.py").write_text(EXPERIMENT + REPORT)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(CONFIG.format(out=tmp_path / "outputs"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")

    @hydra.main(version_base="1.3", config_path=str(tmp_path / "conf"), config_name="config")
    def main(cfg: DictConfig) -> dict:
        return execute(cfg, "fakeapp")

    def run(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["fakeapp", *args])
        return cli.main(main)

    yield run
    for name in [m for m in sys.modules if m.split(".")[0] == "fakeapp"]:  # each test imports its own copy
        del sys.modules[name]


def test_a_job_prints_its_report_and_not_every_metric(fake_app, tmp_path: Path, capsys) -> None:
    assert fake_app("experiment_name=reported", f"hydra.run.dir={tmp_path}/r") == 0
    out = capsys.readouterr().out
    assert "REPORT score=0.5" in out and f"[metrics] {tmp_path}/r/metrics.json" in out
    assert "nested.value" not in out and "wall_time_s" not in out
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["nested.value"] == 2


def test_a_job_without_a_report_prints_its_metrics(fake_app, tmp_path: Path, capsys) -> None:
    assert fake_app(f"hydra.run.dir={tmp_path}/p") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:2]] == ["score", "nested.value"]
    assert lines[-1] == f"[metrics] {tmp_path}/p/metrics.json"


GAUGE = ["experiment=gauge_scale", "gauge.d=4", "gauge.n_test=50", "threads=1"]


def test_two_runs_started_in_the_same_second_keep_both_results(
    theory_app, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Single runs name their folder by start time: two started within one second get two folders."""
    import datetime

    import hydra.core.utils

    ticks = iter(range(10**6))

    class SameSecond(datetime.datetime):  # every call: the same second, a later microsecond
        @classmethod
        def now(cls, tz=None):
            return cls(2030, 1, 2, 3, 4, 5, next(ticks))

    monkeypatch.setattr(hydra.core.utils, "datetime", SameSecond)
    monkeypatch.chdir(tmp_path)  # the default run folder is relative: outputs/theory/...
    assert theory_app(*GAUGE, "gauge.c=1") == 0
    assert theory_app(*GAUGE, "gauge.c=10") == 0
    folders = sorted((tmp_path / "outputs" / "theory" / "gauge_scale").iterdir())
    assert len(folders) == 2
    ran = [json.loads((f / "settings.json").read_text())["gauge.c"] for f in folders]
    assert sorted(ran) == [1, 10] and all((f / "metrics.json").exists() for f in folders)


_HOLD = """
import sys, time
from pathlib import Path
from sweeps.locks import claim
claim(Path(sys.argv[1]), "hydra.run.dir")
print("held", flush=True)
time.sleep(120)
"""


def test_a_folder_held_by_a_live_run_is_refused_and_left_untouched(
    theory_app, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A run pointed at a folder that another live run holds exits 1 before writing anything
    there; once that run has ended the folder is free again."""
    import subprocess

    folder = tmp_path / "run"
    other = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert other.stdout.readline().strip() == "held"
        before = sorted(p.name for p in folder.iterdir())
        assert theory_app(*GAUGE, f"hydra.run.dir={folder}") == 1
        assert capsys.readouterr().err.splitlines() == [
            f"error: hydra.run.dir: {folder} is in use by another run (process {other.pid})"
        ]
        assert sorted(p.name for p in folder.iterdir()) == before  # no .hydra/, log or metrics written
    finally:
        other.kill()
        other.wait()
    assert theory_app(*GAUGE, f"hydra.run.dir={folder}") == 0
    assert (folder / "metrics.json").exists()


def test_settings_changed_ignores_keys_that_do_not_change_a_result(tmp_path: Path) -> None:
    """A record that holds a key ignored only now (say results_dir) is not a change; others are."""
    from sweeps.jobs import settings_changed

    (tmp_path / "settings.json").write_text(json.dumps({"seed": 0, "results_dir": "results/theory", "a.b": 1}))
    assert settings_changed(tmp_path, {"seed": 0, "a.b": 1}, ignore={"results_dir"}) == []
    assert settings_changed(tmp_path, {"seed": 0, "a.b": 1}) == ["results_dir"]
    assert settings_changed(tmp_path, {"seed": 1, "a.b": 1}, ignore={"results_dir"}) == ["seed"]
    assert settings_changed(tmp_path / "none", {"seed": 0}) is None
