"""Gauges of a transformer: reparametrisations that keep its function and change its gradients.

Declared as data in the vocabulary of :mod:`theory.symmetry`: a :class:`GaugeSpec` names groups
(:class:`theory.symmetry.Group`: ``GL`` or positive ``scale``) and actions, each saying which
group acts on which axis of which module, on which entries of that axis, and from which side
(``A``, ``A^T``, ``A^-1``, ``A^-T`` of the group element ``A``). Acting on an axis with a matrix
``X`` means ``T'[…, i, …] = Σ_j X[i, j] T[…, j, …]`` (:func:`theory.symmetry.act_on_axis`); an axis
that reads a transformed one gets the inverse transpose, so the function is unchanged. One
function, :func:`apply`, acts with an element on a model in place.

An action names a module and one of its axes: ``out`` or ``in`` of a linear map (``(out, in)``,
whatever the storage: GPT-2's ``Conv1D`` keeps ``(in, out)``), or ``out`` of a norm (its gain and
bias). It reaches every tensor along that axis: the base weight, the bias on ``out``, and a LoRA
adapter's factors (``B`` rows on ``out``, ``A`` columns on ``in``), so that a peft model stays the
same function. A ``scale`` element is a vector of positive factors, or one number for all.

Per block (:func:`gauge_spec`):

* ``q{l}.{h}`` (GL, head size; GPT-2): ``W_Q → W_Q M`` (side ``A^T`` on head ``h``'s query
  outputs of ``attn.c_attn``), ``W_K → W_K M⁻ᵀ`` (``A^-1`` on its key outputs): ``qᵀk`` is unchanged.
* ``v{l}.{h}`` (GL): ``W_V → W_V M`` on its value outputs, ``A^-1`` on the matching input rows of
  ``attn.c_proj``.
* Llama (rotary embeddings, grouped-query attention: query head ``h`` reads key/value head
  ``g = h // (n_heads / n_kv_heads)``), one pair of groups per key/value head ``g``:
  ``q{l}.{g}`` (``rotary``, head size): the query rows of every head of ``g`` get ``Mᵀ``, the key
  rows of ``g`` get ``M⁻¹``. The scores read ``(R_m Mᵀ q)ᵀ (R_n M⁻¹ k) = qᵀ M R_{n−m} M⁻¹ k``, which
  is ``qᵀ R_{n−m} k`` for every offset exactly when ``M`` commutes with the rotations ``R``: the
  scaled rotations of each frequency's pair (:func:`theory.symmetry.rotary_matrix`), a scale
  ``c`` and an angle per (key head, frequency), not the GL of GPT-2's heads.
  ``v{l}.{g}`` (GL): ``v_proj``'s rows of ``g`` get ``Mᵀ``, ``o_proj``'s input columns of every
  head of ``g`` get ``M⁻¹`` (values are not rotated).
* a layer norm's gains and bias ``× c`` (``scale``, model width), the maps reading it ``÷ c`` on
  their inputs (:data:`NORM_READERS`; the final norm feeds the tied embeddings and is left alone).
* ``unit.{l}`` (``scale``, MLP width; gated MLPs, :data:`GATED_UNITS`): ``down(act(gate x) ⊙ up x)``
  is linear in each unit's up row, so up row ``i`` (and bias) ``× c_i`` with down column ``i``
  ``÷ c_i`` keeps the function (GPT-2's GELU MLP has no such gauge: GELU is not homogeneous).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from peft.tuners.lora import LoraLayer
from transformers.pytorch_utils import Conv1D

from llm.lora import ADAPTER, base_layer, factor_maps, weight_of
from theory.symmetry import Group, Side, SymmetrySpec, rotary_matrix
from theory.symmetry import sample as sample_group

Element = Mapping[str, "torch.Tensor | float"]

#: decoder families laid out as Llama: ``self_attn.{q,k,v,o}_proj`` with a full rotary embedding,
#: a gated ``mlp.{gate,up,down}_proj``, ``input_layernorm`` and ``post_attention_layernorm``
#: (Mistral; Qwen2, whose queries, keys and values have biases)
LLAMA_LIKE = ("llama", "mistral", "qwen2")

#: per architecture: (norm module, the linear maps that read its output), per block
NORM_READERS = {
    "gpt2": (("ln_1", ("attn.c_attn",)), ("ln_2", ("mlp.c_fc",))),
    **dict.fromkeys(
        LLAMA_LIKE,
        (
            ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
        ),
    ),
}

#: per architecture with a gated MLP: (the map whose output rows a unit's scale multiplies, the map
#: whose input columns it divides), per block
GATED_UNITS = dict.fromkeys(LLAMA_LIKE, ("mlp.up_proj", "mlp.down_proj"))

#: the gauge families by name (``construction.undo_gauge``): (attention, layer norm)
FAMILIES = {"none": None, "layernorm": (False, True), "attention": (True, False), "all": (True, True)}


@dataclass(frozen=True)
class Action:
    """``group`` acts from ``side`` on entries ``span`` (``(start, stop)``; None: all) of axis
    ``axis`` of ``module``."""

    module: str
    axis: Literal["out", "in"]
    group: str
    side: Side
    span: tuple[int, int] | None = None


@dataclass(frozen=True)
class GaugeSpec:
    groups: dict[str, Group]
    actions: tuple[Action, ...] = field(default_factory=tuple)


def blocks(model: torch.nn.Module) -> list[str]:
    """Module names of the transformer blocks (GPT-2's ``h``, Llama's ``layers``)."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in ("h", "layers"):
            return [f"{name}.{i}" for i in range(len(module))]
    raise ValueError(f"no transformer blocks found in {type(model).__name__}")


def gauge_spec(
    model: torch.nn.Module, attention: bool = True, layernorm: bool = True, units: bool = False
) -> GaugeSpec:
    """Per block: ``q{l}.{h}`` and ``v{l}.{h}`` (per head, :data:`ATTENTION`) with ``attention``,
    one positive ``scale`` group per layer norm with ``layernorm``, and one over the MLP's units
    with ``units`` (gated MLPs only) (module docstring)."""
    cfg: Any = model.config  # its fields depend on the architecture (GPT-2 aliases hidden_size to n_embd)
    arch = cfg.model_type
    if arch not in NORM_READERS:
        raise ValueError(f"no gauges declared for model_type {arch!r}; known: {sorted(NORM_READERS)}")
    if attention and arch not in ATTENTION:
        raise ValueError(f"per-head attention gauges are declared for {sorted(ATTENTION)}, not {arch!r}")
    if units and arch not in GATED_UNITS:
        raise ValueError(f"per-unit MLP gauges are declared for gated MLPs ({sorted(GATED_UNITS)}), not {arch!r}")
    d = cfg.hidden_size
    groups: dict[str, Group] = {}
    actions: list[Action] = []
    for l, block in enumerate(blocks(model)):
        if attention:
            head_groups, head_actions = ATTENTION[arch](cfg, block, l)
            groups |= head_groups
            actions += head_actions
        if layernorm:
            for norm, readers in NORM_READERS[arch]:
                group = f"{norm.replace('_', '')}.{l}"
                groups[group] = Group("scale", d)
                actions.append(Action(f"{block}.{norm}", "out", group, "A"))
                actions += [Action(f"{block}.{reader}", "in", group, "A^-T", (0, d)) for reader in readers]
        if units:
            up, down = GATED_UNITS[arch]
            groups[f"unit.{l}"] = Group("scale", cfg.intermediate_size)
            actions += [
                Action(f"{block}.{up}", "out", f"unit.{l}", "A"),
                Action(f"{block}.{down}", "in", f"unit.{l}", "A^-T"),
            ]
    return GaugeSpec(groups, tuple(actions))


def _gpt2_heads(cfg: Any, block: str, l: int) -> tuple[dict[str, Group], list[Action]]:
    """GL ``q{l}.{h}`` and ``v{l}.{h}`` per head of GPT-2's fused ``c_attn`` (module docstring)."""
    d = cfg.hidden_size
    hd = d // cfg.n_head
    groups: dict[str, Group] = {}
    actions: list[Action] = []
    for h in range(cfg.n_head):
        head = (h * hd, (h + 1) * hd)
        q, k, v = ((part * d + head[0], part * d + head[1]) for part in range(3))
        groups[f"q{l}.{h}"] = Group("GL", hd)
        groups[f"v{l}.{h}"] = Group("GL", hd)
        actions += [
            Action(f"{block}.attn.c_attn", "out", f"q{l}.{h}", "A^T", q),
            Action(f"{block}.attn.c_attn", "out", f"q{l}.{h}", "A^-1", k),
            Action(f"{block}.attn.c_attn", "out", f"v{l}.{h}", "A^T", v),
            Action(f"{block}.attn.c_proj", "in", f"v{l}.{h}", "A^-1", head),
        ]
    return groups, actions


def _llama_heads(cfg: Any, block: str, l: int) -> tuple[dict[str, Group], list[Action]]:
    """``rotary`` ``q{l}.{g}`` and GL ``v{l}.{g}`` per key/value head ``g`` of a Llama block, acting
    on every query head that reads ``g`` (module docstring). Refuses a partial rotary embedding: its
    unrotated dimensions have another group."""
    if getattr(cfg, "partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(
            f"attention gauges: partial_rotary_factor={cfg.partial_rotary_factor}; declared for a full rotary embedding"
        )
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    n_kv = cfg.num_key_value_heads
    rep = cfg.num_attention_heads // n_kv
    attn = f"{block}.self_attn"
    groups: dict[str, Group] = {}
    actions: list[Action] = []
    for g in range(n_kv):
        kv, q, v = (g * hd, (g + 1) * hd), f"q{l}.{g}", f"v{l}.{g}"
        groups[q] = Group("rotary", hd)
        groups[v] = Group("GL", hd)
        heads = [(h * hd, (h + 1) * hd) for h in range(g * rep, (g + 1) * rep)]
        actions += [Action(f"{attn}.q_proj", "out", q, "A^T", head) for head in heads]
        actions.append(Action(f"{attn}.k_proj", "out", q, "A^-1", kv))
        actions.append(Action(f"{attn}.v_proj", "out", v, "A^T", kv))
        actions += [Action(f"{attn}.o_proj", "in", v, "A^-1", head) for head in heads]
    return groups, actions


#: per architecture with per-head attention gauges: the function declaring a block's groups and actions
ATTENTION = {"gpt2": _gpt2_heads, **dict.fromkeys(LLAMA_LIKE, _llama_heads)}


# ---------------------------------------------------------------------------- elements


def sample(
    spec: GaugeSpec, generator: torch.Generator, scale: float = 0.5, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """A random element (:func:`theory.symmetry.sample`): GL ``exp(scale · random/√n)``, scale
    ``exp(scale · randn)`` (as a vector)."""
    element = sample_group(SymmetrySpec(spec.groups, {}), generator, scale)
    return {
        name: (m.diagonal() if spec.groups[name].kind == "scale" else m).to(dtype).contiguous()
        for name, m in element.items()
    }


#: the shape of a group's log coordinates, by kind: GL ``M = exp(X)``; scale ``c = exp(u)``; rotary
#: ``(u, φ)`` per pair (:func:`theory.symmetry.rotary_matrix`)
LOG_SHAPES = {"GL": lambda n: (n, n), "scale": lambda n: (n,), "rotary": lambda n: (2, n // 2)}


def identity_logs(spec: GaugeSpec, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The identity in log coordinates (zeros; leaves to fit), shaped by :data:`LOG_SHAPES`."""
    return {
        name: torch.zeros(LOG_SHAPES[g.kind](g.size), dtype=dtype, requires_grad=True)
        for name, g in spec.groups.items()
    }


def exp(logs: dict[str, torch.Tensor], spec: GaugeSpec) -> dict[str, torch.Tensor]:
    """Group elements from :func:`identity_logs` coordinates (differentiable)."""
    out = {}
    for name, x in logs.items():
        kind = spec.groups[name].kind
        if kind == "GL":
            out[name] = torch.linalg.matrix_exp(x)
        elif kind == "rotary":
            out[name] = rotary_matrix(x[0], x[1])
        else:
            out[name] = torch.exp(x)
    return out


def side_matrix(value: torch.Tensor, side: Side) -> torch.Tensor:
    """``A``, ``Aᵀ``, ``A⁻¹`` or ``A⁻ᵀ`` of an element as a matrix (a scale vector as its diagonal);
    the inverse is taken in float64."""
    if value.ndim == 1:
        return torch.diag(value if side in ("A", "A^T") else 1.0 / value)
    if side == "A":
        return value
    if side == "A^T":
        return value.T
    inverse = torch.linalg.inv(value.double()).to(value.dtype)
    return inverse if side == "A^-1" else inverse.T


# ---------------------------------------------------------------------------- acting on a model


def _targets(module: torch.nn.Module, axis: str, adapter: str) -> list[tuple[str, torch.Tensor, int]]:
    """``(parameter name within module, tensor, tensor axis)`` for every tensor along ``axis``."""
    base = base_layer(module)
    if not isinstance(base, (torch.nn.Linear, Conv1D)):  # a norm: gain (and bias) along its output
        return [
            (n, p, 0) for n, p in (("weight", weight_of(base)), ("bias", getattr(base, "bias", None))) if p is not None
        ]
    prefix = "base_layer." if isinstance(module, LoraLayer) else ""
    stored_out = 1 if isinstance(base, Conv1D) else 0  # Conv1D stores (in, out)
    out: list[tuple[str, torch.Tensor, int]] = []
    if axis == "out":
        out.append((f"{prefix}weight", base.weight, stored_out))
        if base.bias is not None:
            out.append((f"{prefix}bias", base.bias, 0))
        if isinstance(module, LoraLayer):
            out.append((f"lora_B.{adapter}.weight", factor_maps(module, adapter)[1].weight, 0))
    else:
        out.append((f"{prefix}weight", base.weight, 1 - stored_out))
        if isinstance(module, LoraLayer):
            out.append((f"lora_A.{adapter}.weight", factor_maps(module, adapter)[0].weight, 1))
    return out


def _act(tensor: torch.Tensor, axis: int, span: tuple[int, int] | None, value, side: Side) -> None:
    """Act in place with ``value`` (a matrix, a scale vector or one number) on ``axis`` of ``tensor``."""
    view = tensor if span is None else tensor.narrow(axis, span[0], span[1] - span[0])
    direct = side in ("A", "A^T")
    if isinstance(value, (int, float)):
        view.mul_(value) if direct else view.div_(value)
    elif value.ndim == 1:  # a diagonal matrix, applied entrywise (the same numbers as the product)
        factors = (value if direct else 1.0 / value).to(tensor.dtype)
        view.mul_(factors if axis == tensor.ndim - 1 else factors[:, None])
    else:
        x = side_matrix(value, side).to(tensor.dtype)
        view.copy_(view @ x.T if axis == tensor.ndim - 1 else x @ view)


@torch.no_grad()
def apply(model: torch.nn.Module, spec: GaugeSpec, element: Element, adapter: str = ADAPTER) -> torch.nn.Module:
    """Act with ``element`` on ``model`` in place (base weights, biases, norms and LoRA factors)."""
    modules = dict(model.named_modules())
    for act in spec.actions:
        for _, tensor, axis in _targets(modules[act.module], act.axis, adapter):
            _act(tensor, axis, act.span, element[act.group], act.side)
    return model


def amplify_norms(model: torch.nn.Module, gain: float) -> dict[str, float]:
    """The layer-norm gauge with one number ``gain`` for every group, in place: each norm's gain and
    bias ``× g``, the maps reading it ``÷ g``. The victim's gradient on the gains grows by ``g`` and
    their effect through the next map by another ``g``: an lr-``η`` step acts like lr ``≈ η g²``
    along them. Returns the factor applied to each parameter it touched, by name."""
    spec = gauge_spec(model, attention=False, layernorm=True)
    apply(model, spec, dict.fromkeys(spec.groups, gain))
    modules = dict(model.named_modules())
    factors = {}
    for act in spec.actions:
        factor = gain if act.side in ("A", "A^T") else 1.0 / gain
        for name, _, _ in _targets(modules[act.module], act.axis, ADAPTER):
            factors[f"{act.module}.{name}"] = factor
    return factors


def gauge_maps(
    spec: GaugeSpec, element: dict[str, torch.Tensor], layers: dict[str, LoraLayer], adapter: str = ADAPTER
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per LoRA layer, ``(R, K)`` such that :func:`apply` ships its ``(out, in)`` effective weight as
    ``W̃ = R W K`` (identity where no action touches it); differentiable in ``element``. An ``out``
    action with matrix ``X`` is ``R[sl, sl] = X``, an ``in`` action ``K[sl, sl] = Xᵀ``. The actions on
    one side of a layer must touch disjoint spans (as :func:`gauge_spec` declares them): ``R`` and
    ``K`` are block diagonal."""
    out = {}
    for name, layer in layers.items():
        lin_a, lin_b = factor_maps(layer, adapter)
        like = lin_a.weight
        n_out, n_in = lin_b.weight.shape[0], like.shape[1]
        maps = {"out": torch.eye(n_out, dtype=like.dtype), "in": torch.eye(n_in, dtype=like.dtype)}
        touched: dict[str, set[int]] = {"out": set(), "in": set()}
        for act in spec.actions:
            if act.module != name:
                continue
            s0, s1 = act.span or (0, len(maps[act.axis]))
            if not touched[act.axis].isdisjoint(range(s0, s1)):
                raise ValueError(f"gauge_maps: two {act.axis} actions overlap on {name}[{s0}:{s1}]")
            touched[act.axis].update(range(s0, s1))
            x = side_matrix(element[act.group], act.side).to(like.dtype)
            maps[act.axis][s0:s1, s0:s1] = x if act.axis == "out" else x.T
        out[name] = (maps["out"], maps["in"])
    return out
