"""The checks a run makes before it trusts a number or a file.

Finite numbers. A model whose weights overflowed still generates (NaN logits argmax to token 0, the padding, so
every answer decodes to the empty string) and a NaN vanishes in reductions like ``max(0.0, nan)``.
Each stage therefore checks what it hands on (``base``, ``align``, ``construction``, ``update``,
``evaluation``) and raises :class:`sweeps.errors.NonFiniteError` naming itself and the first bad
tensor. Reductions that feed a check use ops that propagate NaN (``torch.maximum``, sums).

Files. A cached file (a data wheel, a cached model's weights) is used only when its sha256 is the
one recorded when it was written (:func:`sha256_file`, :func:`record_hashes`,
:func:`changed_files`); a checkpoint whose tensors do not match its model is a
:class:`CheckpointError`, never a model with random weights where some are missing.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TypeVar

import torch

from llm.data.wheels import sha256_file
from sweeps.errors import NonFiniteError
from sweeps.io import write_atomic

#: the record of a folder's files written by :func:`record_hashes`
HASHES = "sha256.json"

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
    raise NonFiniteError(
        stage, f"weight {bad[0]} is not finite ({_counts(first)}); {len(bad)} of {len(named)} weight tensors are"
    )


class CheckpointError(ValueError):
    """A checkpoint's tensors do not match its model (missing, unexpected or mismatched weights),
    or a cached file is not the one that was written. One line, naming the file."""


def record_hashes(folder: str | os.PathLike) -> dict[str, str]:
    """Write ``folder/sha256.json``: the sha256 of every other file in ``folder``; returns it."""
    folder = Path(folder)
    hashes = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != HASHES}
    write_atomic(folder / HASHES, json.dumps(hashes, indent=1, sort_keys=True))
    return hashes


def changed_files(folder: str | os.PathLike) -> list[str]:
    """The files of ``folder`` that differ from (or are missing against) its ``sha256.json``;
    ``[HASHES]`` when there is no readable record. Empty: the folder is as it was written."""
    folder = Path(folder)
    try:
        recorded = json.loads((folder / HASHES).read_text())
    except (OSError, ValueError):
        return [HASHES]
    if not isinstance(recorded, dict) or not recorded:
        return [HASHES]
    return [
        name
        for name, digest in sorted(recorded.items())
        if not (folder / name).is_file() or sha256_file(folder / name) != digest
    ]
