"""Redundant FFN units merged out of GPT-2 and Llama MLPs: step (d) of the canonical form.

A GPT-2 MLP computes ``Σ_j v_j gelu(u_j·x + b_j)`` (:mod:`llm.mlp_units`; ``u_j``, ``v_j`` the
effective weights, LoRA updates included). Two units with the same ``(u_j, b_j)`` compute the
same activation, so one unit with outgoing ``v_j + v_k`` computes what both did; a unit whose
outgoing ``v_j`` is zero adds nothing. Merging every group of equal units (the base rows of
``c_proj`` and the columns of its LoRA ``A`` summed, the first unit's ``c_fc`` row and LoRA ``B``
row kept) and then removing silent units keeps the function. The cancelling pairs of
:mod:`llm.constructions.analytic.ffn_pairs` (``(u, b)`` twice, outgoing ``±v``) merge into one
silent unit and vanish, with the amplification they would give the victim's step.

A gated MLP (Llama) computes ``Σ_j v_j silu(g_j·x)(w_j·x)``, linear in each up row ``w_j``: two
units with the same gate row and parallel up rows, ``w_k = α w_j``, compute ``silu(g·x)(w_j·x)``
times ``v_j + α v_k``, so they merge into unit ``j`` with that down column (the base columns of
``down_proj`` and the columns of its LoRA ``A`` combined alike); a unit with a zero up row or a
zero merged down column is silent and removed (whatever the activation). A cancelling
pair (``(g, w)`` and ``(g, α w)`` with down columns ``v`` and ``−v/α``) vanishes.

"Equal" is to ``rtol`` of the larger ``‖(u_j, b_j)‖`` of the two (gated: of the larger gate row,
and up rows whose directions, sign fixed, are that close), and "silent" to ``rtol`` of the
largest merged outgoing ``‖v‖``: a trained MLP has no two units that close, so an honest model
loses nothing; the function is kept up to that tolerance (a copied unit is equal to rounding, a
cancelling pair sums to exactly zero). Units perturbed apart by more than ``rtol`` are not merged.
Unlike steps (a)–(c), (d) is not a minimisation of ``‖θ‖²``: merged outgoing weights add, so the
reported change ``ffn`` can be negative when they point the same way.

Not covered: units that are constant (``u_j = 0``), whose output belongs in ``c_proj``'s bias.
"""

from __future__ import annotations

import torch

from llm.gauges import GATED_UNITS, blocks
from llm.lora import ADAPTER
from llm.mlp_units import GatedUnits, MlpUnits, effective_units

#: tolerance of "equal" and "silent", relative to the block's largest unit (float32 rounding of a
#: copied unit is zero; of a trained unit's distance to its nearest other, order one)
RTOL = 1e-5


def unit_groups(incoming: torch.Tensor, rtol: float = RTOL) -> list[list[int]]:
    """The units of ``incoming`` (``(n, d + 1)``: ``[u_j, b_j]``) in groups of equal rows (two rows
    are equal within ``rtol`` of the larger's norm), each group in index order, groups ordered by
    their first unit."""
    norms = incoming.norm(dim=1)
    close = torch.cdist(incoming, incoming) <= rtol * torch.maximum(norms[:, None], norms[None, :])
    groups: list[list[int]] = []
    seen: set[int] = set()
    for j in range(len(incoming)):
        if j not in seen:
            group = [k for k in torch.nonzero(close[j]).flatten().tolist() if k not in seen]
            seen.update(group)
            groups.append(group)
    return groups


def _norm_sq(units: MlpUnits) -> float:
    parts = [units.fc, units.bias, units.proj, units.fc_lora_b, units.proj_lora_a]
    return sum(float((t.detach().double() ** 2).sum()) for t in parts if t is not None)


@torch.no_grad()
def merge_block(block: torch.nn.Module, adapter: str = ADAPTER, rtol: float = RTOL) -> tuple[int, float, float]:
    """Merge equal units and remove silent ones in one GPT-2 block, in place: the units removed,
    the decrease of the MLP's ``‖θ‖²`` (base and LoRA tensors) and its value after."""
    incoming, outgoing = effective_units(block, adapter)
    units = MlpUnits.of(block, adapter)
    groups = unit_groups(incoming, rtol)
    first = [g[0] for g in groups]
    merged_v = torch.stack([outgoing[g].sum(0) for g in groups]).norm(dim=1)
    # silent against the merged units: a cancelling pair, however large, does not set the scale
    keep = [i for i, v in enumerate(merged_v.tolist()) if v > rtol * float(merged_v.max())] or [0]
    before = _norm_sq(units)
    if len(keep) == len(units):
        return 0, 0.0, before
    rows = [first[i] for i in keep]
    proj = torch.stack([units.proj[groups[i]].sum(0) for i in keep])
    lora_a = units.proj_lora_a
    new = MlpUnits(
        units.fc[rows],
        units.bias[rows],
        proj,
        None if units.fc_lora_b is None else units.fc_lora_b[rows],
        None if lora_a is None else torch.stack([lora_a[:, groups[i]].sum(1) for i in keep], 1),
    )
    new.write(block, adapter)
    after = _norm_sq(new)
    return len(units) - len(new), before - after, after


def _directions(rows: torch.Tensor) -> torch.Tensor:
    """Each row over its norm, signed so that its largest-|·| entry is positive (zero rows stay zero)."""
    norms = rows.norm(dim=1, keepdim=True)
    unit = torch.where(norms > 0, rows / norms.clamp_min(1e-300), 0.0)
    lead = unit.gather(1, unit.abs().argmax(dim=1, keepdim=True))
    return unit * torch.where(lead < 0, -1.0, 1.0)


def _gated_norm_sq(units: GatedUnits) -> float:
    parts = [units.gate, units.up, units.down, units.gate_lora_b, units.up_lora_b, units.down_lora_a]
    return sum(float((t.detach().double() ** 2).sum()) for t in parts if t is not None)


@torch.no_grad()
def merge_gated_block(block: torch.nn.Module, adapter: str = ADAPTER, rtol: float = RTOL) -> tuple[int, float, float]:
    """Merge units with equal gate rows and parallel up rows, and remove silent ones, in one gated
    MLP, in place (module docstring): the units removed, the decrease of the MLP's ``‖θ‖²`` and its
    value after."""
    units = GatedUnits.of(block, adapter)
    g, w, v = units.effective(block, adapter)
    directions = _directions(w)
    groups = [  # equal gate rows, then within them parallel up rows, each to rtol of its own scale
        [same[i] for i in sub] for same in unit_groups(g, rtol) for sub in unit_groups(directions[same], rtol)
    ]
    groups.sort(key=lambda grp: grp[0])
    # per group: the first unit j and each member's α_k = w_k·w_j / ‖w_j‖² (1 for j itself)
    alphas = [(w[grp] @ w[grp[0]]) / (w[grp[0]] @ w[grp[0]]).clamp_min(1e-300) for grp in groups]
    merged_v = torch.stack([a @ v[grp] for a, grp in zip(alphas, groups)]).norm(dim=1)
    live = w[[grp[0] for grp in groups]].norm(dim=1) > 0
    keep = [i for i, m in enumerate(merged_v.tolist()) if m > rtol * float(merged_v.max()) and live[i]] or [0]
    before = _gated_norm_sq(units)
    if len(keep) == len(units):
        return 0, 0.0, before
    rows = [groups[i][0] for i in keep]

    def combine(t: torch.Tensor) -> torch.Tensor:  # columns of (·, n): Σ_k α_k t[:, k] per kept group
        return torch.stack([t[:, groups[i]] @ alphas[i].to(t.dtype) for i in keep], 1)

    new = GatedUnits(
        units.gate[rows],
        units.up[rows],
        combine(units.down),
        None if units.gate_lora_b is None else units.gate_lora_b[rows],
        None if units.up_lora_b is None else units.up_lora_b[rows],
        None if units.down_lora_a is None else combine(units.down_lora_a),
    )
    new.write(block, adapter)
    after = _gated_norm_sq(new)
    return len(units) - len(new), before - after, after


def merge_units(
    model: torch.nn.Module, adapter: str = ADAPTER, rtol: float = RTOL
) -> tuple[dict[str, int], dict[str, float]]:
    """:func:`merge_block` on every block of a GPT-2 model, :func:`merge_gated_block` on every block
    of a gated one (:data:`llm.gauges.GATED_UNITS`), in place (other architectures: nothing done).
    Returns the units removed per block and the excess parts ``ffn:<block>.mlp`` (the decrease of
    ``‖θ‖²``) and ``ffn_canonical:<block>.mlp`` (its value after)."""
    arch = getattr(getattr(model, "config", None), "model_type", None)
    if arch != "gpt2" and arch not in GATED_UNITS:
        return {}, {}
    names = blocks(model)
    modules = [model.get_submodule(name) for name in names]
    merge = merge_block if arch == "gpt2" else merge_gated_block
    count = (lambda b: len(MlpUnits.of(b, adapter))) if arch == "gpt2" else (lambda b: len(GatedUnits.of(b, adapter)))
    removed: dict[str, int] = {}
    parts: dict[str, float] = {}
    for name, block in zip(names, modules):
        short = name.removeprefix("base_model.model.")
        key = f"{short}.mlp"
        removed[key], parts[f"ffn:{key}"], parts[f"ffn_canonical:{key}"] = merge(block, adapter, rtol)
    sizes = {count(block) for block in modules}
    if any(removed.values()) and len(sizes) == 1:  # one width for every block: the config says it
        setattr(model.config, "n_inner" if arch == "gpt2" else "intermediate_size", sizes.pop())
    return removed, parts
