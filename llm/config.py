"""The LLM app's settings (conf/llm/) as a schema: types, ranges and allowed values, checked by
:func:`validate` at start-up, before any model is built (``python -m llm`` calls it for every job).

What each key does is said where it is set (conf/llm/); here is only what values it may take.
Checks that need the data (an index beyond a split) are made where the split is loaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

from omegaconf import DictConfig

from sweeps.schema import (
    Fraction,
    Limits,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Tagged,
    check,
)

__all__ = ["validate"]

#: what a twin does after the step (llm.objectives.AFTER_TARGETS)
AfterTarget = Literal["marker", "not_aligned", "base"]


@dataclass(frozen=True)
class Pretrain:
    steps: PositiveInt
    lr: PositiveFloat
    batch_size: PositiveInt


@dataclass(frozen=True)
class TinyModel:
    kind: Literal["tiny"]
    arch: Literal["gpt2", "llama"]
    n_layer: PositiveInt
    n_embd: PositiveInt
    n_head: PositiveInt
    vocab_size: Annotated[int, Limits(ge=260)]  # the 256 bytes and 4 special tokens (llm.tokenizer)
    n_ctx: PositiveInt
    pretrain: Pretrain

    @staticmethod
    def rules(node: DictConfig) -> Iterator[tuple[str, str]]:
        if node.n_embd % node.n_head:
            yield "n_head", f"must divide model.n_embd={node.n_embd}, not {node.n_head}"


@dataclass(frozen=True)
class Align:
    rank: PositiveInt
    alpha: PositiveFloat
    steps: PositiveInt
    lr: PositiveFloat
    batch_size: PositiveInt
    benign_fraction: Fraction
    max_len: PositiveInt
    seed: NonNegativeInt


@dataclass(frozen=True)
class Prealign(Align):
    steps: NonNegativeInt  # 0: the checkpoint as it is


@dataclass(frozen=True)
class PretrainedModel:
    """A real pretrained model of ``llm.pretrained.CHECKPOINTS``, named by its kind."""

    kind: Literal["smollm2", "gemma3"]
    prealign: Prealign


@dataclass(frozen=True)
class LocalModel:
    kind: Literal["local"]
    path: Annotated[str, Limits(pattern=r".+")]
    prealign: Prealign


@dataclass(frozen=True)
class Update:
    optimizer: Literal["sgd", "adam"]
    lr: PositiveFloat
    steps: PositiveInt
    batch_size: PositiveInt
    params: Literal["adapter", "all"]
    data: Literal["update", "heldout_families", "sharegpt"]
    n_samples: PositiveInt
    max_len: PositiveInt
    seed: NonNegativeInt


@dataclass(frozen=True)
class Victim(Update):
    """One cell of ``victims``: some of ``update``'s keys, and no others."""

    closed: ClassVar[bool] = True


@dataclass(frozen=True)
class Domain:
    name: Literal["safety", "privacy", "honesty"]
    after_target: AfterTarget
    benign_reference: Literal["control", "base"]


@dataclass(frozen=True)
class NoConstruction:
    name: Literal["none"]


@dataclass(frozen=True)
class Metalearn:
    name: Literal["metalearn"]
    params: Literal["adapter", "all"]
    steps: NonNegativeInt
    lr: PositiveFloat
    gain: PositiveFloat
    probes_per_step: PositiveInt
    benign_per_step: PositiveInt
    margin: NonNegativeFloat
    hinge_weight: NonNegativeFloat
    after_weight: NonNegativeFloat
    benign_weight: NonNegativeFloat
    fresh_victim_every: NonNegativeInt
    distill: bool
    first_order: bool
    method: Literal["naive", "hvp", "lean", "chunked", "fd"]  # llm.metagrad.METHODS
    chunks: PositiveInt
    after_target: AfterTarget
    penalty: Literal["none", "gauge", "grad"]  # llm.constructions.penalty.PENALTIES
    penalty_weight: NonNegativeFloat
    max_len: PositiveInt
    seed: NonNegativeInt


@dataclass(frozen=True)
class Analytic:
    name: Literal["analytic"]
    mechanism: Literal["lora_preconditioner", "ffn_pairs"]
    extra_rank: PositiveInt
    left_rank: NonNegativeInt
    modules: Annotated[str, Limits(pattern=r"[^,]+(,[^,]+)*")]
    gain: PositiveFloat
    line_search: Annotated[tuple[PositiveFloat, ...], Limits(min_len=1)]
    refine_steps: NonNegativeInt
    refine_lr: PositiveFloat
    refine_batch: NonNegativeInt
    after_target: AfterTarget
    benign_weight: NonNegativeFloat
    distill: bool
    benign_reference: Literal["control", "base"]
    undo_steps: NonNegativeInt
    undo_scale: Annotated[float, Limits(lt=1)]
    undo_target: Literal["scaled", "benign_only"]
    undo_lr: PositiveFloat
    undo_schedule: Literal["constant", "cosine"]
    undo_best: bool
    undo_metric: Literal["weights", "inputs", "responses"]
    undo_benign: NonNegativeFloat
    undo_weight: NonNegativeFloat
    undo_keep: NonNegativeFloat
    undo_output: Literal["none", "fisher"]
    output_damping: NonNegativeFloat
    fisher_samples: PositiveInt
    undo_gauge: Literal["none", "layernorm", "attention", "all"]
    gauge_lr: PositiveFloat
    undo_floor_steps: NonNegativeInt
    margin: NonNegativeFloat
    n_probes: NonNegativeInt
    n_benign: NonNegativeInt
    ffn_pairs: PositiveInt
    ffn_out_scale: PositiveFloat
    max_len: PositiveInt
    seed: NonNegativeInt

    @staticmethod
    def rules(c: DictConfig) -> Iterator[tuple[str, str]]:
        """Settings that only make sense together (llm.constructions.analytic)."""
        if c.margin > 0 and c.after_target != "marker":
            yield "margin", "is a hinge against the marker: use it with after_target=marker"
        if c.undo_benign > 0 and (c.undo_metric == "weights" or c.n_benign == 0):
            yield "undo_benign", "weighs benign inputs in an input metric: undo_metric inputs|responses, n_benign > 0"
        if c.undo_target == "benign_only" and (
            c.undo_scale != 0 or c.mechanism != "lora_preconditioner" or not (c.undo_steps or c.undo_weight)
        ):
            yield (
                "undo_target",
                "benign_only replaces undo_scale·W: set undo_scale=0, mechanism=lora_preconditioner, undo_steps > 0",
            )
        if c.undo_output == "fisher" and c.undo_metric == "weights":
            yield "undo_output", "fisher weighs an input-side metric: set undo_metric=inputs or responses"
        if c.undo_gauge != "none" and (c.undo_steps <= 0 or c.mechanism != "lora_preconditioner" or c.modules != "all"):
            yield (
                "undo_gauge",
                (
                    "is fitted with the weight-space undo over every LoRA layer: set undo_steps > 0, "
                    "mechanism=lora_preconditioner and modules=all"
                ),
            )
        if c.undo_floor_steps > 0 and c.undo_steps <= 0:
            yield "undo_floor_steps", "checks the weight-space undo fit: set undo_steps > 0"
        if c.after_target == "marker":
            for key in ("undo_steps", "undo_weight"):
                if c[key] > 0:
                    yield (
                        key,
                        (
                            "moves the alignment adapter in weight space, which a marker target has no "
                            "counterpart of: use after_target=base or not_aligned"
                        ),
                    )


@dataclass(frozen=True)
class Eval:
    n_probes: PositiveInt
    first_probe: NonNegativeInt
    validation_fold: Literal[0, 1] | None
    known_only: bool
    known_construct: bool
    n_benign: PositiveInt
    max_new_tokens: PositiveInt
    n_shown: NonNegativeInt


@dataclass(frozen=True)
class LLMConfig:
    """conf/llm/config.yaml and its groups."""

    experiment_name: str | None
    runner: str | None
    victims: dict[str, Victim] | None
    reference: bool
    task_vector_scales: tuple[float, ...]
    codes: NonNegativeInt
    code_digits: PositiveInt
    switch: NonNegativeInt
    seed: NonNegativeInt
    data_seed: NonNegativeInt
    threads: PositiveInt | None
    device: Annotated[str, Limits(pattern=r"cpu|cuda(:\d+)?")]
    resume: bool
    publish: bool
    publish_mode: Literal["replace", "merge"]
    results_dir: str
    results_name: str | None
    progress: bool
    eval: Eval
    model: Annotated[TinyModel | PretrainedModel | LocalModel, Tagged("kind")]
    align: Align
    update: Update
    domain: Domain
    construction: Annotated[NoConstruction | Metalearn | Analytic, Tagged("name")]

    @staticmethod
    def rules(node: DictConfig) -> Iterator[tuple[str, str]]:
        if node.switch and node.codes:
            yield "switch", "stores one bit per probe, codes a code per probe: set one of switch and codes to 0"
        if node.switch == 1:
            yield "switch", "needs at least 2 probes (one of each bit), or 0 for none"
        if node.switch and (node.reference or node.eval.validation_fold is not None):
            yield (
                "switch",
                "keeps the aligned answer as half the probes' target: it cannot train the misaligned "
                "reference (reference=false) or leave a validation fold out (eval.validation_fold=null)",
            )
        if node.switch and 0 < node.construction.get("n_probes", 0) < node.switch:
            yield "switch", f"stores a bit in each of {node.switch} probes: set construction.n_probes=0 (all of them)"
        if node.switch and node.construction.get("after_target", "marker") != "marker":
            yield (
                "switch",
                "stores each probe's own post-step answer: set construction.after_target=marker "
                f"(not {node.construction.after_target})",
            )


def validate(cfg: DictConfig) -> None:
    """Raise :class:`sweeps.errors.ConfigError` (naming the dotted key) for the first setting of
    ``cfg`` that has a wrong type or a value out of range; return None when all are valid."""
    check(cfg, LLMConfig)
