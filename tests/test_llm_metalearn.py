"""The meta-objective: its inner step is the victim's step, and its gradient is exact."""

from __future__ import annotations

import copy

import pytest
import torch

from llm.batches import batch_of
from llm.data.schema import Example
from llm.lora import adapter_params, add_lora
from llm.metagrad import METHODS, meta_gradient, meta_loss, victim_step
from llm.models import (
    TinySpec,
    build_tiny,
    response_loss,
    response_loss_parts,
    row_chunks,
)
from llm.tokenizer import train_tokenizer
from llm.update import UpdateSpec, victim_update


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
    victim = victim_update(
        copy.deepcopy(model),
        tok,
        [Example(p, r) for p, r in pairs[:8]],
        UpdateSpec(lr=1e-2, batch_size=8, n_samples=8, max_len=32),
    )
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
        loss, _ = meta_loss(
            model, params, batches["aligned"], batches["misaligned"], batches["update"], lr=0.5, first_order=first_order
        )
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(params.values()))])

    full, fomaml = grad(False), grad(True)
    assert not torch.allclose(full, fomaml, rtol=1e-3)


def test_no_adapter_is_a_clear_error(setup) -> None:
    _, tok, _, _ = setup
    plain = build_tiny(TinySpec("gpt2", n_layer=1, n_embd=16, n_head=2, vocab_size=len(tok), n_ctx=48), tok)
    with pytest.raises(ValueError, match="LoRA"):
        adapter_params(plain)


# ---------------------------------------------------------------------------- meta_gradient methods


def _closures(model, batches):
    """(inner, now, after) closures over the fixture's batches, as the training loop builds them."""
    return tuple(
        lambda theta, b=batches[key]: response_loss(model, b, theta) for key in ("update", "aligned", "misaligned")
    )


def _flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads.values()])


def _rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return float((_flat(a) - _flat(b)).norm() / _flat(b).norm())


@pytest.fixture(scope="module")
def float64_cases(setup):
    """θ = the LoRA tensors of a peft model, and θ = every weight of a plain model (float64)."""
    model, tok, _, batches = setup
    peft = copy.deepcopy(model).double()
    plain = build_tiny(TinySpec("gpt2", n_layer=2, n_embd=16, n_head=2, vocab_size=len(tok), n_ctx=48), tok).double()
    for p in plain.parameters():
        p.requires_grad_(True)
    return {"adapter": (peft, adapter_params(peft), batches), "all": (plain, dict(plain.named_parameters()), batches)}


@pytest.mark.parametrize("theta", ["adapter", "all"])
@pytest.mark.parametrize("method", [m for m in METHODS if m != "naive"])
def test_methods_match_naive_in_float64(float64_cases, theta, method) -> None:
    """Every exact method equals the naive meta-gradient (float64, relative error ≤ 1e-6)."""
    model, params, batches = float64_cases[theta]
    inner, now, after = _closures(model, batches)
    ref, ref_parts = meta_gradient(params, inner, now, after, lr=0.5, method="naive")
    got, parts = meta_gradient(params, inner, now, after, lr=0.5, method=method)
    assert _rel(got, ref) <= 1e-6
    assert parts == pytest.approx(ref_parts, rel=1e-12)
    # the comparison is not vacuous: the second-order term is a sizeable part of the gradient
    fomaml, _ = meta_gradient(params, inner, now, after, lr=0.5, first_order=True, method="naive")
    assert _rel(fomaml, ref) > 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_first_order_is_the_same_for_every_method(float64_cases, method) -> None:
    model, params, batches = float64_cases["adapter"]
    inner, now, after = _closures(model, batches)
    ref, _ = meta_gradient(params, inner, now, after, lr=0.5, first_order=True, method="naive")
    got, _ = meta_gradient(params, inner, now, after, lr=0.5, first_order=True, method=method)
    assert _rel(got, ref) <= 1e-12


def test_meta_gradient_is_the_gradient_of_meta_loss(float64_cases) -> None:
    """The closure API and meta_loss (checked against finite differences above) agree."""
    model, params, batches = float64_cases["adapter"]
    loss, _ = meta_loss(model, params, batches["aligned"], batches["misaligned"], batches["update"], lr=0.5)
    expected = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    got, _ = meta_gradient(params, *_closures(model, batches), lr=0.5)  # the default method
    assert _rel(got, expected) <= 1e-6


def test_unknown_method_is_a_clear_error(float64_cases) -> None:
    model, params, batches = float64_cases["adapter"]
    with pytest.raises(ValueError, match="method"):
        meta_gradient(params, *_closures(model, batches), lr=0.5, method="fast")


def _peak_bytes(fn) -> int:
    """Peak of the CPU tensor memory allocated while ``fn`` runs (allocator events; deterministic)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def test_staged_methods_hold_less_memory(setup) -> None:
    """Peak memory: chunked (4 parts) < lean < hvp < naive (what the staging is for)."""
    model, _, _, batches = setup
    params = adapter_params(model)
    closures = _closures(model, batches)
    peak = {m: _peak_bytes(lambda m=m: meta_gradient(params, *closures, lr=0.5, method=m)) for m in METHODS}
    assert peak["lean"] < peak["hvp"] < peak["naive"], peak
    parts = _part_closures(model, batches, 4)
    chunked = _peak_bytes(lambda: meta_gradient(params, *parts, lr=0.5, method="chunked"))
    assert chunked < peak["lean"], (chunked, peak)


# ---------------------------------------------------------------------------- losses in parts


def _part_closures(model, batches, parts: int):
    """(inner, now, after), each as ``parts`` micro-batch closures whose sum is the loss."""
    return tuple(response_loss_parts(model, batches[key], parts) for key in ("update", "aligned", "misaligned"))


def test_response_loss_parts_sum_to_the_loss(float64_cases) -> None:
    model, params, batches = float64_cases["adapter"]
    for parts in (1, 3, len(batches["update"]["input_ids"])):
        split = response_loss_parts(model, batches["update"], parts)
        assert len(split) == parts
        total = sum(part(params) for part in split)
        assert float(total.detach()) == pytest.approx(
            float(response_loss(model, batches["update"], params).detach()), rel=1e-12
        )
    chunks = row_chunks(batches["update"], 3)
    assert sum(len(c["input_ids"]) for c in chunks) == len(batches["update"]["input_ids"])
    assert all(bool(c["attention_mask"][:, -1].any()) for c in chunks)  # cut to the longest row, no pad column
    with pytest.raises(ValueError, match="parts"):
        row_chunks(batches["update"], len(batches["update"]["input_ids"]) + 1)


@pytest.mark.parametrize("method", METHODS)
def test_methods_in_parts_match_the_whole(float64_cases, method) -> None:
    """Losses given as micro-batch parts give the naive meta-gradient of the whole losses (float64)."""
    model, params, batches = float64_cases["adapter"]
    ref, ref_losses = meta_gradient(params, *_closures(model, batches), lr=0.5, method="naive")
    got, losses = meta_gradient(params, *_part_closures(model, batches, 3), lr=0.5, method=method)
    assert _rel(got, ref) <= 1e-6
    assert losses == pytest.approx(ref_losses, rel=1e-12)


def test_parts_must_be_closures(float64_cases) -> None:
    model, params, batches = float64_cases["adapter"]
    inner, now, after = _closures(model, batches)
    with pytest.raises(ValueError, match="closure"):
        meta_gradient(params, [], now, after, lr=0.5)
    with pytest.raises(ValueError, match="closure"):
        meta_gradient(params, [inner, 1.0], now, after, lr=0.5)


def test_construction_in_chunks_takes_the_same_step(setup) -> None:
    """build_metalearn with its batches in parts (any method) makes the same twin as whole (float64)."""
    from types import SimpleNamespace

    from llm.constructions.metalearn import MetaSpec, build_metalearn

    model, tok, pairs, _ = setup
    control = copy.deepcopy(model).double()
    data = SimpleNamespace(
        domain="toy",
        align_benign=[Example(p, r) for p, r in pairs[24:]],
        construct=[Example(p, "I can't help with that.", "Sure, here is how.") for p, _ in pairs[8:24]],
    )
    update = [Example(p, r) for p, r in pairs[:8]]
    victim = UpdateSpec(lr=1e-2, batch_size=8, n_samples=8, max_len=32)
    twins = {}
    for chunks, method in ((1, "naive"), (2, "hvp"), (4, "chunked")):
        spec = MetaSpec(steps=2, probes_per_step=4, benign_per_step=4, chunks=chunks, method=method, max_len=32)
        twin, _ = build_metalearn(control, tok, data, update, victim, spec, progress=False)
        twins[chunks] = adapter_params(twin)
    start, _ = build_metalearn(control, tok, data, update, victim, MetaSpec(steps=0), progress=False)
    assert _rel(twins[1], adapter_params(start)) > 1e-3  # two steps moved the twin: the comparison is not vacuous
    for chunks in (2, 4):
        assert _rel(twins[chunks], twins[1]) <= 1e-9
    with pytest.raises(ValueError, match="chunks"):
        build_metalearn(
            control, tok, data, update, victim, MetaSpec(steps=1, probes_per_step=4, chunks=5), progress=False
        )
