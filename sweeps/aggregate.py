"""After a multirun: one table of every job, the experiment's fit summary, and publishing.

:class:`AggregateCallback` (a Hydra callback) gathers every job's overrides and metrics into one
tidy ``summary.csv`` in the sweep folder, asks the experiment for its fit summary
(``summary.json``) and, with ``publish=true``, writes both into ``results/`` so figures can be
redrawn without re-running the sweep.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sweeps.io import write_csv_atomic, write_json_atomic
from sweeps.jobs import METRICS, flatten, publish_mode


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


def _summarizer(app: str, experiment: str):
    """The experiment module's ``summarize(table) -> dict`` (``{}`` for an empty table or none)."""
    module = importlib.import_module(f"{app}.experiments.{experiment}")

    def summarize(frame: pd.DataFrame) -> dict[str, Any]:
        return module.summarize(frame) if hasattr(module, "summarize") and len(frame) else {}

    return summarize


def publish(table: pd.DataFrame, summary: dict[str, Any], publish_dir: Path, name: str,
            summarize=None, merge: bool = False, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Write ``<name>.csv`` and ``<name>_summary.json`` into ``publish_dir``; returns the summary
    published. ``merge``: keep the rows already published for other jobs (:func:`merge_rows`),
    re-summarised with ``summarize``, e.g. to re-run one domain of a table."""
    published = publish_dir / f"{name}.csv"
    table = table.drop(columns=["run_dir"], errors="ignore")
    if merge and published.exists() and len(table):
        table = merge_rows(pd.read_csv(published), table, exclude)
        summary = summarize(table) if summarize is not None else summary
    write_csv_atomic(published, table)
    write_json_atomic(publish_dir / f"{name}_summary.json", summary)
    return summary


def summarize_sweep(sweep_dir: Path, app: str, experiment: str, publish_dir: Path | None,
                    name: str | None = None, runner: str | None = None, merge: bool = False,
                    exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Write ``summary.csv`` and ``summary.json`` for a sweep; optionally publish them to
    ``results/`` as ``<name>.csv`` and ``<name>_summary.json`` (``name`` defaults to the experiment).

    ``merge``: keep the rows already published for other jobs (:func:`merge_rows`), e.g. to
    re-run one domain of a table, or cells run on another machine."""
    table = collect(sweep_dir)
    write_csv_atomic(sweep_dir / "summary.csv", table)
    summarize = _summarizer(app, runner or experiment)
    summary = summarize(table)
    write_json_atomic(sweep_dir / "summary.json", summary)
    if publish_dir is not None:
        summary = publish(table, summary, publish_dir, name or experiment, summarize, merge, exclude)
    return summary


class AggregateCallback(Callback):
    """Hydra callback: aggregate a multirun into one table and a fit summary when it ends."""

    def __init__(self, app: str) -> None:
        self.app = app

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        publish_dir = Path(config.results_dir) if config.get("publish") else None
        mode = publish_mode(config)
        exclude = OmegaConf.select(config, "hydra.job.config.override_dirname.exclude_keys", default=[]) or []
        summary = summarize_sweep(sweep_dir, self.app, config.experiment_name, publish_dir,
                                  config.get("results_name"), config.get("runner"), merge=mode == "merge",
                                  exclude=list(exclude))
        print(f"[aggregate] {sweep_dir}/summary.csv")
        for key, value in flatten(summary).items():
            print(f"[aggregate] {key} = {value}")
