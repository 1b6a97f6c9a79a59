"""One job of ``python -m APP``: run an experiment and record its result.

* Every job writes a flat ``metrics.json`` (dotted keys, numbers or strings) and the settings it
  ran with (``settings.json``) atomically into its run folder.
* With ``resume=true`` a job whose ``metrics.json`` exists and whose settings are unchanged is
  skipped; a changed setting reruns it.
* A job holds its run folder while it runs (a second run there is refused), and a multirun's job,
  run or skipped, adds its folder to the sweep's job list: the sweep's table is made of those only.
* Experiments are looked up by name: ``{app}.experiments.{runner or experiment_name}`` with
  ``run(cfg) -> dict`` and, optionally, ``report(metrics) -> str`` and ``summarize(table) -> dict``.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any, cast

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sweeps.errors import ConfigError
from sweeps.io import write_atomic, write_json_atomic
from sweeps.locks import claimed, locked

METRICS = "metrics.json"
SETTINGS = "settings.json"  # what a finished job was run with (resume reruns a job whose settings changed)
JOBS = ".jobs"  # in a sweep folder: the run folders of the multirun that last started there, one a line
JOBS_LOCK = ".jobs.lock"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; leaves must be numbers, strings or bools."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = value
        else:
            raise TypeError(f"metric {name!r} has type {type(value).__name__}; use a number or string")
    return flat


def ignored_keys() -> set[str]:
    """Top-level keys that do not change a result: those the sweep folder name leaves out
    (hydra's ``override_dirname.exclude_keys``: threads, publishing, …)."""
    return set(HydraConfig.get().job.config.override_dirname.exclude_keys) if HydraConfig.initialized() else set()


def job_settings(cfg: DictConfig) -> dict[str, Any]:
    """The resolved settings a job's results depend on: the config, flattened, less ``hydra``
    and the :func:`ignored_keys`."""
    ignore = ignored_keys()
    plain = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))

    def leaves(node: Any) -> Any:  # lists become their JSON text, so every leaf compares as one value
        if isinstance(node, dict):
            return {k: leaves(v) for k, v in node.items()}
        return json.dumps(node) if isinstance(node, list) else node

    return flatten(leaves({k: v for k, v in plain.items() if k != "hydra" and k not in ignore}))


def settings_changed(run_dir: Path, settings: dict[str, Any], ignore: Collection[str] = ()) -> list[str] | None:
    """Keys whose value differs from the settings a finished job recorded; None when it
    recorded none (it predates the record and is trusted as before). Keys under ``ignore``
    (top-level names) are not compared: a record may hold one that is ignored only now."""
    path = run_dir / SETTINGS
    if not path.exists():
        return None
    old = json.loads(path.read_text())
    keys = {k for k in set(old) | set(settings) if k.split(".")[0] not in ignore}
    return sorted(k for k in keys if old.get(k, "<unset>") != settings.get(k, "<unset>"))


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / METRICS
    return json.loads(path.read_text()) if path.exists() else None


def publish_mode(cfg: DictConfig) -> str:
    """``publish_mode`` (``replace`` | ``merge``), checked at job start so that a typo fails at
    once rather than when the multirun ends."""
    mode = cfg.get("publish_mode", "replace")
    if mode not in ("replace", "merge"):
        raise ConfigError("publish_mode", f"must be replace or merge, got {mode!r}")
    return mode


def validate(cfg: DictConfig, app: str) -> None:
    """The app's start-up checks, ``{app}.config.validate(cfg)`` (raises ConfigError), where the
    app has that module."""
    try:
        module = importlib.import_module(f"{app}.config")
    except ModuleNotFoundError as error:
        if error.name != f"{app}.config":  # the module exists but one of its imports does not
            raise
        return
    module.validate(cfg)


def execute(cfg: DictConfig, app: str) -> dict[str, Any]:
    """Body of ``python -m APP experiment=NAME``: validate the settings, then, holding the run
    folder (:func:`sweeps.locks.claimed`), run the experiment and write ``metrics.json``.

    Skips the job (returning its metrics) when ``metrics.json`` exists, ``resume`` is on and the
    settings are unchanged. A multirun's job, run or skipped, enters the sweep's job list.
    """
    if cfg.get("experiment_name") is None:
        raise ConfigError("experiment", f"choose one: python -m {app} experiment=NAME (see conf/{app}/experiment/)")
    publish_mode(cfg)
    validate(cfg, app)
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    with claimed(run_dir, "hydra.sweep.dir" if multirun else "hydra.run.dir"):
        metrics = _resume(cfg, run_dir)
        if metrics is None:
            metrics = _run(cfg, app, run_dir)
    if multirun:
        record_job(Path(hydra_cfg.sweep.dir), run_dir)
    return metrics


def _resume(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """The finished job's metrics when resume is on and its settings are unchanged, else None."""
    done = read_metrics(run_dir)
    if done is None or not cfg.resume:
        return None
    changed = settings_changed(run_dir, job_settings(cfg), ignored_keys())
    if not changed:
        unknown = "" if changed is not None else "; it predates settings.json, so a changed setting goes unseen"
        print(f"[skip] {run_dir / METRICS} exists (resume=true{unknown})")
        return done
    print(f"[rerun] {run_dir / METRICS} was computed with other settings: {', '.join(changed[:8])}")
    return None


def _run(cfg: DictConfig, app: str, run_dir: Path) -> dict[str, Any]:
    """Run the experiment; write its settings and flat metrics; print its report."""
    settings = job_settings(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    experiment = importlib.import_module(f"{app}.experiments.{cfg.get('runner') or cfg.experiment_name}")
    start = time.perf_counter()
    metrics = flatten(experiment.run(cfg))
    metrics["wall_time_s"] = round(time.perf_counter() - start, 3)
    metrics["torch_threads"] = torch.get_num_threads()
    write_json_atomic(run_dir / SETTINGS, settings)
    write_json_atomic(run_dir / METRICS, metrics)
    print(experiment.report(metrics) if hasattr(experiment, "report") else format_metrics(metrics))
    print(f"[metrics] {run_dir / METRICS}")
    return metrics


def start_job_list(sweep_dir: Path) -> None:
    """Begin the sweep's job list empty (at the start of a multirun, which holds the folder)."""
    write_atomic(Path(sweep_dir) / JOBS, "")


def record_job(sweep_dir: Path, run_dir: Path) -> None:
    """Add ``run_dir`` (relative to the sweep folder) to the sweep's job list; jobs of one
    multirun may finish at once in several worker processes, hence the lock."""
    sweep_dir = Path(os.path.abspath(sweep_dir))
    with locked(sweep_dir / JOBS_LOCK), open(sweep_dir / JOBS, "a") as jobs:
        jobs.write(f"{Path(run_dir).resolve().relative_to(sweep_dir.resolve())}\n")


def read_job_list(sweep_dir: Path) -> list[str] | None:
    """The run folders (relative to ``sweep_dir``) of the multirun that last started there, each
    once; None when it has no list."""
    path = Path(sweep_dir) / JOBS
    if not path.exists():
        return None
    return sorted(set(path.read_text().splitlines()))


def format_metrics(metrics: dict[str, Any]) -> str:
    """One ``key  value`` line per metric, for an experiment without a ``report``."""
    width = max(map(len, metrics))
    return "\n".join(
        f"{key:<{width}}  {value:.6g}" if isinstance(value, float) else f"{key:<{width}}  {value}"
        for key, value in metrics.items()
    )
