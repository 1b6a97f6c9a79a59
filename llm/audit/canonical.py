"""Canonical representative of a LoRA'd transformer along its known function-preserving symmetries.

``canonicalize(model)`` returns a copy that computes the same function and is the same for every
point of the model's orbit under the moves below, the transformer counterpart of
:mod:`theory.audit.canonical`:

(a) **Layer-norm gain gauges** (:mod:`llm.gauges`): a norm's gain and bias ``× c_j`` on channel
    ``j`` and the linear maps reading it ``÷ c_j`` on input ``j`` keep the function. Per channel,
    with the effective weights ``W = W_base + s·B·A`` of the readers (invariant under (b)),

        (g_j² + b_j²) c_j² + Σ_readers ‖W[:, j]‖² c_j⁻²                                        (eq. 1)

    is minimised by ``c_j⁴ = Σ_readers ‖W[:, j]‖² / (g_j² + b_j²)`` (equi-normalisation, Stock et
    al. 2019), which balances ‖gain‖ against ‖following weights column‖. A gauged point
    ``(c' g, W / c')`` gets ``c / c'``: every point of the orbit lands on the same representative.
    A channel with a zero gain or no weight reading it keeps ``c_j = 1``.
(b) **LoRA factorisation** ``W = s·B·A`` (``B: (out, r)``, ``A: (r, in)``), free up to
    ``(B, A, s) → (B M⁻¹ / t, M A / t, s t²)`` for any ``M ∈ GL(r)`` and ``t > 0``. With
    ``s·B·A = U Σ Vᵀ`` the balanced form with ``s`` folded into the factors is

        B' = U Σ^{1/2},   A' = Σ^{1/2} Vᵀ,   s' = 1,                                          (eq. 2)

    the minimiser of ``s(‖B‖² + ‖A‖²)`` over the orbit (value ``2‖s·B·A‖_*``, the nuclear norm;
    ``‖B‖² + ‖A‖² ≥ 2‖B A‖_*`` by AM-GM on the singular values). Components with a singular value
    ``≤ rtol · s Σ_i ‖b_i‖‖a_i‖`` (``b_i``, ``a_i`` the ``i``-th column of ``B`` and row of ``A``)
    are dropped: those with ``B = 0`` or ``A = 0``, and those that cancel, add nothing to ``W`` and
    vanish. The tolerance is the size of the product's float32 rounding: once a GL(r) change has
    mixed hidden components into live ones, the stored factors leave null components of order
    ``ε s Σ_i ‖b_i‖‖a_i‖``. It is summed per component, not ``s‖B‖_F‖A‖_F``, so that components
    with a large ``b_i`` and ``a_i = 0`` (or the reverse), which add nothing to any product, cannot
    raise it above the live components; a live component dropped under it shows in the
    function residual. Every module keeps the largest rank ``R`` of any module, padded
    with zero components (``A`` rows and ``B`` columns both zero): their gradients ``s G Aᵀ`` and
    ``s Bᵀ G`` are exactly zero, so SGD and Adam leave them at zero and the step is that of the
    unpadded form. Signs: the largest-|·| entry of each row of ``A'`` is positive.

(c) **Attention head gauges** (:mod:`llm.audit.attention`): GPT-2's heads (eq. 3): each head's
    query/key and value/output factors are put in the balanced form of their products ``Q̂ᵀK̂``
    and ``O V̂`` (biases included); Llama's (eq. 4): value/output as eq. 3 per key/value head,
    query/key by the scaled rotations that commute with the rotary embedding, a scale balancing
    each frequency pair's query rows against its key rows and a rotation fixed by the key rows.
    The element is applied to base weights, biases and LoRA factors alike.
    (c) and (a) both move the weights of the maps reading a norm, so they alternate, each pass
    minimising the same total ``‖θ‖²`` over its own group, until a pass moves no element by more
    than :data:`ROUND_TOL` (at most :data:`ROUNDS` passes); this runs in float64 and the result
    is cast back once.

(d) **Redundant FFN units** (GPT-2 and Llama; :mod:`llm.audit.ffn_units`), first, as they
    change the MLPs' shapes: units with equal incoming weights and bias (gated: equal gate rows
    and parallel up rows) merged, outgoing combined, silent units removed; cancelling pairs vanish.

(e) **Gated-MLP units** (Llama; the ``unit`` gauge of :mod:`llm.gauges`): up row ``i`` ``× c_i``,
    down column ``i`` ``÷ c_i``, balanced as in eq. 1 with the effective up row (and bias) on one
    side and the effective down column on the other. (e) and (a) both move ``up_proj``'s weights,
    so they alternate as (c) and (a) do, in float64.
(f) **Gated-MLP unit signs**: (e) with ``c_i = −1`` (up row and down column both negated) keeps
    the function and every norm, so eq. 1 cannot fix it: after the passes, each unit's sign makes
    the largest-|·| entry of its effective up row (with its bias) positive, as eq. 2 fixes the
    LoRA components' signs. An isometry commutes with SGD's and Adam's steps, so this changes no
    excess and no step; it makes sign-flipped deliveries share one representative.

Reported:

* the **gauge excess** ``‖θ‖² − ‖canon θ‖²`` per module: ``norm:<norm>`` the decrease of eq. 1
  summed over its channels (≥ 0), ``lora:<module>`` ``s(‖B‖² + ‖A‖²) − 2‖s·B·A‖_*`` after (a)
  (≥ 0); ``attn:<block>.attn`` the decrease of ``Σ_h ‖Q̂‖² + ‖K̂‖² + ‖V̂‖² + ‖O‖²`` (eq. 3);
  ``ffn:<block>.mlp`` the decrease of (d) (the MLP's base and LoRA tensors); ``unit:<up_proj>``
  the decrease of (e);
  the decreases of (a), (c) and (e) are summed over the alternating passes, so that
  ``attn + norm + unit`` is the decrease of the total; ``lora``, ``norm``, ``attn``, ``ffn``,
  ``unit`` and ``total`` sums and
  ``*_relative`` = the excess over the canonical value (eq. 1 at its minimum, ``Σ 2‖s·B·A‖_*``,
  resp. ``Σ 2‖P‖_*``);
* the **function residual**: next-token KL between delivered and canonical
  (:func:`function_residual`, :func:`llm.evaluate.next_token_kl`).

Not canonicalised here: the attention of architectures :data:`llm.gauges.ATTENTION` does not
declare (e.g. Gemma's normalised queries and keys: a twin built there keeps its excess there),
and the scale of a map before a norm of its output (Gemma's ``post_attention_layernorm``,
``post_feedforward_layernorm``, ``q_norm``, ``k_norm``), which keeps the function with nothing
compensating and has no minimum-norm form.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D

from llm import gauges
from llm.audit import attention
from llm.audit.ffn_units import merge_units
from llm.data.schema import Example
from llm.evaluate import next_token_kl
from llm.lora import ADAPTER, LoraFactors, as_out_in, base_layer, lora_layers

#: singular values of a module's ``s·B·A`` below ``RTOL · s Σ_i ‖b_i‖‖a_i‖`` are dropped components
#: (eq. 2): about a hundred float32 roundings of the stored factors, far below a trained component
RTOL = 1e-5

#: most alternating passes of (c) and (a) (module docstring); each shrinks the next pass's move
#: about fourfold on the tiny models, to a float64 floor near 1e-13 (the head elements' solves)
ROUNDS = 200
#: a pass moving no element entry by more than this (``|M − I|``, ``|c − 1|``) ends the alternation
ROUND_TOL = 1e-11


@dataclass(frozen=True)
class Canonical:
    """``model``: the canonical copy; ``ranks``: the numerical rank of each LoRA module's
    ``s·B·A``; ``removed``: components dropped per module (delivered rank − numerical rank);
    ``norm_scales``: the scales ``c`` of eq. 1 per norm group and, for a gated MLP, per unit
    group (e); ``excess``: the gauge excess (module docstring); ``attention``: the head elements of
    eqs. 3–4 per group (float64, composed over the passes); ``skipped``: heads not fully
    canonicalised (rank-deficient GL heads, rotary pairs without a determined rotation);
    ``rounds``: alternating passes run; ``units_removed``: redundant FFN units merged out per MLP
    (step (d))."""

    model: PreTrainedModel
    ranks: dict[str, int]
    removed: dict[str, int]
    norm_scales: dict[str, torch.Tensor]
    excess: dict[str, float]
    attention: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    rounds: int = 1
    units_removed: dict[str, int] = field(default_factory=dict)


def balanced_factors(factors: LoraFactors, rtol: float = RTOL) -> tuple[LoraFactors, int]:
    """Eq. 2 for one module: the balanced factors of ``s·B·A`` with ``s' = 1`` (float64), and
    the numerical rank kept (a zero product keeps no component)."""
    b, a = factors.b.detach().double(), factors.a.detach().double()
    product = factors.scale * b @ a
    u, sigma, vh = torch.linalg.svd(product, full_matrices=False)
    noise = rtol * abs(factors.scale) * float((b.norm(dim=0) * a.norm(dim=1)).sum())
    rank = int((sigma > noise).sum())
    u, sigma, vh = u[:, :rank], sigma[:rank], vh[:rank]
    lead = vh.gather(1, vh.abs().argmax(dim=1, keepdim=True)).squeeze(1)
    sign = torch.where(lead < 0, -1.0, 1.0).to(vh.dtype)
    root = sigma.sqrt()
    return LoraFactors(u * (sign * root), (sign * root)[:, None] * vh, 1.0), rank


def padded(factors: LoraFactors, rank: int) -> LoraFactors:
    """``factors`` with zero components appended up to ``rank`` (the same ``W`` and step)."""
    extra = rank - factors.a.shape[0]
    a = torch.cat([factors.a, factors.a.new_zeros(extra, factors.a.shape[1])], 0)
    b = torch.cat([factors.b, factors.b.new_zeros(factors.b.shape[0], extra)], 1)
    return LoraFactors(b, a, factors.scale)


def _effective(module: torch.nn.Module, adapter: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A linear map's effective ``(out, in)`` weight ``W = W_base + s·B·A`` (invariant under (b))
    and its bias (None without one), float64."""
    base = base_layer(module)
    w = _tensor(base, "weight").detach().double()
    if isinstance(module, LoraLayer) and adapter in module.lora_A:
        w = as_out_in(module, w) + LoraFactors.of(module, adapter=adapter).detached().product.double()
    elif isinstance(base, Conv1D):  # stored (in, out)
        w = w.T
    bias = _tensor(base, "bias").detach().double() if getattr(base, "bias", None) is not None else None
    return w, bias


def _sq_along(module: torch.nn.Module, axis: str, span: tuple[int, int] | None, adapter: str) -> torch.Tensor:
    """The squared norms, per entry of ``axis``, of what a scale on that axis multiplies, float64: a
    norm's ``g_j² + b_j²``; a linear map's effective weight (:func:`_effective`) by row with its
    bias (``out``) or by column (``in``)."""
    base = base_layer(module)
    if not isinstance(base, (torch.nn.Linear, Conv1D)):
        sq = _gain_sq(base)
    else:
        w, bias = _effective(module, adapter)
        sq = (w**2).sum(dim=0) if axis == "in" else (w**2).sum(dim=1)
        if axis == "out" and bias is not None:
            sq = sq + bias**2
    return sq if span is None else sq[span[0] : span[1]]


def _tensor(module: torch.nn.Module, name: str) -> torch.Tensor:
    """``module.<name>`` as the tensor it is (``nn.Module`` types attributes ``Tensor | Module``)."""
    return cast(torch.Tensor, getattr(module, name))


def _gain_sq(norm: torch.nn.Module) -> torch.Tensor:
    """``g_j² + b_j²`` per channel of a norm (``b = 0`` for an RMSNorm), float64."""
    gain = _tensor(norm, "weight").detach().double() ** 2
    if getattr(norm, "bias", None) is not None:
        gain = gain + _tensor(norm, "bias").detach().double() ** 2
    return gain


def unit_signs(model: torch.nn.Module, spec: gauges.GaugeSpec, adapter: str = ADAPTER) -> dict[str, torch.Tensor]:
    """(f) for every unit group of ``spec``: per unit, ``±1`` making the largest-|·| entry of its
    effective up row ``W_base + s·B·A`` (with its bias) positive; ``+1`` for a zero row."""
    modules = dict(model.named_modules())
    signs = {}
    for group in spec.groups:
        (act,) = [a for a in spec.actions if a.group == group and a.side == "A"]
        w, bias = _effective(modules[act.module], adapter)
        if bias is not None:
            w = torch.cat([w, bias[:, None]], 1)
        if act.span is not None:
            w = w[act.span[0] : act.span[1]]
        lead = w.gather(1, w.abs().argmax(dim=1, keepdim=True)).squeeze(1)
        signs[group] = torch.where(lead < 0, -1.0, 1.0).to(w.dtype)
    return signs


def balanced_scales(
    model: torch.nn.Module, spec: gauges.GaugeSpec, family: str, adapter: str = ADAPTER
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Eq. 1 for every ``scale`` group of ``spec`` (layer norms: (a); gated-MLP units: (e)): per
    entry ``j``, with ``D_j`` the squared norms the group multiplies (side ``A``) and ``R_j`` those it
    divides (side ``A^-T``), ``c_j⁴ = R_j / D_j`` minimises ``D_j c_j² + R_j c_j⁻²``; an entry with
    ``D_j = 0`` or ``R_j = 0`` keeps ``c_j = 1``. Returns the scales and, per group (keyed by the
    module on side ``A``), the decrease (``<family>:<module>``) and the minimum
    (``<family>_canonical:<module>``)."""
    modules = dict(model.named_modules())
    scales: dict[str, torch.Tensor] = {}
    excess: dict[str, float] = {}
    for group in spec.groups:
        acts = [a for a in spec.actions if a.group == group]
        (owner,) = [a.module for a in acts if a.side == "A"]
        sq = {
            side: [_sq_along(modules[a.module], a.axis, a.span, adapter) for a in acts if a.side == side]
            for side in ("A", "A^-T")
        }
        direct, inverse = torch.stack(sq["A"]).sum(0), torch.stack(sq["A^-T"]).sum(0)
        live = (direct > 0) & (inverse > 0)
        c = torch.ones_like(direct)
        c[live] = (inverse[live] / direct[live]) ** 0.25
        scales[group] = c
        minimum = float((direct * c**2 + inverse / c**2).sum())
        excess[f"{family}:{owner}"] = float((direct + inverse).sum()) - minimum
        excess[f"{family}_canonical:{owner}"] = minimum
    return scales, excess


@torch.no_grad()
def _write_factors(layer: LoraLayer, factors: LoraFactors, adapter: str) -> None:
    """Replace ``layer``'s factors by ``factors`` (any rank) with scaling ``factors.scale``."""
    old_a, old_b = cast(torch.nn.Linear, layer.lora_A[adapter]), cast(torch.nn.Linear, layer.lora_B[adapter])
    rank = factors.a.shape[0]
    dtype, device = old_a.weight.dtype, old_a.weight.device
    new_a = torch.nn.Linear(old_a.in_features, rank, bias=False, dtype=dtype, device=device)
    new_b = torch.nn.Linear(rank, old_b.out_features, bias=old_b.bias is not None, dtype=dtype, device=device)
    new_a.weight.copy_(factors.a.to(dtype))
    new_b.weight.copy_(factors.b.to(dtype))
    if old_b.bias is not None:
        new_b.bias.copy_(old_b.bias)
    new_a.weight.requires_grad_(old_a.weight.requires_grad)
    new_b.weight.requires_grad_(old_b.weight.requires_grad)
    layer.lora_A[adapter], layer.lora_B[adapter] = new_a, new_b
    layer.r[adapter] = rank
    # scaling s' = factors.scale; lora_alpha says the same to peft (α/r, or α/√r with rsLoRA)
    rslora = bool(getattr(layer, "use_rslora", {}).get(adapter, False))
    layer.lora_alpha[adapter] = factors.scale * (rank**0.5 if rslora else rank)
    layer.scaling[adapter] = factors.scale


def _set_config_rank(model: torch.nn.Module, rank: int, adapter: str) -> None:
    """The adapter's peft config says every module has rank ``rank`` and scaling 1 (what a
    ``save_pretrained`` of the canonical model writes)."""
    cfg = getattr(model, "peft_config", {}).get(adapter)
    if cfg is None:
        return
    cfg.r = rank
    cfg.lora_alpha = rank**0.5 if cfg.use_rslora else rank
    cfg.rank_pattern, cfg.alpha_pattern = {}, {}


def require_plain_lora(layers: dict[str, LoraLayer], adapter: str) -> None:
    """Eq. 2 is the symmetry of ``s·B·A`` alone: variants that read ``B`` or ``A`` otherwise
    (DoRA's magnitude) are refused."""
    for name, layer in layers.items():
        if getattr(layer, "use_dora", {}).get(adapter) or adapter in getattr(layer, "lora_variant", {}):
            raise ValueError(f"canonicalize: {name} is a LoRA variant (DoRA); only plain LoRA is canonicalised")


def gated(model: torch.nn.Module) -> bool:
    """Whether ``model``'s MLPs are gated (:data:`llm.gauges.GATED_UNITS`)."""
    return cast(Any, model).config.model_type in gauges.GATED_UNITS


def scale_specs(model: torch.nn.Module) -> dict[str, gauges.GaugeSpec]:
    """The ``scale`` gauges of the canonical form by excess family: the layer norms (a) and, for a
    gated MLP, its units (e)."""
    specs = {"norm": gauges.gauge_spec(model, attention=False, layernorm=True)}
    if gated(model):
        specs["unit"] = gauges.gauge_spec(model, attention=False, layernorm=False, units=True)
    return specs


def alternates(model: torch.nn.Module) -> bool:
    """Whether the canonical form has two gauges that change each other's balance (heads and norms
    on the attention maps, a gated MLP's units and norms on ``up_proj``): then it alternates them,
    in float64."""
    return attention.applies(model) or gated(model)


def gauge_passes(canon: PreTrainedModel, adapter: str, rounds: int = ROUNDS) -> tuple[dict, dict, dict, list, int]:
    """(c), (a) and (e) alternated in place on ``canon`` (module docstring): the scales and head
    elements (each composed over the passes), the excess parts, the skipped heads, the passes run."""
    head_spec = gauges.gauge_spec(canon, attention=True, layernorm=False) if attention.applies(canon) else None
    specs = scale_specs(canon)
    scales: dict[str, torch.Tensor] = {}
    elements: dict[str, torch.Tensor] = {}
    parts: dict[str, float] = {}
    skipped: list[str] = []
    done = 0
    while done < rounds:
        moved = 0.0
        if head_spec is not None:
            step, head_parts, skipped = attention.head_elements(canon, adapter)
            gauges.apply(canon, head_spec, step, adapter)
            elements = attention.compose(elements, step)
            moved = max(float((m - torch.eye(len(m), dtype=m.dtype)).abs().max()) for m in step.values())
            _accumulate(parts, head_parts)
        for family, spec in specs.items():
            step_scales, scale_parts = balanced_scales(canon, spec, family, adapter)
            gauges.apply(canon, spec, dict(step_scales), adapter)
            scales |= {g: scales[g] * c if g in scales else c for g, c in step_scales.items()}
            moved = max([moved] + [float((c - 1).abs().max()) for c in step_scales.values()])
            _accumulate(parts, scale_parts)
        done += 1
        if not alternates(canon) or moved <= ROUND_TOL:  # one pass of (a) alone is exact
            break
    return scales, elements, parts, skipped, done


def _accumulate(parts: dict[str, float], new: dict[str, float]) -> None:
    """Excess decreases add up over the passes; canonical values are the last pass's."""
    for key, value in new.items():
        parts[key] = parts.get(key, 0.0) + value if "_canonical:" not in key else value


def canonicalize(model: PreTrainedModel, rtol: float = RTOL, adapter: str = ADAPTER, rounds: int = ROUNDS) -> Canonical:
    """The canonical copy of ``model`` (module docstring): (c) and (a) alternated, then (b);
    ``model`` is unchanged."""
    canon = copy.deepcopy(model)
    dtype = next(canon.parameters()).dtype
    if alternates(canon):  # the passes in float64, one rounding at the end
        canon.double()
    require_plain_lora(lora_layers(canon, adapter), adapter)
    units_removed, ffn_parts = merge_units(canon, adapter)  # (d) first: it changes the MLPs' shapes
    layers = lora_layers(canon, adapter)
    scales, elements, excess, skipped, done = gauge_passes(canon, adapter, rounds)
    if gated(canon):  # (f): after (e), whose eq. 1 is blind to them
        unit_spec = scale_specs(canon)["unit"]
        signs = unit_signs(canon, unit_spec, adapter)
        gauges.apply(canon, unit_spec, dict(signs), adapter)
        scales |= {g: scales[g] * c if g in scales else c for g, c in signs.items()}
    excess |= ffn_parts
    balanced: dict[str, LoraFactors] = {}
    ranks: dict[str, int] = {}
    removed: dict[str, int] = {}
    for name, layer in layers.items():
        factors = LoraFactors.of(layer, adapter=adapter).detached()
        balanced[name], ranks[name] = balanced_factors(factors, rtol)
        removed[name] = factors.a.shape[0] - ranks[name]
        delivered_sq = factors.scale * float((factors.b.double() ** 2).sum() + (factors.a.double() ** 2).sum())
        canon_sq = float((balanced[name].b ** 2).sum() + (balanced[name].a ** 2).sum())
        excess[f"lora:{name}"] = delivered_sq - canon_sq
        excess[f"lora_canonical:{name}"] = canon_sq
    common = max(1, max(ranks.values()))
    for name, layer in layers.items():
        _write_factors(layer, padded(balanced[name], common), adapter)
    _set_config_rank(canon, common, adapter)
    cast(torch.nn.Module, canon).to(dtype)  # in place, as .double() above
    return Canonical(
        canon.eval(), ranks, removed, scales, summarize_excess(excess), elements, skipped, done, units_removed
    )


def summarize_excess(parts: dict[str, float]) -> dict[str, float]:
    """Per-module excesses and their sums: ``lora``, ``norm``, ``attn``, ``ffn``, ``total`` and the
    relative excess of each family over its canonical value (``lora_relative``, ``norm_relative``,
    ``attn_relative``, ``ffn_relative``)."""
    families = ("lora", "norm", "attn", "ffn", "unit")
    out: dict[str, float] = {k: v for k, v in parts.items() if k.split(":")[0] in families}
    for family in families:
        out[family] = sum(v for k, v in parts.items() if k.startswith(f"{family}:"))
    out["total"] = sum(out[family] for family in families)
    for family in families:
        canonical = sum(v for k, v in parts.items() if k.startswith(f"{family}_canonical:"))
        out[f"{family}_canonical"] = canonical
        out[f"{family}_relative"] = out[family] / canonical if canonical > 0 else 0.0
    return out


def function_residual(
    delivered: PreTrainedModel,
    canonical: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    max_len: int = 96,
) -> dict[str, float]:
    """Mean and max next-token KL(delivered ‖ canonical) over ``examples`` (prompt + aligned
    response, teacher forced): zero up to rounding when the canonical form keeps the function."""
    return next_token_kl(delivered, canonical, tokenizer, examples, max_len)
