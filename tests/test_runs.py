"""Run bookkeeping: flat metrics, atomic writes, aggregation, fits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sweeps.aggregate import collect, merge_rows
from sweeps.io import write_json_atomic
from sweeps.jobs import flatten
from sweeps.tables import linear_fit


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


def test_merge_rows_replaces_the_same_jobs_and_keeps_the_others(tmp_path: Path) -> None:
    """publish_mode=merge: a re-run of one domain replaces its rows, other domains' rows stay."""
    import pandas as pd

    old = pd.DataFrame(
        {
            "override.domain": ["safety", "privacy", "privacy"],
            "override.seed": [0.0, 0.0, 1.0],
            "override.threads": [1, 1, 1],
            "override.first_order": [True, False, False],
            "rate": [0.9, 0.5, 0.4],
        }
    )
    old.to_csv(tmp_path / "old.csv", index=False)
    old = pd.read_csv(tmp_path / "old.csv")  # as published: numbers come back as numbers
    new = pd.DataFrame(
        {
            "override.domain": ["privacy", "privacy"],
            "override.seed": ["0", "2"],
            "override.threads": ["2", "2"],
            "override.hydra/launcher": ["joblib", "joblib"],
            "override.first_order": ["false", "false"],
            "rate": [0.8, 0.7],
        }
    )
    merged = merge_rows(old, new, exclude=["threads"])
    got = {
        (d, str(int(float(s)))): r
        for d, s, r in zip(merged["override.domain"], merged["override.seed"], merged["rate"])
    }
    assert got == {("safety", "0"): 0.9, ("privacy", "1"): 0.4, ("privacy", "0"): 0.8, ("privacy", "2"): 0.7}
    with pytest.raises(ValueError, match="overrides"):
        merge_rows(old, pd.DataFrame({"rate": [1.0]}))


def test_publish_mode_is_checked() -> None:
    from omegaconf import OmegaConf

    from sweeps.jobs import publish_mode

    assert publish_mode(OmegaConf.create({})) == "replace"
    assert publish_mode(OmegaConf.create({"publish_mode": "merge"})) == "merge"
    with pytest.raises(ValueError, match="publish_mode"):
        publish_mode(OmegaConf.create({"publish_mode": "append"}))


def test_override_labels_name_each_runs_variant_in_a_merged_table() -> None:
    """Rows of two merged sweeps: each labelled by the overrides under the prefix that it sets."""
    import pandas as pd

    from sweeps.tables import override_labels

    table = pd.DataFrame(
        {
            "override.construction.undo_output": ["fisher", None, None],
            "override.construction.undo_gauge": [None, "none", None],
            "override.seed": [0, 1, 2],
        }
    )
    assert override_labels(table, "construction.") == [
        "construction.undo_output=fisher",
        "construction.undo_gauge=none",
        "",
    ]
    assert override_labels(table, "align.") == ["", "", ""]
    table["override.align.lr"] = [None, None, 0.001]  # the default groups: alignment and construction
    table["override.align.steps"] = [None, None, 100.0]  # as a CSV with gaps reads 100 back
    assert override_labels(table) == [
        "construction.undo_output=fisher",
        "construction.undo_gauge=none",
        "align.lr=0.001, align.steps=100",
    ]
