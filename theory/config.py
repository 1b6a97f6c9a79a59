"""The theory app's settings (conf/theory/) as a schema: types, ranges and allowed values, checked
by :func:`validate` at start-up, before any net is trained (``python -m theory`` calls it for every job).

What each key does is said where it is set (conf/theory/); here is only what values it may take.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Literal

from omegaconf import DictConfig

from sweeps.schema import (
    Limits,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Tagged,
    check,
)

__all__ = ["validate"]


@dataclass(frozen=True)
class Mlp:
    family: Literal["mlp"]
    activation: Literal["relu", "leaky_relu", "gelu", "linear"]  # theory.models.ACTIVATIONS
    d_in: PositiveInt
    hidden: Annotated[tuple[PositiveInt, ...], Limits(min_len=1)]
    n_classes: Annotated[int, Limits(ge=2)]
    bias: bool
    redundant_units: NonNegativeInt
    redundant_kind: Literal["pairs", "dead"]
    gauge: bool

    @staticmethod
    def rules(m: DictConfig) -> Iterator[tuple[str, str]]:
        if m.gauge and m.activation not in ("relu", "leaky_relu"):  # theory.symmetry.ADMISSIBLE: "scale"
            yield "gauge", f"positive rescaling does not preserve a {m.activation} net: set model.gauge=false"


@dataclass(frozen=True)
class DeepLinear:
    family: Literal["linear"]
    activation: Literal["linear"]
    d_in: PositiveInt
    depth: Annotated[int, Limits(ge=2)]
    n_classes: Annotated[int, Limits(ge=2)]
    bias: Literal[False]
    redundant_units: NonNegativeInt


@dataclass(frozen=True)
class Task:
    n_train: PositiveInt
    n_update: PositiveInt
    n_eval: PositiveInt
    n_probes: PositiveInt
    base_steps: PositiveInt
    base_lr: PositiveFloat
    safety_margin: NonNegativeFloat


@dataclass(frozen=True)
class Update:
    lr: PositiveFloat
    steps: PositiveInt
    loss: Literal["cross_entropy", "square"]


@dataclass(frozen=True)
class Isolating:
    name: Literal["isolating"]
    kappa: PositiveFloat
    support_tries: PositiveInt
    max_weight: PositiveFloat
    guard_benign: bool
    forward_tol: PositiveFloat


@dataclass(frozen=True)
class Search:
    name: Literal["search"]
    max_steps: NonNegativeInt
    opt_lr: PositiveFloat
    kappa: PositiveFloat
    deficit_cap: Annotated[float, Limits(gt=0, finite=False)]  # .inf: no cap


@dataclass(frozen=True)
class Twin:
    n_flip: NonNegativeInt
    n_random_inputs: PositiveInt


@dataclass(frozen=True)
class Gauge:
    c: PositiveFloat
    d: PositiveInt
    n_update: PositiveInt
    n_test: PositiveInt
    teacher_scale: NonNegativeFloat


@dataclass(frozen=True)
class Capacity:
    n_candidates: NonNegativeInt
    n_random_inputs: PositiveInt
    max_forward_diff: PositiveFloat


@dataclass(frozen=True)
class Ntk:
    eval_lr: PositiveFloat
    n_flip: NonNegativeInt


@dataclass(frozen=True)
class TheoryConfig:
    """conf/theory/config.yaml, its groups and the experiments' own blocks."""

    experiment_name: str | None
    seed: NonNegativeInt
    threads: PositiveInt | None
    resume: bool
    publish: bool
    publish_mode: Literal["replace", "merge"]
    results_dir: str
    results_name: str | None
    model: Annotated[Mlp | DeepLinear, Tagged("family")]
    task: Task
    update: Update
    construction: Annotated[Isolating | Search, Tagged("name")]
    twin: Twin
    gauge: Gauge
    capacity: Capacity
    ntk: Ntk

    @staticmethod
    def rules(cfg: DictConfig) -> Iterator[tuple[str, str]]:
        """Settings that only make sense together (theory/experiments/common.py)."""
        if cfg.construction.name == "isolating" and cfg.model.activation not in ("relu", "leaky_relu"):
            yield (
                "construction.name",
                (
                    f"isolating needs ReLU-like gates (model=mlp_relu), not a {cfg.model.activation} "
                    "net: use construction=search"
                ),
            )
        for block in ("twin", "ntk"):
            if block in cfg and cfg[block].n_flip > cfg.task.n_probes:
                yield f"{block}.n_flip", f"must be ≤ task.n_probes={cfg.task.n_probes}, not {cfg[block].n_flip}"
        if "capacity" in cfg and cfg.capacity.n_candidates > cfg.task.n_probes:
            yield (
                "capacity.n_candidates",
                (f"must be ≤ task.n_probes={cfg.task.n_probes}, not {cfg.capacity.n_candidates}"),
            )


def validate(cfg: DictConfig) -> None:
    """Raise :class:`sweeps.errors.ConfigError` (naming the dotted key) for the first setting of
    ``cfg`` that has a wrong type or a value out of range; return None when all are valid."""
    check(cfg, TheoryConfig)
