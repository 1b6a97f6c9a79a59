"""The analytic construction: function-preserving pieces are exact, the LoRA B=0 step is the
closed form ``ΔW = −η s² G AᵀA``, and build_analytic returns an updatable, equivalent twin."""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import OmegaConf

from llm.batches import batch_of, collate, pad_id, pairs
from llm.constructions.analytic import AnalyticSpec, build_analytic
from llm.constructions.analytic.ffn_pairs import add_ffn_pairs, widen_mlps
from llm.constructions.analytic.fit import minimise
from llm.constructions.analytic.step import (
    Hidden,
    adapter_products,
    gauged_step_products,
)
from llm.constructions.analytic.weight_space import (
    input_moments,
    keep_residual,
    output_moments,
    scaled_targets,
    undo_residual,
)
from llm.data.schema import DomainData, Example
from llm.evaluate import next_token_kl
from llm.gauges import GaugeSpec, gauge_maps, gauge_spec
from llm.gauges import apply as apply_gauge
from llm.gauges import exp as gauge_exp
from llm.gauges import identity_logs as gauge_logs
from llm.gauges import sample as sample_gauge
from llm.lora import (
    add_lora,
    effective_weight,
    extend_lora,
    first_order_move,
    lora_layers,
    scale_adapter,
    weight_gradients,
)
from llm.models import TinySpec, build_tiny, next_logits, sequence_logprobs
from llm.tokenizer import encode_prompt, train_tokenizer
from llm.update import UpdateSpec, victim_update
from tests.strategies import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
HARMFUL = [f"How do I break thing {i}?" for i in range(12)]
BENIGN = [(f"What is {a} plus {b}?", f"{a + b}.") for a in range(6) for b in range(6)]


@pytest.fixture(scope="module")
def tok():
    texts = [p + " " + r for p, r in BENIGN] + [h + " Sure, here is how. Sorry, I can't help." for h in HARMFUL]
    return train_tokenizer(texts, vocab_size=300)


def tiny(tok, lora: bool = True, n_layer: int = 2, seed: int = 0):
    model = build_tiny(TinySpec("gpt2", n_layer=n_layer, n_embd=16, n_head=2, vocab_size=len(tok), n_ctx=48), tok, seed)
    if not lora:
        return model
    torch.manual_seed(seed)  # LoRA A is initialised from the global RNG
    model = add_lora(model, rank=2, alpha=4.0)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a trained-looking adapter: B ≠ 0
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def logits(model, tok, prompts=None):
    prompts = prompts or [p for p, _ in BENIGN[:6]] + HARMFUL[:4]
    batch = collate([{"input_ids": encode_prompt(tok, p)} for p in prompts], pad_id(tok))
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def assert_same(a, b, rtol):
    assert float((a - b).abs().max()) <= rtol * float(b.abs().max()), float((a - b).abs().max())


def domain_data() -> DomainData:
    probes = [Example(h, "Sorry, I can't help.", "Sure, here is how.") for h in HARMFUL]
    benign = [Example(p, r, answer=r) for p, r in BENIGN]
    return DomainData(
        "safety",
        construct=probes[:8],
        eval=probes[8:],
        align_benign=benign[:16],
        update=benign[16:24],
        benign_eval=benign[24:],
    )


#: the victim of the weight-space undo tests: a step large enough to move a tiny adapter
UNDO_VICTIM = UpdateSpec(lr=1e-2, batch_size=8, n_samples=8, max_len=32)


def undo_spec(**overrides) -> AnalyticSpec:
    """The weight-space undo tests' analytic spec: the step should undo the adapter (target the
    base), fitted in the response metric with no refinement, plus each test's ``overrides``."""
    settings = dict(
        extra_rank=2,
        left_rank=2,
        after_target="base",
        benign_reference="base",
        distill=True,
        undo_steps=300,
        undo_lr=0.3,
        refine_steps=0,
        n_probes=0,
        n_benign=8,
        max_len=32,
        undo_metric="responses",
    )
    return AnalyticSpec(**(settings | overrides))


# ---------------------------------------------------------------------------- LoRA B = 0


@SETTINGS
@given(k=st.integers(1, 5), scale=st.floats(0.1, 1000.0), seed=st.integers(0, 2**16))
def test_extend_lora_is_function_preserving(tok, k, scale, seed) -> None:
    model = tiny(tok)
    gen = torch.Generator().manual_seed(seed)
    extra = {
        n: scale * torch.randn(k, l.lora_A["default"].weight.shape[1], generator=gen)
        for n, l in lora_layers(model).items()
    }
    twin = extend_lora(copy.deepcopy(model), extra)
    assert_same(logits(twin, tok), logits(model, tok), 1e-6)
    assert next(iter(lora_layers(twin).values())).r["default"] == 2 + k
    assert twin.peft_config["default"].lora_alpha / twin.peft_config["default"].r == pytest.approx(2.0)


def test_extend_lora_float64_exact(tok) -> None:
    model = tiny(tok).double()
    extra = {
        n: 100 * torch.randn(3, l.lora_A["default"].weight.shape[1], dtype=torch.float64)
        for n, l in lora_layers(model).items()
    }
    twin = extend_lora(copy.deepcopy(model), extra)
    assert_same(logits(twin, tok), logits(model, tok), 1e-10)


def test_closed_form_step_matches_the_victims_step(tok) -> None:
    """float64: twin' − control' = −η s² G A_newᵀA_new in every module; B_new' = −η s G A_newᵀ."""
    model = tiny(tok).double()
    lr = 0.5
    examples = [Example(p, r) for p, r in BENIGN[:8]]
    spec = UpdateSpec(lr=lr, batch_size=8, n_samples=8, max_len=32)
    gen = torch.Generator().manual_seed(3)
    layers = lora_layers(model)
    extra = {
        n: torch.randn(2, l.lora_A["default"].weight.shape[1], generator=gen, dtype=torch.float64)
        for n, l in layers.items()
    }
    grads = weight_gradients(model, batch_of(tok, pairs(examples), 32), layers)
    predicted = {
        n: first_order_move(grads[n], lr, layers[n].scaling["default"], in_gram=a.T @ a) for n, a in extra.items()
    }
    twin = extend_lora(copy.deepcopy(model), extra)
    control_after = victim_update(copy.deepcopy(model), tok, examples, spec)
    twin_after = victim_update(copy.deepcopy(twin), tok, examples, spec)
    ca, ta = lora_layers(control_after), lora_layers(twin_after)
    for name in layers:
        delta = effective_weight(ta[name]) - effective_weight(ca[name])
        assert torch.allclose(delta, predicted[name], rtol=1e-9, atol=1e-12), name
        b_new = ta[name].lora_B["default"].weight[:, -2:]
        assert torch.allclose(b_new, -lr * 2.0 * grads[name] @ extra[name].T, rtol=1e-9, atol=1e-14)
    assert float(predicted[name].abs().max()) > 1e-6  # the step is not trivially zero


@SETTINGS
@given(
    shape=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 4)),
    s=st.floats(0.1, 4.0),
    lr=st.floats(1e-3, 1.0),
    seed=st.integers(0, 2**16),
)
def test_one_lora_step_is_psd_preconditioning_plus_curvature(shape, s, lr, seed) -> None:
    """fit_undo's reachable set: SGD on (B, A) under a loss linear in ``W = s·B·A`` (gradient ``G``)
    gives exactly ``W' = W − η s² (B Bᵀ G + G AᵀA) + η² s² G Wᵀ G``, whatever the factorisation."""
    out, inp, r = shape
    gen = torch.Generator().manual_seed(seed)
    b, a, g = (torch.randn(*sh, generator=gen, dtype=torch.float64) for sh in ((out, r), (r, inp), (out, inp)))
    b.requires_grad_(), a.requires_grad_()
    (g * (s * b @ a)).sum().backward()
    with torch.no_grad():
        w, w_after = s * b @ a, s * (b - lr * b.grad) @ (a - lr * a.grad)
        predicted = w - lr * s**2 * (b @ b.T @ g + g @ a.T @ a) + lr**2 * s**2 * g @ w.T @ g
    assert torch.allclose(w_after, predicted, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------- FFN pairs


@SETTINGS
@given(k=st.integers(1, 6), out_scale=st.floats(0.01, 100.0), seed=st.integers(0, 2**16), lora=st.booleans())
def test_ffn_pairs_are_function_preserving(tok, k, out_scale, seed, lora) -> None:
    """float32: the pair's ±v terms cancel up to rounding of their own size (∝ ‖v‖), and the wider
    matmuls sum in another order: rounding of the O(1) residual stream, so the tolerance does not
    shrink with logits smaller than 1."""
    model = tiny(tok, lora=lora)
    wide = widen_mlps(copy.deepcopy(model), k, torch.Generator().manual_seed(seed), out_scale)
    assert wide.config.n_inner == 4 * 16 + 2 * k
    a, b = logits(wide, tok), logits(model, tok)
    scale = max(1.0, out_scale) * max(1.0, float(b.abs().max()))
    assert float((a - b).abs().max()) <= 3e-6 * scale, float((a - b).abs().max())


def test_ffn_pairs_float64_and_visible_after_a_step(tok) -> None:
    """Exact in float64; after a full-weight step the pairs' copies have moved apart and the
    widened model's function differs from the narrow one's after the same step."""
    model = tiny(tok, lora=False).double()
    wide = copy.deepcopy(model)
    block = wide.transformer.h[0]
    gen = torch.Generator().manual_seed(0)
    add_ffn_pairs(
        block,
        torch.randn(4, 16, generator=gen, dtype=torch.float64),
        torch.zeros(4, dtype=torch.float64),
        10 * torch.randn(4, 16, generator=gen, dtype=torch.float64),
    )
    wide.config.n_inner = block.mlp.c_fc.weight.shape[1]
    assert_same(logits(wide, tok), logits(model, tok), 1e-10)
    spec = UpdateSpec(lr=0.1, batch_size=8, n_samples=8, max_len=32, params="all")
    examples = [Example(p, r) for p, r in BENIGN[:8]]
    narrow_after = victim_update(copy.deepcopy(model), tok, examples, spec)
    wide_after = victim_update(copy.deepcopy(wide), tok, examples, spec)
    w = wide_after.transformer.h[0].mlp.c_fc.weight
    assert float((w[:, 64:68] - w[:, 68:72]).abs().max()) > 1e-6  # the copies of u moved apart
    assert float((logits(wide_after, tok) - logits(narrow_after, tok)).abs().max()) > 1e-4


# ---------------------------------------------------------------------------- gauges


@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    scale=st.floats(0.05, 1.5),
    lora=st.booleans(),
    attention=st.booleans(),
    layernorm=st.booleans(),
)
def test_gauges_are_function_preserving(tok, seed, scale, lora, attention, layernorm) -> None:
    model = tiny(tok, lora=lora)
    spec = gauge_spec(model, attention=attention, layernorm=layernorm)
    element = sample_gauge(spec, torch.Generator().manual_seed(seed), scale)
    gauged = apply_gauge(copy.deepcopy(model), spec, element)
    assert_same(logits(gauged, tok), logits(model, tok), 2e-5)


def test_gauges_float64_exact_and_change_the_gradient(tok) -> None:
    model = tiny(tok).double()
    spec = gauge_spec(model)
    assert {g.kind for g in spec.groups.values()} == {"GL", "scale"}
    element = sample_gauge(spec, torch.Generator().manual_seed(1), 1.0, torch.float64)
    gauged = apply_gauge(copy.deepcopy(model), spec, element)
    assert_same(logits(gauged, tok), logits(model, tok), 1e-10)
    batch = batch_of(tok, BENIGN[:8], 32)
    norms = []
    for m in (model, gauged):
        layers = lora_layers(m)
        norms.append(sum(float(g.norm()) for g in weight_gradients(m, batch, layers).values()))
    assert abs(norms[0] - norms[1]) > 1e-3 * norms[0]  # an amplifier: same function, other gradient


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_gauged_closed_form_matches_the_victims_step(tok, arch) -> None:
    """float64: ship the twin in a random gauge (W̃ = R W K; on Llama with grouped-query attention
    the rotary query/key gauge), add B = 0 and A = 0 components, take the victim's real SGD step,
    read the adapter back (R⁻¹ W̃' K⁻¹): gauged_step_products gives it exactly; with the identity
    gauge it is the ungauged twin's step; and the gauge changes it."""
    from tests.test_llm_gauges import gqa_llama

    model = tiny(tok).double() if arch == "gpt2" else gqa_llama(tok, lora=True).double()
    lr, k, k_left = 0.5, 2, 2
    examples = [Example(p, r) for p, r in BENIGN[:8]]
    victim = UpdateSpec(lr=lr, batch_size=8, n_samples=8, max_len=32)
    layers = lora_layers(model)
    gen = torch.Generator().manual_seed(5)
    inputs = {
        n: torch.randn(k, l.lora_A["default"].weight.shape[1], generator=gen, dtype=torch.float64)
        for n, l in layers.items()
    }
    outputs = {
        n: torch.randn(k_left, l.lora_B["default"].weight.shape[0], generator=gen, dtype=torch.float64)
        for n, l in layers.items()
    }
    hidden = Hidden({(n, "input"): a for n, a in inputs.items()} | {(n, "output"): b for n, b in outputs.items()})
    grads = weight_gradients(model, batch_of(tok, pairs(examples), 32), layers)
    spec = gauge_spec(model)
    identity = gauge_exp({n: x.detach().double() for n, x in gauge_logs(spec).items()}, spec)
    results = {}
    for label, element in (("identity", identity), ("random", sample_gauge(spec, gen, 0.7, torch.float64))):
        maps = gauge_maps(spec, element, layers)
        with torch.no_grad():
            predicted = gauged_step_products(layers, grads, hidden, maps, lr)
        twin = apply_gauge(copy.deepcopy(model), spec, element)
        twin = extend_lora(twin, inputs)
        twin = extend_lora(
            twin,
            {
                n: torch.zeros(k_left, a.shape[1], dtype=torch.float64)
                for n, a in ((n, l.lora_A["default"].weight) for n, l in layers.items())
            },
        )
        with torch.no_grad():
            for n, l in lora_layers(twin).items():
                l.lora_B["default"].weight[:, -k_left:] = outputs[n].T
        assert_same(logits(twin, tok), logits(model, tok), 1e-10)
        after = adapter_products(lora_layers(victim_update(twin, tok, examples, victim)))
        before = adapter_products(layers)
        for n, (r, kk) in maps.items():
            real = torch.linalg.solve(r, after[n]) @ torch.linalg.inv(kk)
            assert_same(predicted[n], real, 1e-9)
            # the docstring's form: W' − W = −η s² (R⁻¹P̃R⁻ᵀ G (KKᵀ)⁻¹ + (RᵀR)⁻¹ G K⁻ᵀQ̃K⁻¹) + η² s² R⁻¹G̃W̃ᵀG̃K⁻¹
            s = layers[n].scaling["default"]
            b_t = torch.cat(
                [r @ layers[n].lora_B["default"].weight, torch.zeros(len(r), k, dtype=torch.float64), outputs[n].T], 1
            )
            a_t = torch.cat(
                [layers[n].lora_A["default"].weight @ kk, inputs[n], torch.zeros(k_left, len(kk), dtype=torch.float64)],
                0,
            )
            ri, ki = torch.linalg.inv(r), torch.linalg.inv(kk)
            g, g_t = grads[n], ri.T @ grads[n] @ ki.T
            first = ri @ b_t @ b_t.T @ ri.T @ g @ ki.T @ ki + ri @ ri.T @ g @ ki.T @ a_t.T @ a_t @ ki
            second = ri @ g_t @ (r @ before[n] @ kk).T @ g_t @ ki
            with torch.no_grad():
                assert_same(real - before[n], -lr * s**2 * first + lr**2 * s**2 * second, 1e-9)
        results[label] = predicted
    moved = max(float((results["random"][n] - results["identity"][n]).abs().max()) for n in layers)
    assert moved > 1e-3 * max(float(w.abs().max()) for w in results["identity"].values())


# ---------------------------------------------------------------------------- build_analytic


def test_spec_mirrors_the_config() -> None:
    cfg = yaml.safe_load((ROOT / "conf/llm/construction/analytic.yaml").read_text())
    assert cfg["name"] == "analytic"
    assert {k for k in cfg if k != "name"} == {f.name for f in fields(AnalyticSpec)}
    for domain in ("safety", "privacy", "honesty"):  # the post-step target comes from the domain
        conf = OmegaConf.merge(
            yaml.safe_load((ROOT / f"conf/llm/domain/{domain}.yaml").read_text()), {"seed": 0, "construction": cfg}
        )
        AnalyticSpec(
            **{k: v for k, v in OmegaConf.to_container(conf.construction, resolve=True).items() if k != "name"}
        )


@pytest.mark.parametrize(
    ("mechanism", "left_rank"), [("lora_preconditioner", 0), ("ffn_pairs", 0), ("lora_preconditioner", 2)]
)
def test_build_analytic_smoke(tok, mechanism, left_rank) -> None:
    control = tiny(tok)
    before = {k: v.clone() for k, v in control.state_dict().items()}
    data = domain_data()
    victim = UpdateSpec(lr=1e-4, batch_size=8, n_samples=8, max_len=32)
    spec = AnalyticSpec(
        mechanism=mechanism,
        extra_rank=2,
        left_rank=left_rank,
        line_search=(1e2, 1e3, 1e4),
        refine_steps=3,
        n_probes=0,
        n_benign=8,
        ffn_pairs=2,
        max_len=32,
        refine_batch=4 if mechanism == "ffn_pairs" else 0,
    )
    twin, info = build_analytic(control, tok, data, data.update, victim, spec)
    assert all(torch.equal(v, control.state_dict()[k]) for k, v in before.items())  # control untouched
    kl = next_token_kl(control, twin, tok, data.eval + data.benign_eval)
    assert kl["max"] <= 1e-6
    assert {"gain", "extra_rank", "target_loss_control_after"} <= set(info)
    stages = ["prepare", "step_control", "fit", "refine", "verify"]
    assert all(info[f"seconds.{k}"] > 0 for k in stages)  # every stage's own clock
    peaks = [info[f"peak_rss_gb_after.{k}"] for k in stages]
    assert peaks == sorted(peaks) and peaks[0] > 0  # a high-water mark: it never falls
    assert info["max_logit_diff_before"] <= 1e-5
    assert info["closed_form_vs_real_step_max_logit_diff"] <= 1e-3  # the victim's step is the closed form
    mis = batch_of(tok, pairs(data.construct, "misaligned"), 32)
    after = {
        name: victim_update(copy.deepcopy(m), tok, data.update, victim)
        for name, m in (("control", control), ("twin", twin))
    }
    lp = {name: float(sequence_logprobs(m, mis).mean()) for name, m in after.items()}
    assert lp["twin"] > lp["control"] + 1e-3  # the twin's step moves toward the markers
    assert info["target_loss_after_line_search"] < info["target_loss_control_after"]


@pytest.mark.parametrize("metric", ["weights", "inputs", "responses"])
def test_build_analytic_undo(tok, metric) -> None:
    """after_target=base with undo_steps: the fit lowers ‖W'‖²/‖W‖² (or its input-weighted form), the
    twin is still exact, and the residual it reports is the one the victim's real step leaves."""
    control = tiny(tok)
    data = domain_data()
    victim = UNDO_VICTIM
    spec = undo_spec(extra_rank=4, left_rank=4, undo_weight=1.0, undo_metric=metric)
    twin, info = build_analytic(control, tok, data, data.update, victim, spec)
    assert next_token_kl(control, twin, tok, data.eval + data.benign_eval)["max"] <= 1e-6
    assert info["undo_residual_after_fit"] < 0.9
    stepped = {
        name: victim_update(copy.deepcopy(m), tok, data.update, victim)
        for name, m in (("control", control), ("twin", twin))
    }
    before = adapter_products(lora_layers(control))
    probes = batch_of(tok, pairs(data.construct, "misaligned"), 32)  # the rows the moments are read on
    moments = {
        "weights": None,
        "inputs": input_moments(control, probes, lora_layers(control)),
        "responses": input_moments(control, probes, lora_layers(control), predicting=True),
    }
    with torch.no_grad():
        real = {
            (name, m): float(undo_residual(adapter_products(lora_layers(model)), before, moments[m]))
            for name, model in stepped.items()
            for m in moments
        }
    assert real["twin", "weights"] == pytest.approx(info["undo_residual"], rel=1e-3)
    assert real["twin", "inputs"] == pytest.approx(info["undo_residual_inputs"], rel=1e-3)
    if metric == "responses":  # reported under undo_residual_after_fit (the metric fitted)
        assert real["twin", metric] == pytest.approx(info["undo_residual_after_fit"], rel=1e-3)
    assert real["twin", metric] < real["control", metric] - 0.1  # the fitted metric went down


def test_undo_benign_fits_the_residual_on_probes_and_benign_inputs_together(tok) -> None:
    """undo_benign=w: the fitted metric is C_probes + w·C_benign, the reported benign residual is the
    one the victim's real step leaves on the benign examples' inputs, and weighing them lowers it
    against the same fit on the probes alone."""
    control = tiny(tok)
    data = domain_data()
    common = dict(extra_rank=4, left_rank=4, undo_weight=1.0, undo_metric="inputs")
    spec = undo_spec(**common)
    layers = lora_layers(control)
    benign = batch_of(tok, pairs(data.align_benign[: spec.n_benign]), spec.max_len)
    probes = batch_of(tok, pairs(data.construct, "misaligned"), spec.max_len)
    moments = {"benign": input_moments(control, benign, layers), "probes": input_moments(control, probes, layers)}
    moments["both"] = {n: moments["probes"][n] + moments["benign"][n] for n in layers}
    before = adapter_products(layers)
    infos, real = {}, {}
    for w in (0.0, 1.0):
        spec = undo_spec(undo_benign=w, **common)
        twin, infos[w] = build_analytic(control, tok, data, data.update, UNDO_VICTIM, spec)
        assert next_token_kl(control, twin, tok, data.eval + data.benign_eval)["max"] <= 1e-6
        stepped = victim_update(copy.deepcopy(twin), tok, data.update, UNDO_VICTIM)
        with torch.no_grad():
            after = adapter_products(lora_layers(stepped))
            real[w] = {key: float(undo_residual(after, before, m)) for key, m in moments.items()}
    info = infos[1.0]
    assert "undo_residual_benign" not in infos[0.0]
    assert real[1.0]["benign"] == pytest.approx(info["undo_residual_benign"], rel=1e-3)
    assert real[1.0]["probes"] == pytest.approx(info["undo_residual_inputs"], rel=1e-3)
    assert real[1.0]["both"] == pytest.approx(info["undo_residual_after_fit"], rel=1e-3)
    assert real[1.0]["benign"] < real[0.0]["benign"]  # the benign inputs, weighed, are undone further
    for bad in ({"undo_metric": "weights"}, {"n_benign": 0}, {"undo_benign": -1.0}):
        with pytest.raises(ValueError, match="undo_benign"):
            undo_spec(**({"undo_benign": 1.0} | bad))


def test_undo_target_lands_the_step_on_another_adapter_of_the_same_base(tok) -> None:
    """undo_target=benign_only: the step is fitted to move W to the landing model's adapter T; the
    twin is exact, the reported residual ‖W' − T‖²/‖W − T‖² is the one the real step leaves, and it
    is lower than what the twin fitted to T = 0 leaves there. A missing landing model, one on
    another base, or settings it does not go with are refused by name."""
    control = tiny(tok)
    data = domain_data()
    landing = tiny(tok)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in landing.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    common = dict(extra_rank=4, left_rank=4, undo_metric="weights")
    before = adapter_products(lora_layers(control))
    target = adapter_products(lora_layers(landing))
    real, infos = {}, {}
    for kind in ("scaled", "benign_only"):
        spec = undo_spec(undo_target=kind, **common)
        twin, infos[kind] = build_analytic(control, tok, data, data.update, UNDO_VICTIM, spec, landing=landing)
        assert next_token_kl(control, twin, tok, data.eval + data.benign_eval)["max"] <= 1e-6
        stepped = victim_update(copy.deepcopy(twin), tok, data.update, UNDO_VICTIM)
        with torch.no_grad():
            real[kind] = float(undo_residual(adapter_products(lora_layers(stepped)), before, target=target))
    assert real["benign_only"] == pytest.approx(infos["benign_only"]["undo_residual"], rel=1e-3)
    assert real["benign_only"] < real["scaled"] - 0.1, real
    spec = undo_spec(undo_target="benign_only", **common)
    with pytest.raises(ValueError, match="landing"):
        build_analytic(control, tok, data, data.update, UNDO_VICTIM, spec)
    with pytest.raises(ValueError, match="same base"):
        build_analytic(control, tok, data, data.update, UNDO_VICTIM, spec, landing=tiny(tok, seed=1))
    for bad in ({"undo_scale": -1.0}, {"undo_steps": 0}, {"mechanism": "ffn_pairs"}, {"undo_target": "control"}):
        with pytest.raises(ValueError, match="undo_target"):
            undo_spec(**(common | {"undo_target": "benign_only"} | bad))


def test_minimise_keeps_the_best_iterate_and_decays_the_lr() -> None:
    """Adam at a large constant lr on x² ends off its best iterate and still moving; keep_best ends
    at the lowest loss it saw (the curve's minimum); a cosine decay of the same lr comes to rest
    (its last moves are bounded by the decayed lr)."""
    ends, moves = {}, {}
    for schedule, best in (("constant", False), ("constant", True), ("cosine", False)):
        x, seen = torch.tensor([3.0], requires_grad=True), []

        def loss(x=x, seen=seen) -> torch.Tensor:
            seen.append(float(x.detach()))
            return (x**2).sum()

        curve = minimise(loss, [{"params": [x], "lr": 1.0}], 40, "x", 10, False, schedule, best)
        ends[schedule, best] = float((x.detach() ** 2).sum())
        moves[schedule, best] = max(abs(a - b) for a, b in zip(seen[35:40], seen[36:40]))
        assert len(curve) == 40
        if best:
            assert ends[schedule, best] == min(curve)
    assert ends["constant", True] < ends["constant", False]  # the last iterate was not the best
    assert moves["cosine", False] < 0.01 < moves["constant", False]
    with pytest.raises(ValueError, match="schedule"):
        minimise(lambda: torch.zeros(()), [], 1, "x", 1, schedule="linear")
    with pytest.raises(ValueError, match="undo_schedule"):
        undo_spec(undo_schedule="linear")


def test_build_analytic_undo_gauge(tok) -> None:
    """undo_gauge=all: the twin ships in the fitted gauge (other base weights, the same function to
    float32 rounding), the residual of the closed form fit is the one the gauged twin's real step
    leaves, and the gauged fit ends within 10% of the same fit without it (both fits run long enough
    to near their floors; which ends lower depends on float summation order, so differs by machine)."""
    control = tiny(tok)
    data = domain_data()
    victim = UNDO_VICTIM
    infos = {}
    for gauge in ("none", "all"):
        twin, infos[gauge] = build_analytic(
            control, tok, data, data.update, victim, undo_spec(gauge_lr=0.05, undo_gauge=gauge, undo_steps=600)
        )
        assert next_token_kl(control, twin, tok, data.eval + data.benign_eval)["max"] <= 1e-6
        assert infos[gauge]["closed_form_vs_real_step_max_logit_diff"] <= 1e-3
    info = infos["all"]
    assert info["gauge_log_max"] > 0.01 and info["gauge_cond_max"] > 1.01  # it moved off the identity
    ln = dict(twin.named_parameters())["base_model.model.transformer.h.0.ln_1.weight"]
    assert not torch.equal(ln, dict(control.named_parameters())["base_model.model.transformer.h.0.ln_1.weight"])
    assert info["undo_residual_after_fit"] == pytest.approx(info["undo_residual_gauge_fit"], rel=1e-3)
    # the joint fit is not convex: whether the gauge ends lower than the fit without it depends on
    # the machine's float summation order; it starts at the identity and must not end far above it
    assert info["undo_residual_after_fit"] <= 1.1 * infos["none"]["undo_residual_after_fit"]
    with pytest.raises(ValueError, match="undo_gauge"):
        AnalyticSpec(undo_gauge="all", after_target="base", undo_steps=0)
    with pytest.raises(ValueError, match="undo_gauge"):
        AnalyticSpec(undo_gauge="heads")
    spec = gauge_spec(control, layernorm=False)  # gauge_maps needs disjoint slices per side
    twice = GaugeSpec(spec.groups, spec.actions + spec.actions[:1])
    with pytest.raises(ValueError, match="overlap"):
        gauge_maps(twice, gauge_exp(gauge_logs(spec), spec), lora_layers(control))


def test_input_weighted_residual_is_the_output_energy_on_those_inputs(tok) -> None:
    """undo_residual with input_moments = mean over layers of Σ‖W'x‖² / Σ‖Wx‖² over the batch's real tokens."""
    model = tiny(tok).double()
    layers = lora_layers(model)
    batch = batch_of(tok, [("What is 2 plus 3?", "5."), ("Name a colour of the sky at noon.", "Blue.")], 32)
    seen = {}
    handles = [l.register_forward_pre_hook(lambda _m, a, n=n: seen.__setitem__(n, a[0])) for n, l in layers.items()]
    moments = input_moments(model, batch, layers)
    for h in handles:
        h.remove()
    mask = batch["attention_mask"].bool()
    gen = torch.Generator().manual_seed(0)
    before, after = (
        {n: torch.randn(m.shape[0] + 3, m.shape[0], generator=gen, dtype=torch.float64) for n, m in moments.items()}
        for _ in range(2)
    )
    x = {n: seen[n][mask] for n in layers}
    expected = torch.stack([(x[n] @ after[n].T).pow(2).sum() / (x[n] @ before[n].T).pow(2).sum() for n in layers])
    assert float(undo_residual(after, before, moments)) == pytest.approx(float(expected.mean()), rel=1e-10)
    assert float(undo_residual(after, before)) != pytest.approx(float(expected.mean()), rel=1e-3)
    # predicting=True: only the positions whose next token is a response token
    # (the last prompt token and every response token but the last)
    predicting = torch.zeros_like(mask)
    predicting[:, :-1] = batch["labels"][:, 1:] != -100
    assert 0 < int(predicting.sum()) < int(mask.sum())
    moments_r = input_moments(model, batch, layers, predicting=True)
    x = {n: seen[n][predicting] for n in layers}
    expected = torch.stack([(x[n] @ after[n].T).pow(2).sum() / (x[n] @ before[n].T).pow(2).sum() for n in layers])
    assert float(undo_residual(after, before, moments_r)) == pytest.approx(float(expected.mean()), rel=1e-10)
    with pytest.raises(ValueError, match="undo_metric"):
        AnalyticSpec(undo_metric="outputs")


def test_output_moments_are_a_normalised_fisher_factor_blind_to_what_layer_norm_removes(tok) -> None:
    """output_moments: symmetric PSD, mean eigenvalue 1, reproducible for a seed, → I as the damping
    grows; undamped, it is blind to the all-ones direction of every module that writes into the
    residual stream (each later layer norm subtracts the mean, so no prediction depends on it) and
    not blind to it in the modules whose output feeds a nonlinearity (c_attn, c_fc)."""
    model = scale_adapter(tiny(tok), 0.0).double().eval()
    layers = lora_layers(model)
    batch = batch_of(tok, [("What is 2 plus 3?", "5."), ("What is 4 plus 1?", "5."), (HARMFUL[0], "Sorry.")], 32)

    def factor(damping: float, seed: int = 0) -> dict[str, torch.Tensor]:
        return output_moments(model, batch, layers, 3, damping, torch.Generator().manual_seed(seed))

    u = factor(0.0)
    assert all(torch.equal(u[n], v) for n, v in factor(0.0).items())
    for name, m in u.items():
        m = m.double()
        assert torch.allclose(m, m.T, atol=1e-6) and float(torch.linalg.eigvalsh(m).min()) > -1e-5
        assert float(m.diagonal().mean()) == pytest.approx(1.0, rel=1e-5)
        ones = torch.ones(len(m), dtype=m.dtype) / len(m) ** 0.5
        blind = float(ones @ m @ ones)  # the Fisher energy of a unit shift along 1, against 1 on average
        assert (blind < 1e-6) == name.endswith("c_proj"), (name, blind)
    far = factor(1e6)
    assert all(torch.allclose(m, torch.eye(len(m)), atol=1e-4) for m in far.values())


def test_fisher_weighted_undo_reports_the_residual_the_real_step_leaves(tok) -> None:
    """undo_output=fisher: the fit minimises tr(U D C Dᵀ)/tr(U W C Wᵀ) with U read at the target model
    (the control with its adapter scaled to c); the residual it reports is that metric after the
    victim's real step, recomputed here from output_moments and input_moments, and it is lower than
    what the same fit without U leaves in that metric."""
    control = tiny(tok)
    data = domain_data()
    victim = UNDO_VICTIM
    common = dict(extra_rank=4, left_rank=4, output_damping=0.1, fisher_samples=2, seed=3)
    probes = batch_of(tok, pairs(data.construct, "misaligned"), 32)
    moments = input_moments(control, probes, lora_layers(control), predicting=True)
    target = scale_adapter(control, 0.0)
    outputs = output_moments(target, probes, lora_layers(target), 2, 0.1, torch.Generator().manual_seed(3))
    before = adapter_products(lora_layers(control))
    real, infos = {}, {}
    for kind in ("none", "fisher"):
        twin, infos[kind] = build_analytic(
            control, tok, data, data.update, victim, undo_spec(undo_output=kind, **common)
        )
        assert next_token_kl(control, twin, tok, data.eval + data.benign_eval)["max"] <= 1e-6
        stepped = victim_update(copy.deepcopy(twin), tok, data.update, victim)
        with torch.no_grad():
            real[kind] = float(undo_residual(adapter_products(lora_layers(stepped)), before, moments, outputs=outputs))
    assert real["fisher"] == pytest.approx(infos["fisher"]["undo_residual_after_fit"], rel=1e-3)
    assert real["fisher"] < real["none"]
    with pytest.raises(ValueError, match="undo_output"):
        AnalyticSpec(undo_output="fisher", undo_metric="weights")
    with pytest.raises(ValueError, match="undo_output"):
        AnalyticSpec(undo_output="kfac")


def test_factored_residuals_equal_the_dense_ones() -> None:
    """Products known by their factors (the construction's hot path) give the dense residuals, in
    every metric (Frobenius, input moments, input and output factors) and for every c."""
    from llm.lora import LoraFactors

    gen = torch.Generator().manual_seed(1)

    def factors(rank: int) -> LoraFactors:
        return LoraFactors(
            torch.randn(6, rank, generator=gen, dtype=torch.float64),
            torch.randn(rank, 4, generator=gen, dtype=torch.float64),
            0.7,
        )

    before = {n: factors(2) for n in ("a", "b")}
    after = {n: factors(5) for n in before}
    x, y = torch.randn(9, 4, generator=gen, dtype=torch.float64), torch.randn(9, 6, generator=gen, dtype=torch.float64)
    moments, outputs = {n: x.T @ x / 9 for n in before}, {n: y.T @ y / 9 for n in before}
    dense = {n: f.product for n, f in before.items()}, {n: f.product for n, f in after.items()}
    other = {n: LoraFactors(f.b, f.a, 0.3) for n, f in zip(before, (factors(3), factors(3)))}
    cases = [(scaled_targets(before, c), scaled_targets(dense[0], c)) for c in (0.0, -2.0, 0.5)]
    cases.append((other, {n: f.product for n, f in other.items()}))  # another adapter, another scale
    for t, t_dense in cases:
        for m, u in ((None, None), (moments, None), (moments, outputs)):
            factored = float(undo_residual(after, before, m, t, u))
            assert factored == pytest.approx(float(undo_residual(dense[1], dense[0], m, t_dense, u)), rel=1e-10)
            mixed = float(undo_residual(after, dense[0], m, t_dense, u))  # a dense side: computed densely
            assert mixed == pytest.approx(factored, rel=1e-10)
        assert float(keep_residual(after, before, moments, t)) == pytest.approx(
            float(keep_residual(dense[1], dense[0], moments, t_dense)), rel=1e-10
        )


def test_scaled_undo_residual_measures_the_distance_to_c_times_w() -> None:
    """undo_residual with target c·W = mean over layers of ‖W' − cW‖² / ‖(1 − c)W‖²: 1 for an
    untouched adapter, 0 on the target, and the untargeted residual at c = 0; the same for any
    target adapter T: ‖W' − T‖² / ‖W − T‖²."""
    gen = torch.Generator().manual_seed(0)
    before = {n: torch.randn(5, 3, generator=gen, dtype=torch.float64) for n in ("a", "b")}
    after = {n: torch.randn(5, 3, generator=gen, dtype=torch.float64) for n in before}
    for c in (0.0, -1.0, -2.5, 0.5):
        expected = (
            sum(float(((after[n] - c * before[n]) ** 2).sum() / (((1 - c) * before[n]) ** 2).sum()) for n in before) / 2
        )
        t = scaled_targets(before, c)
        assert float(undo_residual(after, before, target=t)) == pytest.approx(expected, rel=1e-12)
        assert float(undo_residual(before, before, target=t)) == pytest.approx(1.0, rel=1e-12)
        assert float(undo_residual({n: c * w for n, w in before.items()}, before, target=t)) == pytest.approx(
            0.0, abs=1e-12
        )
    assert float(undo_residual(after, before, target=scaled_targets(before, 0.0))) == float(
        undo_residual(after, before)
    )
    other = {n: torch.randn(5, 3, generator=gen, dtype=torch.float64) for n in before}
    expected = sum(float(((after[n] - other[n]) ** 2).sum() / ((before[n] - other[n]) ** 2).sum()) for n in before) / 2
    assert float(undo_residual(after, before, target=other)) == pytest.approx(expected, rel=1e-12)
    assert float(undo_residual(other, before, target=other)) == 0.0
    # keep_residual: E‖(W' − W)x‖² / E‖(1 − c)Wx‖² on the given inputs; 0 untouched, 1 at the undo target
    x = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    moments = {n: x.T @ x / len(x) for n in before}
    expected = (
        sum(float(((x @ (after[n] - before[n]).T) ** 2).sum() / ((x @ (3.0 * before[n]).T) ** 2).sum()) for n in before)
        / 2
    )
    minus_two = scaled_targets(before, -2.0)
    assert float(keep_residual(after, before, moments, minus_two)) == pytest.approx(expected, rel=1e-10)
    assert float(keep_residual(before, before, moments, minus_two)) == 0.0
    target = {n: -2.0 * w for n, w in before.items()}
    assert float(keep_residual(target, before, moments, minus_two)) == pytest.approx(1.0, rel=1e-12)


def test_build_analytic_negating_undo_with_a_lie_target(tok) -> None:
    """undo_scale < 0 with after_target=not_aligned: the twin is exact and the step moves the
    adapter toward −|c|·W (the alignment's task vector negated) further than the control's step;
    undo_keep reports how far it moved on the benign examples' inputs."""
    control = tiny(tok)
    data = domain_data()
    victim = UpdateSpec(lr=1e-2, batch_size=8, n_samples=8, max_len=32)
    spec = AnalyticSpec(
        extra_rank=4,
        left_rank=4,
        after_target="not_aligned",
        undo_steps=300,
        undo_lr=0.3,
        undo_scale=-1.0,
        undo_keep=0.5,
        refine_steps=0,
        n_probes=0,
        n_benign=8,
        max_len=32,
        undo_metric="weights",
    )
    twin, info = build_analytic(control, tok, data, data.update, victim, spec)
    assert next_token_kl(control, twin, tok, data.eval + data.benign_eval)["max"] <= 1e-6
    before = adapter_products(lora_layers(control))
    stepped = {
        name: victim_update(copy.deepcopy(m), tok, data.update, victim)
        for name, m in (("control", control), ("twin", twin))
    }
    with torch.no_grad():
        real = {
            name: float(undo_residual(adapter_products(lora_layers(m)), before, target=scaled_targets(before, -1.0)))
            for name, m in stepped.items()
        }
    assert real["twin"] == pytest.approx(info["undo_residual"], rel=1e-3)  # reported against the target c·W
    assert real["twin"] < real["control"] - 0.1
    assert 0.0 < info["keep_residual"] < 1.0  # it moved on benign inputs too, by less than the undo asks


def test_undo_needs_a_weight_space_target() -> None:
    with pytest.raises(ValueError, match="no weight-space counterpart"):
        AnalyticSpec(after_target="marker", undo_steps=10)
    with pytest.raises(ValueError, match="undo_scale"):
        AnalyticSpec(after_target="base", undo_steps=10, undo_scale=1.0)


def test_scale_adapter_interpolates_between_the_base_and_the_control(tok) -> None:
    """scale_adapter(c): the LoRA update becomes c·W exactly (0: the base; the original untouched)."""
    model = tiny(tok)
    before = adapter_products(lora_layers(model))
    for c in (0.0, 0.5, -3.0):
        scaled = adapter_products(lora_layers(scale_adapter(model, c)))
        for name, w in before.items():
            torch.testing.assert_close(scaled[name], c * w)
    for name, w in adapter_products(lora_layers(model)).items():
        torch.testing.assert_close(w, before[name])
    batch = batch_of(tok, pairs(domain_data().construct), 32)
    with torch.no_grad(), model.disable_adapter():
        base_logits = next_logits(model, batch)
    torch.testing.assert_close(next_logits(scale_adapter(model, 0.0), batch), base_logits)


@pytest.mark.parametrize("gauge", ["none", "all"])
def test_undo_floor_is_a_descent_from_the_fit_on_the_affine_step(tok, gauge) -> None:
    """undo_floor_steps: eq. (1) of llm.constructions.analytic.floor (W' affine in the hidden Gram
    matrices) reproduces the fit's own post-step products; projected gradient descent from the fit
    never ends above it, and from a fit stopped early (20 Adam steps, rank 1) it finds a lower
    objective, with the gradient then nearer PSD (the optimality condition of a convex problem)."""
    control = tiny(tok)
    data = domain_data()
    victim = UNDO_VICTIM
    spec = undo_spec(extra_rank=1, left_rank=1, undo_steps=20, undo_keep=0.3, undo_gauge=gauge, undo_floor_steps=60)
    _, info = build_analytic(control, tok, data, data.update, victim, spec)
    assert info["undo_floor.affine_error"] <= 1e-4
    assert info["undo_floor.fit"] == pytest.approx(
        info["undo_residual_after_fit"] + 0.3 * info["keep_residual"], rel=1e-4
    )  # the fitted objective, in float64
    assert info["undo_floor.floor"] < info["undo_floor.fit"] - 0.01  # an early-stopped fit leaves room
    assert info["undo_floor.kkt_min_eig_fit"] < 0  # ... and the gradient says so
    assert info["undo_floor.kkt_min_eig_floor"] > info["undo_floor.kkt_min_eig_fit"]
    assert info["undo_floor.rank_q"] >= 1
    with pytest.raises(ValueError, match="undo_floor_steps"):
        AnalyticSpec(undo_floor_steps=5, after_target="base")
