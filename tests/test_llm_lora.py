"""llm.lora: the factor algebra of W = s·B·A (product, gauge, one SGD step) and the adapter helpers."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from llm.lora import (
    LoraFactors,
    adapter_params,
    amplify_adapter,
    first_order_move,
    hidden_inputs,
    hidden_outputs,
    lora_layers,
    trainable,
)
from tests.strategies import SETTINGS
from tests.test_llm_analytic import logits, tiny, tok  # noqa: F401  (tok is a fixture)


def _factors(out: int, inp: int, r: int, s: float, seed: int) -> tuple[LoraFactors, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    b, a, g = (torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in ((out, r), (r, inp), (out, inp)))
    return LoraFactors(b, a, s), g


@SETTINGS
@given(
    shape=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 4)),
    s=st.floats(0.1, 4.0),
    lr=st.floats(1e-3, 1.0),
    seed=st.integers(0, 2**16),
)
def test_after_sgd_is_the_real_step_and_eq_1(shape, s, lr, seed) -> None:
    """after_sgd equals autograd's SGD step on (B, A) under a loss linear in W (gradient G), and its
    product is eq. (1): W − η s² (P G + G Q) + η² s² G Wᵀ G; first_order_move is the linear part."""
    f, g = _factors(*shape, s, seed)
    b, a = f.b.clone().requires_grad_(), f.a.clone().requires_grad_()
    (g * (s * b @ a)).sum().backward()
    after = f.after_sgd(g, lr)
    assert torch.allclose(after.b, f.b - lr * b.grad, rtol=1e-12, atol=1e-12)
    assert torch.allclose(after.a, f.a - lr * a.grad, rtol=1e-12, atol=1e-12)
    w = f.product
    linear = first_order_move(g, lr, s, out_gram=f.b @ f.b.T, in_gram=f.a.T @ f.a)
    assert torch.allclose(after.product, w + linear + lr**2 * s**2 * g @ w.T @ g, rtol=1e-10, atol=1e-10)


def test_hidden_components_move_by_the_linear_part_alone() -> None:
    """B = 0 (or A = 0) components add nothing to W, and one step moves them by −η s² G Q (or P G) exactly."""
    gen = torch.Generator().manual_seed(0)
    a, b_rows, g = (torch.randn(*sh, generator=gen, dtype=torch.float64) for sh in ((3, 5), (2, 4), (4, 5)))
    for hidden, gram in (
        (hidden_inputs(a, 4, 2.0), {"in_gram": a.T @ a}),
        (hidden_outputs(b_rows, 5, 2.0), {"out_gram": b_rows.T @ b_rows}),
    ):
        assert not hidden.product.any()
        moved = hidden.after_sgd(g, 0.3).product
        assert torch.allclose(moved, first_order_move(g, 0.3, 2.0, **gram), rtol=1e-12, atol=1e-14)


def test_gauged_and_stacked_factors() -> None:
    """gauged(R, K) is the factorisation of R W K; stack's product is the sum of the parts'."""
    f, _ = _factors(4, 5, 2, 1.5, 1)
    other, _ = _factors(4, 5, 3, 1.5, 2)
    gen = torch.Generator().manual_seed(3)
    r, k = torch.randn(4, 4, generator=gen, dtype=torch.float64), torch.randn(5, 5, generator=gen, dtype=torch.float64)
    assert torch.allclose(f.gauged(r, k).product, r @ f.product @ k, rtol=1e-12, atol=1e-12)
    stacked = LoraFactors.stack([f, other])
    assert stacked.a.shape == (5, 5) and stacked.b.shape == (4, 5)
    assert torch.allclose(stacked.product, f.product + other.product, rtol=1e-12, atol=1e-12)


def test_amplify_adapter_keeps_the_function_and_scales_the_factors(tok) -> None:
    model = tiny(tok)
    amplified = copy.deepcopy(model)
    factors = amplify_adapter(amplified, 10.0)
    assert set(factors) == set(adapter_params(model)) and set(factors.values()) == {10.0, 0.1}
    before, after = adapter_params(model), adapter_params(amplified)
    for name, scale in factors.items():
        torch.testing.assert_close(after[name], scale * before[name])
    torch.testing.assert_close(logits(amplified, tok), logits(model, tok), rtol=1e-5, atol=1e-5)
    for name, layer in lora_layers(model).items():
        torch.testing.assert_close(LoraFactors.of(lora_layers(amplified)[name]).product, LoraFactors.of(layer).product)


def test_trainable_selects_what_the_victim_updates(tok) -> None:
    model = tiny(tok)
    chosen = trainable(model, "adapter")
    assert {id(p) for p in chosen} == {id(p) for p in adapter_params(model).values()}
    assert len(trainable(model, "all")) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="update.params=adapter"):
        trainable(tiny(tok, lora=False), "adapter")
