"""Property tests for theory/symmetry.py: group actions preserve the function, and
which of them commute with one gradient step."""

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import SETTINGS, random_data, setups

from theory.models import ACTIVATIONS, DTYPE, Net
from theory.symmetry import ADMISSIBLE, act_on_axis, apply, hidden_layer_spec, sample
from theory.update import gd_step, gradient

torch.set_num_threads(1)

ALL_KINDS = ("GL", "O", "scale", "perm")
ADMISSIBLE_PAIRS = [(a, k) for a in ADMISSIBLE for k in ADMISSIBLE[a]]
FORBIDDEN_PAIRS = [(a, k) for a in ACTIVATIONS for k in ALL_KINDS if k not in ADMISSIBLE[a]]


def _max_change(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("activation,kind", ADMISSIBLE_PAIRS)
@SETTINGS
@given(data=st.data())
def test_admissible_element_preserves_outputs_and_moves_weights(activation, kind, data):
    """A random admissible group element leaves outputs unchanged but changes the weights."""
    net, params, n, gen = data.draw(setups(activation=activation, with_loss=False))
    scale = data.draw(st.floats(0.3, 1.0))
    spec = hidden_layer_spec(net, params, kind)
    g = sample(spec, gen, scale=scale)
    moved = apply(spec, params, g)
    x = torch.randn(n, net.widths[0], generator=gen, dtype=DTYPE)
    assert torch.allclose(net.forward(moved, x), net.forward(params, x), atol=1e-10, rtol=1e-10)
    assert set(moved) == set(params)
    assert all(moved[k].shape == params[k].shape for k in params)
    if kind == "perm":
        eyes = [torch.equal(m, torch.eye(m.shape[0], dtype=DTYPE)) for m in g.values()]
        if any(m.shape[0] >= 2 and not is_eye for m, is_eye in zip(g.values(), eyes)):
            assert _max_change(moved, params) > 1e-6
    elif kind == "O" and all(m.shape[0] == 1 and float(m) == 1.0 for m in g.values()):
        pass  # O(1) = {±1}: a width-1 net can draw the identity (probability ½ per layer)
    else:
        assert _max_change(moved, params) > 1e-6


@pytest.mark.parametrize("activation,kind", FORBIDDEN_PAIRS)
def test_non_admissible_kind_raises(activation, kind):
    """hidden_layer_spec refuses a group that does not commute with the activation."""
    net = Net((3, 4, 2), activation, True)
    params = net.init(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError):
        hidden_layer_spec(net, params, kind)


def test_admissible_table_matches_expectations():
    """GL/O only for linear, scale for positively homogeneous σ, perm for every σ."""
    assert FORBIDDEN_PAIRS  # the table is not vacuous
    for a in ACTIVATIONS:
        assert "perm" in ADMISSIBLE[a]
        assert ("GL" in ADMISSIBLE[a]) == (a == "linear")
        assert ("O" in ADMISSIBLE[a]) == (a == "linear")
        assert ("scale" in ADMISSIBLE[a]) == (a != "gelu")


@pytest.mark.parametrize("loss", ["cross_entropy", "square"])
@pytest.mark.parametrize("activation,kind", [("linear", "O")] + [(a, "perm") for a in sorted(ACTIVATIONS)])
@SETTINGS
@given(data=st.data())
def test_orthogonal_and_perm_commute_with_gd_step(activation, kind, loss, data):
    """For O (linear nets) and permutations: gd_step(gθ) == g gd_step(θ)."""
    net, params, n, gen = data.draw(setups(activation=activation, with_loss=False))
    lr = data.draw(st.floats(0.01, 1.0))
    spec = hidden_layer_spec(net, params, kind)
    g = sample(spec, gen)
    x, y = random_data(net, n, gen, loss)
    lhs = gd_step(net, apply(spec, params, g), x, y, lr, loss)
    rhs = apply(spec, gd_step(net, params, x, y, lr, loss), g)
    for k in params:
        assert torch.allclose(lhs[k], rhs[k], atol=1e-9, rtol=1e-9), k


@pytest.mark.parametrize("loss", ["cross_entropy", "square"])
@pytest.mark.parametrize(
    "activation,kind", [("linear", "GL"), ("linear", "scale"), ("relu", "scale"), ("leaky_relu", "scale")]
)
@SETTINGS
@given(data=st.data())
def test_gl_and_scale_do_not_commute_with_gd_step(activation, kind, loss, data):
    """For GL (linear) and positive scale (relu/leaky/linear): gd_step(gθ) ≠ g gd_step(θ)."""
    # d_out ≥ 2: one-class cross-entropy is constant, so its gradient vanishes.
    net, params, n, gen = data.draw(setups(activation=activation, min_out=2, with_loss=False))
    lr = data.draw(st.floats(0.1, 1.0))
    scale = data.draw(st.floats(0.5, 1.5))
    spec = hidden_layer_spec(net, params, kind)
    g = sample(spec, gen, scale=scale)
    x, y = random_data(net, n, gen, loss)
    # Non-degenerate example: g is not (nearly) orthogonal on any hidden layer, and the
    # weights the group acts on receive a gradient.
    for m in g.values():
        assume(float((m - torch.linalg.inv(m).T).abs().max()) > 0.1)
    grads = gradient(net, params, x, y, loss)
    hidden_grad = sum(float((grads[f"W{l}"] ** 2).sum()) for l in range(1, net.n_layers))
    assume(hidden_grad**0.5 > 1e-4)
    lhs = gd_step(net, apply(spec, params, g), x, y, lr, loss)
    rhs = apply(spec, gd_step(net, params, x, y, lr, loss), g)
    assert _max_change(lhs, rhs) > 1e-8


@pytest.mark.parametrize("activation,kind", ADMISSIBLE_PAIRS)
@SETTINGS
@given(data=st.data())
def test_identity_element_is_a_no_op(activation, kind, data):
    """apply with the identity element returns the same tensors."""
    net, params, _, _ = data.draw(setups(activation=activation, with_loss=False))
    spec = hidden_layer_spec(net, params, kind)
    identity = {name: torch.eye(grp.size, dtype=DTYPE) for name, grp in spec.groups.items()}
    out = apply(spec, params, identity)
    assert set(out) == set(params)
    for k in params:
        assert torch.allclose(out[k], params[k], atol=1e-14, rtol=1e-14), k


@pytest.mark.parametrize("kind", ["GL", "scale"])
@SETTINGS
@given(data=st.data())
def test_sample_at_scale_zero_is_identity(kind, data):
    """sample(..., scale=0) gives the identity for the continuous groups GL and scale."""
    net, params, _, gen = data.draw(setups(activation="linear", with_loss=False))
    spec = hidden_layer_spec(net, params, kind)
    for name, m in sample(spec, gen, scale=0.0).items():
        assert torch.allclose(m, torch.eye(spec.groups[name].size, dtype=DTYPE), atol=1e-14)


@SETTINGS
@given(
    shape=st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5)),
    rows=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_act_on_axis_matches_einsum(shape, rows, seed):
    """act_on_axis(T, M, k) == Σ_j M[i, j] T[…, j, …] (einsum) on every axis of a 3-D tensor."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=gen, dtype=DTYPE)
    patterns = {0: "ij,jbc->ibc", 1: "ij,ajc->aic", 2: "ij,abj->abi"}
    for axis, pattern in patterns.items():
        m = torch.randn(rows, shape[axis], generator=gen, dtype=DTYPE)
        got = act_on_axis(t, m, axis)
        want = torch.einsum(pattern, m, t)
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-12, rtol=1e-12), axis
