"""Finite-number checks between the stages of a run: a NaN or inf stops the run, never becomes a result.

A model whose weights overflowed still generates (NaN logits argmax to token 0, the padding, so
every answer decodes to the empty string) and a NaN vanishes in reductions like ``max(0.0, nan)``.
Each stage therefore checks what it hands on (``base``, ``align``, ``construction``, ``update``,
``evaluation``) and raises :class:`sweeps.errors.NonFiniteError` naming itself and the first bad
tensor. Reductions that feed a check use ops that propagate NaN (``torch.maximum``, sums).
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch

from sweeps.errors import NonFiniteError

Value = TypeVar("Value", torch.Tensor, float)
Module = TypeVar("Module", bound=torch.nn.Module)


def _counts(tensor: torch.Tensor) -> str:
    nan = int(torch.isnan(tensor).sum())
    inf = int(torch.isinf(tensor).sum())
    return f"{nan} NaN and {inf} inf of {tensor.numel()} entries"


def require_finite(value: Value, stage: str, what: str) -> Value:
    """``value`` (a tensor or a number) unchanged when every entry is finite; else
    :class:`NonFiniteError` ``"{stage}: {what} is not finite (…)"``."""
    if isinstance(value, torch.Tensor):
        if not bool(torch.isfinite(value).all()):
            raise NonFiniteError(stage, f"{what} is not finite ({_counts(value.detach())})")
        return value
    if not math.isfinite(value):
        raise NonFiniteError(stage, f"{what} is not finite ({value})")
    return value


def require_finite_model(model: Module, stage: str) -> Module:
    """``model`` unchanged when every parameter is finite; else :class:`NonFiniteError` naming the
    first non-finite weight and how many are. One device sync for the whole model, not one per tensor."""
    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    if not named:
        return model
    device = named[0][1].device  # (a model lives on one device)
    ok = torch.stack([torch.isfinite(p.detach()).all().to(device) for _, p in named]).cpu()
    if bool(ok.all()):
        return model
    bad = [n for (n, _), good in zip(named, ok.tolist()) if not good]
    first = dict(named)[bad[0]].detach()
    raise NonFiniteError(stage, f"weight {bad[0]} is not finite ({_counts(first)}); "
                                f"{len(bad)} of {len(named)} weight tensors are")
