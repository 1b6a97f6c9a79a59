"""Canonical gauge of GPT-2's attention heads: the balanced factorisation of each head's products.

Head ``h`` of a block reads its effective weights (``W_base + s·B·A`` where LoRA adapts them) only
through two products. With the biases as an extra input column (``x̂ = [x; 1]``, the query and key
``Q̂ = [W_Q | b_Q]``, ``K̂ = [W_K | b_K]``, value ``V̂ = [W_V | b_V]``, all ``(d_head, d + 1)``, and
``O`` the head's ``(d, d_head)`` columns of ``c_proj``), the scores are ``x̂ᵀ Q̂ᵀK̂ ŷ`` and the head's
output is ``O V̂ Σ_i a_i x̂_i`` (the weights ``a_i`` sum to one). The gauges of :mod:`llm.gauges`
(``q{l}.{h}``: ``Q̂ → MᵀQ̂``, ``K̂ → M⁻¹K̂``; ``v{l}.{h}``: ``V̂ → NᵀV̂``, ``O → O N⁻ᵀ``) keep both
products. With ``P = Q̂ᵀK̂ = U Σ Vᵀ`` (resp. ``O V̂``, left factor ``O``) the balanced form

    Q̂' = Σ^{1/2} Uᵀ,   K̂' = Σ^{1/2} Vᵀ        (resp. O' = U Σ^{1/2},  V̂' = Σ^{1/2} Vᵀ)        (eq. 3)

minimises ``‖Q̂‖² + ‖K̂‖²`` over the orbit (value ``2‖P‖_*``, AM-GM on the singular values, as
eq. 2 of :mod:`llm.audit.canonical`); signs: the largest-|·| entry of each row of ``K̂'`` (``V̂'``)
is positive. The element reaching it, ``Mᵀ = Q̂' Q̂⁺`` (``Nᵀ = V̂' V̂⁺``), is applied with
:func:`llm.gauges.apply`, so base weights, biases and LoRA factors move together and the model
keeps its checkpoint format (base weights + adapter). A head whose product has numerical rank
below ``d_head`` has no invertible element reaching eq. 3 and is left as it is (``skipped``).

Llama is not canonicalised here: its rotary embedding commutes only with the gauges that commute
with its 2×2 rotation blocks, and :func:`llm.gauges.gauge_spec` declares no attention gauge for
it (:func:`applies`).
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora import LoraLayer
from transformers.pytorch_utils import Conv1D

from llm import gauges
from llm.lora import ADAPTER, LoraFactors, as_out_in, base_layer, weight_of

#: singular values of a head's product below ``RTOL · ‖left‖_F ‖right‖_F`` count as absent
RTOL = 1e-9


def applies(model: torch.nn.Module) -> bool:
    """Whether :func:`llm.gauges.gauge_spec` declares attention gauges for ``model`` (GPT-2)."""
    cfg: Any = model.config
    return cfg.model_type == "gpt2"


def effective(module: torch.nn.Module, adapter: str = ADAPTER) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, b)``: the ``(out, in)`` effective weight ``W_base + s·B·A`` and the bias (zeros without
    one), float64."""
    base = base_layer(module)
    w = weight_of(base).detach().double()
    if isinstance(module, LoraLayer) and adapter in module.lora_A:
        w = as_out_in(module, w) + LoraFactors.of(module, adapter=adapter).detached().product.double()
    elif isinstance(base, Conv1D):  # stored (in, out)
        w = w.T
    bias = getattr(base, "bias", None)
    b = bias.detach().double() if bias is not None else w.new_zeros(w.shape[0])
    return w, b


def balanced(left: torch.Tensor, right: torch.Tensor, rtol: float = RTOL) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Eq. 3 for ``P = left @ right`` (``left (m, k)``, ``right (k, n)``): the balanced factors
    ``(U Σ^{1/2}, Σ^{1/2} Vᵀ)`` of rank ``k``, signed, and the numerical rank of ``P``. The SVD is
    that of the ``k × k`` core ``R_l R_rᵀ`` of the QR factors ``left = Q_l R_l``, ``rightᵀ = Q_r R_r``."""
    q_l, r_l = torch.linalg.qr(left)
    q_r, r_r = torch.linalg.qr(right.T)
    u, sigma, vh = torch.linalg.svd(r_l @ r_r.T)
    u, vh = q_l @ u, vh @ q_r.T
    rank = int((sigma > rtol * float(left.norm() * right.norm())).sum())
    lead = vh.gather(1, vh.abs().argmax(dim=1, keepdim=True)).squeeze(1)
    sign = torch.where(lead < 0, -1.0, 1.0).to(vh.dtype)
    root = sigma.sqrt()
    return u * (sign * root), (sign * root)[:, None] * vh, rank


def _element(current: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``A`` with ``Aᵀ current = target`` (``current`` of full row rank): ``Aᵀ = target current⁺``."""
    return torch.linalg.lstsq(current.T, target.T).solution


def head_elements(
    model: torch.nn.Module, adapter: str = ADAPTER, rtol: float = RTOL
) -> tuple[dict[str, torch.Tensor], dict[str, float], list[str]]:
    """Eq. 3 for every head of :func:`llm.gauges.gauge_spec`: the elements (float64) moving the model
    to its balanced form; per attention module ``attn:<module>``, the decrease of ``Σ_h ‖Q̂‖² + ‖K̂‖²
    + ‖V̂‖² + ‖O‖²`` they give, and ``attn_canonical:<module>`` its minimum ``Σ_h 2‖P‖_*``; and the
    groups left at the identity (rank-deficient heads)."""
    spec = gauges.gauge_spec(model, attention=True, layernorm=False)
    modules = dict(model.named_modules())
    weights = {name: effective(modules[name], adapter) for name in {a.module for a in spec.actions}}
    elements: dict[str, torch.Tensor] = {}
    excess: dict[str, float] = {}
    skipped: list[str] = []
    for group, size in ((g, spec.groups[g].size) for g in spec.groups):
        acts = [a for a in spec.actions if a.group == group]
        first, second = acts  # q: (query A^T, key A^-1); v: (value A^T, c_proj inputs A^-1)
        w, b = weights[first.module]
        (s0, s1), (t0, t1) = first.span or (0, 0), second.span or (0, 0)
        moved = torch.cat([w[s0:s1], b[s0:s1, None]], 1)  # Q̂ or V̂, the factor acted on by A^T
        if group.startswith("q"):
            other = torch.cat([w[t0:t1], b[t0:t1, None]], 1)  # K̂
            left, right = moved.T, other
        else:
            other = weights[second.module][0][:, t0:t1]  # O
            left, right = other, moved
        new_left, new_right, rank = balanced(left, right, rtol)
        block = first.module.rsplit(".", 1)[0]
        delivered = float((moved**2).sum() + (other**2).sum())
        canonical = float((new_left**2).sum() + (new_right**2).sum())
        if rank < size:  # eq. 3 is out of reach: the head stays, with no excess counted
            skipped.append(group)
            elements[group] = torch.eye(size, dtype=torch.float64)
            canonical = delivered
        else:
            elements[group] = _element(moved, new_left.T if group.startswith("q") else new_right)
        excess[f"attn:{block}"] = excess.get(f"attn:{block}", 0.0) + delivered - canonical
        excess[f"attn_canonical:{block}"] = excess.get(f"attn_canonical:{block}", 0.0) + canonical
    return elements, excess, skipped


def compose(first: dict[str, torch.Tensor], then: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The element acting as ``first`` then ``then`` (``Q̂ → thenᵀ firstᵀ Q̂``): ``first @ then``."""
    return {name: first[name] @ then[name] for name in then} if first else dict(then)
