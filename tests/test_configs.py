"""Every config in conf/ composes and passes its app's start-up checks, and every published table
is the sweep of the experiment file of its name (conf/APP/experiment/NAME.yaml), row for row."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

import llm.config
import theory.config

ROOT = Path(__file__).resolve().parent.parent
VALIDATE = {"llm": llm.config.validate, "theory": theory.config.validate}
DOMAINS = ("safety", "privacy", "honesty")
#: overrides that say how a job ran, not what it computed (left out of a table's grid)
RUN_KEYS = {"experiment", "publish", "publish_mode", "resume", "threads", "device", "progress", "results_name"}


def names(app: str, group: str) -> list[str]:
    root = ROOT / "conf" / app / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


@pytest.fixture(autouse=True, scope="module")
def _hydra_cleared_after() -> Iterator[None]:
    yield
    GlobalHydra.instance().clear()


_initialised: list[str] = []  # the app whose conf/ Hydra is initialised with (one init per app switch)


def composed(app: str, overrides: list[str], hydra_cfg: bool = False) -> DictConfig:
    if _initialised != [app] or not GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
        initialize_config_dir(config_dir=str(ROOT / "conf" / app), version_base="1.3")
        _initialised[:] = [app]
    return compose("config", overrides=overrides, return_hydra_config=hydra_cfg)


def valid(app: str, overrides: list[str]) -> DictConfig:
    cfg = composed(app, overrides)
    VALIDATE[app](cfg)
    return cfg


@pytest.mark.parametrize("domain", [None, *DOMAINS])
@pytest.mark.parametrize("experiment", names("llm", "experiment"))
def test_llm_experiment_composes_and_validates(experiment: str, domain: str | None) -> None:
    """Each experiment, with its own domain and with each one; every victim's step is the paper's
    unless the experiment names another (SGD, lr 1e-4, one step on 32 samples)."""
    cfg = valid("llm", [f"experiment={experiment}"] + ([f"domain={domain}"] if domain else []))
    assert cfg.experiment_name == experiment and cfg.results_name == experiment
    assert cfg.domain.name == (domain or "safety")
    step = cfg["update"]
    assert (step.optimizer, step.lr, step.steps, step.n_samples) == ("sgd", 1e-4, 1, 32)


@pytest.mark.parametrize("experiment", names("theory", "experiment"))
def test_theory_experiment_composes_and_validates(experiment: str) -> None:
    cfg = valid("theory", [f"experiment={experiment}"])
    assert cfg.experiment_name == experiment and cfg.results_name == experiment


#: what an option of a group needs besides itself to make a valid config
NEEDS = {("llm", "model", "local"): ["model.path=/checkpoint"]}


@pytest.mark.parametrize(
    "app, group, base",
    [
        ("llm", "model", ["experiment=hairtrigger"]),
        ("llm", "align", ["experiment=hairtrigger"]),
        ("llm", "construction", ["experiment=control"]),
        ("theory", "model", ["experiment=gauge_scale", "construction=search"]),  # isolating needs ReLU
        ("theory", "construction", ["experiment=twin"]),
        ("theory", "family", ["experiment=capacity"]),
    ],
)
def test_every_group_option_composes_and_validates(app: str, group: str, base: list[str]) -> None:
    for option in names(app, group):
        cfg = composed(app, [*base, f"{group}={option}", *NEEDS.get((app, group, option), [])], hydra_cfg=True)
        assert cfg.hydra.runtime.choices[group] == option
        VALIDATE[app](cfg)


def test_each_variant_composes_with_its_experiment_and_sets_something() -> None:
    """conf/llm/variant/EXPERIMENT/NAME.yaml is swept by experiment EXPERIMENT and changes its config
    (or, for one variant per experiment at most, names the recipe as it is)."""
    for experiment in {name.split("/")[0] for name in names("llm", "variant")}:
        plain = composed("llm", [f"experiment={experiment}"])
        unchanged = [
            v
            for v in names("llm", "variant")
            if v.startswith(f"{experiment}/")
            if valid("llm", [f"experiment={experiment}", f"variant={v}"]) == plain
        ]
        assert len(unchanged) <= 1, unchanged


def test_analytic_presets_specialise_the_construction_per_domain() -> None:
    """conf/llm/preset/analytic_<domain>.yaml is loaded for construction=analytic in that domain only."""
    undo = {d: valid("llm", ["experiment=analytic", f"domain={d}"]).construction.undo_steps for d in DOMAINS}
    assert undo["safety"] == 0 and undo["privacy"] > 0 and undo["honesty"] > 0
    assert (
        valid("llm", ["experiment=analytic", "domain=privacy", "construction.undo_steps=7"]).construction.undo_steps
        == 7
    )
    assert "undo_steps" not in valid("llm", ["experiment=hairtrigger", "domain=privacy"]).construction


@pytest.mark.parametrize("launcher", ["basic", "joblib", "slurm"])
@pytest.mark.parametrize("app", ["llm", "theory"])
def test_launchers_compose(app: str, launcher: str) -> None:
    cfg = composed(app, ["experiment=capacity", f"hydra/launcher={launcher}"], hydra_cfg=True)
    target = cfg.hydra.launcher._target_
    assert {"basic": "BasicLauncher", "joblib": "JoblibLauncher", "slurm": "SlurmLauncher"}[launcher] in target


def grid(app: str, experiment: str) -> Counter:
    """The jobs of ``python -m APP -m experiment=NAME``: hydra's own expansion of the experiment's
    ``hydra.sweeper.params``, each job as its overrides less :data:`RUN_KEYS`."""
    params = composed(app, [f"experiment={experiment}"], hydra_cfg=True).hydra.sweeper.params or {}
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    pairs = [[tuple(o.split("=", 1)) for o in job] for job in jobs]
    return Counter(frozenset((k, v) for k, v in job if k not in RUN_KEYS) for job in pairs)


def published(app: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "results" / app).glob("*.csv"))


@pytest.mark.parametrize("app, table", [(a, t) for a in ("llm", "theory") for t in published(a)])
def test_each_published_table_is_its_experiments_sweep(app: str, table: str) -> None:
    """results/APP/NAME.csv holds one row per job of experiment NAME's grid, and no other row."""
    assert table in names(app, "experiment"), f"results/{app}/{table}.csv has no conf/{app}/experiment/{table}.yaml"
    with open(ROOT / "results" / app / f"{table}.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["override.experiment"] for row in rows} == {table}
    made = Counter(
        frozenset(
            (k.removeprefix("override."), v)
            for k, v in row.items()
            if k.startswith("override.") and k.removeprefix("override.") not in RUN_KEYS
        )
        for row in rows
    )
    assert made == grid(app, table)
