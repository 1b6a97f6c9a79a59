"""File locks between processes: one writer of a published table, one run per folder.

Both use ``fcntl.flock`` on a small file, which the operating system releases when the holder
exits, however it exits, so a killed run never leaves a folder claimed.

* :func:`locked`: wait for exclusive use of a lock file around a read-merge-write.
* :func:`claim` / :func:`claimed`: take a run or sweep folder for this process, or refuse with
  :class:`FolderInUse` when another live process holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from sweeps.errors import ConfigError

CLAIM = ".claim"  # in a claimed folder: the lock file, holding the claimant's process id

_held: dict[Path, int] = {}  # folder -> descriptor of its claim file, for the folders this process holds


class FolderInUse(ConfigError):
    """A run or sweep folder that another live run holds; ``key`` is the setting that chose it."""


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``, waiting for it. An existing folder is locked itself (no
    file is left in it, e.g. in ``results/``); any other path is a lock file, created if needed."""
    path = Path(path)
    if path.is_dir():
        fd = os.open(path, os.O_RDONLY)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


def claim(folder: Path, key: str) -> None:
    """Take ``folder`` for this process until :func:`release` or exit; a no-op if already held here.

    Raises :class:`FolderInUse` (naming ``key``) when another live process holds it."""
    folder = Path(os.path.abspath(folder))
    if folder in _held:
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / CLAIM, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise FolderInUse(key, f"{folder} is in use by another run (process {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _held[folder] = fd


def release(folder: Path) -> None:
    """Give up this process's claim on ``folder`` (none held: nothing to do)."""
    fd = _held.pop(Path(os.path.abspath(folder)), None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor drops the lock


@contextlib.contextmanager
def claimed(folder: Path, key: str) -> Iterator[None]:
    """:func:`claim` for the ``with`` block; a claim this process held already is kept after it."""
    held = Path(os.path.abspath(folder)) in _held
    claim(folder, key)
    try:
        yield
    finally:
        if not held:
            release(folder)
