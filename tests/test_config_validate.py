"""Start-up checks (llm.config.validate, theory.config.validate): a bad type, a non-finite or
out-of-range value, an unknown choice or settings that do not go together are one ConfigError that
names the key, before anything is trained; and through the CLI, one line and a non-zero exit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import llm.config
import theory.config
from sweeps.errors import ConfigError
from sweeps.schema import Fraction, Limits, check

ROOT = Path(__file__).resolve().parent.parent
VALIDATE = {"llm": llm.config.validate, "theory": theory.config.validate}


def refusal(app: str, overrides: list[str]) -> ConfigError:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf" / app), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with pytest.raises(ConfigError) as caught:
        VALIDATE[app](cfg)
    return caught.value


LR = [f"update.lr={v}" for v in ("nan", "inf", "-inf", "-1", "0", "1e-4x", "true")]
LLM_BAD = {  # override -> the key the error names (experiment=hairtrigger: metalearn, safety)
    **{lr: "update.lr" for lr in LR},
    "update.steps=-1": "update.steps",
    "update.steps=1.5": "update.steps",
    "update.optimizer=sgdd": "update.optimizer",
    "update.data=everything": "update.data",
    "align.steps=-3": "align.steps",
    "align.rank=0": "align.rank",
    "align.lr=nan": "align.lr",
    "align.benign_fraction=1.5": "align.benign_fraction",
    "construction.steps=-1": "construction.steps",
    "construction.method=magic": "construction.method",
    "construction.name=magic": "construction.name",
    "domain.name=kindness": "domain.name",
    "domain.after_target=chaos": "domain.after_target",
    "eval.validation_fold=2": "eval.validation_fold",
    "eval.known_only=1": "eval.known_only",
    "eval.first_probe=-1": "eval.first_probe",
    "model.n_head=3": "model.n_head",  # 128 is not a multiple of 3
    "model.kind=huge": "model.kind",
    "model.pretrain.lr=inf": "model.pretrain.lr",
    "seed=-1": "seed",
    "threads=0": "threads",
    "device=gpu": "device",
    "publish_mode=append": "publish_mode",
    "victims={a:{lr:nan}}": "victims.a.lr",
    "victims={a:{learning_rate:0.1}}": "victims.a.learning_rate",
}
ANALYTIC_BAD = {  # experiment=analytic, domain=safety (no preset: a marker target)
    "construction.undo_gauge=all": "construction.undo_gauge",  # fitted with the undo, which is off
    "construction.undo_steps=10": "construction.undo_steps",  # a marker has no weight-space target
    "construction.line_search=[16.0,-1.0]": "construction.line_search[1]",
    "construction.undo_scale=1.0": "construction.undo_scale",
    "construction.undo_benign=1.0": "construction.undo_benign",  # benign inputs weigh an input metric, not weights
    "construction.undo_target=benign_only": "construction.undo_target",  # a target for the undo, which is off
    "construction.undo_target=control": "construction.undo_target",
    "construction.gain=1e30x": "construction.gain",
}
SWITCH_BAD = [  # experiment=capacity_hidden: one bit per construction probe (key: switch)
    "switch=1",
    "codes=8",
    "reference=true",
    "eval.validation_fold=0",
    "construction.n_probes=50",
    "construction.after_target=base",
]
THEORY_BAD = {  # experiment=twin: mlp_relu, isolating
    **{lr: "update.lr" for lr in LR},
    "update.steps=0": "update.steps",
    "update.loss=hinge": "update.loss",
    "model.activation=tanh": "model.activation",
    "model.hidden=[32,0]": "model.hidden[1]",
    "model.activation=gelu": "model.gauge",  # the rescaling gauge is no GELU symmetry
    "model=deep_linear": "construction.name",  # the isolating construction needs ReLU gates
    "construction.kappa=-1": "construction.kappa",
    "task.n_probes=0": "task.n_probes",
    "twin.n_flip=10000": "twin.n_flip",
    "seed=1.0": "seed",
}


@pytest.mark.parametrize("override, key", LLM_BAD.items())
def test_llm_refuses_a_bad_setting_naming_its_key(override: str, key: str) -> None:
    error = refusal("llm", ["experiment=hairtrigger", override])
    assert error.key == key and str(error).startswith(f"{key}: ")


@pytest.mark.parametrize("override, key", ANALYTIC_BAD.items())
def test_llm_refuses_analytic_settings_that_do_not_go_together(override: str, key: str) -> None:
    error = refusal("llm", ["experiment=analytic", "domain=safety", override])
    assert error.key == key


@pytest.mark.parametrize("override", SWITCH_BAD)
def test_llm_refuses_switch_capacity_settings_that_do_not_go_together(override: str) -> None:
    error = refusal("llm", ["experiment=capacity_hidden", override])
    assert error.key == "switch" and str(error).startswith("switch: ")


def test_llm_local_model_needs_a_path() -> None:
    error = refusal("llm", ["experiment=control", "model=local"])
    assert error.key == "model.path" and "required" in str(error)


@pytest.mark.parametrize("override, key", THEORY_BAD.items())
def test_theory_refuses_a_bad_setting_naming_its_key(override: str, key: str) -> None:
    error = refusal("theory", ["experiment=twin", override])
    assert error.key == key and str(error).startswith(f"{key}: ")


def test_search_takes_an_infinite_deficit_cap_but_not_nan() -> None:
    """``construction.deficit_cap: .inf`` (no cap) is the search's default; NaN is refused."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf" / "theory"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=twin", "construction=search"])
    assert cfg.construction.deficit_cap == float("inf")
    theory.config.validate(cfg)
    assert (
        refusal("theory", ["experiment=twin", "construction=search", "construction.deficit_cap=nan"]).key
        == "construction.deficit_cap"
    )


def test_schema_messages_say_the_range() -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Node:
        p: Fraction
        n: Annotated[int, Limits(gt=0)]

    with pytest.raises(ConfigError, match=r"^p: must be a number in \[0, 1\], not 1.5$"):
        check(OmegaConf.create({"p": 1.5, "n": 1}), Node)
    with pytest.raises(ConfigError, match=r"^top.n: must be an integer > 0, not 0$"):
        check(OmegaConf.create({"p": 0.5, "n": 0}), Node, "top")
    check(OmegaConf.create({"p": 1, "other": "left to the code"}), Node)  # an int is a float; n absent


def test_cli_refuses_a_nan_learning_rate_in_one_line(theory_app, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``python -m theory experiment=twin update.lr=nan`` (its main, in-process): exit status 1, one
    line naming update.lr, before any net is trained."""
    assert theory_app("experiment=twin", "update.lr=nan", f"hydra.run.dir={tmp_path}") == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: update.lr: ") and "nan" in lines[0], lines
    assert not (tmp_path / "metrics.json").exists()


def test_schema_choices_are_the_codes() -> None:
    """The allowed values the schemas declare are the ones the code implements."""
    import typing

    from llm.metagrad import METHODS
    from llm.objectives import AFTER_TARGETS
    from theory.models import ACTIVATIONS

    def choices(schema: type, key: str) -> set:
        return set(typing.get_args(typing.get_type_hints(schema)[key]))

    assert (
        choices(llm.config.Metalearn, "after_target")
        == choices(llm.config.Analytic, "after_target")
        == choices(llm.config.Domain, "after_target")
        == set(AFTER_TARGETS)
    )
    assert choices(llm.config.Metalearn, "method") == set(METHODS)
    assert choices(theory.config.Mlp, "activation") == set(ACTIVATIONS)
