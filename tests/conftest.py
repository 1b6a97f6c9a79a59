"""Shared test setup: one torch thread (CI has 2 cores and pytest may run beside a sweep), restored
after a test whose in-process run set another (``threads=N``); the theory app in-process."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from tests.apps import run_cli

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    yield
    torch.set_num_threads(1)


@pytest.fixture
def theory_app(monkeypatch: pytest.MonkeyPatch) -> Callable[..., int]:
    """``python -m theory ARGS`` in-process; returns the exit status."""
    return lambda *args: run_cli("theory", monkeypatch, *args)
