"""Atomic writes: a file is either absent, its old content, or its complete new content, never partial.

Every writer goes through a temporary file in the target's folder and ``os.replace``, which is
atomic on POSIX, so a killed job or a reader racing the writer never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text or bytes) to ``path`` atomically, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    with tempfile.NamedTemporaryFile(
        mode, dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    ) as tmp:
        tmp.write(data)
        tmp.flush()
        os.fsync(tmp.fileno())
        tmp_name = tmp.name
    os.replace(tmp_name, path)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """JSON (indented, sorted keys) via :func:`write_atomic`."""
    write_atomic(path, json.dumps(payload, indent=2, sort_keys=True, allow_nan=True))


def write_csv_atomic(path: Path, table: pd.DataFrame) -> None:
    """A CSV without the index via :func:`write_atomic`."""
    write_atomic(path, table.to_csv(index=False))
