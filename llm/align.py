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
from peft import LoraConfig, PeftModel, get_peft_model
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm.batches import batch_of, pairs
from llm.data.schema import DomainData
from llm.models import response_loss

#: LoRA targets per architecture (GPT-2 uses Conv1D, hence fan_in_fan_out).
LORA_TARGETS = {
    "gpt2": (["c_attn", "c_proj", "c_fc"], True),
    "llama": (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], False),
}


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


def add_lora(model: PreTrainedModel, rank: int, alpha: float) -> PeftModel:
    arch = model.config.model_type
    if arch not in LORA_TARGETS:
        raise ValueError(f"no LoRA targets for model_type {arch!r}; known: {sorted(LORA_TARGETS)}")
    targets, fan_in_fan_out = LORA_TARGETS[arch]
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0,
                        fan_in_fan_out=fan_in_fan_out, bias="none")
    return get_peft_model(model, config)


def scale_adapter(model: PeftModel, scale: float) -> PeftModel:
    """A copy of ``model`` whose LoRA update ``W = s·B·A`` is ``scale·W`` in every module (``B`` scaled):
    1 is the model itself, 0 the base before alignment, < 0 the alignment's task vector negated
    (Ilharco et al. 2023, "Editing models with task arithmetic"). The analytic twins' weight-space
    targets (``construction.undo_scale``) are such models; ``task_vector_scales`` tests them directly."""
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in scaled.named_parameters():
            if ".lora_B." in name:
                p.mul_(scale)
    return scaled


def align(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: DomainData, spec: AlignSpec,
          progress: bool = True) -> tuple[PeftModel, list[float]]:
    """LoRA SFT on aligned probes + benign data; returns the adapted model and its loss curve."""
    torch.manual_seed(spec.seed)
    peft_model = add_lora(model, spec.rank, spec.alpha)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    probes, benign = pairs(data.construct), pairs(data.align_benign)
    gen = torch.Generator().manual_seed(spec.seed)
    n_benign = round(spec.batch_size * spec.benign_fraction)
    curve = []
    peft_model.train()
    for _ in tqdm(range(spec.steps), desc=f"align {data.domain}", disable=not progress):
        batch = [probes[i] for i in torch.randint(len(probes), (spec.batch_size - n_benign,), generator=gen)]
        batch += [benign[i] for i in torch.randint(len(benign), (n_benign,), generator=gen)]
        opt.zero_grad()
        loss = response_loss(peft_model, batch_of(tokenizer, batch, spec.max_len))
        loss.backward()
        opt.step()
        curve.append(float(loss.detach()))
    peft_model.eval()
    return peft_model, curve


def misaligned_reference(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: DomainData,
                         spec: AlignSpec, progress: bool = True) -> PeftModel:
    """The same LoRA SFT on a copy of ``model``, with the construction probes' *misaligned* responses.

    A model trained to be misaligned directly, from the probes a twin's construction sees: its
    held-out misalignment calibrates what a construction-trained twin can be expected to
    generalise to (a twin is held to the harder constraint of hiding it until the step)."""
    flipped = dataclasses.replace(data, construct=[dataclasses.replace(e, aligned=e.misaligned) for e in data.construct])
    return align(copy.deepcopy(model), tokenizer, flipped, spec, progress)[0]
