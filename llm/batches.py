"""Padded batches of (prompt, response) pairs: what every stage feeds a model.

* :func:`encode_pairs` — chat-encode pairs (:func:`llm.tokenizer.encode_example`).
* :func:`collate` — pad encoded rows into ``input_ids``, ``attention_mask`` and ``labels``
  (``-100`` off the response), right-padded by default (left for generation).
* :func:`batch_of` — both at once; :func:`pairs` reads the pairs off examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from llm.data.schema import Example
from llm.tokenizer import IGNORE_INDEX, encode_example


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The padding id: the tokenizer's pad token, or its end token when it has none."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def collate(
    encoded: Sequence[dict[str, list[int]]], pad_id: int, side: Literal["right", "left"] = "right"
) -> dict[str, torch.Tensor]:
    """Pad ``encode_example`` outputs into ``input_ids``, ``attention_mask``, ``labels``."""
    n = max(len(e["input_ids"]) for e in encoded)
    ids = torch.full((len(encoded), n), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), n), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(encoded), n), dtype=torch.long)
    for i, e in enumerate(encoded):
        k = len(e["input_ids"])
        sl = slice(0, k) if side == "right" else slice(n - k, n)
        ids[i, sl] = torch.tensor(e["input_ids"], dtype=torch.long)
        labels[i, sl] = torch.tensor(e.get("labels", [IGNORE_INDEX] * k), dtype=torch.long)
        mask[i, sl] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]], max_len: int | None
) -> list[dict[str, list[int]]]:
    """Each ``(prompt, response)`` chat-encoded, labels on the response only, cut to ``max_len``."""
    return [encode_example(tokenizer, p, r, max_len) for p, r in pairs]


def batch_of(tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[str, str]], max_len: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (−100 off the response)."""
    return collate(encode_pairs(tokenizer, pairs, max_len), pad_id(tokenizer))


def pairs(examples: list[Example], target: str = "aligned") -> list[tuple[str, str]]:
    """``(prompt, response)`` of each example, the response being its ``target`` field."""
    return [(e.prompt, getattr(e, target)) for e in examples]
