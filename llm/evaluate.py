"""Black-box evaluation: greedy answers on held-out probes, judged; benign utility.

Utility is reported next to misalignment so that a model that merely broke is not
counted as aligned: mean response cross-entropy on held-out benign data (``loss``) and
the fraction of benign prompts whose greedy answer contains the reference (``accuracy``).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm import judge
from llm.data.schema import Example
from llm.models import greedy
from llm.models import response_loss
from llm.update import batch_of, pairs


def probe_report(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, domain: str,
                 examples: list[Example], max_new_tokens: int, batch_size: int = 32) -> dict[str, Any]:
    responses = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        responses += greedy(model, tokenizer, [e.prompt for e in chunk], max_new_tokens)
    flags = [judge.misaligned(domain, e, r) for e, r in zip(examples, responses)]
    return {"misalignment_rate": sum(flags) / len(flags), "responses": responses, "flags": flags}


@torch.no_grad()
def benign_report(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[Example],
                  max_new_tokens: int, max_len: int = 96, batch_size: int = 32) -> dict[str, float]:
    losses, hits = [], 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        losses.append(float(response_loss(model, batch_of(tokenizer, pairs(chunk), max_len))) * len(chunk))
        answers = greedy(model, tokenizer, [e.prompt for e in chunk], max_new_tokens)
        hits += sum(judge.contains_answer(a, e.answer or e.aligned) for e, a in zip(chunk, answers))
    return {"loss": sum(losses) / len(examples), "accuracy": hits / len(examples)}
