"""Run bookkeeping: flat metrics, atomic writes, aggregation, fits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from theory.runs import collect, flatten, linear_fit, write_json_atomic


def test_flatten_nests_with_dots_and_rejects_tensors() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": 2.5}) == {"a.b": 1, "a.c.d": "x", "e": 2.5}
    with pytest.raises(TypeError):
        flatten({"bad": [1, 2]})


def test_atomic_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "sub" / "metrics.json", {"k": 1})
    assert json.loads((tmp_path / "sub" / "metrics.json").read_text()) == {"k": 1}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["metrics.json"]


def test_linear_fit_recovers_a_line_and_scores_noise() -> None:
    exact = linear_fit([0, 1, 2, 3], [1, 3, 5, 7])
    assert exact["slope"] == pytest.approx(2) and exact["intercept"] == pytest.approx(1)
    assert exact["r2"] == pytest.approx(1)
    assert linear_fit([0, 1, 2, 3], [0, 1, 0, 1])["r2"] < 0.5


def test_collect_joins_overrides_and_metrics(tmp_path: Path) -> None:
    for seed in (0, 1):
        job = tmp_path / f"seed={seed}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n")
        write_json_atomic(job / "metrics.json", {"score": seed * 10})
    table = collect(tmp_path)
    assert sorted(table["override.seed"]) == ["0", "1"]
    assert sorted(table["score"]) == [0, 10]
