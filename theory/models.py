"""Small float64 networks in functional style.

Parameters are a plain ``dict[str, Tensor]`` with keys ``W1, b1, W2, b2, …`` so that
symmetries, redundant units and gradient steps are functions of data, not of modules.

Layer ``l`` (1-based) computes ``h_l = σ(h_{l-1} W_lᵀ + b_l)``; the last layer has no σ.
Shapes: ``W_l`` is ``(width_l, width_{l-1})``, ``b_l`` is ``(width_l,)``, inputs ``(n, d_in)``.
A "deep linear net" is the same thing with ``σ = identity``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import cast

import torch
import torch.nn.functional as F

Params = dict[str, torch.Tensor]

DTYPE = torch.float64

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda z: z,
    "relu": F.relu,
    "leaky_relu": partial(F.leaky_relu, negative_slope=0.1),
    "gelu": F.gelu,
}


@dataclass(frozen=True)
class Net:
    """Architecture of a fully connected net: layer widths, activation, biases.

    ``widths = (d_in, h_1, …, h_{L-1}, d_out)``; hidden widths may differ from the
    stored parameters' widths after redundant units are added, so the forward pass reads
    shapes from the parameters and uses ``widths`` only to initialise.
    """

    widths: tuple[int, ...]
    activation: str = "relu"
    bias: bool = True

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError(f"widths must list ≥ 2 positive sizes, got {self.widths}")

    @property
    def n_layers(self) -> int:
        return len(self.widths) - 1

    def init(self, generator: torch.Generator) -> Params:
        """He-style Gaussian init (std √(2/fan_in)), zero biases."""
        params: Params = {}
        for l in range(1, self.n_layers + 1):
            fan_out, fan_in = self.widths[l], self.widths[l - 1]
            params[f"W{l}"] = torch.randn(fan_out, fan_in, generator=generator, dtype=DTYPE) * (2.0 / fan_in) ** 0.5
            if self.bias:
                params[f"b{l}"] = torch.zeros(fan_out, dtype=DTYPE)
        return params

    def forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(n, d_out)`` for inputs ``x`` ``(n, d_in)``."""
        sigma = ACTIVATIONS[self.activation]
        h = x
        for l in range(1, self.n_layers + 1):
            h = h @ params[f"W{l}"].T  # (n, width_l)
            if f"b{l}" in params:
                h = h + params[f"b{l}"]
            if l < self.n_layers:
                h = sigma(h)
        return h

    def fitted(self, params: Params) -> Net:
        """This architecture with the widths ``params`` actually store (e.g. a twin with
        redundant units): what the forward pass of those parameters computes."""
        widths = [params["W1"].shape[1]] + [params[f"W{l}"].shape[0] for l in range(1, self.n_layers + 1)]
        return Net(tuple(widths), self.activation, self.bias)

    def hidden(self, params: Params, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Post-activation of hidden layer ``layer`` (1-based), shape ``(n, width_layer)``."""
        sigma = ACTIVATIONS[self.activation]
        h = x
        for l in range(1, layer + 1):
            h = sigma(h @ params[f"W{l}"].T + params.get(f"b{l}", 0.0))
        return h


def n_params(params: Params) -> int:
    return sum(p.numel() for p in params.values())


def param_norm(params: Params) -> float:
    return float(torch.sqrt(cast(torch.Tensor, sum((p**2).sum() for p in params.values()))))


def end_to_end_matrix(params: Params) -> torch.Tensor:
    """``W_L ⋯ W_1`` of a bias-free deep linear net (the function it computes)."""
    n_layers = sum(1 for k in params if k.startswith("W"))
    product = params["W1"]
    for l in range(2, n_layers + 1):
        product = params[f"W{l}"] @ product
    return product
