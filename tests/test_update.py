"""Property tests for theory/update.py: the exact GD step, its NTK prediction, and
differentiability through the step."""

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import LOSSES, SETTINGS, random_data, setups

from theory.construct import two_layer_post_update
from theory.models import DTYPE, Net, end_to_end_matrix
from theory.update import gd_step, gradient, loss_fn, ntk_prediction

torch.set_num_threads(1)

# torch.func.jvp registers its decompositions with torch.jit.script on first use (torch-internal).
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@SETTINGS
@given(setup=setups(activation="linear", bias=False, n_layers=2), lr=st.floats(0.001, 2.0))
def test_two_layer_linear_step_matches_closed_form(setup, lr):
    """Square-loss gd_step on W2W1 gives P − η(G W1ᵀW1 + W2W2ᵀG) + η² G W1ᵀW2ᵀG."""
    net, params, n, gen, _ = setup
    x, y = random_data(net, n, gen, "square")
    prod = end_to_end_matrix(params)
    g = (x @ prod.T - y).T @ x / n  # G = ∂L/∂P = mean_i (P x_i − y_i) x_iᵀ
    stepped = gd_step(net, params, x, y, lr, "square")
    want = two_layer_post_update(params["W1"], params["W2"], g, lr)
    assert torch.allclose(end_to_end_matrix(stepped), want, atol=1e-10, rtol=1e-10)


@SETTINGS
@given(setup=setups(activation="gelu", min_out=2), eta=st.floats(0.001, 0.004))
def test_ntk_prediction_error_is_second_order(setup, eta):
    """For a gelu net, |exact step − NTK prediction| shrinks ≈100× when η shrinks 10×
    (η small enough that the third-order term cannot bend the ratio out of [50, 200])."""
    net, params, n, gen, loss = setup
    x, y = random_data(net, n, gen, loss)
    x_test = torch.randn(4, net.widths[0], generator=gen, dtype=DTYPE)

    def error(lr):
        exact = net.forward(gd_step(net, params, x, y, lr, loss), x_test)
        return float((exact - ntk_prediction(net, params, x, y, lr, loss, x_test)).abs().max())

    big, small = error(eta), error(eta / 10)
    assume(big > 1e-11)  # a vanishing gradient (e.g. one-class cross-entropy) has no 2nd-order term
    assert 50 < big / small < 200


@SETTINGS
@given(setup=setups())
def test_ntk_prediction_at_zero_lr_is_forward(setup):
    """ntk_prediction with η = 0 equals the forward pass."""
    net, params, n, gen, loss = setup
    x, y = random_data(net, n, gen, loss)
    x_test = torch.randn(5, net.widths[0], generator=gen, dtype=DTYPE)
    got = ntk_prediction(net, params, x, y, 0.0, loss, x_test)
    assert torch.allclose(got, net.forward(params, x_test), atol=1e-12, rtol=1e-12)


@SETTINGS
@given(setup=setups(), lr=st.floats(0.01, 1.0))
def test_gd_step_is_theta_minus_lr_gradient_and_steps_compose(setup, lr):
    """gd_step = θ − η∇L, and steps=2 equals two single steps."""
    net, params, n, gen, loss = setup
    x, y = random_data(net, n, gen, loss)
    g = gradient(net, params, x, y, loss)
    one = gd_step(net, params, x, y, lr, loss)
    for k in params:
        assert torch.allclose(one[k], params[k] - lr * g[k], atol=1e-14, rtol=1e-14), k
    two = gd_step(net, params, x, y, lr, loss, steps=2)
    again = gd_step(net, one, x, y, lr, loss)
    for k in params:
        assert torch.allclose(two[k], again[k], atol=1e-12, rtol=1e-12), k


@settings(max_examples=10, deadline=None, database=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), loss=st.sampled_from(LOSSES), lr=st.floats(0.05, 0.5))
def test_gd_step_is_differentiable(seed, loss, lr):
    """autograd through gd_step matches central finite differences (float64, rel. err. < 1e-6)."""
    net = Net((2, 3, 2), "gelu", True)
    gen = torch.Generator().manual_seed(seed)
    params = net.init(gen)
    params = {k: v + 0.3 * torch.randn(v.shape, generator=gen, dtype=DTYPE) for k, v in params.items()}
    x, y = random_data(net, 4, gen, loss)
    x2, y2 = random_data(net, 3, gen, loss)

    def objective(p):
        return loss_fn(net, gd_step(net, p, x, y, lr, loss), x2, y2, loss)

    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    auto = torch.autograd.grad(objective(leaves), list(leaves.values()))
    auto = torch.cat([a.reshape(-1) for a in auto])

    eps = 1e-5
    fd = []
    for k, v in params.items():
        for i in range(v.numel()):
            bump = torch.zeros(v.numel(), dtype=DTYPE)
            bump[i] = eps
            bump = bump.reshape(v.shape)
            plus = objective({**params, k: v + bump})
            minus = objective({**params, k: v - bump})
            fd.append(float(plus - minus) / (2 * eps))
    fd = torch.tensor(fd, dtype=DTYPE)
    assume(float(fd.norm()) > 1e-6)
    assert float((auto - fd).norm() / fd.norm()) < 1e-6


def test_loss_fn_rejects_unknown_loss():
    """loss_fn raises ValueError on an unknown loss name."""
    net = Net((2, 3, 2), "relu", True)
    params = net.init(torch.Generator().manual_seed(0))
    x = torch.randn(4, 2, dtype=DTYPE)
    y = torch.randn(4, 2, dtype=DTYPE)
    with pytest.raises(ValueError):
        loss_fn(net, params, x, y, "hinge")


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "", "ReLU"])
def test_net_rejects_unknown_activation(activation):
    """Net raises ValueError on an unknown activation name."""
    with pytest.raises(ValueError):
        Net((2, 3, 1), activation)


@pytest.mark.parametrize("widths", [(3,), (), (2, 0, 1)])
def test_net_rejects_bad_widths(widths):
    """Net raises ValueError on fewer than two sizes or a non-positive size."""
    with pytest.raises(ValueError):
        Net(widths, "relu")
