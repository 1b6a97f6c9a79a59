"""llm.gauges: transformer gauges declared as data keep the function, on GPT-2 and Llama, with or
without LoRA; the layer-norm amplifier reports the factor of every tensor it touched."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from llm import gauges
from llm.lora import add_lora
from llm.models import TinySpec, build_tiny
from tests.test_llm_analytic import assert_same, logits, tiny, tok  # noqa: F401  (tok is a fixture)
from theory.symmetry import Group


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


def gqa_llama(tok, lora: bool, seed: int = 0, family: str = "llama"):
    """A 2-layer decoder of a Llama-laid-out ``family`` (:data:`llm.gauges.LLAMA_LIKE`; Qwen2's
    queries, keys and values have biases) with grouped-query attention (4 query heads reading 2
    key/value heads, head size 8) and weights large enough that attention is far from uniform."""
    base = TinySpec("llama", n_layer=2, n_embd=32, n_head=4, vocab_size=len(tok), n_ctx=48).config(tok).to_dict()
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    keep += ("max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings")
    # Gemma: head size 8 (its default is 256); an ε far below the tiny model's activations, so that
    # a scale before its norms is a symmetry to float rounding (Gemma-3-270M: ε = 1e-6)
    gemma = {"head_dim": 8, "query_pre_attn_scalar": 8, "rms_norm_eps": 1e-12}
    extra = gemma if family == "gemma3_text" else {}
    cfg = AutoConfig.for_model(
        family, **{k: base[k] for k in keep}, num_key_value_heads=2, initializer_range=0.2, **extra
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
        if family == "qwen2":  # biases initialise to zero: make them count
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name.endswith("bias"):
                        p.copy_(0.2 * torch.randn(p.shape))
        if lora:
            model = add_lora(model, rank=2, alpha=4.0)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.copy_(0.3 * torch.randn(p.shape))
    return model.eval()


@pytest.mark.parametrize("family, lora", [("llama", False), ("llama", True), ("qwen2", True), ("mistral", True)])
def test_llama_attention_gauges_commute_with_rotary_embeddings_and_shared_keys(tok, family, lora) -> None:
    """Per key/value head: a scaled rotation of each frequency pair on the query rows of every head
    reading it (Mᵀ) and on its key rows (M⁻¹), GL on values (Mᵀ) and on the output columns of every
    reading head (M⁻ᵀ): the same function. The same actions with a general GL element on the
    queries and keys change it: the rotary group, not GL, is Llama's query/key gauge (and that of
    the families laid out as Llama)."""
    model = gqa_llama(tok, lora, family=family)
    spec = gauges.gauge_spec(model, attention=True, layernorm=False)
    assert sorted(spec.groups) == sorted(f"{qv}{l}.{g}" for qv in "qv" for l in range(2) for g in range(2))
    assert {spec.groups[f"q{l}.{g}"].kind for l in range(2) for g in range(2)} == {"rotary"}
    gen = torch.Generator().manual_seed(0)
    gauged = gauges.apply(copy.deepcopy(model), spec, gauges.sample(spec, gen, 1.0))
    q = "model.layers.0.self_attn.q_proj"
    moved = {n: p for n, p in gauged.named_parameters() if q in n and "lora_A" not in n}  # its output rows
    assert all(not torch.equal(p, dict(model.named_parameters())[n]) for n, p in moved.items())
    assert_same(logits(gauged, tok), logits(model, tok), 1e-4)
    general = gauges.GaugeSpec({n: Group("GL", g.size) for n, g in spec.groups.items()}, spec.actions)
    broken = gauges.apply(copy.deepcopy(model), general, gauges.sample(general, gen, 1.0))
    gap = float((logits(broken, tok) - logits(model, tok)).abs().max())
    assert gap > 1e-2 * float(logits(model, tok).abs().max())


def test_a_partial_rotary_embedding_is_refused(tok) -> None:
    model = gqa_llama(tok, lora=False)
    model.config.partial_rotary_factor = 0.5
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        gauges.gauge_spec(model, attention=True)


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


@pytest.mark.parametrize(
    "module", ["self_attn.o_proj", "self_attn.v_proj", "mlp.down_proj", "mlp.up_proj", "self_attn.q_proj"]
)
def test_gemma_normalised_outputs_hide_a_scale_no_gauge_declares(tok, module) -> None:
    """Gemma 3 normalises each attention and MLP output (``post_attention_layernorm``,
    ``post_feedforward_layernorm``) and each head's queries and keys (``q_norm``, ``k_norm``), so
    any map the normalised vector is linear in (``o_proj`` and ``v_proj``; ``down_proj`` and
    ``up_proj``; ``q_proj``) can be scaled by ``c`` with no tensor compensating: the function is
    the same (to the norm's ε) and the map's gradient is divided by ``c``, so one SGD step moves it,
    relative to its size, ``c⁻²`` as far. :mod:`llm.gauges` declares no such direction, and the
    audit refuses Gemma for it (docs/audit.md, "What it does not cover")."""
    from llm.experiments.audit import require_declared
    from sweeps.errors import ConfigError

    model = gqa_llama(tok, lora=False, family="gemma3_text")
    with pytest.raises(ConfigError, match=r"^model: .*not 'gemma3_text'"):
        require_declared(model)
    c = 0.05
    scaled = copy.deepcopy(model)
    weight = f"model.layers.0.{module}.weight"
    with torch.no_grad():
        dict(scaled.named_parameters())[weight].mul_(c)
    assert_same(logits(scaled, tok), logits(model, tok), 1e-4)

    ids = torch.tensor([[1, 5, 9, 2, 7, 3, 4]])

    def grad(m) -> torch.Tensor:
        m.zero_grad()
        m(input_ids=ids).logits.logsumexp(-1).mean().backward()
        return dict(m.named_parameters())[weight].grad

    torch.testing.assert_close(grad(scaled), grad(model) / c, rtol=1e-3, atol=1e-6)
