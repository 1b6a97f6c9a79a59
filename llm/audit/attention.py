"""Canonical gauge of attention heads (GPT-2, Llama): the balanced factorisation of each head's products.

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

Llama (grouped-query attention, rotary embeddings; :func:`llm.gauges.gauge_spec`): a group acts
on one key/value head and on every query head reading it. ``v{l}.{g}`` is GL and gets eq. 3 with
the output columns of all those heads stacked, ``O = [O_1; …; O_rep]``. ``q{l}.{g}`` is the
group of scaled rotations of each frequency's pair ``(j, j + d_head/2)``: per pair, with ``D_j``
the squared norm of the query rows of the pair (every head of the group, biases included) and
``R_j`` that of the key rows, the query rows ``× c_j`` and the key rows ``÷ c_j`` with

    c_j⁴ = R_j / D_j                                                                      (eq. 4)

minimise ``D_j c_j² + R_j c_j⁻²`` (value ``2√(D_j R_j)``, eq. 1's AM-GM); the rotation, an isometry,
changes no norm and is fixed by the key rows: it makes their 2×2 Gram matrix diagonal, larger
entry first, and the largest-|·| entry of the first row positive. A pair whose Gram matrix has two
equal eigenvalues has no such rotation; its group is listed in ``skipped`` (rotation left as it
is, scale still balanced).
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora import LoraLayer
from transformers.pytorch_utils import Conv1D

from llm import gauges
from llm.lora import ADAPTER, LoraFactors, as_out_in, base_layer, weight_of
from theory.symmetry import rotary_matrix

#: singular values of a head's product below ``RTOL · ‖left‖_F ‖right‖_F`` count as absent
RTOL = 1e-9


def applies(model: torch.nn.Module) -> bool:
    """Whether :func:`llm.gauges.gauge_spec` declares attention gauges for ``model``."""
    cfg: Any = model.config
    return cfg.model_type in gauges.ATTENTION


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


def _factor(weights: tuple[torch.Tensor, torch.Tensor], act: gauges.Action) -> torch.Tensor:
    """The ``(d_head, ·)`` block a group element moves through ``act``: the rows ``[W | b]`` of an
    ``out`` span, the transposed columns ``W[:, span]ᵀ`` of an ``in`` span (``O' = O M⁻ᵀ`` is
    ``O'ᵀ = M⁻¹ Oᵀ``)."""
    w, b = weights
    s0, s1 = act.span or (0, w.shape[0] if act.axis == "out" else w.shape[1])
    return torch.cat([w[s0:s1], b[s0:s1, None]], 1) if act.axis == "out" else w[:, s0:s1].T


def rotary_element(moved: torch.Tensor, other: torch.Tensor, rtol: float = RTOL) -> tuple[torch.Tensor, bool]:
    """Eq. 4 for one ``q`` group of rotary attention: ``moved`` the query rows ``(d_head, n1)``
    (side ``A^T``), ``other`` the key rows ``(d_head, n2)`` (side ``A^-1``). Returns the element
    ``M`` (``Mᵀ`` on the queries, ``M⁻¹`` on the keys: per pair ``M = c R(−α)``), float64, and
    whether every live pair's rotation was determined (module docstring)."""
    half = moved.shape[0] // 2
    q, k = (torch.stack([x[:half], x[half:]], 1) for x in (moved, other))  # (half, 2, n): pair j's two rows
    d, r = (q**2).sum((1, 2)), (k**2).sum((1, 2))
    live = (d > 0) & (r > 0)
    log_c = torch.where(live, 0.25 * (torch.log(r.clamp_min(1e-300)) - torch.log(d.clamp_min(1e-300))), 0.0)
    gram = k @ k.transpose(1, 2)  # (half, 2, 2)
    values, vectors = torch.linalg.eigh(gram)  # ascending: the last column is the larger axis
    first = vectors[:, :, 1]
    lead = torch.einsum("pi,pin->pn", first, k)
    sign = torch.where(lead.gather(1, lead.abs().argmax(1, keepdim=True)).squeeze(1) < 0, -1.0, 1.0)
    first = first * sign[:, None].to(first.dtype)
    determined = (values[:, 1] - values[:, 0]) > rtol * values[:, 1].abs().clamp_min(1e-300)
    angle = torch.where(live & determined, torch.atan2(-first[:, 1], first[:, 0]), 0.0)  # R(α)'s first row
    return rotary_matrix(log_c, -angle), bool((determined | ~live).all())


def head_elements(
    model: torch.nn.Module, adapter: str = ADAPTER, rtol: float = RTOL
) -> tuple[dict[str, torch.Tensor], dict[str, float], list[str]]:
    """Eq. 3 (GL groups) and eq. 4 (rotary groups) for every group of :func:`llm.gauges.gauge_spec`:
    the elements (float64) moving the model to its balanced form; per attention module
    ``attn:<module>``, the decrease of ``Σ ‖Q̂‖² + ‖K̂‖² + ‖V̂‖² + ‖O‖²`` they give, and
    ``attn_canonical:<module>`` its minimum; and the groups not fully canonicalised (rank-deficient
    GL heads, left at the identity; rotary pairs with an undetermined rotation)."""
    spec = gauges.gauge_spec(model, attention=True, layernorm=False)
    modules = dict(model.named_modules())
    weights = {name: effective(modules[name], adapter) for name in {a.module for a in spec.actions}}
    elements: dict[str, torch.Tensor] = {}
    excess: dict[str, float] = {}
    skipped: list[str] = []
    for group, declared in spec.groups.items():
        acts = [a for a in spec.actions if a.group == group]
        moved = torch.cat([_factor(weights[a.module], a) for a in acts if a.side == "A^T"], 1)  # X' = Mᵀ X
        other = torch.cat([_factor(weights[a.module], a) for a in acts if a.side == "A^-1"], 1)  # Y' = M⁻¹ Y
        block = next(a.module for a in acts if a.side == "A^T").rsplit(".", 1)[0]
        delivered = float((moved**2).sum() + (other**2).sum())
        if declared.kind == "rotary":
            elements[group], determined = rotary_element(moved, other, rtol)
            m = elements[group]
            canonical = float(((m.T @ moved) ** 2).sum() + ((torch.linalg.solve(m, other)) ** 2).sum())
            if not determined:
                skipped.append(group)
        else:  # GL: q (GPT-2) balances Q̂ᵀ·K̂ with Q̂ moved; v balances O·V̂ with V̂ moved (eq. 3)
            left, right = (moved.T, other) if group.startswith("q") else (other.T, moved)
            new_left, new_right, rank = balanced(left, right, rtol)
            canonical = float((new_left**2).sum() + (new_right**2).sum())
            if rank < declared.size:  # eq. 3 is out of reach: the head stays, with no excess counted
                skipped.append(group)
                elements[group] = torch.eye(declared.size, dtype=torch.float64)
                canonical = delivered
            else:
                elements[group] = _element(moved, new_left.T if group.startswith("q") else new_right)
        excess[f"attn:{block}"] = excess.get(f"attn:{block}", 0.0) + delivered - canonical
        excess[f"attn_canonical:{block}"] = excess.get(f"attn_canonical:{block}", 0.0) + canonical
    return elements, excess, skipped


def compose(first: dict[str, torch.Tensor], then: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The element acting as ``first`` then ``then`` (``Q̂ → thenᵀ firstᵀ Q̂``): ``first @ then``."""
    return {name: first[name] @ then[name] for name in then} if first else dict(then)
