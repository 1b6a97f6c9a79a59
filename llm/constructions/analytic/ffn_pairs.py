"""Redundant FFN units (GPT-2): cancelling pairs appended to an MLP, the same function exactly.

Units ``j`` and ``k+j`` both compute ``gelu(u_j·x + b_j)``; their outgoing rows are ``+v_j`` and
``−v_j``, so they cancel. The victim's step moves the two copies of ``u`` apart and adds
``≈ 2 v σ'(u·x)(Δu·x)`` along the free direction ``v`` (``construction.mechanism=ffn_pairs``).
"""

from __future__ import annotations

import math
from typing import cast

import torch
from peft.tuners.lora import LoraLayer
from transformers import GPT2Config
from transformers.pytorch_utils import Conv1D

from llm.lora import ADAPTER, base_layer, factor_maps, weight_of


def _gpt2_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    for m in model.modules():
        if hasattr(m, "h") and isinstance(m.h, torch.nn.ModuleList):
            return list(m.h)
    raise ValueError("not a GPT-2 model (no transformer.h)")


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
    fc, proj = block.get_submodule("mlp.c_fc"), block.get_submodule("mlp.c_proj")
    fc_conv, proj_conv = cast(Conv1D, base_layer(fc)), cast(Conv1D, base_layer(proj))  # GPT-2 stores (in, out)
    dt = fc_conv.weight.dtype
    u = torch.cat([incoming, incoming], 0).to(dt)  # (2k, d)
    b = torch.cat([bias, bias], 0).to(dt)
    v = torch.cat([outgoing, -outgoing], 0).to(dt)  # (2k, d)
    fc_conv.weight = torch.nn.Parameter(torch.cat([fc_conv.weight, u.T], 1), fc_conv.weight.requires_grad)
    fc_conv.bias = torch.nn.Parameter(torch.cat([fc_conv.bias, b]), fc_conv.bias.requires_grad)
    fc_conv.nf = fc_conv.weight.shape[1]
    proj_conv.weight = torch.nn.Parameter(torch.cat([proj_conv.weight, v], 0), proj_conv.weight.requires_grad)
    proj_conv.nx = proj_conv.weight.shape[0]
    n_new = u.shape[0]
    if isinstance(fc, LoraLayer):
        _, lb = factor_maps(fc, adapter)
        w = torch.cat([lb.weight, torch.zeros(n_new, lb.weight.shape[1], dtype=lb.weight.dtype)], 0)
        new = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype)
        new.weight = torch.nn.Parameter(w, lb.weight.requires_grad)
        fc.lora_B[adapter] = new
        fc.out_features = w.shape[0]
    if isinstance(proj, LoraLayer):
        la, _ = factor_maps(proj, adapter)
        w = torch.cat([la.weight, torch.zeros(la.weight.shape[0], n_new, dtype=la.weight.dtype)], 1)
        new = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype)
        new.weight = torch.nn.Parameter(w, la.weight.requires_grad)
        proj.lora_A[adapter] = new
        proj.in_features = w.shape[1]
    return block


def widen_mlps(model: torch.nn.Module, k: int, generator: torch.Generator, out_scale: float = 1.0) -> torch.nn.Module:
    """Add ``k`` random cancelling pairs to every GPT-2 MLP (in place); sets ``config.n_inner``."""
    for block in _gpt2_blocks(model):
        d = weight_of(base_layer(block.get_submodule("mlp.c_fc"))).shape[0]
        u = torch.randn(k, d, generator=generator) / math.sqrt(d)
        v = out_scale * torch.randn(k, d, generator=generator) / math.sqrt(d)
        add_ffn_pairs(block, u, torch.randn(k, generator=generator), v)
    cast(GPT2Config, model.config).n_inner = weight_of(base_layer(block.get_submodule("mlp.c_fc"))).shape[1]
    return model
