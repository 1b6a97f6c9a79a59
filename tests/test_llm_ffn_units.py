"""Step (d) of the canonical form (llm/audit/ffn_units.py): redundant GPT-2 MLP units merged out.

A twin widened by cancelling pairs collapses onto its control's canonical form; equal units that do
not cancel merge into one; an honest model loses nothing; the function is kept throughout."""

from __future__ import annotations

import copy

import torch

from llm.audit.canonical import canonicalize
from llm.audit.ffn_units import merge_units, unit_groups
from llm.constructions.analytic.ffn_pairs import widen_mlps
from llm.evaluate import next_token_kl
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


def test_other_architectures_are_left_alone(tok) -> None:
    from tests.test_llm_gauges import tiny_llama

    model = tiny_llama(tok, lora=True)
    before = params(copy.deepcopy(model))
    assert merge_units(model) == ({}, {})
    assert max_rel_gap(params(model), before) == 0.0
