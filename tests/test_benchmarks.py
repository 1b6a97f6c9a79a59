"""benchmarks/meta_step.py runs end to end (a smoke run: its ratios are measured, not asserted)."""

from __future__ import annotations

import math

import pytest

from benchmarks import meta_step


def test_meta_step_smoke_run_reports_every_variant():
    rows = meta_step.main(["--quick", "--methods", "hvp,fd", "--repeats", "1", "--warmup", "0"])
    by = {r["variant"]: r for r in rows}
    assert set(by) == {"plain", "plain_parts", "hvp", "fd"}
    assert all(math.isfinite(r["time_ratio"]) and r["memory_ratio"] > 0 for r in rows)
    assert by["hvp"]["rel_err_vs_naive"] < 1e-5  # exact to float32 rounding


def test_meta_step_refuses_an_unknown_size():
    with pytest.raises(SystemExit, match="neither n_layer x n_embd"):
        meta_step.main(["--quick", "--sizes", "gemma9", "--methods", "hvp"])
