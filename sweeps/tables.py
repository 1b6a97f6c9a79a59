"""Statistics the figures and sweep summaries read off a results table.

* :func:`override_labels`: which variant of a recipe each row of a merged table is.
* :func:`linear_fit`: an ordinary least-squares line and its coefficient of determination.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

#: override groups that name a variant of a recipe (not a seed, fold or domain): runs that differ in
#: them are never pooled or averaged together (``variant``: a config of conf/llm/variant/, swept by an experiment)
VARIANT_PREFIXES = ("align.", "construction.", "variant")


def override_labels(table: pd.DataFrame, prefixes: str | tuple[str, ...] = VARIANT_PREFIXES) -> list[str]:
    """Per row, ``key=value`` for each of its ``override.<prefix>…`` columns that is set, joined by
    ", " (``""`` where none is): which variant of a recipe the run is, in a table that merges sweeps."""
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    columns = sorted(c for c in table if c.startswith(tuple(f"override.{p}" for p in prefixes)))

    def text(value: Any) -> str:  # a CSV column with gaps reads 100 back as 100.0
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)

    return [
        ", ".join(f"{c.removeprefix('override.')}={text(v)}" for c, v in zip(columns, row) if pd.notna(v))
        for row in table[columns].itertuples(index=False)
    ]


def linear_fit(x: list[float], y: list[float]) -> dict[str, float]:
    """Least-squares line ``y = slope·x + intercept`` (slope = Sxy/Sxx) and its coefficient of
    determination ``r2 = 1 − SS_res/SS_tot``; NaN where fewer than two points or no spread."""
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
