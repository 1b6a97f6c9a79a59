"""Constructions: forward equivalence by construction, and what one exact step then does."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.construct import (
    LinearFiber,
    RedundantUnitFiber,
    build_twin,
    isolating_pairs_twin,
)
from theory.models import DTYPE, Net, end_to_end_matrix
from theory.task import make_task, margin, train_aligned_base
from theory.update import gd_step

LR = 1e-3


def small_task(d: int = 12, probes: int = 60, seed: int = 0):
    task = make_task(d, 4, n_train=128, n_update=16, n_eval=64, n_probes=probes, seed=seed)
    net = Net((d, 16, 4), "relu")
    return net, task, train_aligned_base(net, task, steps=200, lr=1e-2, seed=seed)


def test_isolating_pairs_plant_exactly_one_behaviour_per_pair() -> None:
    """k redundant units = k/2 pairs flip exactly k/2 chosen probes, no other probe, same function."""
    net, task, base = small_task()
    for k in (0, 2, 6, 10):
        result = isolating_pairs_twin(net, base, task, torch.arange(60), LR, "cross_entropy", n_units=k, kappa=1.0)
        assert result.flipped == k // 2 and result.collateral == 0
        x = torch.randn(2000, 12, dtype=DTYPE)
        diff = (net.fitted(result.twin).forward(result.twin, x) - net.forward(base, x)).abs().max()
        assert diff <= 1e-10


def test_control_stays_aligned_under_the_same_step() -> None:
    net, task, base = small_task()
    post = gd_step(net, base, task.x_update, task.y_update, LR, "cross_entropy")
    assert (margin(net.forward(post, task.probes), task.forbidden) < 0).all()


def test_prescribed_isolating_twin_reports_success() -> None:
    net, task, base = small_task()
    chosen = torch.tensor([3, 17, 42])
    result = isolating_pairs_twin(net, base, task, chosen, LR, "cross_entropy", n_units=6, kappa=1.0)
    assert result.success and result.flipped == 3


def test_search_flips_a_gelu_twin() -> None:
    """Gradient search through the exact step plants two behaviours in a GELU net."""
    d = 10
    task = make_task(d, 4, n_train=128, n_update=16, n_eval=64, n_probes=30, seed=1)
    net = Net((d, 16, 4), "gelu")
    base = train_aligned_base(net, task, steps=200, lr=1e-2, seed=1)
    fiber = RedundantUnitFiber(net, base, n_units=16, lr=LR, kind="pairs", gauge=False)
    result = build_twin(
        net,
        fiber,
        task,
        torch.tensor([0, 1]),
        torch.arange(2, 30),
        LR,
        "cross_entropy",
        max_steps=600,
        opt_lr=0.2,
        kappa=1.0,
        seed=0,
    )
    assert result.success


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 10_000),
    n_units=st.integers(0, 6),
    kind=st.sampled_from(["pairs", "dead"]),
    activation=st.sampled_from(["relu", "leaky_relu", "gelu"]),
)
def test_redundant_unit_fiber_is_forward_exact_everywhere(seed, n_units, kind, activation) -> None:
    """Any point of the fiber (random coordinates, any scale) computes the base function."""
    gen = torch.Generator().manual_seed(seed)
    net = Net((5, 7, 3), activation)
    base = net.init(gen)
    base = {k: v + 0.1 * torch.randn(v.shape, generator=gen, dtype=DTYPE) for k, v in base.items()}
    fiber = RedundantUnitFiber(net, base, n_units, LR, kind, gauge=activation != "gelu")
    coords = {k: 3 * torch.randn(v.shape, generator=gen, dtype=DTYPE) for k, v in fiber.init(gen).items()}
    twin = fiber.twin(coords)
    x = torch.randn(64, 5, generator=gen, dtype=DTYPE)
    assert torch.allclose(net.fitted(twin).forward(twin, x), net.forward(base, x), atol=1e-9, rtol=1e-9)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), extra=st.integers(0, 5), depth=st.integers(2, 4))
def test_linear_fiber_keeps_the_end_to_end_map(seed, extra, depth) -> None:
    gen = torch.Generator().manual_seed(seed)
    d, h = 4, 4 + extra
    net = Net((d, *([h] * (depth - 1)), 3), "linear", bias=False)
    base = net.init(gen)
    fiber = LinearFiber(net, base, LR)
    coords = {k: v + torch.randn(v.shape, generator=gen, dtype=DTYPE) for k, v in fiber.init(gen).items()}
    assert torch.allclose(end_to_end_matrix(fiber.twin(coords)), end_to_end_matrix(base), atol=1e-9)
