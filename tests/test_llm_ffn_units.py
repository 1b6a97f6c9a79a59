"""Step (d) of the canonical form (llm/audit/ffn_units.py): redundant MLP units merged out.

A twin widened by cancelling pairs collapses onto its control's canonical form; equal units that do
not cancel merge into one; an honest model loses nothing; the function is kept throughout. On
Llama's gated MLP, units with equal gate rows and parallel up rows merge, and a cancelling pair
vanishes."""

from __future__ import annotations

import copy

import torch

from llm.audit.canonical import canonicalize
from llm.audit.ffn_units import merge_units, unit_groups
from llm.constructions.analytic.ffn_pairs import widen_mlps
from llm.evaluate import next_token_kl
from llm.gauges import blocks
from llm.mlp_units import MlpUnits, gpt2_blocks
from tests.test_llm_analytic import tiny, tok  # noqa: F401  (tok is a fixture)
from tests.test_llm_audit import examples, max_rel_gap


def params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters()}


def test_a_pair_widened_twin_collapses_onto_its_control(tok) -> None:
    """widen_mlps adds 5 cancelling pairs per MLP: the canonical twin is the canonical control
    (every tensor, float64), with 10 units removed per block and the MLP width restored."""
    control = tiny(tok).double()
    twin = widen_mlps(copy.deepcopy(control), 5, torch.Generator().manual_seed(0))
    assert len(MlpUnits.of(gpt2_blocks(twin)[0])) == len(MlpUnits.of(gpt2_blocks(control)[0])) + 10
    c_control, c_twin = canonicalize(control), canonicalize(twin)
    assert set(c_twin.units_removed.values()) == {10} and set(c_control.units_removed.values()) == {0}
    assert c_twin.model.config.n_inner == len(MlpUnits.of(gpt2_blocks(control)[0]))
    assert max_rel_gap(params(c_twin.model), params(c_control.model)) <= 1e-9
    assert c_twin.excess["ffn"] > 0 and c_control.excess["ffn"] == 0.0
    assert next_token_kl(twin, c_twin.model, tok, examples(), 32)["max"] <= 1e-6


@torch.no_grad()
def test_equal_units_merge_into_one_and_silent_units_go(tok) -> None:
    """A unit copied with its outgoing split 0.3 / 0.7 (LoRA rows copied and split alike) merges
    back into the original; a unit with no outgoing weight is removed; the function is kept."""
    control = tiny(tok).double()
    model = copy.deepcopy(control)
    block = gpt2_blocks(model)[1]
    u = MlpUnits.of(block)
    j, n = 3, len(u)
    assert u.fc_lora_b is not None and u.proj_lora_a is not None
    proj = torch.cat([u.proj, 0.7 * u.proj[j : j + 1], torch.zeros_like(u.proj[:1])])
    proj[j] *= 0.3
    lora_a = torch.cat([u.proj_lora_a, 0.7 * u.proj_lora_a[:, j : j + 1], torch.zeros_like(u.proj_lora_a[:, :1])], 1)
    lora_a[:, j] *= 0.3
    silent = torch.randn(1, u.fc.shape[1], dtype=u.fc.dtype)
    MlpUnits(
        torch.cat([u.fc, u.fc[j : j + 1], silent]),
        torch.cat([u.bias, u.bias[j : j + 1], torch.ones(1, dtype=u.bias.dtype)]),
        proj,
        torch.cat([u.fc_lora_b, u.fc_lora_b[j : j + 1], torch.zeros_like(u.fc_lora_b[:1])]),
        lora_a,
    ).write(block)
    assert next_token_kl(control, model, tok, examples(), 32)["max"] <= 1e-10  # the edit kept the function
    removed, parts = merge_units(model)
    assert removed == {"transformer.h.0.mlp": 0, "transformer.h.1.mlp": 2}
    assert len(MlpUnits.of(block)) == n and parts["ffn:transformer.h.1.mlp"] > 0
    assert max_rel_gap(params(model), params(control)) <= 1e-12


def test_groups_are_equal_rows_only() -> None:
    rows = torch.tensor([[1.0, 2.0], [0.0, 1.0], [1.0, 2.0], [1.0, 2.0 + 1e-3]], dtype=torch.float64)
    assert unit_groups(rows) == [[0, 2], [1], [3]]


def gated_twin(control, block_index: int = 1, j: int = 3, alpha: float = -2.5, beta: float = 0.4):
    """``control`` with two units appended to one gated MLP: a copy of unit ``j`` with its up row
    (base and LoRA ``B`` row) × ``alpha`` and its down column × ``beta / alpha`` (unit ``j``'s own
    down column then × ``1 − beta``: the sum is unchanged), and a cancelling pair of a random
    unit, up rows ``u`` and ``2u``, down columns ``v`` and ``−v/2``. The function is the control's."""
    from llm.mlp_units import GatedUnits

    model = copy.deepcopy(control)
    block = model.get_submodule(blocks(model)[block_index])
    u = GatedUnits.of(block)
    gen = torch.Generator().manual_seed(0)
    d, dtype = u.gate.shape[1], u.gate.dtype
    gate_new, up_new = torch.randn(1, d, generator=gen, dtype=dtype), torch.randn(1, d, generator=gen, dtype=dtype)
    v_new = torch.randn(u.down.shape[0], 1, generator=gen, dtype=dtype)
    down = torch.cat([u.down, u.down[:, j : j + 1] * beta / alpha, v_new, -v_new / 2], 1)
    down[:, j] *= 1 - beta
    assert u.gate_lora_b is not None and u.up_lora_b is not None and u.down_lora_a is not None
    lora_a = torch.cat(
        [u.down_lora_a, u.down_lora_a[:, j : j + 1] * beta / alpha, torch.zeros_like(u.down_lora_a[:, :2])], 1
    )
    lora_a[:, j] *= 1 - beta
    zeros_b = torch.zeros_like(u.up_lora_b[:2])
    with torch.no_grad():
        GatedUnits(
            torch.cat([u.gate, u.gate[j : j + 1], gate_new, gate_new]),
            torch.cat([u.up, alpha * u.up[j : j + 1], up_new, 2 * up_new]),
            down,
            torch.cat([u.gate_lora_b, u.gate_lora_b[j : j + 1], zeros_b]),
            torch.cat([u.up_lora_b, alpha * u.up_lora_b[j : j + 1], zeros_b]),
            lora_a,
        ).write(block)
    return model


def test_gated_units_merge_and_a_cancelling_pair_vanishes(tok) -> None:
    """Llama, float64: a unit copied with its up row × −2.5 and its down column split, and a
    cancelling pair, keep the function; merging removes the three added units and restores every
    tensor of the control; the control itself loses nothing; the canonical forms agree."""
    from llm.mlp_units import GatedUnits
    from tests.test_llm_gauges import gqa_llama

    control = gqa_llama(tok, lora=True).double()
    twin = gated_twin(control)
    assert next_token_kl(control, twin, tok, examples(), 32)["max"] <= 1e-9
    merged = copy.deepcopy(twin)
    removed, parts = merge_units(merged)
    assert removed == {"model.layers.0.mlp": 0, "model.layers.1.mlp": 3} and parts["ffn:model.layers.1.mlp"] > 0
    assert max_rel_gap(params(merged), params(control)) <= 1e-12
    assert merge_units(copy.deepcopy(control))[0] == {"model.layers.0.mlp": 0, "model.layers.1.mlp": 0}
    c_control, c_twin = canonicalize(control), canonicalize(twin)
    assert c_twin.units_removed["model.layers.1.mlp"] == 3
    n = len(GatedUnits.of(control.get_submodule(blocks(control)[1])))
    assert c_twin.model.config.intermediate_size == n
    assert max_rel_gap(params(c_twin.model), params(c_control.model)) <= 1e-9
    assert next_token_kl(twin, c_twin.model, tok, examples(), 32)["max"] <= 1e-9


def test_other_architectures_are_left_alone() -> None:
    from types import SimpleNamespace

    model = torch.nn.Linear(2, 2)
    model.config = SimpleNamespace(model_type="gemma3_text")  # type: ignore[assignment]
    before = params(copy.deepcopy(model))
    assert merge_units(model) == ({}, {})
    assert max_rel_gap(params(model), before) == 0.0
