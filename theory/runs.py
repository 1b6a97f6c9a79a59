"""Run bookkeeping shared by the ``theory`` and ``llm`` apps.

* Every job writes a flat ``metrics.json`` (dotted keys, numbers or strings) atomically
  into its run folder; a job whose ``metrics.json`` exists is skipped (resumable sweeps).
* After a multirun, :class:`AggregateCallback` (a Hydra callback) gathers every job's
  overrides and metrics into one tidy ``summary.csv`` in the sweep folder, asks the
  experiment for its fit summary (``summary.json``) and, with ``publish=true``, copies
  both into ``results/`` so figures can be redrawn without re-running the sweep.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

METRICS = "metrics.json"
SETTINGS = "settings.json"  # what a finished job was run with (resume reruns a job whose settings changed)


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


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON via a temporary file and ``os.replace`` so a killed job leaves no partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(payload, tmp, indent=2, sort_keys=True, allow_nan=True)
        tmp_name = tmp.name
    os.replace(tmp_name, path)


def write_csv_atomic(path: Path, table: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        table.to_csv(tmp, index=False)
        tmp_name = tmp.name
    os.replace(tmp_name, path)


def job_settings(cfg: DictConfig) -> dict[str, Any]:
    """The resolved settings a job's results depend on: the config, flattened, less ``hydra``
    and the top-level keys the sweep folder name leaves out (threads, publishing, …)."""
    ignore = set(HydraConfig.get().job.config.override_dirname.exclude_keys) if HydraConfig.initialized() else set()
    plain = OmegaConf.to_container(cfg, resolve=True)

    def leaves(node: Any) -> Any:  # lists become their JSON text, so every leaf compares as one value
        if isinstance(node, dict):
            return {k: leaves(v) for k, v in node.items()}
        return json.dumps(node) if isinstance(node, list) else node

    return flatten(leaves({k: v for k, v in plain.items() if k != "hydra" and k not in ignore}))


def settings_changed(run_dir: Path, settings: dict[str, Any]) -> list[str] | None:
    """Keys whose value differs from the settings a finished job recorded; None when it
    recorded none (it predates the record and is trusted as before)."""
    path = run_dir / SETTINGS
    if not path.exists():
        return None
    old = json.loads(path.read_text())
    return sorted(k for k in set(old) | set(settings) if old.get(k, "<unset>") != settings.get(k, "<unset>"))


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / METRICS
    return json.loads(path.read_text()) if path.exists() else None


def collect(sweep_dir: Path) -> pd.DataFrame:
    """One row per finished job: its command-line overrides plus its metrics."""
    rows = []
    for metrics_path in sorted(sweep_dir.glob(f"**/{METRICS}")):
        run_dir = metrics_path.parent
        row: dict[str, Any] = {}
        overrides = run_dir / ".hydra" / "overrides.yaml"
        if overrides.exists():
            for item in yaml.safe_load(overrides.read_text()) or []:
                key, _, value = item.partition("=")
                row[f"override.{key.lstrip('+~')}"] = value
        row.update(json.loads(metrics_path.read_text()))
        row["run_dir"] = str(run_dir.relative_to(sweep_dir))
        rows.append(row)
    return pd.DataFrame(rows)


#: override groups that name a variant of a recipe (not a seed, fold or domain): runs that differ in
#: them are never pooled or averaged together
VARIANT_PREFIXES = ("align.", "construction.")


def override_labels(table: pd.DataFrame, prefixes: str | tuple[str, ...] = VARIANT_PREFIXES) -> list[str]:
    """Per row, ``key=value`` for each of its ``override.<prefix>…`` columns that is set, joined by
    ", " (``""`` where none is): which variant of a recipe the run is, in a table that merges sweeps."""
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    columns = sorted(c for c in table if c.startswith(tuple(f"override.{p}" for p in prefixes)))

    def text(value: Any) -> str:  # a CSV column with gaps reads 100 back as 100.0
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)

    return [", ".join(f"{c.removeprefix('override.')}={text(v)}" for c, v in zip(columns, row) if pd.notna(v))
            for row in table[columns].itertuples(index=False)]


def linear_fit(x: list[float], y: list[float]) -> dict[str, float]:
    """Least-squares line ``y = slope·x + intercept`` and its coefficient of determination."""
    n = len(x)
    if n < 2:
        return {"slope": math.nan, "intercept": math.nan, "r2": math.nan, "n": n}
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    slope = sxy / sxx if sxx else math.nan
    intercept = my - slope * mx
    ss_res = sum((b - (slope * a + intercept)) ** 2 for a, b in zip(x, y))
    ss_tot = sum((b - my) ** 2 for b in y)
    r2 = 1.0 - ss_res / ss_tot if ss_tot else math.nan
    return {"slope": slope, "intercept": intercept, "r2": r2, "n": n}


def summarize_sweep(sweep_dir: Path, app: str, experiment: str, publish_dir: Path | None,
                    name: str | None = None, runner: str | None = None, merge: bool = False,
                    exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Write ``summary.csv`` and ``summary.json`` for a sweep; optionally publish them to
    ``results/`` as ``<name>.csv`` and ``<name>_summary.json`` (``name`` defaults to the experiment).

    ``merge``: keep the rows already published for other jobs (:func:`merge_rows`), e.g. to
    re-run one domain of a table, or cells run in another session or on another machine."""
    name = name or experiment
    table = collect(sweep_dir)
    write_csv_atomic(sweep_dir / "summary.csv", table)
    module = importlib.import_module(f"{app}.experiments.{runner or experiment}")

    def summarize(frame: pd.DataFrame) -> dict[str, Any]:
        return module.summarize(frame) if hasattr(module, "summarize") and len(frame) else {}

    summary = summarize(table)
    write_json_atomic(sweep_dir / "summary.json", summary)
    if publish_dir is not None:
        published = publish_dir / f"{name}.csv"
        table = table.drop(columns=["run_dir"])
        if merge and published.exists() and len(table):
            table = merge_rows(pd.read_csv(published), table, exclude)
            summary = summarize(table)
        write_csv_atomic(published, table)
        write_json_atomic(publish_dir / f"{name}_summary.json", summary)
    return summary


def _job_value(value: Any) -> str:
    """An override in one spelling: a CSV reads ``true`` back as ``True`` and ``40`` as 40.0
    (in a column with gaps), so booleans are lower-cased and numbers compared as floats."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = str(value)
    if isinstance(value, bool) or text in ("True", "False"):
        return text.lower()
    try:
        return repr(float(text))
    except ValueError:
        return text


def merge_rows(old: pd.DataFrame, new: pd.DataFrame, exclude: Sequence[str] = ()) -> pd.DataFrame:
    """``old`` published rows with those of the same job replaced by ``new``'s, then ``new``'s others.

    A job is its ``override.*`` values (as strings), except the keys in ``exclude`` (hydra's
    ``override_dirname.exclude_keys``: threads, progress, publish, … do not change a result)
    and hydra's own (the launcher).
    """
    keys = [c for c in new.columns if c.startswith("override.")
            and c.removeprefix("override.") not in set(exclude) and not c.startswith("override.hydra")]
    if not keys:
        raise ValueError("cannot merge published results: the new rows have no identifying overrides")

    def job(frame: pd.DataFrame) -> pd.Series:
        cols = frame.reindex(columns=keys).astype(object)
        return cols.apply(lambda row: tuple(_job_value(v) for v in row), axis=1)

    kept = old[~job(old).isin(set(job(new)))] if len(old) else old
    return pd.concat([kept, new], ignore_index=True)


def publish_mode(cfg: DictConfig) -> str:
    """``publish_mode`` (``replace`` | ``merge``), checked at job start so that a typo fails at
    once rather than when the multirun ends."""
    mode = cfg.get("publish_mode", "replace")
    if mode not in ("replace", "merge"):
        raise ValueError(f"publish_mode must be replace or merge, not {mode!r}")
    return mode


class AggregateCallback(Callback):
    """Hydra callback: aggregate a multirun into one table and a fit summary when it ends."""

    def __init__(self, app: str) -> None:
        self.app = app

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        publish = Path(config.results_dir) if config.get("publish") else None
        mode = publish_mode(config)
        exclude = OmegaConf.select(config, "hydra.job.config.override_dirname.exclude_keys", default=[]) or []
        summary = summarize_sweep(sweep_dir, self.app, config.experiment_name, publish,
                                  config.get("results_name"), config.get("runner"), merge=mode == "merge",
                                  exclude=list(exclude))
        print(f"[aggregate] {sweep_dir}/summary.csv")
        for key, value in flatten(summary).items():
            print(f"[aggregate] {key} = {value}")



def execute(cfg: DictConfig, app: str) -> dict[str, Any]:
    """Body of ``python -m APP experiment=NAME``: run the experiment, write ``metrics.json``.

    Skips the job (returning its metrics) when ``metrics.json`` exists and ``resume`` is on.
    """
    if cfg.get("experiment_name") is None:
        raise ValueError(f"choose an experiment: python -m {app} experiment=NAME (see conf/{app}/experiment/)")
    publish_mode(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    settings = job_settings(cfg)
    done = read_metrics(run_dir)
    if done is not None and cfg.resume:
        changed = settings_changed(run_dir, settings)
        if not changed:
            unknown = "" if changed is not None else "; it predates settings.json, so a changed setting goes unseen"
            print(f"[skip] {run_dir / METRICS} exists (resume=true{unknown})")
            return done
        print(f"[rerun] {run_dir / METRICS} was computed with other settings: {', '.join(changed[:8])}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    experiment = importlib.import_module(f"{app}.experiments.{cfg.get('runner') or cfg.experiment_name}")
    start = time.perf_counter()
    metrics = flatten(experiment.run(cfg))
    metrics["wall_time_s"] = round(time.perf_counter() - start, 3)
    metrics["torch_threads"] = torch.get_num_threads()
    write_json_atomic(run_dir / SETTINGS, settings)
    write_json_atomic(run_dir / METRICS, metrics)
    width = max(map(len, metrics))
    for key, value in metrics.items():
        print(f"{key:<{width}}  {value:.6g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    print(f"[metrics] {run_dir / METRICS}")
    if hasattr(experiment, "report"):
        print(experiment.report(metrics))
    return metrics
