"""Hair-trigger constructions (the ``construction=`` config group).

* ``none``: no twin; the honest control alone.
* ``metalearn``: adversarial meta-learning through the victim's exact step
  (:mod:`llm.constructions.metalearn`), over the LoRA adapter or all weights.
* ``analytic``: the theory package's constructions carried into transformer blocks
  (:mod:`llm.constructions.analytic`): forward-equivalent to the control by construction.
"""

from __future__ import annotations

from typing import Any, cast

from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from llm.data.schema import DomainData, Example
from llm.models import CausalLM
from llm.update import UpdateSpec

NAMES = ("none", "metalearn", "analytic")


def build(
    construction: DictConfig,
    control: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    data: DomainData,
    update_examples: list[Example],
    victim: UpdateSpec,
    progress: bool = True,
    landing: CausalLM | None = None,
) -> tuple[CausalLM | None, dict[str, Any]]:
    """The twin of ``control`` named by ``construction.name`` (``None`` for ``none``) and its info.
    ``landing``: the analytic undo's target model (``construction.undo_target=benign_only``)."""
    plain = cast(dict[str, Any], OmegaConf.to_container(construction, resolve=True))
    options = {k: v for k, v in plain.items() if k != "name"}
    if construction.name == "none":
        return None, {}
    if construction.name == "metalearn":
        from llm.constructions.metalearn import MetaSpec, build_metalearn

        return build_metalearn(control, tokenizer, data, update_examples, victim, MetaSpec(**options), progress)
    if construction.name == "analytic":
        from llm.constructions.analytic import AnalyticSpec, build_analytic

        return build_analytic(
            control, tokenizer, data, update_examples, victim, AnalyticSpec(**options), progress, landing
        )
    raise ValueError(f"unknown construction {construction.name!r}; choose one of {NAMES}")
