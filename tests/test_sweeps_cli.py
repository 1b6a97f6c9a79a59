"""The command line's contract: a refused run is one line on stderr and a non-zero exit status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import hydra
import pytest
from omegaconf import DictConfig, OmegaConf

from sweeps import cli
from sweeps.errors import ConfigError, NonFiniteError
from sweeps.jobs import validate

ROOT = Path(__file__).resolve().parent.parent
GAUGE = ["experiment=gauge_scale", "gauge.d=4", "gauge.n_test=50", "threads=1"]


def theory(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "theory", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.e2e
def test_a_bad_setting_is_one_line_and_fails(tmp_path: Path) -> None:
    done = theory(*GAUGE, "publish_mode=append", f"hydra.run.dir={tmp_path}")
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["error: publish_mode: must be replace or merge, got 'append'"]
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.e2e
def test_a_refusal_in_a_launcher_worker_is_one_line(tmp_path: Path) -> None:
    """The joblib launcher runs jobs in worker processes: the error crosses back by pickling."""
    done = theory(
        "-m",
        *GAUGE,
        "gauge.c=1,10",
        "publish_mode=append",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["error: publish_mode: must be replace or merge, got 'append'"]
    assert not list(tmp_path.glob("**/metrics.json")) and not (tmp_path / "summary.csv").exists()


@pytest.mark.e2e
def test_hydra_usage_errors_are_one_line() -> None:
    done = theory("experiment=no_such_experiment")
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "experiment/no_such_experiment" in lines[0]


def _app(error: Exception, tmp_path: Path):
    """A Hydra app (an empty config in ``tmp_path/conf``) whose job raises ``error``."""
    (tmp_path / "conf").mkdir(exist_ok=True)
    (tmp_path / "conf" / "config.yaml").write_text("{}\n")

    @hydra.main(version_base="1.3", config_path=str(tmp_path / "conf"), config_name="config")
    def main(cfg: DictConfig) -> None:
        raise error

    return main


@pytest.mark.parametrize("multirun", [False, True])
@pytest.mark.parametrize(
    "error",
    [
        NonFiniteError("update", "loss is nan after the step"),
        ConfigError("update.lr", "must be finite and > 0, got nan"),
    ],
)
def test_refusals_are_one_line_in_process(
    error: Exception, multirun: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # restored after the test (cli.main sets it)
    mode = ["-m", f"hydra.sweep.dir={tmp_path}/out", "+seed=0,1"] if multirun else [f"hydra.run.dir={tmp_path}/out"]
    monkeypatch.setattr(sys, "argv", ["app", *mode])
    assert cli.main(_app(error, tmp_path)) == 1
    assert capsys.readouterr().err.splitlines() == [f"error: {error}"]


def test_a_bug_keeps_its_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    monkeypatch.setattr(sys, "argv", ["app", f"hydra.run.dir={tmp_path}/out"])
    with pytest.raises(ZeroDivisionError):
        cli.main(_app(ZeroDivisionError("a bug"), tmp_path))


def test_execute_runs_the_apps_validate_when_it_has_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``{app}.config.validate`` is called; an app without that module is not checked; a config
    module that fails to import is an error, not a missing module."""
    for app, source in {
        "checked": "from sweeps.errors import ConfigError\n\n"
        "def validate(cfg):\n    if cfg.lr <= 0:\n"
        "        raise ConfigError('lr', f'must be > 0, got {cfg.lr}')\n",
        "broken": "import no_such_module_here\n",
        "unchecked": None,
    }.items():
        (tmp_path / app).mkdir()
        (tmp_path / app / "__init__.py").write_text("")
        if source is not None:
            (tmp_path / app / "config.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    validate(OmegaConf.create({"lr": 0.1}), "checked")
    with pytest.raises(ConfigError, match="^lr: must be > 0, got -1"):
        validate(OmegaConf.create({"lr": -1}), "checked")
    assert validate(OmegaConf.create({"lr": -1}), "unchecked") is None
    with pytest.raises(ModuleNotFoundError, match="no_such_module_here"):
        validate(OmegaConf.create({}), "broken")


def test_refusals_survive_pickling() -> None:
    import pickle

    for error in (ConfigError("update.lr", "got nan"), NonFiniteError("evaluation", "logits are inf")):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error) and back.args == error.args
