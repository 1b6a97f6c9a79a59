"""After a multirun: one table of its jobs, the experiment's fit summary, and publishing.

:func:`summarize_sweep` gathers the overrides and metrics of the jobs in the sweep's job list (the
multirun that just ran, resumed jobs included) into one tidy ``summary.csv`` in the sweep folder,
asks the experiment for its fit summary (``summary.json``) and, with ``publish=true``, writes both
into ``results/`` so figures can be redrawn without re-running the sweep. A failure at any stage is
a :class:`~sweeps.errors.SweepError`; publishing holds a lock on the results folder, so concurrent
merges into one table keep every row.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sweeps.errors import SweepError
from sweeps.io import write_csv_atomic, write_json_atomic
from sweeps.jobs import METRICS
from sweeps.locks import locked

Summarize = Callable[[pd.DataFrame], dict[str, Any]]


def collect(sweep_dir: Path, jobs: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per finished job: its command-line overrides plus its metrics. ``jobs``: the run
    folders (relative to ``sweep_dir``) to read; default every folder below with a ``metrics.json``."""
    if jobs is None:
        found = sweep_dir.glob(f"**/{METRICS}")
    else:
        found = (p for p in (sweep_dir / job / METRICS for job in set(jobs)) if p.exists())
    rows = []
    for metrics_path in sorted(found):
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


def read_published(path: Path) -> pd.DataFrame:
    """A published table with its ``override.*`` columns read as the strings written (pandas would
    make ``1`` an int and, once merged with a row's ``0.001``, write it back as ``1.0``)."""
    columns = pd.read_csv(path, nrows=0).columns
    return pd.read_csv(path, dtype={c: str for c in columns if c.startswith("override.")})


def merge_rows(old: pd.DataFrame, new: pd.DataFrame, exclude: Sequence[str] = ()) -> pd.DataFrame:
    """``old`` published rows with those of the same job replaced by ``new``'s, then ``new``'s others.

    A job is its ``override.*`` values (as strings), except the keys in ``exclude`` (hydra's
    ``override_dirname.exclude_keys``: threads, progress, publish, … do not change a result)
    and hydra's own (the launcher).
    """
    keys = [
        c
        for c in new.columns
        if c.startswith("override.")
        and c.removeprefix("override.") not in set(exclude)
        and not c.startswith("override.hydra")
    ]
    if not keys:
        raise ValueError("cannot merge published results: the new rows have no identifying overrides")

    def job(frame: pd.DataFrame) -> pd.Series:
        cols = frame.reindex(columns=keys).astype(object)
        return cols.apply(lambda row: tuple(_job_value(v) for v in row), axis=1)

    kept = old[~job(old).isin(set(job(new)))] if len(old) else old
    return pd.concat([kept, new], ignore_index=True)


def _summarizer(app: str, experiment: str) -> Summarize:
    """The experiment module's ``summarize(table) -> dict`` (``{}`` for an empty table or none)."""
    module = importlib.import_module(f"{app}.experiments.{experiment}")

    def summarize(frame: pd.DataFrame) -> dict[str, Any]:
        return module.summarize(frame) if hasattr(module, "summarize") and len(frame) else {}

    return summarize


@dataclass(frozen=True)
class Target:
    """Where a sweep's table is published: ``<folder>/<name>.csv`` and ``<name>_summary.json``.

    ``merge``: keep the rows already published for other jobs (:func:`merge_rows`, which leaves
    the ``exclude`` override keys out of a job's identity), e.g. to re-run one domain of a table,
    or cells run on another machine; otherwise the table is replaced."""

    folder: Path
    name: str
    merge: bool = False
    exclude: tuple[str, ...] = ()


def publish(
    table: pd.DataFrame, summary: dict[str, Any], target: Target, summarize: Summarize | None = None
) -> dict[str, Any]:
    """Write the table and its summary to ``target``; returns the summary published (for a
    merge, ``summarize`` of the merged table).

    The read-merge-write holds a lock on the target folder: two sweeps merging into one table at
    once would otherwise both read the old rows and the later write would drop the other's."""
    folder = Path(target.folder)
    folder.mkdir(parents=True, exist_ok=True)
    published = folder / f"{target.name}.csv"
    table = table.drop(columns=["run_dir"], errors="ignore")
    with locked(folder):
        if target.merge and published.exists() and len(table):
            table = merge_rows(read_published(published), table, target.exclude)
            summary = summarize(table) if summarize is not None else summary
        write_csv_atomic(published, table)
        write_json_atomic(folder / f"{target.name}_summary.json", summary)
    return summary


@contextlib.contextmanager
def _stage(stage: str, what: str) -> Iterator[None]:
    """Re-raise any failure inside as ``SweepError(stage, "<what><error type>: <error>")``."""
    try:
        yield
    except SweepError:
        raise
    except Exception as error:
        raise SweepError(stage, f"{what}{type(error).__name__}: {error}") from error


def summarize_sweep(
    sweep_dir: Path, app: str, experiment: str, jobs: Iterable[str] | None = None, target: Target | None = None
) -> dict[str, Any]:
    """Write ``summary.csv`` and ``summary.json`` for the sweep's ``jobs`` (default: every job in
    the folder), summarised by the module ``{app}.experiments.{experiment}``; publish them to
    ``target`` when given. Any failure raises :class:`SweepError` naming the stage,
    ``aggregate`` or ``publish``."""
    with _stage("aggregate", ""):
        table = collect(sweep_dir, jobs)
        write_csv_atomic(sweep_dir / "summary.csv", table)
        summarize = _summarizer(app, experiment)
    with _stage("aggregate", "summarize raised "):
        summary = summarize(table)
    with _stage("aggregate", ""):
        write_json_atomic(sweep_dir / "summary.json", summary)
    if target is not None:
        with _stage("publish", f"{target.folder}: "):
            summary = publish(table, summary, target, summarize)
    return summary
