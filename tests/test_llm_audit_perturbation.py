"""llm.audit.perturbation: the bound on a margin's change holds for every adapter step tried in its
ball (random, the margin's gradient, projected gradient ascent on |Δm|), on GPT-2, Llama and a
grouped-query Llama; it shrinks linearly with the ball; its activation constants bound the slopes;
the certified radius is the largest certified ball; models it does not cover are refused."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from llm.audit.certificate import certified_radius
from llm.audit.perturbation import GELU_LIPSCHITZ, SILU_LIPSCHITZ, Net, check_supported, float64_view
from llm.batches import batch_of
from llm.models import sequence_logprobs
from tests.test_llm_analytic import domain_data, tiny, tok  # noqa: F401  (tok is a fixture)
from tests.test_llm_gauges import gqa_llama, tiny_llama

MODELS = {
    "gpt2": lambda tok: tiny(tok),
    "llama": lambda tok: tiny_llama(tok, lora=True),
    "gqa_llama": lambda tok: gqa_llama(tok, lora=True),
}


def _bound(model, tok, example):
    """The probe's margin bound as a function of ``ρ``."""
    net = Net(model)
    sequences = tuple(net.sequence(tok, example.prompt, r, 32) for r in (example.aligned, example.misaligned))
    return partial(net.margin_bound, sequences)


def _margin(model, tok, example, params=None) -> torch.Tensor:
    aligned, target = (batch_of(tok, [(example.prompt, r)], 32) for r in (example.aligned, example.misaligned))
    return (sequence_logprobs(model, aligned, params) - sequence_logprobs(model, target, params))[0]


def _norm(d: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((v**2).sum()) for v in d.values()))


def _largest_change(model, tok, example, rho: float, seed: int) -> float:
    """The largest ``|Δm|`` found over steps of norm ``rho`` of the adapter: random directions, ±
    the margin's gradient, and 15 steps of projected gradient ascent on ``|Δm|`` from each sign."""
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    m0 = _margin(model, tok, example).detach()
    gen = torch.Generator().manual_seed(seed)
    directions = [{n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in lora.items()} for _ in range(4)]
    directions.append(dict(zip(lora, torch.autograd.grad(_margin(model, tok, example), list(lora.values())))))

    def change(step):
        return float(_margin(model, tok, example, {n: p.detach() + step[n] for n, p in lora.items()}) - m0)

    worst = 0.0
    with torch.no_grad():
        for d in directions:
            for sign in (1.0, -1.0):
                worst = max(worst, abs(change({n: sign * rho * v / _norm(d) for n, v in d.items()})))
    for sign in (1.0, -1.0):
        step = {n: sign * rho * v / _norm(directions[-1]) for n, v in directions[-1].items()}
        for _ in range(15):
            leaves = {n: v.clone().requires_grad_() for n, v in step.items()}
            value = _margin(model, tok, example, {n: p.detach() + leaves[n] for n, p in lora.items()}) - m0
            grads = dict(zip(leaves, torch.autograd.grad(sign * value, list(leaves.values()))))
            with torch.no_grad():
                moved = {n: step[n] + 0.5 * rho * grads[n] / (_norm(grads) + 1e-300) for n in step}
                step = {n: v * min(1.0, rho / _norm(moved)) for n, v in moved.items()}
            worst = max(worst, abs(float(value.detach())))
    return worst


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_no_step_in_the_ball_moves_a_margin_further_than_the_bound(tok, arch: str) -> None:
    model = float64_view(MODELS[arch](tok))
    for i, example in enumerate(domain_data().eval[:2]):
        bound_at = _bound(model, tok, example)
        for rho in (1e-4, 1e-2, 0.3):
            bound = bound_at(rho)
            found = _largest_change(model, tok, example, rho, seed=i)
            assert 0 < found <= bound, (arch, rho, found, bound)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_bound_shrinks_linearly_with_the_ball(tok, arch: str) -> None:
    """Each map's bound is ``O(ρ)`` for small ``ρ``: the bound per unit radius converges."""
    model = float64_view(MODELS[arch](tok))
    example = domain_data().eval[0]
    bound = _bound(model, tok, example)
    small, smaller = bound(1e-13) / 1e-13, bound(1e-14) / 1e-14
    assert 0 < smaller <= small and small == pytest.approx(smaller, rel=0.05)


def test_the_activation_constants_bound_their_slopes() -> None:
    z = torch.linspace(-12, 12, 240_001, dtype=torch.float64, requires_grad=True)
    for fn, constant in (
        (torch.nn.functional.gelu, GELU_LIPSCHITZ),
        (partial(torch.nn.functional.gelu, approximate="tanh"), GELU_LIPSCHITZ),
        (torch.nn.functional.silu, SILU_LIPSCHITZ),
    ):
        (slope,) = torch.autograd.grad(fn(z).sum(), z)
        assert float(slope.abs().max()) < constant - 1e-4  # grid step 1e-4, |σ''| ≤ 1 there


def test_the_certified_radius_is_the_largest_certified_ball() -> None:
    assert certified_radius(lambda r: 1e3 * r, 1.0) == pytest.approx(1e-3, rel=0.011)
    assert certified_radius(lambda r: 1e3 * r, 1.0) <= 1e-3
    assert certified_radius(lambda r: 1e3 * r + 2.0, 1.0) == 0.0  # not even the smallest ball
    assert certified_radius(lambda r: 1e3 * r, -1.0) == 0.0  # already misaligned
    assert certified_radius(lambda r: r, 5.0) == 1.0  # the largest ball searched


def test_models_the_bound_does_not_cover_are_refused_by_name(tok) -> None:
    with pytest.raises(ValueError, match="model_type gpt2 and llama, not 'qwen2'"):
        check_supported(gqa_llama(tok, lora=True, family="qwen2"))
    model = tiny(tok)
    model.config.activation_function = "relu"
    with pytest.raises(ValueError, match="activations"):
        check_supported(model)
