"""Parameter-space symmetries declared as data, after git-re-basin's ``PermutationSpec``.

A :class:`SymmetrySpec` says which group acts on which axis of which tensor and from
which side. A group element ``g`` is a dict ``group name → (n, n) matrix``; one
function, :func:`apply`, acts with it on any parameter dict.

Acting on axis ``k`` of a tensor with a matrix ``M`` means
``T'[…, i, …] = Σ_j M[i, j] T[…, j, …]``. For hidden layer ``l`` of a fully connected
net the group element ``A`` acts as

    W_l → A W_l       (rows, side "A")
    b_l → A b_l       (side "A")
    W_{l+1} → W_{l+1} A⁻¹   (columns, i.e. side "A^-T" on axis 1)

so ``W_{l+1} σ(A(W_l h + b_l)) = W_{l+1} A⁻¹ A σ(W_l h + b_l)`` whenever ``σ`` commutes
with ``A`` — which decides the group each activation admits (:data:`ADMISSIBLE`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from theory.models import DTYPE, Net, Params

GroupKind = Literal["GL", "O", "scale", "perm", "rotary"]
Side = Literal["A", "A^T", "A^-1", "A^-T"]

#: Groups that commute with each activation, hence preserve the function exactly. (``rotary``, the
#: scaled rotations of :func:`rotary_matrix`, is the group that commutes with a rotary position
#: embedding rather than with an activation: transformers' attention gauges, :mod:`llm.gauges`.)
#: GL/O: σ linear. scale (positive diagonal): σ positively homogeneous. perm: any σ.
ADMISSIBLE: dict[str, tuple[GroupKind, ...]] = {
    "linear": ("GL", "O", "scale", "perm"),
    "relu": ("scale", "perm"),
    "leaky_relu": ("scale", "perm"),
    "gelu": ("perm",),
}


@dataclass(frozen=True)
class Group:
    kind: GroupKind
    size: int


def rotary_matrix(log_scale: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """The ``(n, n)`` scaled rotation acting on the pairs ``(j, j + n/2)`` (``n/2`` = the length of
    ``log_scale`` and ``angle``) as multiplication by ``z_j = e^{u_j + iφ_j}``:

        M = [[diag(a), −diag(b)], [diag(b), diag(a)]],   a = e^u cos φ,  b = e^u sin φ.

    These commute with every rotation of the same pairs, so with a rotary position embedding that
    rotates pair ``j`` by ``pos·θ_j`` (transformers' ``rotate_half`` layout); differentiable."""
    r = torch.exp(log_scale)
    a, b = torch.diag(r * torch.cos(angle)), torch.diag(r * torch.sin(angle))
    return torch.cat([torch.cat([a, -b], 1), torch.cat([b, a], 1)], 0)


@dataclass(frozen=True)
class SymmetrySpec:
    """``groups``: name → group; ``axes``: tensor → one ``(group, side)`` or ``None`` per axis."""

    groups: dict[str, Group]
    axes: dict[str, tuple[tuple[str, Side] | None, ...]]


def hidden_layer_spec(net: Net, params: Params, kind: GroupKind) -> SymmetrySpec:
    """One group of ``kind`` per hidden layer, acting on its units (sizes read off ``params``)."""
    if kind not in ADMISSIBLE[net.activation]:
        raise ValueError(
            f"group {kind!r} does not preserve a {net.activation} net; admissible: {ADMISSIBLE[net.activation]}"
        )
    groups: dict[str, Group] = {}
    axes: dict[str, tuple[tuple[str, Side] | None, ...]] = {}
    n_layers = sum(1 for k in params if k.startswith("W"))
    for l in range(1, n_layers + 1):
        row: tuple[str, Side] | None = (f"h{l}", "A") if l < n_layers else None
        col: tuple[str, Side] | None = (f"h{l - 1}", "A^-T") if l > 1 else None
        axes[f"W{l}"] = (row, col)
        if f"b{l}" in params:
            axes[f"b{l}"] = (row,)
        if l < n_layers:
            groups[f"h{l}"] = Group(kind, params[f"W{l}"].shape[0])
    return SymmetrySpec(groups, axes)


def sample(spec: SymmetrySpec, generator: torch.Generator, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A random group element. ``scale`` sets how far from the identity a GL or positive-scale
    element is (log-scale units); orthogonal and permutation elements ignore it."""
    element = {}
    for name, group in spec.groups.items():
        n = group.size
        if group.kind == "perm":
            m = torch.eye(n, dtype=DTYPE)[torch.randperm(n, generator=generator)]
        elif group.kind == "scale":
            m = torch.diag(torch.exp(scale * torch.randn(n, generator=generator, dtype=DTYPE)))
        elif group.kind == "rotary":  # scale as for ``scale``; the angle uniform
            half = n // 2
            log_scale = scale * torch.randn(half, generator=generator, dtype=DTYPE)
            angle = (2 * torch.rand(half, generator=generator, dtype=DTYPE) - 1) * torch.pi
            m = rotary_matrix(log_scale, angle)
        elif group.kind == "O":
            q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=DTYPE))
            m = q * torch.sign(torch.diagonal(r))
        else:  # GL: exp of a random matrix is invertible and well conditioned for small scale
            m = torch.linalg.matrix_exp(scale * torch.randn(n, n, generator=generator, dtype=DTYPE) / n**0.5)
        element[name] = m
    return element


def _side(matrix: torch.Tensor, side: Side) -> torch.Tensor:
    if side == "A":
        return matrix
    if side == "A^T":
        return matrix.T
    inverse = torch.linalg.inv(matrix)
    return inverse if side == "A^-1" else inverse.T


def act_on_axis(tensor: torch.Tensor, matrix: torch.Tensor, axis: int) -> torch.Tensor:
    """``T'[…, i, …] = Σ_j M[i, j] T[…, j, …]`` along ``axis``."""
    moved = torch.movedim(tensor, axis, 0)
    out = torch.tensordot(matrix, moved, dims=([1], [0]))
    return torch.movedim(out, 0, axis)


def apply(spec: SymmetrySpec, params: Params, element: dict[str, torch.Tensor]) -> Params:
    """Act with a group element on every axis the spec names; untouched tensors pass through."""
    out = dict(params)
    for name, axes in spec.axes.items():
        tensor = params[name]
        for axis, entry in enumerate(axes):
            if entry is None:
                continue
            group, side = entry
            tensor = act_on_axis(tensor, _side(element[group], side), axis)
        out[name] = tensor
    return out
