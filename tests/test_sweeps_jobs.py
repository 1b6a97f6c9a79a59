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

EXPERIMENT = '''
def run(cfg):
    return {"score": cfg.seed + 0.5, "nested": {"value": 2}}
'''
REPORT = '''
def report(metrics):
    return "REPORT score=" + str(metrics["score"])
'''
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
