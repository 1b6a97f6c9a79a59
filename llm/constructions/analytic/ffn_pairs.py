"""Redundant FFN units (GPT-2): cancelling pairs appended to an MLP, the same function exactly.

Units ``j`` and ``k+j`` both compute ``gelu(u_j·x + b_j)``; their outgoing rows are ``+v_j`` and
``−v_j``, so they cancel. The victim's step moves the two copies of ``u`` apart and adds
``≈ 2 v σ'(u·x)(Δu·x)`` along the free direction ``v`` (``construction.mechanism=ffn_pairs``).
"""

from __future__ import annotations

import math
from typing import cast

import torch
from transformers import GPT2Config

from llm.lora import ADAPTER
from llm.mlp_units import MlpUnits, gpt2_blocks


@torch.no_grad()
def add_ffn_pairs(
    block: torch.nn.Module, incoming: torch.Tensor, bias: torch.Tensor, outgoing: torch.Tensor, adapter: str = ADAPTER
) -> torch.nn.Module:
    """Append ``k`` cancelling pairs to a GPT-2 block's MLP, in place.

    ``incoming (k, d)``, ``bias (k,)``, ``outgoing (k, d)``: units ``j`` and ``k+j`` both
    compute ``gelu(u_j·x + b_j)``; their outgoing rows are ``+v_j`` and ``−v_j``. The LoRA
    factors (if ``c_fc``/``c_proj`` are peft layers) get zero rows/columns for the new units,
    so the two copies stay equal before any step. The caller updates ``config.n_inner``.
    """
    old = MlpUnits.of(block, adapter)
    dt = old.fc.dtype
    u = torch.cat([incoming, incoming], 0).to(dt)  # (2k, d)
    b = torch.cat([bias, bias], 0).to(dt)
    v = torch.cat([outgoing, -outgoing], 0).to(dt)  # (2k, d)
    n_new = len(u)
    lora_b, lora_a = old.fc_lora_b, old.proj_lora_a
    MlpUnits(
        torch.cat([old.fc, u], 0),
        torch.cat([old.bias, b]),
        torch.cat([old.proj, v], 0),
        None if lora_b is None else torch.cat([lora_b, lora_b.new_zeros(n_new, lora_b.shape[1])], 0),
        None if lora_a is None else torch.cat([lora_a, lora_a.new_zeros(lora_a.shape[0], n_new)], 1),
    ).write(block, adapter)
    return block


def widen_mlps(model: torch.nn.Module, k: int, generator: torch.Generator, out_scale: float = 1.0) -> torch.nn.Module:
    """Add ``k`` random cancelling pairs to every GPT-2 MLP (in place); sets ``config.n_inner``."""
    for block in gpt2_blocks(model):
        d = MlpUnits.of(block).fc.shape[1]
        u = torch.randn(k, d, generator=generator) / math.sqrt(d)
        v = out_scale * torch.randn(k, d, generator=generator) / math.sqrt(d)
        add_ffn_pairs(block, u, torch.randn(k, generator=generator), v)
    cast(GPT2Config, model.config).n_inner = len(MlpUnits.of(block))
    return model
