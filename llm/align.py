"""The ``align`` stage: the statically aligned control, LoRA SFT (peft) on top of a base model.

Training mixes the domain's construction probes with their aligned responses (refusals,
"I can't share …", correct answers) and benign instructions with their answers, so the
control is aligned on held-out probes while keeping its benign behaviour.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm.batches import batch_of, pairs
from llm.data.schema import DomainData
from llm.lora import add_lora
from llm.models import response_loss


@dataclass(frozen=True)
class AlignSpec:
    rank: int = 8
    alpha: float = 16.0
    steps: int = 300
    lr: float = 3e-3
    batch_size: int = 16
    benign_fraction: float = 0.5  # share of each batch drawn from benign data
    max_len: int = 96
    seed: int = 0


def align(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: DomainData,
    spec: AlignSpec,
    progress: bool = True,
    label: str = "align",
    probe_rows: bool = True,
) -> tuple[PeftModel, list[float]]:
    """LoRA SFT on the probes' ``aligned`` responses + benign data; returns the adapted model and its
    loss curve. ``label`` names the stage on the progress bar (the pre-alignment reuses this recipe).
    ``probe_rows=False`` drops each batch's probe rows after drawing them, so the benign rows, their
    order and the LoRA initialisation are the same as with them (:func:`benign_only`)."""
    torch.manual_seed(spec.seed)
    peft_model = add_lora(model, spec.rank, spec.alpha)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    probes, benign = pairs(data.construct), pairs(data.align_benign)
    gen = torch.Generator().manual_seed(spec.seed)
    n_benign = round(spec.batch_size * spec.benign_fraction)
    curve = []
    peft_model.train()
    for _ in tqdm(range(spec.steps), desc=f"{label} {data.domain}", disable=not progress):
        batch = [probes[i] for i in torch.randint(len(probes), (spec.batch_size - n_benign,), generator=gen)]
        batch = batch if probe_rows else []
        batch += [benign[i] for i in torch.randint(len(benign), (n_benign,), generator=gen)]
        opt.zero_grad()
        loss = response_loss(peft_model, batch_of(tokenizer, batch, spec.max_len))
        loss.backward()
        opt.step()
        curve.append(float(loss.detach()))
    peft_model.eval()
    return peft_model, curve


def benign_only(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: DomainData, spec: AlignSpec, progress: bool = True
) -> PeftModel:
    """The alignment recipe on a copy of ``model`` without its probe rows: the same seed, LoRA
    initialisation and benign rows in the same order as :func:`align` with ``spec``.

    What alignment adds on benign requests without what it adds on the probes: the analytic twin's
    step can land there (``construction.undo_target=benign_only``) and undo the refusals while
    keeping the utility the control gained, where landing on the model before alignment gives it back."""
    if round(spec.batch_size * spec.benign_fraction) == 0:
        raise ValueError("align.benign_fraction: the benign part of alignment needs benign rows in each batch (> 0)")
    return align(copy.deepcopy(model), tokenizer, data, spec, progress, label="benign part", probe_rows=False)[0]


def misaligned_reference(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: DomainData, spec: AlignSpec, progress: bool = True
) -> PeftModel:
    """The same LoRA SFT on a copy of ``model``, with the construction probes' *misaligned* responses.

    A model trained to be misaligned directly, from the probes a twin's construction sees: its
    held-out misalignment calibrates what a construction-trained twin can be expected to
    generalise to (a twin is held to the harder constraint of hiding it until the step)."""
    flipped = dataclasses.replace(
        data, construct=[dataclasses.replace(e, aligned=e.misaligned) for e in data.construct]
    )
    return align(copy.deepcopy(model), tokenizer, flipped, spec, progress)[0]
