"""Property tests for theory/redundancy.py: redundant units keep the function, and what
one gradient step does to them."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from strategies import SETTINGS, random_data, setups

from theory.models import ACTIVATIONS, DTYPE, Net, end_to_end_matrix
from theory.redundancy import (
    add_cancelling_pairs,
    add_dead_units,
    add_null_directions,
    null_projector,
)
from theory.update import gd_step, gradient

torch.set_num_threads(1)


def _new_units(net, params, layer, k, gen):
    """Random incoming weights (k, d_prev) and, if the net has biases, random biases (k,)."""
    d_prev = params[f"W{layer}"].shape[1]
    incoming = torch.randn(k, d_prev, generator=gen, dtype=DTYPE)
    bias = torch.randn(k, generator=gen, dtype=DTYPE) if net.bias else None
    return incoming, bias


def _layer_input(net, params, x, layer):
    """Input to hidden ``layer`` (1-based): x for layer 1, else post-activation of layer−1."""
    return x if layer == 1 else net.hidden(params, x, layer - 1)


def _logit_residuals(net, params, x, y, loss):
    """r_i = ∂L/∂f(x_i), by torch.autograd on the logits (includes the 1/n of the mean)."""
    out = net.forward(params, x).detach().requires_grad_(True)
    if loss == "cross_entropy":
        value = F.cross_entropy(out, y)
    else:
        value = 0.5 * ((out - y) ** 2).sum(dim=1).mean()
    (r,) = torch.autograd.grad(value, out)
    return r


def _assert_base_equal(widened, base, layer, width, atol=1e-10):
    """The original coordinates of ``widened`` (first ``width`` units of ``layer``) equal ``base``."""
    for k, v in base.items():
        if k == f"W{layer}" or k == f"b{layer}":
            got = widened[k][:width]
        elif k == f"W{layer + 1}":
            got = widened[k][:, :width]
        else:
            got = widened[k]
        assert got.shape == v.shape, k
        assert torch.allclose(got, v, atol=atol, rtol=atol), k


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@SETTINGS
@given(data=st.data())
def test_dead_units_preserve_outputs_and_grow_shapes(activation, data):
    """add_dead_units keeps outputs equal and adds k rows/biases to W_l, b_l and k columns to W_{l+1}."""
    net, params, n, gen, _ = data.draw(setups(activation=activation))
    layer = data.draw(st.integers(1, net.n_layers - 1))
    k = data.draw(st.integers(1, 3))
    incoming, bias = _new_units(net, params, layer, k, gen)
    wide = add_dead_units(params, layer, incoming, bias)
    x = torch.randn(n, net.widths[0], generator=gen, dtype=DTYPE)
    assert torch.allclose(net.forward(wide, x), net.forward(params, x), atol=1e-10, rtol=1e-10)
    h = params[f"W{layer}"].shape[0]
    assert wide[f"W{layer}"].shape == (h + k, params[f"W{layer}"].shape[1])
    assert wide[f"W{layer + 1}"].shape == (params[f"W{layer + 1}"].shape[0], h + k)
    if net.bias:
        assert wide[f"b{layer}"].shape == (h + k,)
    assert torch.equal(wide[f"W{layer + 1}"][:, h:], torch.zeros_like(wide[f"W{layer + 1}"][:, h:]))
    assert set(wide) == set(params)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@SETTINGS
@given(data=st.data())
def test_cancelling_pairs_preserve_outputs_and_grow_shapes(activation, data):
    """add_cancelling_pairs keeps outputs equal and adds 2k units (copies with outgoing +V and −V)."""
    net, params, n, gen, _ = data.draw(setups(activation=activation))
    layer = data.draw(st.integers(1, net.n_layers - 1))
    k = data.draw(st.integers(1, 3))
    incoming, bias = _new_units(net, params, layer, k, gen)
    outgoing = torch.randn(params[f"W{layer + 1}"].shape[0], k, generator=gen, dtype=DTYPE)
    wide = add_cancelling_pairs(params, layer, incoming, bias, outgoing)
    x = torch.randn(n, net.widths[0], generator=gen, dtype=DTYPE)
    assert torch.allclose(net.forward(wide, x), net.forward(params, x), atol=1e-10, rtol=1e-10)
    h = params[f"W{layer}"].shape[0]
    assert wide[f"W{layer}"].shape == (h + 2 * k, params[f"W{layer}"].shape[1])
    assert wide[f"W{layer + 1}"].shape == (params[f"W{layer + 1}"].shape[0], h + 2 * k)
    if net.bias:
        assert wide[f"b{layer}"].shape == (h + 2 * k,)
    assert torch.equal(wide[f"W{layer}"][h : h + k], wide[f"W{layer}"][h + k :])
    assert torch.equal(wide[f"W{layer + 1}"][:, h + k :], -wide[f"W{layer + 1}"][:, h : h + k])


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@SETTINGS
@given(data=st.data())
def test_dead_units_one_step(activation, data):
    """One step: dead units keep incoming weights, base steps as control, last-layer gain is −η Σ r_i σ_i σ(x)."""
    net, params, n, gen, loss = data.draw(setups(activation=activation))
    layer = data.draw(st.integers(1, net.n_layers - 1))
    k = data.draw(st.integers(1, 3))
    lr = data.draw(st.floats(0.01, 1.0))
    incoming, bias = _new_units(net, params, layer, k, gen)
    wide = add_dead_units(params, layer, incoming, bias)
    x, y = random_data(net, n, gen, loss)
    h = params[f"W{layer}"].shape[0]

    stepped = gd_step(net, wide, x, y, lr, loss)
    control = gd_step(net, params, x, y, lr, loss)
    assert torch.equal(stepped[f"W{layer}"][h:], incoming)
    if net.bias:
        assert torch.equal(stepped[f"b{layer}"][h:], bias)
    grads = gradient(net, wide, x, y, loss)
    assert torch.equal(grads[f"W{layer}"][h:], torch.zeros_like(incoming))
    _assert_base_equal(stepped, control, layer, h)

    if layer != net.n_layers - 1:
        return
    sigma = ACTIVATIONS[net.activation]
    b = bias if bias is not None else torch.zeros(k, dtype=DTYPE)
    r = _logit_residuals(net, params, x, y, loss)  # (n, d_out)
    s_train = sigma(_layer_input(net, params, x, layer) @ incoming.T + b)  # (n, k)
    new_cols = -lr * r.T @ s_train  # (d_out, k)
    assert torch.allclose(stepped[f"W{layer + 1}"][:, h:], new_cols, atol=1e-10, rtol=1e-10)

    x_test = torch.randn(5, net.widths[0], generator=gen, dtype=DTYPE)
    s_test = sigma(_layer_input(net, control, x_test, layer) @ incoming.T + b)  # (5, k)
    expected = net.forward(control, x_test) + s_test @ new_cols.T
    assert torch.allclose(net.forward(stepped, x_test), expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@SETTINGS
@given(data=st.data())
def test_cancelling_pairs_one_step(activation, data):
    """One step: base params equal the base model's stepped params; the copies' incoming grads are opposite."""
    net, params, n, gen, loss = data.draw(setups(activation=activation))
    layer = data.draw(st.integers(1, net.n_layers - 1))
    k = data.draw(st.integers(1, 3))
    lr = data.draw(st.floats(0.01, 1.0))
    incoming, bias = _new_units(net, params, layer, k, gen)
    outgoing = torch.randn(params[f"W{layer + 1}"].shape[0], k, generator=gen, dtype=DTYPE)
    wide = add_cancelling_pairs(params, layer, incoming, bias, outgoing)
    x, y = random_data(net, n, gen, loss)
    h = params[f"W{layer}"].shape[0]

    stepped = gd_step(net, wide, x, y, lr, loss)
    control = gd_step(net, params, x, y, lr, loss)
    _assert_base_equal(stepped, control, layer, h)

    grads = gradient(net, wide, x, y, loss)
    g_in = grads[f"W{layer}"]
    assert torch.allclose(g_in[h : h + k], -g_in[h + k :], atol=1e-12, rtol=1e-12)
    if net.bias:
        g_b = grads[f"b{layer}"]
        assert torch.allclose(g_b[h : h + k], -g_b[h + k :], atol=1e-12, rtol=1e-12)
    # both copies see the same activation, so their outgoing columns get the same gradient
    g_out = grads[f"W{layer + 1}"]
    assert torch.allclose(g_out[:, h : h + k], g_out[:, h + k :], atol=1e-12, rtol=1e-12)


@SETTINGS
@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 6),
    rank=st.integers(0, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_null_projector_is_orthogonal_projector_onto_null_space(rows, cols, rank, seed):
    """null_projector(M) is symmetric, idempotent, kills M, and has rank cols − rank(M)."""
    gen = torch.Generator().manual_seed(seed)
    rank = min(rank, rows, cols)
    m = torch.randn(rows, rank, generator=gen, dtype=DTYPE) @ torch.randn(rank, cols, generator=gen, dtype=DTYPE)
    p = null_projector(m)
    assert p.shape == (cols, cols)
    assert torch.allclose(p, p.T, atol=1e-10)
    assert torch.allclose(p @ p, p, atol=1e-10)
    assert torch.allclose(m @ p, torch.zeros(rows, cols, dtype=DTYPE), atol=1e-10)
    assert round(float(torch.trace(p))) == cols - rank


@st.composite
def linear_null_setups(draw, n_layers=None):
    """Bias-free linear net with a layer l whose width exceeds width_{l+1}."""
    n_layers = n_layers if n_layers is not None else draw(st.integers(2, 4))
    layer = draw(st.integers(1, n_layers - 1))
    widths = [draw(st.integers(1, 6)) for _ in range(n_layers + 1)]
    widths[layer] = draw(st.integers(2, 6))
    widths[layer + 1] = draw(st.integers(1, widths[layer] - 1))
    net = Net(tuple(widths), "linear", False)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    params = net.init(gen)
    free = torch.randn(widths[layer], widths[layer - 1], generator=gen, dtype=DTYPE)
    return net, params, layer, free, gen


@SETTINGS
@given(setup=linear_null_setups())
def test_null_directions_preserve_end_to_end_product(setup):
    """add_null_directions moves W_l along null(W_{l+1}) without changing W_L⋯W_1."""
    net, params, layer, free, _ = setup
    moved = add_null_directions(params, layer, free)
    n_dir = moved[f"W{layer}"] - params[f"W{layer}"]
    assert float(n_dir.abs().max()) > 1e-6  # the null space is non-trivial, so it does move
    assert torch.allclose(
        params[f"W{layer + 1}"] @ n_dir, torch.zeros_like(params[f"W{layer + 1}"] @ n_dir), atol=1e-10
    )
    assert torch.allclose(end_to_end_matrix(moved), end_to_end_matrix(params), atol=1e-10, rtol=1e-10)


@SETTINGS
@given(setup=linear_null_setups(n_layers=2), n=st.integers(1, 8), lr=st.floats(0.01, 1.0))
def test_null_directions_one_step_gain(setup, n, lr):
    """2-layer linear net: a square-loss step gains exactly −η G(NᵀN + W1ᵀN + NᵀW1) in the product."""
    net, params, _, free, gen = setup
    moved = add_null_directions(params, 1, free)
    w1 = params["W1"]
    n_dir = moved["W1"] - w1
    x = torch.randn(n, net.widths[0], generator=gen, dtype=DTYPE)
    y = torch.randn(n, net.widths[-1], generator=gen, dtype=DTYPE)
    prod = end_to_end_matrix(params)
    g = (x @ prod.T - y).T @ x / n  # G = mean_i (P x_i − y_i) x_iᵀ
    after_moved = end_to_end_matrix(gd_step(net, moved, x, y, lr, "square"))
    after_base = end_to_end_matrix(gd_step(net, params, x, y, lr, "square"))
    gain = -lr * g @ (n_dir.T @ n_dir + w1.T @ n_dir + n_dir.T @ w1)
    assert torch.allclose(after_moved - after_base, gain, atol=1e-10, rtol=1e-10)
