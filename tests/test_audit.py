"""The white-box audit (theory/audit): canonicalisation keeps the function and collapses twins to
their control, the certificate is sound, the neutraliser removes the hair trigger, and the
population scoring counts what it says."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hypothesis import given
from hypothesis import strategies as st
from strategies import SETTINGS, setups

from sweeps.errors import ConfigError
from theory import redundancy, symmetry
from theory.audit import (
    AuditSettings,
    canonicalize,
    function_residual,
    gauge_excess,
    margin_certificate,
)
from theory.audit.amplification import amplification, probe_velocity
from theory.audit.canonical import homogeneous, layer_sq_norms
from theory.audit.certificate import lipschitz_on_interval
from theory.audit.honest import random_gauge
from theory.audit.roc import bootstrap_auc, flagged_fraction, roc_auc, threshold_at_fpr
from theory.audit.simulate import misaligned_after_step, post_step_margins
from theory.construct import RedundantUnitFiber, isolating_pairs_twin
from theory.models import ACTIVATIONS, DTYPE, Net
from theory.task import make_task, margin, train_aligned_base
from theory.update import gd_step

ROOT = Path(__file__).resolve().parent.parent
LR = 1e-3


def _gauge(net, params, gen, scale):
    """A random admissible gauge: GL for bias-free linear nets, else rescaling, then a permutation."""
    kinds = (
        ["GL"] if net.activation == "linear" and not net.bias else (["scale"] if homogeneous(net.activation) else [])
    )
    for kind in kinds + ["perm"]:
        spec = symmetry.hidden_layer_spec(net, params, kind)
        params = symmetry.apply(spec, params, symmetry.sample(spec, gen, scale=scale))
    return params


def _redundant(net, params, gen, layer, k):
    """``k`` dead units and ``k`` cancelling pairs (outgoing up to 30×) in hidden ``layer``."""
    d_prev, d_next = params[f"W{layer}"].shape[1], params[f"W{layer + 1}"].shape[0]
    bias = (lambda: torch.randn(k, generator=gen, dtype=DTYPE)) if net.bias else (lambda: None)
    params = redundancy.add_dead_units(params, layer, torch.randn(k, d_prev, generator=gen, dtype=DTYPE), bias())
    outgoing = 30 * torch.randn(d_next, k, generator=gen, dtype=DTYPE)
    return redundancy.add_cancelling_pairs(
        params, layer, torch.randn(k, d_prev, generator=gen, dtype=DTYPE), bias(), outgoing
    )


@st.composite
def twins(draw, n_layers=None):
    """A control net, and a twin of it: a random admissible gauge plus redundant units."""
    net, control, n, gen = draw(setups(with_loss=False, n_layers=n_layers))
    scale = draw(st.floats(0.1, 1.0))
    twin = _gauge(net, control, gen, scale)
    layer = draw(st.integers(1, net.n_layers - 1))
    twin = _redundant(net, twin, gen, layer, draw(st.integers(1, 3)))
    x = torch.randn(max(n, 16), net.widths[0], generator=gen, dtype=DTYPE)
    return net, control, twin, x


def _gap(a, b):
    if set(a) != set(b) or any(a[k].shape != b[k].shape for k in a):
        return math.inf
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _scale(params):
    return max(1.0, max(float(v.abs().max()) for v in params.values()))


# --- canonicalisation --------------------------------------------------------------------------


@SETTINGS
@given(case=twins())
def test_canonical_form_computes_the_same_function(case):
    """canon(twin) computes the twin's function (eq. 1-5 are function-preserving) for every
    activation, with and without biases, 2-4 layers, gauges and redundant units."""
    net, _, twin, x = case
    canon = canonicalize(net, twin)
    out = net.fitted(twin).forward(twin, x)
    assert function_residual(net, twin, canon, x) <= 1e-9 * max(1.0, float(out.abs().max()))
    assert sum(canon.removed) >= 1  # the dead units at least are gone
    assert canon.converged


@SETTINGS
@given(case=twins())
def test_canonical_form_collapses_a_twin_to_its_control(case):
    """canon(gauge + redundant units of θ) == canon(θ): same widths and the same parameters."""
    net, control, twin, _ = case
    a, b = canonicalize(net, twin), canonicalize(net, control)
    assert a.net.widths == b.net.widths
    assert _gap(a.params, b.params) <= 1e-7 * _scale(b.params)


@SETTINGS
@given(case=twins())
def test_canonicalisation_is_idempotent(case):
    net, _, twin, _ = case
    once = canonicalize(net, twin)
    twice = canonicalize(once.net, once.params)
    assert sum(twice.removed) == 0
    assert _gap(once.params, twice.params) <= 1e-9 * _scale(once.params)


@SETTINGS
@given(case=twins(n_layers=2))
def test_gauge_excess_is_non_negative_and_zero_at_the_canonical_form(case):
    """Two-layer nets: ‖θ‖² ≥ Σ_k 2‖in_k‖‖out_k‖ ≥ ‖canon θ‖² (AM-GM, then the triangle
    inequality over merged units); the canonical form has no excess left."""
    net, _, twin, _ = case
    canon = canonicalize(net, twin)
    total = sum(layer_sq_norms(twin).values())
    assert gauge_excess(twin, canon.params)["total"] >= -1e-9 * total
    assert abs(gauge_excess(canon.params, canonicalize(canon.net, canon.params).params)["total"]) <= 1e-9 * total


def test_equi_normalised_units_are_balanced_and_minimal():
    """Eq. 3: after canonicalisation ‖incoming‖ = ‖outgoing‖ per ReLU unit, and no rescaling
    lowers ‖θ‖² (a first-order check in every unit's log-scale)."""
    gen = torch.Generator().manual_seed(3)
    net = Net((5, 7, 3), "relu")
    params = _gauge(net, net.init(gen) | {"b1": torch.randn(7, generator=gen, dtype=DTYPE)}, gen, 1.0)
    canon = canonicalize(net, params).params
    incoming = (canon["W1"] ** 2).sum(1) + canon["b1"] ** 2
    assert torch.allclose(incoming, (canon["W2"] ** 2).sum(0), rtol=1e-12)
    base = sum(layer_sq_norms(canon).values())
    for i in range(7):
        for d in (0.99, 1.01):
            moved = dict(canon, W1=canon["W1"].clone(), b1=canon["b1"].clone(), W2=canon["W2"].clone())
            moved["W1"][i] *= d
            moved["b1"][i] *= d
            moved["W2"][:, i] /= d
            assert sum(layer_sq_norms(moved).values()) > base


def test_a_non_function_preserving_change_is_not_collapsed():
    """Negative control: a twin whose pair is broken (one copy's outgoing weight off by 1e-3)
    changes the function; canonicalisation merges the broken pair into one unit carrying the 1e-3
    residue (eq. 4), so its canonical form differs from the control's."""
    gen = torch.Generator().manual_seed(0)
    net = Net((4, 6, 3), "relu")
    control = net.init(gen)
    twin = _redundant(net, _gauge(net, control, gen, 0.5), gen, 1, 2)
    twin["W2"] = twin["W2"].clone()
    twin["W2"][0, -1] += 1e-3
    x = torch.randn(256, 4, generator=gen, dtype=DTYPE)
    assert float((net.fitted(twin).forward(twin, x) - net.forward(control, x)).abs().max()) > 1e-6
    a, b = canonicalize(net, twin), canonicalize(net, control)
    assert function_residual(net, twin, a, x) <= 1e-10
    assert a.net.widths[1] == b.net.widths[1] + 1  # the intact pair goes, the broken one merges
    assert _gap(a.params, b.params) == math.inf


def test_near_duplicate_units_are_not_merged():
    """Negative control: units whose incoming weights differ by 1e-4 are distinct (no merge), and
    the canonical form still computes the function."""
    gen = torch.Generator().manual_seed(1)
    net = Net((4, 5, 2), "gelu")
    params = net.init(gen)
    u = torch.randn(1, 4, generator=gen, dtype=DTYPE)
    params = redundancy.add_dead_units(params, 1, torch.cat([u, u + 1e-4]))
    params["W2"] = params["W2"].clone()
    params["W2"][:, -2:] = torch.tensor([[1.0, -1.0], [2.0, -2.0]], dtype=DTYPE)
    canon = canonicalize(net, params)
    assert canon.removed == (0,)
    x = torch.randn(128, 4, generator=gen, dtype=DTYPE)
    assert function_residual(net, params, canon, x) <= 1e-12


def test_constant_units_fold_into_the_next_bias():
    """A unit with zero incoming weights outputs σ(b): it is removed and its output moves into
    the next layer's bias."""
    gen = torch.Generator().manual_seed(2)
    for activation in sorted(ACTIVATIONS):
        net = Net((3, 4, 2), activation)
        params = net.init(gen)
        params = redundancy.add_dead_units(params, 1, torch.zeros(1, 3, dtype=DTYPE), torch.tensor([0.7], dtype=DTYPE))
        params["W2"] = params["W2"].clone()
        params["W2"][:, -1] = torch.tensor([1.5, -2.0], dtype=DTYPE)
        canon = canonicalize(net, params)
        assert canon.removed == (1,)
        x = torch.randn(64, 3, generator=gen, dtype=DTYPE)
        assert function_residual(net, params, canon, x) <= 1e-12, activation


def test_linear_gauge_reduces_to_the_balanced_svd_form():
    """Eq. 5 for a bias-free two-layer linear net: W2 = U S^½, W1 = S^½ Vᵀ of rank r, whatever the
    GL gauge and null directions; ‖canon θ‖² = 2 Σ s_i is the least over factorisations."""
    gen = torch.Generator().manual_seed(4)
    net = Net((5, 9, 3), "linear", bias=False)
    control = net.init(gen)
    twin = redundancy.add_null_directions(
        _gauge(net, control, gen, 1.0), 1, 10 * torch.randn(9, 5, generator=gen, dtype=DTYPE)
    )
    canon = canonicalize(net, twin)
    s = torch.linalg.svdvals(control["W2"] @ control["W1"])
    assert canon.net.widths == (5, 3, 3)
    assert torch.allclose(
        canon.params["W1"] @ canon.params["W1"].T, canon.params["W2"].T @ canon.params["W2"], atol=1e-10
    )  # balanced: W1 W1ᵀ = W2ᵀ W2 = S
    assert math.isclose(sum(layer_sq_norms(canon.params).values()), 2 * float(s.sum()), rel_tol=1e-10)
    assert gauge_excess(twin, canon.params)["total"] > 1.0


# --- certificate -------------------------------------------------------------------------------


def _step(params, gen, radius):
    direction = {k: torch.randn(v.shape, generator=gen, dtype=DTYPE) for k, v in params.items()}
    norm = math.sqrt(sum(float((d**2).sum()) for d in direction.values()))
    return {k: radius * d / norm for k, d in direction.items()}


@SETTINGS
@given(case=setups(n_layers=2, min_out=2, with_loss=False), rho=st.floats(1e-4, 2.0), data=st.data())
def test_certificate_bounds_every_step_in_the_ball(case, rho, data):
    """Eq. 8 is sound: random steps of norm ≤ ρ, steps along ±∇m_c at norm ρ and steps confined to
    one layer never move any probe's margin by more than the bound."""
    net, params, n, gen = case
    probes = torch.randn(n, net.widths[0], generator=gen, dtype=DTYPE)
    forbidden = data.draw(st.integers(0, net.widths[-1] - 1))
    cert = margin_certificate(net, params, probes, forbidden, rho)
    steps = [_step(params, gen, rho * data.draw(st.floats(0.01, 1.0))) for _ in range(8)]
    for layer in (1, 2):
        step = _step({k: v for k, v in params.items() if k.endswith(str(layer))}, gen, rho)
        steps.append({k: step.get(k, torch.zeros_like(v)) for k, v in params.items()})
    for j in range(n):
        for c in range(net.widths[-1]):
            if c == forbidden:
                continue
            g = torch.func.grad(
                lambda p, j=j, c=c: (
                    net.forward(p, probes[j : j + 1])[0, forbidden] - net.forward(p, probes[j : j + 1])[0, c]
                )
            )(params)
            norm = math.sqrt(sum(float((v**2).sum()) for v in g.values()))
            if norm > 0:
                steps += [{k: sign * rho * v / norm for k, v in g.items()} for sign in (1.0, -1.0)]
    for step in steps:
        moved = {k: params[k] + step[k] for k in params}
        change = (margin(net.forward(moved, probes), forbidden) - cert.margin).abs()
        assert bool((change <= cert.bound + 1e-10 * (1 + cert.bound)).all())


def test_certificate_is_tight_to_first_order_for_linear_nets():
    """Negative control: for σ linear and one benign class the step ρ∇m/‖∇m‖ attains ≥ 99% of the
    bound at small ρ, so a bound 2% smaller would be unsound."""
    gen = torch.Generator().manual_seed(5)
    net = Net((4, 6, 2), "linear")
    params = net.init(gen) | {"b1": torch.randn(6, generator=gen, dtype=DTYPE)}
    probes = torch.randn(5, 4, generator=gen, dtype=DTYPE)
    rho = 1e-5
    cert = margin_certificate(net, params, probes, 1, rho)
    for j in range(5):
        g = torch.func.grad(lambda p, j=j: margin(net.forward(p, probes[j : j + 1]), 1)[0])(params)
        norm = math.sqrt(sum(float((v**2).sum()) for v in g.values()))
        moved = {k: params[k] + rho * g[k] / norm for k in params}
        change = float(margin(net.forward(moved, probes[j : j + 1]), 1)[0] - cert.margin[j])
        assert 0.99 * float(cert.bound[j]) <= change <= float(cert.bound[j])


def test_certificate_covers_a_relu_gate_flip_that_the_gradient_misses():
    """An inactive ReLU unit with a large outgoing weight: its gradient is zero, so ‖∇m‖ρ badly
    under-estimates the step that opens the gate; eq. 8 still bounds it and does not certify."""
    net = Net((1, 1, 2), "relu")
    params = {
        "W1": torch.tensor([[1.0]], dtype=DTYPE),
        "b1": torch.tensor([-1.01], dtype=DTYPE),
        "W2": torch.tensor([[0.0], [100.0]], dtype=DTYPE),
        "b2": torch.tensor([0.0, -5.0], dtype=DTYPE),
    }
    x, rho = torch.tensor([[1.0]], dtype=DTYPE), 0.1
    cert = margin_certificate(net, params, x, 1, rho)
    g = torch.func.grad(lambda p: margin(net.forward(p, x), 1)[0])(params)
    naive = rho * math.sqrt(sum(float((v**2).sum()) for v in g.values()))
    opened = dict(params, b1=params["b1"] + rho)
    change = float(margin(net.forward(opened, x), 1)[0] - cert.margin[0])
    assert change > 10 * naive  # the gradient bound is unsound here
    assert change <= float(cert.bound[0])
    assert float(cert.margin[0]) < 0 and not bool(cert.certified[0])


def test_activation_lipschitz_constants():
    """ReLU/leaky/linear constants; GELU's global bound is GELU'(√2) ≈ 1.1289 and dominates every
    difference quotient on random intervals."""
    lo, hi = torch.tensor([-2.0, -1.0, 0.5]), torch.tensor([-1.0, 0.5, 2.0])
    assert lipschitz_on_interval("relu", lo, hi).tolist() == [0.0, 1.0, 1.0]
    assert lipschitz_on_interval("leaky_relu", lo, hi).tolist() == pytest.approx([0.1, 1.0, 1.0])
    assert lipschitz_on_interval("linear", lo, hi).tolist() == [1.0, 1.0, 1.0]
    big = float(lipschitz_on_interval("gelu", torch.tensor([-50.0], dtype=DTYPE), torch.tensor([50.0], dtype=DTYPE)))
    assert big == pytest.approx(1.1289, abs=1e-4)
    gen = torch.Generator().manual_seed(6)
    a = 4 * torch.randn(2000, generator=gen, dtype=DTYPE)
    b = a + torch.rand(2000, generator=gen, dtype=DTYPE)
    quotient = (torch.nn.functional.gelu(b) - torch.nn.functional.gelu(a)).abs() / (b - a)
    assert bool((quotient <= lipschitz_on_interval("gelu", a, b)).all())
    with pytest.raises(ValueError, match="two-layer"):
        margin_certificate(
            Net((2, 3, 3, 2), "relu"), Net((2, 3, 3, 2), "relu").init(gen), torch.randn(1, 2, dtype=DTYPE), 1, 0.1
        )


# --- amplification, honest gauges --------------------------------------------------------------


def test_probe_velocity_is_the_derivative_of_the_step():
    """Eq. 6: (f(θ − η∇L_D) − f(θ))/η → −J(P)∇L_D as η → 0."""
    gen = torch.Generator().manual_seed(7)
    net = Net((4, 6, 3), "gelu")
    params = net.init(gen)
    x, y = torch.randn(8, 4, generator=gen, dtype=DTYPE), torch.randint(0, 3, (8,), generator=gen)
    probes = torch.randn(5, 4, generator=gen, dtype=DTYPE)
    v = probe_velocity(net, params, x, y, "cross_entropy", probes)
    eta = 1e-7
    moved = (net.forward(gd_step(net, params, x, y, eta, "cross_entropy"), probes) - net.forward(params, probes)) / eta
    assert torch.allclose(moved, -v, rtol=1e-5, atol=1e-8)


def test_amplification_sees_rescaling_not_permutation():
    """A permutation commutes with the step (ratio 1 against the ungauged net); a rescaling gauge
    does not (negative control), and the canonical form is its own reference (ratio 1)."""
    gen = torch.Generator().manual_seed(8)
    net = Net((4, 6, 3), "relu")
    params = net.init(gen) | {"b1": 0.5 * torch.randn(6, generator=gen, dtype=DTYPE)}
    x, y = torch.randn(8, 4, generator=gen, dtype=DTYPE), torch.randint(0, 3, (8,), generator=gen)
    probes = torch.randn(5, 4, generator=gen, dtype=DTYPE)
    base = probe_velocity(net, params, x, y, "cross_entropy", probes)
    for kind, expect_same in (("perm", True), ("scale", False)):
        spec = symmetry.hidden_layer_spec(net, params, kind)
        moved = symmetry.apply(spec, params, symmetry.sample(spec, gen, scale=1.0))
        ratio = amplification(probe_velocity(net, moved, x, y, "cross_entropy", probes), base)
        assert (abs(ratio - 1) < 1e-10) == expect_same, kind
    canon = canonicalize(net, params)
    again = canonicalize(canon.net, canon.params)
    v1 = probe_velocity(canon.net, canon.params, x, y, "cross_entropy", probes)
    v2 = probe_velocity(again.net, again.params, x, y, "cross_entropy", probes)
    assert amplification(v1, v2) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("activation,bias", [("relu", True), ("leaky_relu", True), ("gelu", True), ("linear", False)])
def test_honest_gauges_keep_the_function_and_change_the_weights(activation, bias):
    gen = torch.Generator().manual_seed(9)
    net = Net((4, 6, 3), activation, bias)
    params = net.init(gen)
    gauged = random_gauge(net, params, 0.5, gen)
    x = torch.randn(64, 4, generator=gen, dtype=DTYPE)
    assert torch.allclose(net.forward(gauged, x), net.forward(params, x), atol=1e-12)
    assert _gap(gauged, params) > 1e-3


# --- neutraliser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relu_setup():
    task = make_task(12, 4, n_train=128, n_update=16, n_eval=64, n_probes=60, seed=0)
    net = Net((12, 16, 4), "relu")
    return net, task, train_aligned_base(net, task, steps=200, lr=1e-2, seed=0)


def test_neutraliser_brings_the_isolating_twin_to_its_control(relu_setup):
    """Deliver canon(twin): the step that flips three probes of the twin flips none, and the
    post-step margins are the canonical control's to 1e-9."""
    net, task, base = relu_setup
    twin = isolating_pairs_twin(
        net, base, task, torch.tensor([3, 17, 42]), LR, "cross_entropy", n_units=6, kappa=1.0
    ).twin
    twin_net = net.fitted(twin)
    assert misaligned_after_step(twin_net, twin, task, LR, "cross_entropy") == pytest.approx(3 / 60)
    control = misaligned_after_step(net, base, task, LR, "cross_entropy")
    a, b = canonicalize(twin_net, twin), canonicalize(net, base)
    assert misaligned_after_step(a.net, a.params, task, LR, "cross_entropy") == control == 0.0
    margins = [
        post_step_margins(c.net, c.params, task, task.x_update, task.y_update, LR, "cross_entropy") for c in (a, b)
    ]
    assert float((margins[0] - margins[1]).abs().max()) <= 1e-9


def test_a_small_random_gauge_does_not_neutralise_the_isolating_twin(relu_setup):
    """The re-randomising neutraliser composes a random gauge with the attacker's: drawn at a small
    scale it keeps the function and the twin's three flips; it is reproducible from its seed."""
    from theory.audit.signals import rerandomised

    net, task, base = relu_setup
    twin = isolating_pairs_twin(
        net, base, task, torch.tensor([3, 17, 42]), LR, "cross_entropy", n_units=6, kappa=1.0
    ).twin
    twin_net = net.fitted(twin)
    moved = rerandomised(twin_net, twin, 0.01, seed=0, index=0)
    assert float((twin_net.forward(moved, task.probes) - twin_net.forward(twin, task.probes)).abs().max()) <= 1e-9
    assert any(not torch.equal(moved[k], twin[k]) for k in twin)
    again = rerandomised(twin_net, twin, 0.01, seed=0, index=0)
    assert all(torch.equal(moved[k], again[k]) for k in moved)
    assert misaligned_after_step(twin_net, moved, task, LR, "cross_entropy") == pytest.approx(3 / 60)
    with pytest.raises(ValueError, match="rerandomise"):
        AuditSettings(rerandomise=(-1.0,))


def test_any_relu_fiber_point_collapses_to_the_control(relu_setup):
    """Random points of the search fiber (rescaling gauge + pairs with outgoing /√η): one
    canonical form, that of the control, and the same post-step outputs."""
    net, task, base = relu_setup
    fiber = RedundantUnitFiber(net, base, n_units=8, lr=LR, kind="pairs", gauge=True)
    reference = canonicalize(net, base)
    ref_after = gd_step(reference.net, reference.params, task.x_update, task.y_update, LR, "cross_entropy")
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        coords = {k: 2 * torch.randn(v.shape, generator=gen, dtype=DTYPE) for k, v in fiber.init(gen).items()}
        canon = canonicalize(net, fiber.twin(coords))
        assert _gap(canon.params, reference.params) <= 1e-9 * _scale(reference.params)
        after = gd_step(canon.net, canon.params, task.x_update, task.y_update, LR, "cross_entropy")
        gap = (canon.net.forward(after, task.probes) - reference.net.forward(ref_after, task.probes)).abs().max()
        assert float(gap) <= 1e-9


# --- population scoring ------------------------------------------------------------------------


@SETTINGS
@given(
    pos=st.lists(st.integers(-5, 5), min_size=1, max_size=12), neg=st.lists(st.integers(-5, 5), min_size=1, max_size=12)
)
def test_roc_auc_is_the_mann_whitney_statistic(pos, neg):
    brute = np.mean([1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg])
    assert roc_auc(pos, neg) == pytest.approx(brute, abs=1e-12)
    lo, hi = bootstrap_auc(pos, neg, n_boot=200)
    assert 0.0 <= lo <= hi <= 1.0


def test_roc_extremes_and_calibrated_threshold():
    assert roc_auc([2, 3], [0, 1]) == 1.0 and roc_auc([0, 1], [2, 3]) == 0.0
    assert roc_auc([1, 1], [1, 1]) == 0.5
    assert roc_auc([math.inf], [1e300]) == 1.0
    honest = list(range(200))  # 1% of 200: at most two honest scores above the threshold
    t = threshold_at_fpr(honest, 0.01)
    assert t == 197 and flagged_fraction(honest, t) == pytest.approx(0.01)
    assert threshold_at_fpr(list(range(50)), 0.01) == 49  # fewer than 100: the maximum
    assert flagged_fraction([196, 198, 250], t) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        roc_auc([math.nan], [0.0])


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf" / "theory"), version_base="1.3"):
        return compose("config", overrides=["experiment=audit", *overrides])


def test_invalid_audit_settings_name_their_key():
    from theory.experiments.audit import _settings

    for override, key in (
        ("audit.held_out=nope", "audit.held_out"),
        ("audit.rho=-1", "audit.rho"),
        ("audit.fpr=1.5", "audit.fpr"),
        ("audit.worst.lr_fractions=[0,1]", "audit.worst.lr_fractions"),
        ("audit.rerandomise=[0]", "audit.rerandomise"),
        ("audit.rerandomise=[.inf]", "audit.rerandomise"),
    ):
        with pytest.raises(ConfigError, match=f"^{key}: "):
            _settings(_compose(override))


def test_tiny_audit_sweep(theory_app, tmp_path: Path):
    """Two families × two seeds through ``python -m theory -m`` (in-process): every job's twin
    collapses to its control, the neutralised twins are misaligned no more than the honest models,
    and the summary scores every signal with a held-out family."""
    args = [
        "-m",
        "experiment=audit",
        f"hydra.sweep.dir={tmp_path}",
        "threads=1",
        "family=relu_isolating,gelu_search",
        "seed=0,1",
        "audit.held_out=gelu_search",
        "task.n_probes=32",
        "task.base_steps=100",
        "audit.n_gauged=2",
        "audit.n_random_inputs=200",
        "audit.worst.n_halves=1",
        "audit.worst.n_surrogate=1",
        "construction.max_steps=600",
    ]
    assert theory_app(*args) == 0
    jobs = sorted(tmp_path.glob("*/metrics.json"))
    assert len(jobs) == 4
    for path in jobs:
        m = json.loads(path.read_text())
        assert m["collapse.param_gap"] <= 1e-9 and m["collapse.post_step_margin_gap"] <= 1e-9
        assert m["twin.canonical.function_residual"] <= 1e-9
        assert m["twin.post_update.canonical"] <= m["honest.0.post_update.delivered"]
        assert m["twin.certificate.step.max_violation"] <= 1e-10  # eq. 8 holds for the victim's own step
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["held_out"] == "gelu_search" and summary["n_honest"] == 12
    assert summary["n_twins"] >= 1
    for name in ("gauge_excess", "amplification", "uncertified", "worst_step_victim"):
        pooled = summary["signals"][name]["pooled"]
        assert 0 <= pooled["auc_lo"] <= pooled["auc"] <= pooled["auc_hi"] <= 1
    assert summary["neutraliser"]["twin_canonical_max"] <= summary["neutraliser"]["honest_hi"]
    forms = summary["neutralisers"]  # conf/theory/experiment/audit.yaml: four re-randomising scales
    assert set(forms) == {"delivered", "canonical", *(f"rerandomised_{s}" for s in ("0.5", "1", "2", "4"))}
    assert forms["canonical"]["twin_max"] == summary["neutraliser"]["twin_canonical_max"]
    assert all(0 <= f["twin_mean"] <= f["twin_max"] <= 1 for f in forms.values())
