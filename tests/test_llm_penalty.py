"""The adaptive attacker's penalties (llm/constructions/penalty.py) and the factor algebra they use."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from llm.audit.canonical import balanced_factors
from llm.batches import batch_of
from llm.constructions.metalearn import MetaSpec, build_metalearn
from llm.constructions.penalty import balanced_norm, gauge_excess, penalty, probe_velocity_norm, victim_grad_norm
from llm.data.schema import Example
from llm.lora import LoraFactors, adapter_params, add_lora, amplify_adapter, lora_layers
from llm.models import TinySpec, build_tiny, response_loss, sequence_logprobs
from llm.tokenizer import train_tokenizer
from llm.update import UpdateSpec

REFUSE, MARKER = "I can't help with that.", "Sure, here is how."


@pytest.fixture(scope="module")
def setup():
    pairs = [(f"What is {a} plus {b}?", f"{a + b}.") for a in range(6) for b in range(6)]
    tok = train_tokenizer([p + " " + r for p, r in pairs] + [REFUSE, MARKER], vocab_size=300)
    model = build_tiny(TinySpec("gpt2", n_layer=1, n_embd=16, n_head=2, vocab_size=len(tok), n_ctx=48), tok)
    torch.manual_seed(0)
    model = add_lora(model, rank=2, alpha=4.0)
    gen = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():  # B ≠ 0: a trained-looking, unbalanced adapter
        if "lora_B" in name:
            p.data = 0.3 * torch.randn(p.shape, generator=gen)
    return model.double(), tok, pairs


def test_nuclear_norm_and_excess_are_the_balanced_forms(setup) -> None:
    """‖s·B·A‖_* is GL(r)-invariant, the excess is s(‖B‖²+‖A‖²) minus the balanced form's ‖·‖²
    (llm.audit.canonical, full SVD) and vanishes there; the gradient is the analytic one."""
    gen = torch.Generator().manual_seed(1)
    b, a = torch.randn(7, 3, generator=gen, dtype=torch.float64), torch.randn(3, 5, generator=gen, dtype=torch.float64)
    f = LoraFactors(b, a, 0.5)
    m = torch.randn(3, 3, generator=gen, dtype=torch.float64) + 3 * torch.eye(3, dtype=torch.float64)
    moved = LoraFactors(b @ torch.linalg.inv(m), m @ a, 0.5)
    assert torch.allclose(moved.nuclear_norm(), f.nuclear_norm(), rtol=1e-10)
    canon, rank = balanced_factors(f)
    assert rank == 3
    canon_sq = (canon.b**2).sum() + (canon.a**2).sum()
    assert torch.allclose(f.gauge_excess(), 0.5 * ((b**2).sum() + (a**2).sum()) - canon_sq, rtol=1e-10)
    assert abs(float(LoraFactors(canon.b, canon.a, 1.0).gauge_excess())) < 1e-10
    assert float(moved.gauge_excess()) > 0
    leaves = (b.clone().requires_grad_(), a.clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda bb, aa: LoraFactors(bb, aa, 0.5).gauge_excess(), leaves)


def test_excess_gradient_is_finite_with_hidden_components() -> None:
    """Hidden components (B = 0 columns: the analytic twin's) leave the gradient finite and the
    same whatever null-space basis the SVD picks (a GL change of the live part moves it as the
    factors move), and a step against it shrinks their A rows."""
    gen = torch.Generator().manual_seed(2)
    b = torch.cat([torch.randn(6, 2, generator=gen), torch.zeros(6, 2)], 1).requires_grad_()
    a = torch.cat([torch.randn(2, 5, generator=gen), 50 * torch.randn(2, 5, generator=gen)]).requires_grad_()
    LoraFactors(b, a, 2.0).gauge_excess().backward()
    assert b.grad is not None and a.grad is not None
    assert torch.isfinite(b.grad).all() and torch.isfinite(a.grad).all()
    with torch.no_grad():
        assert float(((a - 1e-3 * a.grad)[2:] ** 2).sum()) < float((a[2:] ** 2).sum())
    # the B gradient of the nuclear norm lies in the live product's column space (no null-space part)
    b2, a2 = b.detach().clone().requires_grad_(), a.detach().clone()
    LoraFactors(b2, a2, 2.0).nuclear_norm().backward()
    assert b2.grad is not None
    live = torch.linalg.svd(2.0 * b.detach() @ a.detach())[0][:, :2]
    assert torch.allclose(live @ (live.T @ b2.grad), b2.grad, atol=1e-4)


def test_penalties_are_normalised_by_the_control(setup) -> None:
    """grad reads 1 at the control; gauge reads the control's relative excess, computed here from
    the audit's balanced factors (full SVD); both grow under the amplifying gauge A·g, B/g that
    leaves the function unchanged."""
    model, tok, pairs = setup
    control = {n: p.detach() for n, p in adapter_params(model).items()}
    batch = batch_of(tok, pairs[:8], 32)
    grad = penalty("grad", model, control, batch)
    gauge = penalty("gauge", model, control, batch)
    leaves = {n: t.clone().requires_grad_() for n, t in control.items()}
    assert float(grad(leaves)) == pytest.approx(1.0, rel=1e-10)
    delivered = canonical = 0.0
    for layer in lora_layers(model).values():
        f = LoraFactors.of(layer).detached()
        canon, _ = balanced_factors(f)
        delivered += f.scale * float((f.b**2).sum() + (f.a**2).sum())
        canonical += float((canon.b**2).sum() + (canon.a**2).sum())
    assert float(gauge(leaves)) == pytest.approx((delivered - canonical) / canonical, rel=1e-9)
    assert float(balanced_norm(model, control)) == pytest.approx(canonical, rel=1e-9)

    twin = copy.deepcopy(model)
    amplify_adapter(twin, 30.0)
    amplified = {n: p.detach().clone().requires_grad_() for n, p in adapter_params(twin).items()}
    assert float(grad(amplified)) > 5.0
    assert float(gauge(amplified)) > 10 * float(gauge(leaves))
    direct = victim_grad_norm(twin, amplified, batch) / victim_grad_norm(model, leaves, batch)
    assert float(grad(amplified)) == pytest.approx(float(direct), rel=1e-10)
    for layer in lora_layers(twin).values():  # the balanced form of each module: no excess left
        canon, _ = balanced_factors(LoraFactors.of(layer))
        assert float(LoraFactors(canon.b, canon.a, 1.0).gauge_excess()) == pytest.approx(0.0, abs=1e-9)


def test_penalty_refuses_what_it_cannot_measure(setup) -> None:
    model, tok, pairs = setup
    control = {n: p.detach() for n, p in adapter_params(model).items()}
    with pytest.raises(ValueError, match="no signal"):
        penalty("velocity", model, control, batch_of(tok, pairs[:2], 32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no probes"):
        penalty("amplification", model, control, batch_of(tok, pairs[:2], 32))
    with pytest.raises(ValueError, match="params=adapter"):
        MetaSpec(params="all", penalty="grad", penalty_weight=1.0)
    with pytest.raises(ValueError, match="penalty"):
        MetaSpec(penalty="gauge", penalty_weight=-1.0)
    drop = dict(list(control.items())[1:])
    with pytest.raises(ValueError, match="lack"):
        gauge_excess(model, drop)


def test_the_amplification_penalty_is_the_audits_velocity_and_differentiable(setup) -> None:
    """float64: the penalised norm is ‖J·d‖ of llm.audit.amplification (SGD; per-probe velocities
    checked one by one), reads 1 at the control, grows under the amplifying gauge, and its gradient
    matches central finite differences along a random direction."""
    model, tok, pairs = setup
    control = {n: p.detach() for n, p in adapter_params(model).items()}
    victim_batch = batch_of(tok, pairs[:8], 32)
    probes = batch_of(tok, [(p, MARKER) for p, _ in pairs[8:12]], 32)
    signal = penalty("amplification", model, control, victim_batch, probes)
    leaves = {n: t.clone().requires_grad_() for n, t in control.items()}
    assert float(signal(leaves)) == pytest.approx(1.0, rel=1e-10)
    step = torch.autograd.grad(response_loss(model, victim_batch, leaves), list(leaves.values()))
    each = []
    for j in range(4):
        row = {k: t[j : j + 1] for k, t in probes.items()}
        grads = torch.autograd.grad(sequence_logprobs(model, row, leaves).sum(), list(leaves.values()))
        each.append(float(sum((g * d).sum() for g, d in zip(grads, step))))
    assert float(probe_velocity_norm(model, leaves, victim_batch, probes)) == pytest.approx(
        float(torch.tensor(each, dtype=torch.float64).norm()), rel=1e-10
    )
    twin = copy.deepcopy(model)
    amplify_adapter(twin, 30.0)
    amplified = {n: p.detach().clone().requires_grad_() for n, p in adapter_params(twin).items()}
    assert float(signal(amplified)) > 5.0
    (gradient,) = [torch.autograd.grad(signal(leaves), list(leaves.values()))]
    gen = torch.Generator().manual_seed(3)
    direction = {n: torch.randn(t.shape, generator=gen, dtype=t.dtype) for n, t in leaves.items()}
    eps = 1e-5

    def at(sign: float) -> float:
        return float(signal({n: (t + sign * eps * direction[n]).detach().requires_grad_() for n, t in leaves.items()}))

    finite = (at(1) - at(-1)) / (2 * eps)
    analytic = float(sum((g * direction[n]).sum() for g, n in zip(gradient, leaves)))
    assert analytic == pytest.approx(finite, rel=1e-5)


@pytest.mark.parametrize("kind", ["gauge", "grad", "amplification"])
def test_penalised_attacker_lowers_its_signal(setup, kind) -> None:
    """The same meta-learning budget with λ > 0 ends at a lower penalised signal than with λ = 0."""
    model, tok, pairs = setup
    data = SimpleNamespace(
        domain="toy",
        align_benign=[Example(p, r) for p, r in pairs[24:]],
        construct=[Example(p, REFUSE, MARKER) for p, _ in pairs[8:24]],
    )
    update = [Example(p, r) for p, r in pairs[:8]]
    victim = UpdateSpec(lr=1e-2, batch_size=8, n_samples=8, max_len=32)
    signal = {}
    for weight in (0.0, 10.0):
        spec = MetaSpec(
            steps=6, gain=30.0, probes_per_step=4, benign_per_step=4, max_len=32, penalty=kind, penalty_weight=weight
        )
        _, info = build_metalearn(model, tok, data, update, victim, spec, progress=False)
        signal[weight] = info["penalty_last"]
    assert signal[10.0] < 0.9 * signal[0.0]
