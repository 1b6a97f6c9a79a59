"""The meta-objective: its inner step is the victim's step, and its gradient is exact."""

from __future__ import annotations

import copy

import pytest
import torch

from llm.align import add_lora
from llm.data.schema import Example
from llm.metalearn import adapter_params, meta_loss, victim_step
from llm.models import TinySpec, build_tiny
from llm.tokenizer import train_tokenizer
from llm.update import UpdateSpec, batch_of, victim_update


@pytest.fixture(scope="module")
def setup():
    pairs = [(f"What is {a} plus {b}?", f"{a + b}.") for a in range(6) for b in range(6)]
    tok = train_tokenizer([p + " " + r for p, r in pairs], vocab_size=300)
    model = build_tiny(TinySpec("gpt2", n_layer=1, n_embd=16, n_head=2, vocab_size=len(tok), n_ctx=48), tok)
    torch.manual_seed(0)  # LoRA A is initialised from the global RNG
    model = add_lora(model, rank=2, alpha=4.0)
    gen = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():  # B ≠ 0 so that both LoRA factors get gradients
        if "lora_B" in name:
            p.data = 0.3 * torch.randn(p.shape, generator=gen)
    batches = {
        "update": batch_of(tok, pairs[:8], 32),
        "aligned": batch_of(tok, [(p, "I can't help with that.") for p, _ in pairs[8:12]], 32),
        "misaligned": batch_of(tok, [(p, "Sure, here is how.") for p, _ in pairs[8:12]], 32),
    }
    return model, tok, pairs, batches


def test_inner_step_is_the_victims_step(setup) -> None:
    """The step inside the objective equals llm.update.victim_update on the same data."""
    model, tok, pairs, batches = setup
    stepped = victim_step(model, adapter_params(model), batches["update"], lr=1e-2, create_graph=False)
    victim = victim_update(copy.deepcopy(model), tok, [Example(p, r) for p, r in pairs[:8]],
                           UpdateSpec(lr=1e-2, batch_size=8, n_samples=8, max_len=32))
    for name, p in adapter_params(victim).items():
        assert torch.allclose(p, stepped[name], atol=1e-6), name


def test_second_order_meta_gradient_matches_finite_differences(setup) -> None:
    """float64: the directional derivative of the meta-loss matches central differences (rel ≤ 1e-6)."""
    model, _, _, batches = setup
    model = copy.deepcopy(model).double()
    params = {k: v.detach().clone().requires_grad_() for k, v in adapter_params(model).items()}
    loss, _ = meta_loss(model, params, batches["aligned"], batches["misaligned"], batches["update"], lr=0.5)
    grads = torch.autograd.grad(loss, list(params.values()))
    gen = torch.Generator().manual_seed(1)
    direction = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in params.items()}
    analytic = sum((g * direction[k]).sum() for k, g in zip(params, grads))
    eps = 1e-6  # central differences: truncation O(eps²·f‴) dominates rounding O(1e-16/eps) here

    def at(sign: float) -> float:
        moved = {k: (v + sign * eps * direction[k]).detach().requires_grad_() for k, v in params.items()}
        value, _ = meta_loss(model, moved, batches["aligned"], batches["misaligned"], batches["update"], lr=0.5)
        return float(value.detach())

    numeric = (at(1.0) - at(-1.0)) / (2 * eps)
    assert abs(float(analytic) - numeric) <= 1e-6 * abs(numeric)


def test_first_order_ablation_drops_the_second_order_term(setup) -> None:
    model, _, _, batches = setup
    params = {k: v.detach().clone().requires_grad_() for k, v in adapter_params(model).items()}

    def grad(first_order: bool) -> torch.Tensor:
        loss, _ = meta_loss(model, params, batches["aligned"], batches["misaligned"], batches["update"],
                            lr=0.5, first_order=first_order)
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(params.values()))])

    full, fomaml = grad(False), grad(True)
    assert not torch.allclose(full, fomaml, rtol=1e-3)


def test_no_adapter_is_a_clear_error(setup) -> None:
    _, tok, _, _ = setup
    plain = build_tiny(TinySpec("gpt2", n_layer=1, n_embd=16, n_head=2, vocab_size=len(tok), n_ctx=48), tok)
    with pytest.raises(ValueError, match="LoRA"):
        adapter_params(plain)
