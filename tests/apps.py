"""The apps run in-process, as the tests call them: a Hydra config composed from ``conf/APP`` and
handed to the harness's runner (:func:`sweeps.jobs.execute`), as lightning-hydra-template's tests
call ``train(cfg)``; or the whole command line (:func:`sweeps.cli.main`) without a new interpreter.
Tests that launch ``python -m ...`` themselves are marked ``e2e``."""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from sweeps import cli
from sweeps.jobs import execute

ROOT = Path(__file__).resolve().parent.parent


def compose_app(app: str, overrides: list[str] | tuple[str, ...]) -> DictConfig:
    """``conf/APP/config.yaml`` with ``overrides``, as ``python -m APP OVERRIDES`` sees it (the
    ``hydra`` node included)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf" / app), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def run_job(app: str, out: Path, *overrides: str) -> dict[str, Any]:
    """One job of ``python -m APP OVERRIDES hydra.run.dir=OUT``: the composed config goes to
    :func:`sweeps.jobs.execute` (validation, resume, ``metrics.json`` in ``out``); returns its
    metrics. A refused setting raises its :class:`~sweeps.errors.ConfigError` here."""
    cfg = compose_app(app, overrides)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
    with _hydra_config_restored():
        HydraConfig.instance().set_config(cfg)
        return execute(cfg, app)


def run_cli(app: str, monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """``python -m APP ARGS`` (multiruns included; Hydra's basic launcher runs their jobs here);
    returns the exit status. What it prints is left to ``capsys``."""
    main = importlib.import_module(f"{app}.__main__").main
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # restored after the test (cli.main sets it)
    monkeypatch.setattr(sys, "argv", [app, *args])
    with _hydra_config_restored():
        return cli.main(main)


@contextlib.contextmanager
def _hydra_config_restored() -> Iterator[None]:
    """Hydra's config singleton as it was before the run: a later test that reads it (the keys a
    job ignores) does not see this run's."""
    hydra_config = HydraConfig.instance()
    before = hydra_config.cfg
    try:
        yield
    finally:
        hydra_config.cfg = before
