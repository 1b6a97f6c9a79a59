"""llm.gauges: transformer gauges declared as data keep the function, on GPT-2 and Llama, with or
without LoRA; the layer-norm amplifier reports the factor of every tensor it touched."""

from __future__ import annotations

import copy

import pytest
import torch

from llm import gauges
from llm.lora import add_lora
from llm.models import TinySpec, build_tiny
from tests.test_llm_analytic import assert_same, logits, tiny, tok  # noqa: F401  (tok is a fixture)


def tiny_llama(tok, lora: bool):
    model = build_tiny(TinySpec("llama", n_layer=2, n_embd=16, n_head=2, vocab_size=len(tok), n_ctx=48), tok, 0)
    if lora:
        torch.manual_seed(0)
        model = add_lora(model, rank=2, alpha=4.0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return model.eval()


@pytest.mark.parametrize("lora", [False, True])
def test_llama_layernorm_gauge_keeps_the_function(tok, lora) -> None:
    model = tiny_llama(tok, lora)
    spec = gauges.gauge_spec(model, attention=False)
    assert {g.kind for g in spec.groups.values()} == {"scale"}
    element = gauges.sample(spec, torch.Generator().manual_seed(0), 1.0)
    gauged = gauges.apply(copy.deepcopy(model), spec, element)
    norm = "model.layers.0.input_layernorm.weight"
    names = {n.removeprefix("base_model.model."): p for n, p in gauged.named_parameters()}
    assert not torch.equal(names[norm], dict(model.named_parameters())[("base_model.model." if lora else "") + norm])
    assert_same(logits(gauged, tok), logits(model, tok), 1e-4)
    with pytest.raises(ValueError, match="GPT-2"):
        gauges.gauge_spec(model, attention=True)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_amplify_norms_keeps_the_function_and_names_every_factor(tok, arch) -> None:
    """Norm gains and biases × g, their readers' weights ÷ g: the same function, the factor of each
    touched parameter reported by name, every other parameter untouched."""
    model = tiny(tok, lora=False) if arch == "gpt2" else tiny_llama(tok, lora=False)
    amplified = copy.deepcopy(model)
    factors = gauges.amplify_norms(amplified, 8.0)
    before, after = dict(model.named_parameters()), dict(amplified.named_parameters())
    readers = {"gpt2": 2, "llama": 5}[arch]  # per block: the maps that read a norm
    norms = sum(1 for n in factors if "norm" in n or ".ln_" in n)
    assert sum(1 for f in factors.values() if f == 1 / 8.0) == 2 * readers
    assert norms == len(factors) - 2 * readers and all(f == 8.0 for n, f in factors.items() if f != 1 / 8.0)
    for name, p in after.items():
        if name not in factors:
            assert torch.equal(p, before[name]), name
        elif factors[name] == 8.0:
            assert torch.equal(p, before[name] * 8.0), name
        else:
            assert torch.equal(p, before[name] / 8.0), name
    assert_same(logits(amplified, tok), logits(model, tok), 1e-4)


def test_a_scale_vector_acts_entrywise_as_its_diagonal_matrix() -> None:
    """The entrywise action apply uses for scale groups gives the numbers of the diagonal product."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(16, 48, generator=gen)
    c = torch.exp(torch.randn(16, generator=gen))
    rows = w.clone()
    gauges._act(rows, 0, None, c, "A^-T")
    assert torch.equal(rows, torch.diag(1.0 / c) @ w)
    cols = w.T.clone()
    gauges._act(cols, 1, None, c, "A")
    assert torch.equal(cols, w.T @ torch.diag(c))
