"""Redundant units: ways to add width (or use spare width) that leave the function unchanged.

These are the overparameterization knob. Unlike the group actions of
:mod:`theory.symmetry` they change shapes or move along null spaces, so each is a
function ``(params, free coordinates) → params`` whose output computes exactly the same
function for *every* value of the free coordinates (proved in :mod:`theory.proofs`).

* :func:`add_dead_units` — units with zero outgoing weight. Placed in the last hidden
  layer, one step adds exactly ``−η Σ_i r_i σ(u·φ_i + b) σ(u·φ + b)`` to the output, with
  ``φ`` that layer's input (proofs: zero-outgoing unit). In earlier layers the backpropagated
  error at layer ``l+1`` replaces ``r_i``.
* :func:`add_cancelling_pairs` — units ``(u, b, v)`` and ``(u, b, −v)``. Their outputs cancel,
  but the step moves the two copies of ``u`` apart, adding to first order
  ``−2η [v vᵀ Σ_i r_i σ'σ'(φ_i·φ + 1) + Σ_i r_i σ(u·φ_i+b) σ(u·φ+b)]``, with ``v`` free.
  ``bias`` arguments are ignored for bias-free nets.
* :func:`add_null_directions` — for linear layers, ``W_l → W_l + N`` with ``W_{l+1} N = 0``;
  the step gains ``−η G (NᵀN + W_lᵀN + NᵀW_l)`` (proofs: first-layer null space).
"""

from __future__ import annotations

import torch

from theory.models import Params


def _widen(params: Params, layer: int, rows: torch.Tensor, row_bias: torch.Tensor | None, cols: torch.Tensor) -> Params:
    """Append units to hidden ``layer``: incoming ``rows`` (k, d_prev), outgoing ``cols`` (d_next, k)."""
    out = dict(params)
    out[f"W{layer}"] = torch.cat([params[f"W{layer}"], rows], dim=0)
    if f"b{layer}" in params:
        if row_bias is None:
            row_bias = torch.zeros(rows.shape[0], dtype=rows.dtype)
        out[f"b{layer}"] = torch.cat([params[f"b{layer}"], row_bias])
    out[f"W{layer + 1}"] = torch.cat([params[f"W{layer + 1}"], cols], dim=1)
    return out


def add_dead_units(params: Params, layer: int, incoming: torch.Tensor, bias: torch.Tensor | None = None) -> Params:
    """Append ``k`` units with incoming weights ``incoming`` (k, d_prev) and zero outgoing weights."""
    d_next = params[f"W{layer + 1}"].shape[0]
    zeros = torch.zeros(d_next, incoming.shape[0], dtype=incoming.dtype)
    return _widen(params, layer, incoming, bias, zeros)


def add_cancelling_pairs(
    params: Params, layer: int, incoming: torch.Tensor, bias: torch.Tensor | None, outgoing: torch.Tensor
) -> Params:
    """Append ``k`` pairs: incoming ``(k, d_prev)`` twice, outgoing ``(d_next, k)`` as ``+V`` and ``−V``."""
    rows = torch.cat([incoming, incoming], dim=0)
    row_bias = None if bias is None else torch.cat([bias, bias])
    cols = torch.cat([outgoing, -outgoing], dim=1)
    return _widen(params, layer, rows, row_bias, cols)


def null_projector(matrix: torch.Tensor, rcond: float = 1e-10) -> torch.Tensor:
    """Orthogonal projector onto the null space of ``matrix`` (columns' space), ``I − M⁺M``."""
    n = matrix.shape[1]
    return torch.eye(n, dtype=matrix.dtype) - torch.linalg.pinv(matrix, rtol=rcond) @ matrix


def add_null_directions(params: Params, layer: int, free: torch.Tensor) -> Params:
    """``W_l → W_l + Π free`` with ``Π`` the projector onto ``null(W_{l+1})``; linear nets only."""
    out = dict(params)
    out[f"W{layer}"] = params[f"W{layer}"] + null_projector(params[f"W{layer + 1}"]) @ free
    return out
