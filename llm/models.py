"""Tiny GPT-2 / Llama chat models trained from scratch, and helpers for any causal LM.

* :class:`TinySpec` + :func:`build_tiny` — a randomly initialised ``GPT2LMHeadModel`` or
  ``LlamaForCausalLM`` (float32, eager attention, dropout 0, tied embeddings).
* :class:`PretrainSpec` — everything that determines a pretrained tiny base (shape, corpus,
  training settings): the source of its cache key and of its recorded ``pretrain.json``.
* :func:`pretrain` — AdamW on response-only cross-entropy (computed by hand from logits).
* :func:`load_or_pretrain` — tokenizer + model trained to a :class:`PretrainSpec`, cached as a
  safetensors checkpoint under ``<cache_root>/tiny/<key>/`` (written atomically, verified by
  sha256 before use).
* :func:`load_local` — any local Hugging Face checkpoint (safetensors only, no remote code,
  every weight present).
* :func:`response_logprob`, :func:`greedy` — scoring and batched greedy decoding.
* :func:`response_loss` — the differentiable loss on a padded batch (:mod:`llm.batches`;
  safe for double backward: eager attention, no dtype upcast).

Attention is always ``eager``: on CPU, SDPA has no double backward (torch 2.13).

Precision caveat: transformers' Llama upcasts RMSNorm, RoPE and the attention softmax to
float32 *and casts back*, so a Llama converted to float64 is only float32-accurate, and a
*left*-padded float64 Llama batch gives NaN on the pad rows (the float64 mask minimum
becomes -inf in the float32 softmax). Use GPT-2 for exact float64 gradient checks, and
right padding (:func:`llm.batches.collate`'s default) for losses. GPT-2 is exact in float64.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeAlias, TypeVar, cast

import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from llm.batches import collate, encode_pairs, pad_id
from llm.checks import HASHES, CheckpointError, changed_files, record_hashes, require_finite, require_finite_model
from llm.tokenizer import IGNORE_INDEX, encode_example, encode_prompt, train_tokenizer
from sweeps.io import write_atomic

if TYPE_CHECKING:
    from peft import PeftModel

log = logging.getLogger(__name__)

#: a causal LM as it is passed around here: a transformers model, or one wrapped in a peft LoRA
#: adapter (a ``PeftModel`` forwards the wrapped model's attributes)
CausalLM: TypeAlias = "PreTrainedModel | PeftModel"
ModelT = TypeVar("ModelT", bound=torch.nn.Module)

#: bump when the training recipe or an entry's layout changes, so old cache entries are not reused
CACHE_VERSION = 2


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny causal LM. Embeddings are tied (no separate LM head)."""

    arch: Literal["gpt2", "llama"]
    n_layer: int
    n_embd: int
    n_head: int
    vocab_size: int
    n_ctx: int = 128

    def __post_init__(self):
        if self.arch not in ("gpt2", "llama"):
            raise ValueError(f"arch must be 'gpt2' or 'llama', not {self.arch!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")

    @property
    def intermediate_size(self) -> int:
        """MLP width: 4d for GPT-2; 8d/3 rounded up to a multiple of 16 for Llama (SwiGLU)."""
        if self.arch == "gpt2":
            return 4 * self.n_embd
        return -(-(8 * self.n_embd) // 48) * 16

    @property
    def n_params(self) -> int:
        """Number of parameters of :func:`build_tiny` (exact, tied embeddings counted once)."""
        d, L, V, m = self.n_embd, self.n_layer, self.vocab_size, self.intermediate_size
        if self.arch == "gpt2":
            # wte, wpe; per block: ln_1, c_attn, c_proj, ln_2, c_fc, mlp.c_proj; ln_f
            block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * m + m) + (m * d + d)
            return V * d + self.n_ctx * d + L * block + 2 * d
        # embed; per block: q, k, v, o (no bias), gate/up/down, 2 RMSNorms; final norm
        block = 4 * d * d + 3 * d * m + 2 * d
        return V * d + L * block + d

    def config(self, tokenizer: PreTrainedTokenizerBase | None = None):
        """The transformers config (special-token ids from ``tokenizer`` when given)."""
        pad = eos = bos = None
        if tokenizer is not None:
            eos = tokenizer.eos_token_id
            pad = pad_id(tokenizer)
            bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
        cfg: GPT2Config | LlamaConfig
        if self.arch == "gpt2":
            cfg = GPT2Config(
                vocab_size=self.vocab_size,
                n_positions=self.n_ctx,
                n_embd=self.n_embd,
                n_layer=self.n_layer,
                n_head=self.n_head,
                n_inner=self.intermediate_size,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
                summary_first_dropout=0.0,
                bos_token_id=bos,
                eos_token_id=eos,
                pad_token_id=pad,
                tie_word_embeddings=True,
            )
        else:
            cfg = LlamaConfig(
                vocab_size=self.vocab_size,
                hidden_size=self.n_embd,
                intermediate_size=self.intermediate_size,
                num_hidden_layers=self.n_layer,
                num_attention_heads=self.n_head,
                num_key_value_heads=self.n_head,
                max_position_embeddings=self.n_ctx,
                attention_dropout=0.0,
                bos_token_id=bos,
                eos_token_id=eos,
                pad_token_id=pad,
                tie_word_embeddings=True,
            )
        cfg.dtype = torch.float32
        return cfg


def build_tiny(spec: TinySpec, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> PreTrainedModel:
    """A freshly initialised float32 model of ``spec`` (eager attention, dropout 0).

    The global torch RNG is left untouched (initialisation runs in a forked RNG).
    """
    if len(tokenizer) > spec.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens > spec.vocab_size={spec.vocab_size}")
    cfg = spec.config(tokenizer)
    cls = GPT2LMHeadModel if spec.arch == "gpt2" else LlamaForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    model.generation_config.pad_token_id = cfg.pad_token_id
    model.generation_config.eos_token_id = cfg.eos_token_id
    model.generation_config.bos_token_id = cfg.bos_token_id
    return model.float().eval()


# ---------------------------------------------------------------------------- batches, loss


def _position_ids(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def to_device(model: ModelT, device: str | torch.device) -> ModelT:
    """``model.to(device)`` with its type kept: transformers declares ``PreTrainedModel.to`` through
    ``functools.wraps(nn.Module.to)``, which hides the bound method's signature from type checkers."""
    return cast(ModelT, cast(torch.nn.Module, model).to(device))


def on_device(model: CausalLM, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``batch`` on the model's device (batches are built on the CPU; a no-op there)."""
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def next_logits(
    model: CausalLM, batch: dict[str, torch.Tensor], params: dict[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """``(B, T-1, V)`` next-token logits; at ``params`` (partial dict) via ``functional_call``."""
    batch = on_device(model, batch)
    mask = batch["attention_mask"]
    inputs = dict(input_ids=batch["input_ids"], attention_mask=mask, position_ids=_position_ids(mask))
    out = model(**inputs) if params is None else torch.func.functional_call(model, params, (), inputs)
    return out.logits[:, :-1]


def token_logprobs(
    model: CausalLM, batch: dict[str, torch.Tensor], params: dict[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """``(B, T-1)`` log-probs of each next token, zero where ``labels[:, 1:]`` is -100.

    Computed by hand from ``.logits`` in the model's dtype (transformers' ``labels=`` loss
    upcasts to float32, which breaks float64 gradient checks).
    """
    return gather_targets(torch.log_softmax(next_logits(model, batch, params), dim=-1), batch)


def gather_targets(logprobs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B, T-1)`` log-prob of each label token from ``(B, T-1, V)`` log-probs; 0 off the labels."""
    targets = batch["labels"][:, 1:].to(logprobs.device)
    out = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return out * (targets != IGNORE_INDEX)


def sequence_logprobs(
    model: CausalLM, batch: dict[str, torch.Tensor], params: dict[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """``(B,)`` log p(response | prompt): token log-probs summed over each response."""
    return token_logprobs(model, batch, params).sum(-1)


def response_loss(
    model: CausalLM, batch: dict[str, torch.Tensor], params: dict[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """Mean cross-entropy over the response tokens of ``batch`` (differentiable, any order).

    With ``params`` (a partial name → tensor dict), the model is evaluated at those values
    through ``torch.func.functional_call``: what a meta-gradient through a step needs.
    """
    return _response_ce(model, batch, params, "mean")


def _response_ce(
    model: CausalLM, batch: dict[str, torch.Tensor], params: dict[str, torch.Tensor] | None, reduction: str
) -> torch.Tensor:
    """Cross-entropy of the response tokens (``reduction``: ``mean`` or ``sum`` over them)."""
    logits = next_logits(model, batch, params)
    targets = batch["labels"][:, 1:].to(logits.device)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction=reduction
    )


def row_chunks(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    """``batch`` split into ``parts`` near-equal row slices (micro-batches), each cut to its
    longest row (batches are right-padded, so the cut drops padding only)."""
    n = len(batch["input_ids"])
    if not 1 <= parts <= n:
        raise ValueError(f"cannot split a batch of {n} rows into {parts} parts")
    out = []
    for rows in torch.arange(n).tensor_split(parts):
        width = int(batch["attention_mask"][rows].sum(-1).max())
        out.append({k: v[rows, :width] for k, v in batch.items()})
    return out


def response_loss_parts(model: CausalLM, batch: dict[str, torch.Tensor], parts: int):
    """:func:`response_loss` as ``parts`` closures ``θ ↦ loss`` over micro-batches whose *sum*
    is it: each part's summed response-token cross-entropy over the whole batch's token count.
    What :func:`llm.metagrad.meta_gradient` takes to bound memory by one micro-batch."""
    n_tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    return [
        lambda params, c=chunk: _response_ce(model, c, params, "sum") / n_tokens for chunk in row_chunks(batch, parts)
    ]


# ---------------------------------------------------------------------------- training


def _max_positions(model: PreTrainedModel) -> int | None:
    cfg = model.config
    return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)


@dataclass(frozen=True)
class PretrainSpec:
    """Everything that determines a pretrained tiny base besides the training environment: the
    model's shape, the tokenizer's texts, the (prompt, response) examples and the training settings.

    The recipe itself is fixed (AdamW without weight decay, gradient norm clipped at 1, batches
    drawn with replacement; :data:`CACHE_VERSION` names it). ``seed`` seeds both the initialisation
    and the batch order. ``max_len`` (truncation of each example) defaults to ``model.n_ctx`` and
    ``tokenizer_vocab_size`` to ``model.vocab_size`` (:attr:`context`, :attr:`vocab`).
    """

    model: TinySpec
    texts: Sequence[str]  # the tokenizer's training texts (stored as a tuple)
    examples: Sequence[tuple[str, str]]  # (prompt, response) pairs (stored as a tuple)
    steps: int
    lr: float = 3e-3
    batch_size: int = 16
    seed: int = 0
    max_len: int | None = None
    tokenizer_vocab_size: int | None = None

    def __post_init__(self):
        # tuples: a frozen spec whose corpus cannot change under it
        object.__setattr__(self, "texts", tuple(self.texts))
        object.__setattr__(self, "examples", tuple((p, r) for p, r in self.examples))

    @property
    def context(self) -> int:
        """The length examples are truncated to: ``max_len``, else the model's context."""
        return self.max_len or self.model.n_ctx

    @property
    def vocab(self) -> int:
        """The tokenizer's vocabulary size: ``tokenizer_vocab_size``, else the model's."""
        return self.tokenizer_vocab_size or self.model.vocab_size

    def settings(self) -> dict[str, int | float]:
        """The training settings with the defaults resolved: what the cache key and
        ``pretrain.json`` record."""
        return {
            "steps": self.steps,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "max_len": self.context,
            "tokenizer_vocab_size": self.vocab,
        }

    def record(self) -> dict:
        """The spec as ``pretrain.json`` records it: the model shape, the settings and the number
        of examples."""
        return {"spec": dataclasses.asdict(self.model), **self.settings(), "n_examples": len(self.examples)}


def pretrain(
    model: PreTrainedModel, spec: PretrainSpec, tokenizer: PreTrainedTokenizerBase, *, progress: bool = True
) -> list[float]:
    """Train ``model`` in place on ``spec.examples`` with ``spec``'s settings; returns the loss per step.

    AdamW (no weight decay), response-only cross-entropy, gradient norm clipped at 1, batches drawn
    with replacement from a generator seeded with ``spec.seed`` (the global RNG is not used),
    examples truncated to ``spec.context``. The model is left in eval mode.
    """
    from tqdm.auto import tqdm

    if not spec.examples:
        raise ValueError("pretrain needs at least one example")
    encoded = encode_pairs(tokenizer, spec.examples, spec.context)
    pad = pad_id(tokenizer)
    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)
    model.train()
    losses: list[float] = []
    bar = tqdm(range(spec.steps), desc="pretrain", disable=not progress, leave=False)
    for _ in bar:
        idx = torch.randint(len(encoded), (spec.batch_size,), generator=gen).tolist()
        batch = collate([encoded[i] for i in idx], pad)
        loss = response_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


def json_digest(obj) -> str:
    """sha256 (hex) of ``obj`` as sorted JSON: a cache key's parts."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@torch.no_grad()
def weights_digest(model: torch.nn.Module) -> str:
    """First 12 hex digits of a sha256 over the model's tensors (names, shapes, bytes): which
    base a result was computed on, comparable across machines (the tiny-model cache key names the
    settings and training environment, not the weights they gave)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:12]


def training_environment(device: str = "cpu") -> dict[str, str | int]:
    """What changes pretrained weights beyond the settings and data: library versions, the
    device (its name for a GPU, the CPU's vector instruction set), and on a CPU the number of
    torch threads (a sum split over more threads rounds differently)."""
    import tokenizers
    import transformers

    env: dict[str, str | int] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }
    where = torch.device(device)
    if where.type == "cuda":
        env["device"] = f"cuda:{torch.cuda.get_device_name(where)}"
    else:
        env["device"] = f"{where.type}:{torch.backends.cpu.get_cpu_capability()}"
        env["threads"] = torch.get_num_threads()
    return env


def tiny_cache_key(spec: PretrainSpec, device: str = "cpu") -> str:
    """16 hex digits of a sha256 over everything that changes a pretrained tiny model: the model
    shape, the training settings, the tokenizer texts and examples (:class:`PretrainSpec`), and
    :func:`training_environment`."""
    return json_digest(
        {
            "version": CACHE_VERSION,
            "spec": dataclasses.asdict(spec.model),
            "settings": spec.settings(),
            "texts": json_digest(list(spec.texts)),
            "examples": json_digest([list(e) for e in spec.examples]),
            "environment": training_environment(device),
        }
    )[:16]


def publish_folder(tmp: Path, final: Path) -> None:
    """Rename the fully written folder ``tmp`` to ``final`` (atomic: a killed run leaves no partial
    entry). When another process got there first, its entry is kept and ``tmp`` removed."""
    os.chmod(tmp, 0o755)
    try:
        os.rename(tmp, final)
    except OSError:  # another process finished first: keep its entry
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def discard_folder(folder: Path, why: str) -> None:
    """Move a broken cache entry out of the way (renamed first, so no reader sees it half deleted)."""
    log.warning("cache entry %s %s: rebuilding it", folder, why)
    gone = folder.with_name(f".discarded-{folder.name}-{os.getpid()}-{time.time_ns()}")
    try:
        os.rename(folder, gone)
    except OSError:  # another process moved it already
        return
    shutil.rmtree(gone, ignore_errors=True)


def cached_entry(final: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase] | None:
    """The trained cache entry ``final`` (:func:`write_entry`) if it exists and every file is as
    written (else it is discarded), its ``pretrain.json`` record as ``model.pretrain_info``."""
    if not final.is_dir():
        return None
    changed = changed_files(final)
    if changed:
        discard_folder(final, f"differs from its {HASHES} ({', '.join(changed[:3])})")
        return None
    t0 = time.perf_counter()
    model, tok = load_local(final)
    meta = json.loads((final / "pretrain.json").read_text())
    info = {"cached": True, "path": str(final), "losses": meta["losses"], "seconds": time.perf_counter() - t0}
    model.pretrain_info = info  # type: ignore[assignment]  # a plain attribute; nn.Module types them Tensor | Module
    log.info("loaded cached model %s (%.2f s)", final, info["seconds"])
    return model, tok


def load_or_pretrain(
    spec: PretrainSpec,
    cache_root: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    device: str = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Train tokenizer + tiny model to ``spec`` once (on ``device``), cache them, reload on later calls.

    The cache folder is ``<cache_root>/tiny/<key>`` (:func:`tiny_cache_key`: ``spec``, the library
    versions, device and thread count). It holds ``model.safetensors``, the tokenizer files,
    ``pretrain.json`` (:meth:`PretrainSpec.record`, loss curve, seconds, environment) and
    ``sha256.json``; an entry whose files differ from their recorded hashes is rebuilt. It is
    written to a temporary sibling folder and renamed into place, so a killed run leaves no partial
    entry. ``cache_root`` defaults to ``llm.data.wheels.cache_dir()``. Non-finite losses or weights
    raise :class:`~sweeps.errors.NonFiniteError` (stage ``base``) and nothing is cached.

    The returned model carries ``model.pretrain_info``: ``{"cached": bool, "path": str,
    "losses": [...], "seconds": float}`` (``cached`` is True when nothing was trained).
    """
    if cache_root is None:
        from llm.data.wheels import cache_dir

        cache_root = cache_dir()
    final = Path(cache_root) / "tiny" / tiny_cache_key(spec, device)
    cached = cached_entry(final)
    if cached is not None:
        return cached

    t0 = time.perf_counter()
    environment = training_environment(device)  # as trained (the thread count may change later)
    tok = train_tokenizer(spec.texts, spec.vocab)
    model = to_device(build_tiny(spec.model, tok, spec.seed), device)
    losses = pretrain(model, spec, tok, progress=progress)
    require_finite(torch.tensor(losses), "base", "the pretraining loss")
    require_finite_model(model, "base")
    seconds = time.perf_counter() - t0
    record = {**spec.record(), "environment": environment, "seconds": seconds, "losses": losses}
    write_entry(to_device(model, "cpu"), tok, record, final)
    log.info(
        "pretrained tiny model %s in %.1f s (loss %.3f -> %.3f)",
        final,
        seconds,
        losses[0] if losses else float("nan"),
        losses[-1] if losses else float("nan"),
    )
    info = {"cached": False, "path": str(final), "losses": losses, "seconds": seconds}
    model.pretrain_info = info  # type: ignore[assignment]  # a plain attribute; nn.Module types them Tensor | Module
    return model, tok


def write_entry(model: PreTrainedModel, tok: PreTrainedTokenizerBase, record: dict, final: Path) -> None:
    """The cache entry ``final``: weights, tokenizer, ``record`` as ``pretrain.json`` and their
    hashes, written to a temporary sibling folder and published by renaming it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_atomic(tmp / "pretrain.json", json.dumps(record, indent=1))
        record_hashes(tmp)
        publish_folder(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # (gone once published)


# ---------------------------------------------------------------------------- loading


def load_local(
    path: str | os.PathLike, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a local Hugging Face causal-LM checkpoint folder (model + tokenizer).

    Only safetensors weights are read (``use_safetensors=True``; pickled ``.bin`` files are
    never loaded), ``trust_remote_code=False``, local files only, eager attention.
    Raises ``FileNotFoundError`` if the folder has no ``*.safetensors`` weights and
    :class:`~llm.checks.CheckpointError` if they are not exactly the model's (missing,
    unexpected or mismatched tensors).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    if not any(path.glob("*.safetensors")):
        others = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".gguf"))
        hint = f" (found {', '.join(others)}; only safetensors are loaded)" if others else ""
        raise FileNotFoundError(f"no *.safetensors weights in {path}{hint}")
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(path),
        use_safetensors=True,
        trust_remote_code=False,
        local_files_only=True,
        attn_implementation="eager",
        dtype=dtype,
        output_loading_info=True,
    )
    model, info = cast(tuple[PreTrainedModel, dict], loaded)  # (model, info) with output_loading_info
    _require_complete(path, info)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model.eval(), tok


def _require_complete(path: Path, info: dict) -> None:
    """:class:`CheckpointError` naming the weights file and the first keys when the checkpoint
    lacks weights of its model (transformers would initialise them at random), has weights the
    model does not, or has weights of the wrong shape."""
    problems = []
    for kind, word in (
        ("missing_keys", "missing"),
        ("unexpected_keys", "unexpected"),
        ("mismatched_keys", "mismatched"),
    ):
        keys = sorted(str(k) for k in info.get(kind) or ())
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{len(keys)} {word} ({', '.join(keys[:3])}{more})")
    problems += [str(e).splitlines()[0] for e in info.get("error_msgs") or ()]
    if problems:
        files = sorted(path.glob("*.safetensors"))
        where = files[0] if len(files) == 1 else path / "*.safetensors"
        raise CheckpointError(f"{where}: the checkpoint does not match its model: {'; '.join(problems)}")


# ---------------------------------------------------------------------------- inference


@torch.no_grad()
def response_logprob(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    response: str,
    include_end: bool = True,
) -> float:
    """Sum of the log-probs of ``response``'s tokens given the chat-formatted ``prompt``.

    With ``include_end`` (default) the end-of-turn token is counted too, i.e. the
    probability of answering exactly ``response`` and stopping (the training target of
    :func:`pretrain`). No truncation.
    """
    e = encode_example(tokenizer, prompt, response, None)
    if not include_end and e["labels"][-1] == tokenizer.eos_token_id:
        e["labels"][-1] = IGNORE_INDEX
    batch = collate([e], pad_id(tokenizer))
    return token_logprobs(model, batch).sum().item()


@torch.no_grad()
def greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int = 32,
) -> list[str]:
    """Greedy chat responses to ``prompts`` (left-padded batches, stop at eos).

    Returns the decoded responses without the prompt and without special tokens. Prompts
    too long for the model's context keep their last tokens.
    """
    eos = tokenizer.eos_token_id
    pad = pad_id(tokenizer)
    limit = _max_positions(model)
    was_training = model.training
    model.eval()
    out: list[str] = []
    for s in range(0, len(prompts), batch_size):
        enc = []
        for p in prompts[s : s + batch_size]:
            prompt_ids = encode_prompt(tokenizer, p)
            if limit is not None and len(prompt_ids) + max_new_tokens > limit:
                prompt_ids = prompt_ids[len(prompt_ids) - max(1, limit - max_new_tokens) :]
            enc.append({"input_ids": prompt_ids})
        batch = on_device(model, collate(enc, pad, side="left"))
        ids, mask = batch["input_ids"], batch["attention_mask"]
        n = ids.shape[1]
        done = torch.zeros(len(enc), dtype=torch.bool, device=ids.device)
        new = []
        past = None
        cur_ids, pos = ids, _position_ids(mask)
        for _ in range(max_new_tokens):
            o = model(input_ids=cur_ids, attention_mask=mask, position_ids=pos, past_key_values=past, use_cache=True)
            past = o.past_key_values
            # NaN logits would argmax to token 0 and decode to empty answers: stop instead
            nxt = require_finite(o.logits[:, -1], "evaluation", "next-token logits in greedy decoding").argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            new.append(nxt)
            done |= nxt == eos
            if done.all():
                break
            cur_ids = nxt.unsqueeze(-1)
            pos = pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(cur_ids)], dim=-1)
        gen = torch.stack(new, dim=1) if new else ids[:, n:]
        for row in gen.tolist():
            if eos in row:
                row = row[: row.index(eos)]
            out.append(cast(str, tokenizer.decode(row, skip_special_tokens=True)).strip())
    model.train(was_training)
    return out
