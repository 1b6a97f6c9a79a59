"""The victim's benign update, and the loss every stage shares.

Default (the paper's): one full-batch SGD step, lr 1e-4, on 32 benign samples, mean token
cross-entropy over response tokens, updating the shipped adapter. Options: optimizer
(``sgd`` | ``adam``), lr, number of steps, batch size, and which parameters move
(``adapter``: the shipped LoRA weights; ``all``: every weight of the merged model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from llm.batches import batch_of, pairs
from llm.data.schema import Example
from llm.lora import merged, trainable
from llm.models import CausalLM, response_loss


@dataclass(frozen=True)
class UpdateSpec:
    optimizer: str = "sgd"
    lr: float = 1e-4
    steps: int = 1
    batch_size: int = 32  # ≥ len(update set) means full batch
    params: str = "adapter"  # adapter | all
    data: str = "update"  # the domain's update set, or a key of DomainData.unseen_benign
    n_samples: int = 32
    max_len: int = 96
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"update.optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.params not in ("adapter", "all"):
            raise ValueError(f"update.params must be 'adapter' or 'all', got {self.params!r}")
        if self.lr <= 0 or self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"update needs lr > 0, steps ≥ 1, batch_size ≥ 1: {self}")


def update_set(data, spec: UpdateSpec) -> list[Example]:
    """The victim's benign samples: the domain's update set or an unseen benign set."""
    if spec.data == "update":
        examples = data.update
    elif spec.data in data.unseen_benign and spec.data != "facts":
        examples = data.unseen_benign[spec.data]
    else:
        choices = ["update"] + sorted(k for k in data.unseen_benign if k != "facts")
        raise ValueError(f"update.data={spec.data!r} is not a benign set of {data.domain}; choose from {choices}")
    if len(examples) < spec.n_samples:
        raise ValueError(f"update.n_samples={spec.n_samples} but {spec.data} has {len(examples)} examples")
    return examples[: spec.n_samples]


def victim_update(
    model: CausalLM, tokenizer: PreTrainedTokenizerBase, examples: list[Example], spec: UpdateSpec
) -> CausalLM:
    """Apply the victim's update in place (merging the adapter first for ``params=all``)."""
    if spec.params == "all":
        model = merged(model)
    model.train()
    params = trainable(model, spec.params)
    opt = torch.optim.SGD(params, lr=spec.lr) if spec.optimizer == "sgd" else torch.optim.Adam(params, lr=spec.lr)
    gen = torch.Generator().manual_seed(spec.seed)
    data = pairs(examples)
    for _ in range(spec.steps):
        order = torch.randperm(len(data), generator=gen)[: spec.batch_size].tolist()
        batch = batch_of(tokenizer, [data[i] for i in order], spec.max_len)
        opt.zero_grad()
        response_loss(model, batch).backward()
        opt.step()
    model.eval()
    return model
