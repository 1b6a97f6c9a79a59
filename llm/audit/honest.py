"""Honest LoRA'd models for the audit's populations: the control in a random gauge, and the
control after an ordinary fine-tune.

An honest checkpoint may arrive in any gauge, and one that was fine-tuned ordinarily has moved
in ways alignment did not plan; the audit must flag neither. The LLM counterpart of
:mod:`theory.audit.honest`:

* :func:`random_gauge`: every declared gauge at once, drawn at log-scale ``scale``
  (:func:`theory.symmetry.sample`): per LoRA module a random ``M ∈ GL(r)`` on its inner axis
  (``B → B M``, ``A → M⁻¹ A``: ``s·B·A`` unchanged), then the layer-norm gains, on GPT-2 the
  per-head Q/K and V/O gauges, and on a gated MLP its units' scales, of
  :func:`llm.gauges.gauge_spec` (:func:`llm.gauges.apply`).
  The function is the control's; its gradients, and so the victim's step, are not.
* :func:`fine_tuned`: the control after ``spec.steps`` steps of an ordinary update (the
  optimiser, lr and data of ``spec``, :func:`llm.update.victim_update`): a model that was
  trained, not built, the paper's question of natural occurrence.
"""

from __future__ import annotations

import copy
from typing import cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm import gauges
from llm.audit.neutralise import stepped
from llm.data.schema import Example
from llm.lora import ADAPTER, LoraFactors, factor_maps, lora_layers
from llm.update import UpdateSpec
from theory.symmetry import Group, SymmetrySpec
from theory.symmetry import sample as sample_group


@torch.no_grad()
def random_gauge(
    model: PreTrainedModel, generator: torch.Generator, scale: float, adapter: str = ADAPTER
) -> PreTrainedModel:
    """A copy of ``model`` moved by a random element of every declared gauge (module docstring)."""
    gauged = copy.deepcopy(model)
    for layer in lora_layers(gauged, adapter).values():
        factors = LoraFactors.of(layer, adapter=adapter).detached()
        r = factors.a.shape[0]
        m = sample_group(SymmetrySpec({"lora": Group("GL", r)}, {}), generator, scale)["lora"].double()
        lin_a, lin_b = factor_maps(layer, adapter)
        lin_b.weight.copy_((factors.b.double() @ m).to(lin_b.weight.dtype))
        lin_a.weight.copy_(torch.linalg.solve(m, factors.a.double()).to(lin_a.weight.dtype))
    arch = gauged.config.model_type
    spec = gauges.gauge_spec(
        gauged, attention=arch in gauges.ATTENTION, layernorm=True, units=arch in gauges.GATED_UNITS
    )
    gauges.apply(gauged, spec, gauges.sample(spec, generator, scale), adapter)
    return cast(PreTrainedModel, gauged)


def fine_tuned(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[Example], spec: UpdateSpec
) -> PreTrainedModel:
    """A copy of ``model`` after the ordinary fine-tune ``spec`` on ``examples`` (checked finite)."""
    return stepped(model, tokenizer, examples, spec)
