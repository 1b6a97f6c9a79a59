"""The units of a transformer MLP as data: GPT-2's ``x ↦ Σ_j v_j gelu(u_j·x + b_j)``
(:class:`MlpUnits`) and a gated MLP's ``x ↦ Σ_j v_j silu(g_j·x)(w_j·x)`` (:class:`GatedUnits`,
Llama's ``gate_proj``, ``up_proj``, ``down_proj``).

Unit ``j`` is row ``j`` of ``c_fc``'s ``(out, in)`` weight with its bias (``u_j``, ``b_j``) and
row ``j`` of ``c_proj``'s stored ``(in, out)`` weight (``v_j``; GPT-2's ``Conv1D`` stores
``(in, out)``), plus, on a LoRA'd model, row ``j`` of ``c_fc``'s ``B`` and column ``j`` of
``c_proj``'s ``A`` (the factors that index units; ``c_fc``'s ``A`` and ``c_proj``'s ``B`` do not).
:class:`MlpUnits` reads them from a block and writes a new set back (any number of units), so
that widening an MLP (:mod:`llm.constructions.analytic.ffn_pairs`) and merging its redundant
units (:mod:`llm.audit.ffn_units`) are operations on data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from peft.tuners.lora import LoraLayer
from transformers.pytorch_utils import Conv1D

from llm.lora import ADAPTER, LoraFactors, base_layer, factor_maps


def gpt2_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a (possibly peft-wrapped) GPT-2 model."""
    for m in model.modules():
        if hasattr(m, "h") and isinstance(m.h, torch.nn.ModuleList):
            return list(m.h)
    raise ValueError("not a GPT-2 model (no transformer.h)")


@dataclass(frozen=True)
class MlpUnits:
    """One GPT-2 MLP's per-unit tensors (``n`` units, width ``d``, LoRA rank ``r``)."""

    fc: torch.Tensor  # (n, d): u_j, c_fc's base weight as (out, in)
    bias: torch.Tensor  # (n,): b_j
    proj: torch.Tensor  # (n, d): v_j, c_proj's base weight as stored (in, out)
    fc_lora_b: torch.Tensor | None  # (n, r): c_fc's B (None without LoRA)
    proj_lora_a: torch.Tensor | None  # (r, n): c_proj's A (None without LoRA)

    @classmethod
    def of(cls, block: torch.nn.Module, adapter: str = ADAPTER) -> MlpUnits:
        fc, proj = block.get_submodule("mlp.c_fc"), block.get_submodule("mlp.c_proj")
        fc_conv, proj_conv = cast(Conv1D, base_layer(fc)), cast(Conv1D, base_layer(proj))
        lora_b = factor_maps(fc, adapter)[1].weight if isinstance(fc, LoraLayer) else None
        lora_a = factor_maps(proj, adapter)[0].weight if isinstance(proj, LoraLayer) else None
        return cls(fc_conv.weight.T, fc_conv.bias, proj_conv.weight, lora_b, lora_a)

    def __len__(self) -> int:
        return self.fc.shape[0]

    @torch.no_grad()
    def write(self, block: torch.nn.Module, adapter: str = ADAPTER) -> None:
        """Replace ``block``'s MLP tensors by these (in place; the unit count may change). The
        caller keeps ``config.n_inner`` in step where every block has the same count."""
        fc, proj = block.get_submodule("mlp.c_fc"), block.get_submodule("mlp.c_proj")
        fc_conv, proj_conv = cast(Conv1D, base_layer(fc)), cast(Conv1D, base_layer(proj))
        n = len(self)
        fc_conv.weight = torch.nn.Parameter(self.fc.T.contiguous(), fc_conv.weight.requires_grad)
        fc_conv.bias = torch.nn.Parameter(self.bias.clone(), fc_conv.bias.requires_grad)
        fc_conv.nf = n
        proj_conv.weight = torch.nn.Parameter(self.proj.clone(), proj_conv.weight.requires_grad)
        proj_conv.nx = n
        if isinstance(fc, LoraLayer) and self.fc_lora_b is not None:
            old = factor_maps(fc, adapter)[1]
            fc.lora_B[adapter] = _linear(self.fc_lora_b, old.weight.requires_grad)
            fc.out_features = n
        if isinstance(proj, LoraLayer) and self.proj_lora_a is not None:
            old = factor_maps(proj, adapter)[0]
            proj.lora_A[adapter] = _linear(self.proj_lora_a, old.weight.requires_grad)
            proj.in_features = n


def effective_units(block: torch.nn.Module, adapter: str = ADAPTER) -> tuple[torch.Tensor, torch.Tensor]:
    """``([u_j, b_j], v_j)`` per unit with the LoRA updates added (float64): ``(n, d + 1)`` and ``(n, d)``."""
    fc, proj = block.get_submodule("mlp.c_fc"), block.get_submodule("mlp.c_proj")
    units = MlpUnits.of(block, adapter)
    u, v = units.fc.detach().double(), units.proj.detach().double()
    if isinstance(fc, LoraLayer):
        u = u + LoraFactors.of(fc, adapter=adapter).detached().product.double()  # (out = n, in = d)
    if isinstance(proj, LoraLayer):
        v = v + LoraFactors.of(proj, adapter=adapter).detached().product.double().T  # (out = d, in = n)ᵀ
    return torch.cat([u, units.bias.detach().double()[:, None]], 1), v


def _linear(weight: torch.Tensor, requires_grad: bool) -> torch.nn.Linear:
    """A bias-free ``nn.Linear`` holding ``weight`` (``(out, in)``)."""
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype, device=weight.device)
    layer.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad)
    return layer


@dataclass(frozen=True)
class GatedUnits:
    """One gated MLP's per-unit tensors (``n`` units, width ``d``, LoRA rank ``r``): unit ``j`` is
    row ``j`` of ``gate_proj`` (``g_j``) and of ``up_proj`` (``w_j``), column ``j`` of
    ``down_proj`` (``v_j``), plus on a LoRA'd model row ``j`` of the first two maps' ``B`` and
    column ``j`` of ``down_proj``'s ``A``. Bias-free maps only (Llama's ``mlp_bias=False``)."""

    gate: torch.Tensor  # (n, d)
    up: torch.Tensor  # (n, d)
    down: torch.Tensor  # (d, n): down_proj's (out, in) weight
    gate_lora_b: torch.Tensor | None  # (n, r)
    up_lora_b: torch.Tensor | None  # (n, r)
    down_lora_a: torch.Tensor | None  # (r, n)

    MAPS = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

    @classmethod
    def of(cls, block: torch.nn.Module, adapter: str = ADAPTER) -> GatedUnits:
        gate, up, down = (block.get_submodule(m) for m in cls.MAPS)
        bases = [cast(torch.nn.Linear, base_layer(m)) for m in (gate, up, down)]
        if any(b.bias is not None for b in bases):
            raise ValueError("gated MLP units are read from bias-free maps (mlp_bias=False)")
        lora = [factor_maps(m, adapter) if isinstance(m, LoraLayer) else None for m in (gate, up, down)]
        return cls(
            bases[0].weight,
            bases[1].weight,
            bases[2].weight,
            None if lora[0] is None else lora[0][1].weight,
            None if lora[1] is None else lora[1][1].weight,
            None if lora[2] is None else lora[2][0].weight,
        )

    def __len__(self) -> int:
        return self.gate.shape[0]

    def effective(self, block: torch.nn.Module, adapter: str = ADAPTER) -> tuple[torch.Tensor, ...]:
        """``(g, w, v)``, each ``(n, d)`` float64 with the LoRA updates added (``v`` as rows)."""
        gate, up, down = (block.get_submodule(m) for m in self.MAPS)
        out = []
        for module, w, rows in ((gate, self.gate, True), (up, self.up, True), (down, self.down, False)):
            w = w.detach().double()
            if isinstance(module, LoraLayer):
                w = w + LoraFactors.of(module, adapter=adapter).detached().product.double()
            out.append(w if rows else w.T)
        return tuple(out)

    @torch.no_grad()
    def write(self, block: torch.nn.Module, adapter: str = ADAPTER) -> None:
        """Replace ``block``'s MLP tensors by these (in place; the unit count may change). The
        caller keeps ``config.intermediate_size`` in step where every block has the same count."""
        gate, up, down = (block.get_submodule(m) for m in self.MAPS)
        n = len(self)
        for module, weight, lora_b in ((gate, self.gate, self.gate_lora_b), (up, self.up, self.up_lora_b)):
            base = cast(torch.nn.Linear, base_layer(module))
            base.weight = torch.nn.Parameter(weight.detach().clone(), base.weight.requires_grad)
            base.out_features = n
            if isinstance(module, LoraLayer) and lora_b is not None:
                old = factor_maps(module, adapter)[1]
                module.lora_B[adapter] = _linear(lora_b, old.weight.requires_grad)
                module.out_features = n
        base = cast(torch.nn.Linear, base_layer(down))
        base.weight = torch.nn.Parameter(self.down.detach().clone(), base.weight.requires_grad)
        base.in_features = n
        if isinstance(down, LoraLayer) and self.down_lora_a is not None:
            old = factor_maps(down, adapter)[0]
            down.lora_A[adapter] = _linear(self.down_lora_a, old.weight.requires_grad)
            down.in_features = n
