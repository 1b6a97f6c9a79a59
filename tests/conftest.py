"""Shared test setup: one torch thread (CI has 2 cores and pytest may run beside a sweep)."""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def root() -> Path:
    return ROOT
