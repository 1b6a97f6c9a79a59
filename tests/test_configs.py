"""Every theory config composes: each experiment, model, construction, family and launcher."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

CONF = Path(__file__).resolve().parent.parent / "conf" / "theory"


def names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides: list[str], hydra_cfg: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra_cfg)


@pytest.mark.parametrize("experiment", names("experiment"))
def test_experiment_composes(experiment: str) -> None:
    """Each experiment file composes and names itself."""
    cfg = _compose([f"experiment={experiment}"])
    assert cfg.experiment_name == experiment
    assert cfg["update"].lr > 0


@pytest.mark.parametrize("model", names("model"))
@pytest.mark.parametrize("construction", names("construction"))
def test_model_construction_grid_composes(model: str, construction: str) -> None:
    cfg = _compose(["experiment=twin", f"model={model}", f"construction={construction}"])
    assert cfg.model.family in ("mlp", "linear") and cfg.construction.name == construction


@pytest.mark.parametrize("family", names("family"))
def test_family_presets_override_model_and_construction(family: str) -> None:
    cfg = _compose(["experiment=capacity", f"family={family}"])
    activation, construction = family.split("_")
    assert cfg.construction.name == construction
    assert cfg.model.activation == activation


@pytest.mark.parametrize("launcher", ["basic", "joblib", "slurm"])
def test_launchers_compose(launcher: str) -> None:
    cfg = _compose(["experiment=capacity", f"hydra/launcher={launcher}"], hydra_cfg=True)
    target = cfg.hydra.launcher._target_
    assert {"basic": "BasicLauncher", "joblib": "JoblibLauncher", "slurm": "SlurmLauncher"}[launcher] in target


def test_sweeps_declare_their_axes() -> None:
    """The reference sweeps carry their grids (≥ 6 widths up to ≥ 64 for capacity)."""
    cap = _compose(["experiment=capacity"], hydra_cfg=True).hydra.sweeper.params
    widths = [int(w) for w in cap["model.redundant_units"].split(",")]
    assert len(widths) >= 6 and max(widths) >= 64
    gauge = _compose(["experiment=gauge_scale"], hydra_cfg=True).hydra.sweeper.params
    scales = [float(c) for c in gauge["gauge.c"].split(",")]
    assert max(scales) / min(scales) >= 1e3
