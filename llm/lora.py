"""LoRA adapters: attaching one, reading its layers and tensors, and the algebra of ``W = s·B·A``.

A LoRA layer computes ``y = base(x) + s·B(A x)`` with ``A: (r, in)``, ``B: (out, r)`` and
``s = alpha/r`` (peft keeps ``fan_in_fan_out=True`` for GPT-2's ``Conv1D``, whose base weight is
stored ``(in, out)``; here ``W`` always means the ``(out, in)`` matrix). :class:`LoraFactors` holds
the factors of one layer as one object, in the spirit of TransformerLens's ``FactoredMatrix``:
its product, its image under a gauge, and its image under one SGD step of the victim.

One SGD step of rate ``η`` under a loss whose gradient in ``W`` is ``G`` moves both factors,
``B' = B − η s G Aᵀ`` and ``A' = A − η s Bᵀ G``, hence exactly

    ``W' = W − η s² (P G + G Q) + η² s² G Wᵀ G``,  ``P = B Bᵀ``, ``Q = Aᵀ A``             (1)

(``tests/test_llm_lora.py`` checks it for any factorisation). Components with ``B = 0`` or
``A = 0`` add nothing to ``W`` but add freely to ``Q`` or ``P``: the hidden preconditioner of
:mod:`llm.constructions.analytic`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel

from llm.models import CausalLM, ModelT, response_loss

Params = dict[str, torch.Tensor]

#: the one adapter a model carries here (peft's default name)
ADAPTER = "default"

#: LoRA targets per architecture (GPT-2 uses Conv1D, hence fan_in_fan_out).
LORA_TARGETS = {
    "gpt2": (["c_attn", "c_proj", "c_fc"], True),
    **dict.fromkeys(
        ("llama", "mistral", "qwen2", "gemma3_text"),
        (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], False),
    ),
}


def is_lora(name: str) -> bool:
    """Whether the parameter ``name`` is a LoRA factor (``lora_A`` / ``lora_B``)."""
    return "lora_" in name


def add_lora(model: PreTrainedModel, rank: int, alpha: float) -> PeftModel:
    """``model`` with a peft LoRA adapter of ``rank`` and ``alpha`` on every linear map of
    :data:`LORA_TARGETS` (``B = 0``: the same function; ``A`` drawn from the global RNG)."""
    arch = model.config.model_type
    if arch not in LORA_TARGETS:
        raise ValueError(f"no LoRA targets for model_type {arch!r}; known: {sorted(LORA_TARGETS)}")
    targets, fan_in_fan_out = LORA_TARGETS[arch]
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates int; the scale alpha/r takes any float
        target_modules=targets,
        lora_dropout=0.0,
        fan_in_fan_out=fan_in_fan_out,
        bias="none",
    )
    return get_peft_model(model, config)


def merged(model: CausalLM) -> CausalLM:
    """``model`` with its LoRA adapter merged into the base weights (peft's ``merge_and_unload``), or
    ``model`` itself when it has no adapter to merge."""
    if hasattr(model, "merge_and_unload"):
        return cast(PeftModel, model).merge_and_unload()
    return model


def adapter_params(model: CausalLM) -> Params:
    """The LoRA tensors of a peft model, by name (what the victim moves with ``params=adapter``)."""
    params: Params = {name: p for name, p in model.named_parameters() if is_lora(name)}
    if not params:
        raise ValueError("the model has no LoRA adapter (add one with llm.lora.add_lora)")
    return params


def adapter_state(model: CausalLM) -> Params:
    """Detached copies of the LoRA tensors, by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if is_lora(n)}


def trainable(model: CausalLM, which: str) -> list[torch.nn.Parameter]:
    """Make trainable what the victim updates and nothing else: ``adapter`` (the LoRA tensors) or
    ``all``; returns those parameters."""
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(which == "all" or is_lora(name))
        if p.requires_grad:
            params.append(p)
    if not params:
        raise ValueError("update.params=adapter but the model has no LoRA adapter; use params=all")
    return params


def scale_adapter(model: ModelT, scale: float) -> ModelT:
    """A copy of ``model`` whose LoRA update ``W = s·B·A`` is ``scale·W`` in every module (``B`` scaled):
    1 is the model itself, 0 the base before alignment, < 0 the alignment's task vector negated
    (Ilharco et al. 2023, "Editing models with task arithmetic")."""
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in scaled.named_parameters():
            if ".lora_B." in name:
                p.mul_(scale)
    return scaled


def amplify_adapter(model: CausalLM, gain: float) -> dict[str, float]:
    """The factorisation's own gauge, in place: ``A → g·A``, ``B → B/g`` (``s·B·A`` unchanged). The
    victim's gradient on ``B`` grows by ``g``, so a step moves ``W`` by about ``g²`` more along
    ``B``. Returns the factor applied to each LoRA tensor."""
    params = adapter_params(model)
    scales = {n: (gain if "lora_A" in n else 1.0 / gain) for n in params}
    with torch.no_grad():
        for n, p in params.items():
            p.mul_(scales[n])
    return scales


# ---------------------------------------------------------------------------- layers


def lora_layers(model: torch.nn.Module, adapter: str = ADAPTER) -> dict[str, LoraLayer]:
    """Module name → peft LoRA layer holding ``adapter``."""
    out = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer) and adapter in m.lora_A}
    if not out:
        raise ValueError("the model has no LoRA adapter (add one with llm.lora.add_lora)")
    return out


def base_layer(module: torch.nn.Module) -> torch.nn.Module:
    """The wrapped linear map of a LoRA layer; any other module itself."""
    return module.get_base_layer() if isinstance(module, LoraLayer) else module


def as_module(layer: LoraLayer) -> torch.nn.Module:
    """``layer`` as the ``nn.Module`` it is (peft's LoRA layers subclass both; ``LoraLayer`` is a mixin)."""
    return cast(torch.nn.Module, layer)


def weight_of(module: torch.nn.Module) -> torch.Tensor:
    """``module.weight`` typed as the tensor it is (``nn.Module`` types its attributes ``Tensor | Module``)."""
    return cast(torch.Tensor, module.weight)


def factor_maps(layer: LoraLayer, adapter: str = ADAPTER) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    """The ``lora_A`` and ``lora_B`` linear maps of ``adapter`` in ``layer`` (peft builds them as ``nn.Linear``
    for the linear and ``Conv1D`` targets of :data:`LORA_TARGETS`)."""
    return cast(torch.nn.Linear, layer.lora_A[adapter]), cast(torch.nn.Linear, layer.lora_B[adapter])


def as_out_in(layer: LoraLayer, w: torch.Tensor) -> torch.Tensor:
    """A base weight (or its gradient) as ``(out, in)``: transposed for ``fan_in_fan_out`` layers."""
    return w.T if getattr(layer, "fan_in_fan_out", False) else w


def effective_weight(layer: LoraLayer, adapter: str = ADAPTER) -> torch.Tensor:
    """``(out, in)`` effective weight ``W_base + s B A`` of one LoRA layer."""
    return as_out_in(layer, weight_of(layer.get_base_layer())) + LoraFactors.of(layer, adapter=adapter).product


def weight_gradients(
    model: CausalLM, batch: dict[str, torch.Tensor] | None, layers: dict[str, LoraLayer], loss_fn=None
) -> dict[str, torch.Tensor]:
    """``∂loss/∂W`` (``(out, in)``) for each LoRA layer's effective weight, at the current model.

    ``loss_fn(model, batch, params)`` defaults to the victim's loss (mean response CE).
    ``W_eff = W_base + sBA`` is additive in the base weight, so
    its gradient is the base weight's, read through ``functional_call`` with the base weights as leaves.
    """
    loss_fn = loss_fn or response_loss
    leaves = {
        f"{name}.base_layer.weight": weight_of(l.get_base_layer()).detach().clone().requires_grad_()
        for name, l in layers.items()
    }
    loss = loss_fn(model, batch, leaves)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return {name: as_out_in(l, g) for (name, l), g in zip(layers.items(), grads)}


@torch.no_grad()
def extend_lora(model: ModelT, rows: dict[str, torch.Tensor], adapter: str = ADAPTER) -> ModelT:
    """Append rows ``rows[name]`` (``(k, in)``) to ``lora_A`` and ``k`` zero columns to ``lora_B``,
    in place; every layer must get the same ``k``. Scaling ``s`` is kept (``lora_alpha`` and
    the config's ``r`` / ``lora_alpha`` are rewritten so that ``alpha/r`` stays ``s``), so the
    forward pass is exactly unchanged. Layers absent from ``rows`` get ``k`` zero rows.
    """
    layers = lora_layers(model, adapter)
    ks = {int(a.shape[0]) for a in rows.values()}
    if len(ks) != 1:
        raise ValueError(f"extend_lora needs the same extra rank in every layer, got {sorted(ks)}")
    k = ks.pop()
    scalings = set()
    for name, layer in layers.items():
        lin_a, lin_b = factor_maps(layer, adapter)
        a_old, b_old = lin_a.weight, lin_b.weight
        a_new = rows.get(name)
        if a_new is None:
            a_new = torch.zeros(k, a_old.shape[1], dtype=a_old.dtype)
        r = a_old.shape[0]
        new_a = torch.nn.Linear(a_old.shape[1], r + k, bias=False, dtype=a_old.dtype)
        new_b = torch.nn.Linear(r + k, b_old.shape[0], bias=lin_b.bias is not None, dtype=b_old.dtype)
        new_a.weight.copy_(torch.cat([a_old, a_new.to(a_old.dtype)], 0))
        new_b.weight.copy_(torch.cat([b_old, torch.zeros(b_old.shape[0], k, dtype=b_old.dtype)], 1))
        if lin_b.bias is not None:
            new_b.bias.copy_(lin_b.bias)
        new_a.weight.requires_grad_(a_old.requires_grad)
        new_b.weight.requires_grad_(b_old.requires_grad)
        layer.lora_A[adapter], layer.lora_B[adapter] = new_a, new_b
        s = layer.scaling[adapter]
        layer.r[adapter] = r + k
        layer.lora_alpha[adapter] = s * (r + k)
        scalings.add((r + k, s))
    cfg = getattr(model, "peft_config", {}).get(adapter)
    if cfg is not None and len(scalings) == 1:
        r_new, s = scalings.pop()
        cfg.r, cfg.lora_alpha = r_new, s * r_new
    return model


def factor_keys(name: str, adapter: str = ADAPTER) -> tuple[str, str]:
    """The parameter names of layer ``name``'s ``A`` and ``B``."""
    return f"{name}.lora_A.{adapter}.weight", f"{name}.lora_B.{adapter}.weight"


# ---------------------------------------------------------------------------- W = s·B·A


@dataclass(frozen=True)
class LoraFactors:
    """``W = s·B·A`` (``(out, in)``) known by its factors ``b: (out, r)``, ``a: (r, in)`` and ``scale`` s."""

    b: torch.Tensor
    a: torch.Tensor
    scale: float

    @classmethod
    def of(
        cls, layer: LoraLayer, params: Params | None = None, name: str | None = None, adapter: str = ADAPTER
    ) -> LoraFactors:
        """The factors of ``layer``, read from ``params`` (full adapter tensors by parameter name,
        ``name`` the layer's module name) or from the layer itself."""
        if params is None:
            lin_a, lin_b = factor_maps(layer, adapter)
            return cls(lin_b.weight, lin_a.weight, layer.scaling[adapter])
        assert name is not None, "LoraFactors.of: params given without the layer's module name"
        a_key, b_key = factor_keys(name, adapter)
        return cls(params[b_key], params[a_key], layer.scaling[adapter])

    @classmethod
    def stack(cls, parts: Sequence[LoraFactors]) -> LoraFactors:
        """One adapter whose components are those of ``parts`` in order (same scale): ``W`` is their sum."""
        a = torch.cat([p.a for p in parts], 0)
        b = torch.cat([p.b for p in parts], 1)
        return cls(b, a, parts[0].scale)

    @property
    def product(self) -> torch.Tensor:
        """``s·B·A``."""
        return self.scale * self.b @ self.a

    def detached(self) -> LoraFactors:
        return LoraFactors(self.b.detach(), self.a.detach(), self.scale)

    def nuclear_norm(self, rtol: float = 1e-6) -> torch.Tensor:
        """``‖s·B·A‖_*``, differentiable. Singular values below ``rtol`` of the largest (a
        rank-deficient product, e.g. with hidden ``B = 0`` components) are left out of the sum, so
        the gradient is the minimal subgradient ``s U_r V_rᵀ`` of the live part rather than a
        direction picked by the SVD's choice of null-space basis."""
        sigma = torch.linalg.svdvals(self.product)
        live = (sigma > rtol * sigma.max()).detach()
        return (sigma * live).sum()

    def gauge_excess(self) -> torch.Tensor:
        """``s(‖B‖² + ‖A‖²) − 2‖s·B·A‖_*`` (≥ 0): how far the factors are from the balanced form of
        their product, the minimum of ``s(‖B‖² + ‖A‖²)`` over the GL(r) orbit (AM-GM on the singular
        values; :mod:`llm.audit.canonical`, eq. 2). Differentiable in the factors."""
        return self.scale * ((self.b**2).sum() + (self.a**2).sum()) - 2 * self.nuclear_norm()

    def gauged(self, out_map: torch.Tensor, in_map: torch.Tensor) -> LoraFactors:
        """The factors of ``R W K`` (``R = out_map``, ``K = in_map``): ``B → R B``, ``A → A K``."""
        a = self.a @ in_map
        return LoraFactors(out_map @ self.b, a, self.scale)

    def after_sgd(self, grad: torch.Tensor, lr: float) -> LoraFactors:
        """The factors after one SGD step of rate ``lr`` under a loss whose gradient in ``W`` is
        ``grad``: ``B' = B − η s G Aᵀ``, ``A' = A − η s Bᵀ G``; their product is eq. (1)."""
        a = self.a - lr * self.scale * self.b.T @ grad
        b = self.b - lr * self.scale * grad @ self.a.T
        return LoraFactors(b, a, self.scale)


def hidden_inputs(a: torch.Tensor, n_out: int, scale: float) -> LoraFactors:
    """Components with ``B = 0`` and rows ``a`` (``(k, in)``) of ``A``: ``W = 0``, ``Q = aᵀa``."""
    return LoraFactors(torch.zeros(n_out, len(a), dtype=a.dtype), a, scale)


def hidden_outputs(b_rows: torch.Tensor, n_in: int, scale: float) -> LoraFactors:
    """Components with ``A = 0`` and columns ``b_rows.T`` (``b_rows: (k, out)``) of ``B``: ``W = 0``, ``P = bᵀb``."""
    return LoraFactors(b_rows.T, torch.zeros(len(b_rows), n_in, dtype=b_rows.dtype), scale)


def first_order_move(
    grad: torch.Tensor,
    lr: float,
    scale: float,
    out_gram: torch.Tensor | None = None,
    in_gram: torch.Tensor | None = None,
    read_back: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The term of eq. (1) linear in the Gram matrices, ``−η s² (P G + G Q)`` (``P = out_gram``,
    ``Q = in_gram``; either may be absent), read back as ``R⁻¹ (…) K⁻¹`` when ``read_back`` is
    ``(R⁻¹, K⁻¹)``. For components with ``B = 0`` or ``A = 0`` it is their whole move."""
    # at least one Gram matrix is given, so the sum is a tensor
    inner = cast(
        torch.Tensor,
        sum(([out_gram @ grad] if out_gram is not None else []) + ([grad @ in_gram] if in_gram is not None else [])),
    )
    if read_back is not None:
        inner = read_back[0] @ inner @ read_back[1]
    return -lr * scale**2 * inner
