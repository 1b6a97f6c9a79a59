"""Redundant FFN units merged out of GPT-2 MLPs: step (d) of the canonical form.

A GPT-2 MLP computes ``Σ_j v_j gelu(u_j·x + b_j)`` (:mod:`llm.mlp_units`; ``u_j``, ``v_j`` the
effective weights, LoRA updates included). Two units with the same ``(u_j, b_j)`` compute the
same activation, so one unit with outgoing ``v_j + v_k`` computes what both did; a unit whose
outgoing ``v_j`` is zero adds nothing. Merging every group of equal units (the base rows of
``c_proj`` and the columns of its LoRA ``A`` summed, the first unit's ``c_fc`` row and LoRA ``B``
row kept) and then removing silent units keeps the function. The cancelling pairs of
:mod:`llm.constructions.analytic.ffn_pairs` (``(u, b)`` twice, outgoing ``±v``) merge into one
silent unit and vanish, with the amplification they would give the victim's step.

"Equal" is to ``rtol`` of the larger ``‖(u_j, b_j)‖`` of the two, and "silent" to ``rtol`` of the
largest merged outgoing ``‖v‖``: a trained MLP has no two units that close, so an honest model
loses nothing; the function is kept up to that tolerance (a copied unit is equal to rounding, a
cancelling pair sums to exactly zero). Units perturbed apart by more than ``rtol`` are not merged.
Unlike steps (a)–(c), (d) is not a minimisation of ``‖θ‖²``: merged outgoing weights add, so the
reported change ``ffn`` can be negative when they point the same way.

Not covered: Llama's gated MLPs (``act(g_j·x)(w_j·x)``: equal ``(g_j, w_j)`` merge the same way,
and ``(w_j, v_j) → (c w_j, v_j / c)`` is a further gauge), and units that are constant
(``u_j = 0``), whose output belongs in ``c_proj``'s bias.
"""

from __future__ import annotations

import torch

from llm.lora import ADAPTER
from llm.mlp_units import MlpUnits, effective_units, gpt2_blocks

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


def merge_units(
    model: torch.nn.Module, adapter: str = ADAPTER, rtol: float = RTOL
) -> tuple[dict[str, int], dict[str, float]]:
    """:func:`merge_block` on every block of a GPT-2 model, in place (other architectures: nothing
    done). Returns the units removed per block and the excess parts ``ffn:<block>.mlp`` (the
    decrease of ``‖θ‖²``) and ``ffn_canonical:<block>.mlp`` (its value after)."""
    if getattr(getattr(model, "config", None), "model_type", None) != "gpt2":
        return {}, {}
    removed: dict[str, int] = {}
    parts: dict[str, float] = {}
    blocks = gpt2_blocks(model)
    for i, block in enumerate(blocks):
        name = f"transformer.h.{i}.mlp"
        removed[name], parts[f"ffn:{name}"], parts[f"ffn_canonical:{name}"] = merge_block(block, adapter, rtol)
    sizes = {len(MlpUnits.of(block, adapter)) for block in blocks}
    if any(removed.values()) and len(sizes) == 1:  # one width for every block: the config says it
        model.config.n_inner = sizes.pop()  # type: ignore[union-attr]
    return removed, parts
