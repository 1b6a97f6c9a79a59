"""Hypothesis strategies shared by the property tests: random small nets, params and data."""

from __future__ import annotations

import torch
from hypothesis import settings
from hypothesis import strategies as st

from theory.models import ACTIVATIONS, DTYPE, Net

# derandomize: CI sees the same examples every run (seeds that reproduce); raise
# max_examples locally to explore more.
SETTINGS = settings(max_examples=25, deadline=None, database=None, derandomize=True)
LOSSES = ("cross_entropy", "square")


@st.composite
def setups(draw, activation=None, bias=None, n_layers=None, min_out=1, with_loss=True):
    """A random net (2-4 layers, widths 1-6), params with random biases, a sample count, a
    generator and (``with_loss``) a loss name."""
    n_layers = n_layers if n_layers is not None else draw(st.integers(2, 4))
    widths = tuple(draw(st.integers(min_out if i == n_layers else 1, 6)) for i in range(n_layers + 1))
    act = activation if activation is not None else draw(st.sampled_from(sorted(ACTIVATIONS)))
    use_bias = bias if bias is not None else draw(st.booleans())
    net = Net(widths, act, use_bias)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    params = net.init(gen)
    for k in params:
        if k.startswith("b"):  # zero biases would hide bias-handling bugs
            params[k] = 0.5 * torch.randn(params[k].shape, generator=gen, dtype=DTYPE)
    n = draw(st.integers(1, 8))
    if not with_loss:
        return net, params, n, gen
    return net, params, n, gen, draw(st.sampled_from(LOSSES))


def random_data(net: Net, n: int, gen: torch.Generator, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels (class ids) or regression targets matching the net's output."""
    x = torch.randn(n, net.widths[0], generator=gen, dtype=DTYPE)
    if loss == "cross_entropy":
        return x, torch.randint(0, net.widths[-1], (n,), generator=gen)
    return x, torch.randn(n, net.widths[-1], generator=gen, dtype=DTYPE)
