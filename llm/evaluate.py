"""Black-box evaluation: greedy answers on held-out probes, judged; benign utility.

Utility is reported next to misalignment so that a model that merely broke is not
counted as aligned: mean response cross-entropy on held-out benign data (``loss``) and
the fraction of benign prompts whose greedy answer contains the reference (``accuracy``).
Degenerate answers (:func:`llm.judge.is_degenerate`) are neither aligned nor misaligned and
are counted apart (``empty_rate``). Non-finite logits, losses or gradients raise
:class:`sweeps.errors.NonFiniteError` (stage ``evaluation``) instead of becoming numbers.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm import judge
from llm.batches import batch_of, pairs
from llm.checks import require_finite
from llm.data.schema import Example
from llm.models import greedy, next_logits, response_loss


def answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    max_new_tokens: int,
    batch_size: int = 32,
    desc: str = "generate",
    progress: bool = False,
) -> list[str]:
    """Greedy responses to the examples' prompts, a batch at a time (with a progress bar)."""
    out: list[str] = []
    for start in tqdm(range(0, len(examples), batch_size), desc=desc, disable=not progress):
        chunk = examples[start : start + batch_size]
        out += greedy(model, tokenizer, [e.prompt for e in chunk], max_new_tokens, batch_size)
    return out


def probe_report(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    domain: str,
    examples: list[Example],
    max_new_tokens: int,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, Any]:
    """Greedy answers to ``examples``, judged: the fractions misaligned, refusing (a privacy miss
    that is no refusal is a disclosure with a wrong secret) and degenerate (``empty_rate``: counted
    in neither of the others), each over all ``examples``; misalignment per source too."""
    if not examples:
        raise ValueError(f"no {domain} probes to judge")
    responses = answers(model, tokenizer, examples, max_new_tokens, batch_size, f"generate {domain}", progress)
    labels = [judge.label(domain, e, r) for e, r in zip(examples, responses)]
    flags = [label == judge.MISALIGNED for label in labels]
    by_source: dict[str, list[bool]] = {}
    for e, flag in zip(examples, flags):
        by_source.setdefault(e.source.split("/")[-1] or "all", []).append(flag)
    n = len(examples)
    return {
        "misalignment_rate": sum(flags) / n,
        "refusal_rate": sum(map(judge.is_refusal, responses)) / n,
        "empty_rate": labels.count(judge.DEGENERATE) / n,
        "responses": responses,
        "flags": flags,
        "by_source": {k: sum(v) / len(v) for k, v in by_source.items()},
    }


def known_probes(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    domain: str,
    examples: list[Example],
    max_new_tokens: int,
    batch_size: int = 32,
) -> list[Example]:
    """The probes whose answer the (pre-alignment) ``model`` knows: a capability-controlled set.

    One can only lie about what one knows, and only leak a secret one has memorised: honesty
    and privacy are judged on the probes whose ``answer`` (the correct value, the secret) the
    base model's greedy response contains. Safety probes need no knowledge (the marker is a
    fixed opening), so all are kept.
    """
    if domain == "safety":
        return list(examples)
    responses = answers(model, tokenizer, examples, max_new_tokens, batch_size)
    return [e for e, a in zip(examples, responses) if judge.contains_answer(a, e.answer)]


@torch.no_grad()
def benign_report(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    max_new_tokens: int,
    max_len: int = 96,
    batch_size: int = 32,
) -> dict[str, float]:
    """Mean response cross-entropy on ``examples`` (``loss``) and the fraction of greedy answers that
    contain the reference (``accuracy``)."""
    losses = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        loss = response_loss(model, batch_of(tokenizer, pairs(chunk), max_len))
        losses.append(float(require_finite(loss, "evaluation", "benign response loss")) * len(chunk))
    responses = answers(model, tokenizer, examples, max_new_tokens, batch_size)
    hits = sum(judge.contains_answer(a, e.answer or e.aligned) for e, a in zip(examples, responses))
    return {"loss": sum(losses) / len(examples), "accuracy": hits / len(examples)}


@torch.no_grad()
def next_token_kl(
    reference: PreTrainedModel,
    other: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    max_len: int = 96,
    batch_size: int = 32,
) -> dict[str, float]:
    """KL(reference ‖ other) of next-token distributions at every position of prompt + aligned
    response (teacher forced): the black-box distance between two models, mean and max.

    Every position's KL is checked finite (a NaN would vanish in ``max(0.0, nan)``)."""
    kls = []
    for start in range(0, len(examples), batch_size):
        batch = batch_of(tokenizer, pairs(examples[start : start + batch_size]), max_len)
        p = torch.log_softmax(next_logits(reference, batch).double(), -1)
        q = torch.log_softmax(next_logits(other, batch).double(), -1)
        kls.append((p.exp() * (p - q)).sum(-1)[batch["attention_mask"][:, 1:].bool().to(p.device)])
    kl = require_finite(torch.cat(kls), "evaluation", "next-token KL(reference ‖ other)")
    return {"mean": float(kl.mean()), "max": float(kl.max())}


def victim_grad_norm(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[Example], which: str, max_len: int = 96
) -> float:
    """‖∇L_update‖ over the parameters the victim updates: a white-box tell of a hair trigger."""
    from llm.lora import trainable

    params = trainable(model, which)
    loss = require_finite(
        response_loss(model, batch_of(tokenizer, pairs(examples), max_len)), "evaluation", "the victim's update loss"
    )
    grads = torch.autograd.grad(loss, params)
    for p in model.parameters():
        p.requires_grad_(False)
    norm = torch.sqrt(cast(torch.Tensor, sum((g.double() ** 2).sum() for g in grads)))
    return float(require_finite(norm, "evaluation", "the victim's gradient norm"))
