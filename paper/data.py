"""What the generator reads: the committed tables in ``results/``, the statistics the figures use,
and the command that made each table.

Statistics are not re-implemented here: pooled rates and their 95% Wilson intervals are
:func:`figures.llm.pooled_rate`, straight lines :func:`linear_fit` of the run harness, and the
theory summaries the ``summarize`` of each theory experiment (the functions that wrote the
``*_summary.json`` files), applied to the CSV rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from figures.llm import pooled_rate
from sweeps.tables import linear_fit

__all__ = ["Pooled", "Results", "linear_fit", "pool"]

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Pooled:
    """Misaligned probes ``k`` of ``n`` judged, pooled over runs, with the 95% Wilson interval."""

    k: int
    n: int
    low: float
    high: float

    @property
    def rate(self) -> float:
        return self.k / self.n


def pool(runs: pd.DataFrame, key: str, n_key: str = "probes.n") -> Pooled:
    """:func:`figures.llm.pooled_rate` of column ``key`` over ``runs``: every judged probe one
    Bernoulli trial of the recipe (the interval ignores that one run's probes share a twin)."""
    if runs.empty or key not in runs or runs[key].isna().any():
        raise KeyError(f"{key}: no value in every run to pool")
    return Pooled(*pooled_rate(runs[key], runs[n_key]))


class Results:
    """The tables of ``results/`` (``theory/<name>.csv``, ``llm/<name>.csv``), read once each."""

    def __init__(self, root: Path, conf: Path | None = None) -> None:
        self.root = root
        self.conf = conf if conf is not None else ROOT / "conf"
        self._cache: dict[str, pd.DataFrame] = {}

    def table(self, app: str, stem: str) -> pd.DataFrame:
        """``results/<app>/<stem>.csv`` (a missing table is a one-line error naming it)."""
        key = f"{app}/{stem}"
        if key not in self._cache:
            path = self.root / app / f"{stem}.csv"
            if not path.exists():
                raise FileNotFoundError(f"{path}: missing (run `make results` / `make results-llm`)")
            self._cache[key] = pd.read_csv(path)
        return self._cache[key].copy()

    def published(self, app: str, stem: str) -> bool:
        """Whether ``results/<app>/<stem>.csv`` exists (a table the paper reads only where published)."""
        return (self.root / app / f"{stem}.csv").exists()

    def llm(self, *stems: str) -> pd.DataFrame:
        """One or more LLM tables stacked (runs of one recipe judged on two probe ranges, say)."""
        return pd.concat([self.table("llm", s) for s in stems], ignore_index=True)

    def theory(self, stem: str) -> pd.DataFrame:
        return self.table("theory", stem)

    def variant(self, stem: str, name: str) -> pd.DataFrame:
        """The rows of ``results/llm/<stem>.csv`` run as ``variant=<stem>/<name>`` (one error if none)."""
        table = self.table("llm", stem)
        rows = table[table.get("override.variant", pd.Series(dtype=str)) == f"{stem}/{name}"]
        if rows.empty:
            raise KeyError(f"results/llm/{stem}.csv: no rows of variant={stem}/{name}")
        return rows

    def variant_settings(self, app: str, name: str) -> dict[str, object]:
        """What ``conf/<app>/variant/<name>.yaml`` sets, as dotted keys (its ``defaults`` left out)."""
        path = self.conf / app / "variant" / f"{name}.yaml"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such variant")
        return _flatten({k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k != "defaults"})

    def experiment_for(self, app: str, stem: str) -> str | None:
        """The experiment file (``conf/<app>/experiment/<name>.yaml``) that publishes ``<stem>.csv``:
        its ``results_name``, else its ``experiment_name``, else its file name is ``stem``."""
        for path in sorted((self.conf / app / "experiment").glob("*.yaml")):
            recipe = yaml.safe_load(path.read_text()) or {}
            name = recipe.get("results_name") or recipe.get("experiment_name") or path.stem
            if "${" in str(name):  # results_name: ${experiment_name}
                name = recipe.get("experiment_name") or path.stem
            if name == stem:
                return path.stem
        return None

    def command(self, app: str, stem: str) -> str:
        """The command that publishes ``results/<app>/<stem>.csv``: its experiment file, run as a sweep."""
        experiment = self.experiment_for(app, stem)
        if experiment is None:
            raise FileNotFoundError(
                f"results/{app}/{stem}.csv: no experiment file in conf/{app}/experiment/ publishes it"
            )
        return f"python -m {app} -m experiment={experiment} publish=true"


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out
