"""Honest models: the control under a random function-preserving gauge of modest scale.

An honest checkpoint may arrive in any gauge: the audit must not flag it for that. The gauge is
drawn from the largest group :data:`theory.symmetry.ADMISSIBLE` allows for the activation (GL for
linear nets, positive rescaling for ReLU-like nets), composed with a random permutation of the
units; GELU nets admit permutations only. ``scale`` is the spread of the continuous part in
log units (:func:`theory.symmetry.sample`).
"""

from __future__ import annotations

import torch

from theory import symmetry
from theory.models import Net, Params


def random_gauge(net: Net, params: Params, scale: float, generator: torch.Generator) -> Params:
    """``params`` moved by a random admissible group element (same function, other gradients)."""
    net = net.fitted(params)
    if net.n_layers < 2:
        return dict(params)
    admissible = symmetry.ADMISSIBLE[net.activation]
    preferred: tuple[symmetry.GroupKind, ...] = ("GL", "scale")
    kinds: list[symmetry.GroupKind] = [k for k in preferred if k in admissible][:1] + ["perm"]
    for kind in kinds:
        spec = symmetry.hidden_layer_spec(net, params, kind)
        params = symmetry.apply(spec, params, symmetry.sample(spec, generator, scale=scale))
    return params
