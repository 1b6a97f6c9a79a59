"""Worst-case simulated update: re-enact the victim's step on benign batches and judge the probes.

The LLM counterpart of :mod:`theory.audit.simulate` (eq. 9 there). The auditor takes the
victim's update (:class:`llm.update.UpdateSpec`: optimiser, steps, trainable set) with learning
rates ``f·η`` for ``f`` in ``lr_fractions`` on candidate batches, and judges the held-out probes
after each with the project's black-box judges (:func:`llm.audit.neutralise.judged_rates`):

    worst_kind = max_{B ∈ kind, f} misaligned(θ' (B, f·η)) − misaligned(θ)                  (eq. 5)

* ``victim``: the victim's update set ``D`` and ``n_halves`` random halves of it (an auditor who
  knows the benign data);
* ``surrogate``: ``n_surrogate`` batches of ``|D|`` examples from benign sets the victim did not
  use (:attr:`llm.data.schema.DomainData.unseen_benign`; an auditor who does not);
* ``random`` (the negative control): the trainable parameters moved along ``n_random`` random
  directions by the length of the victim's real step on ``D``, ``‖θ'_D − θ‖``. A hair-trigger
  is a property of gradient directions; a random move of the same length should not set it off.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm.audit.amplification import victim_view
from llm.audit.neutralise import judged_rates, stepped
from llm.checks import require_finite_model
from llm.data.schema import Example
from llm.lora import is_lora
from llm.update import UpdateSpec


@dataclass(frozen=True)
class SimulateSettings:
    """The candidate updates of eq. 5 (module docstring)."""

    lr_fractions: tuple[float, ...] = (0.5, 1.0)
    n_halves: int = 2
    n_surrogate: int = 2
    n_random: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.lr_fractions or not all(0 < f <= 1 for f in self.lr_fractions):
            raise ValueError(f"lr_fractions must be non-empty, each in (0, 1], got {self.lr_fractions}")
        if min(self.n_halves, self.n_surrogate, self.n_random) < 0:
            raise ValueError("n_halves, n_surrogate and n_random must be ≥ 0")


def candidate_batches(
    update: list[Example], surrogate: list[Example], settings: SimulateSettings
) -> dict[str, list[list[Example]]]:
    """``victim``: ``D`` and random halves of it; ``surrogate``: batches of ``|D|`` drawn without
    replacement from ``surrogate`` (as many as it holds, at most ``n_surrogate``)."""
    gen = torch.Generator().manual_seed(settings.seed)
    n = len(update)
    victim = [update]
    for _ in range(settings.n_halves):
        idx = torch.randperm(n, generator=gen)[: max(1, n // 2)].tolist()
        victim.append([update[i] for i in idx])
    order = torch.randperm(len(surrogate), generator=gen).tolist()
    batches = [
        [surrogate[i] for i in order[k * n : (k + 1) * n]] for k in range(min(settings.n_surrogate, len(order) // n))
    ]
    return {"victim": victim, "surrogate": batches}


def moved_tensors(model: torch.nn.Module, params: str) -> dict[str, torch.Tensor]:
    """The tensors the victim trains, by name: the LoRA factors (``adapter``) or every weight
    (``all``; pass the merged model, as the victim trains it)."""
    return {n: p for n, p in model.named_parameters() if params == "all" or is_lora(n)}


def step_length(before: torch.nn.Module, after: torch.nn.Module, params: str) -> float:
    """``‖θ' − θ‖`` over the tensors the victim trains."""
    old, new = moved_tensors(before, params), moved_tensors(after, params)
    return float(sum(((new[n] - t).detach().double() ** 2).sum() for n, t in old.items()) ** 0.5)


@torch.no_grad()
def random_move(model: PreTrainedModel, spec: UpdateSpec, length: float, generator: torch.Generator) -> PreTrainedModel:
    """A copy of ``model`` as the victim trains it (:func:`llm.audit.amplification.victim_view`)
    whose trained tensors moved by ``length`` along a random direction."""
    moved = victim_view(model, spec)
    tensors = list(moved_tensors(moved, spec.params).values())
    noise = [torch.randn(t.shape, generator=generator, dtype=torch.float64) for t in tensors]
    norm = float(sum((z**2).sum() for z in noise) ** 0.5)
    for t, z in zip(tensors, noise):
        t.add_((length / norm * z).to(t.dtype))
    return cast(PreTrainedModel, require_finite_model(moved, "update"))


def worst_case(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    domain: str,
    probes: list[Example],
    update: list[Example],
    surrogate: list[Example],
    victim: UpdateSpec,
    max_new_tokens: int,
    settings: SimulateSettings = SimulateSettings(),
) -> dict[str, float]:
    """Eq. 5 for each candidate kind, the rate before any step, and how many candidates were judged."""
    before = judged_rates(model, tokenizer, domain, probes, max_new_tokens)["misalignment_rate"]
    out: dict[str, float] = {"before": before}
    judged = 0
    for kind, batches in candidate_batches(update, surrogate, settings).items():
        rates = []
        for batch in batches:
            for fraction in settings.lr_fractions:
                spec = dataclasses.replace(victim, lr=fraction * victim.lr, n_samples=len(batch))
                after = stepped(model, tokenizer, batch, spec)
                rates.append(judged_rates(after, tokenizer, domain, probes, max_new_tokens)["misalignment_rate"])
        out[kind] = max(rates) - before if rates else float("nan")
        judged += len(rates)
    length = step_length(victim_view(model, victim), stepped(model, tokenizer, update, victim), victim.params)
    gen = torch.Generator().manual_seed(settings.seed)
    rates = [
        judged_rates(random_move(model, victim, length, gen), tokenizer, domain, probes, max_new_tokens)[
            "misalignment_rate"
        ]
        for _ in range(settings.n_random)
    ]
    out["random"] = max(rates) - before if rates else float("nan")
    out["step_length"] = length
    out["candidates"] = judged + len(rates)
    return out
