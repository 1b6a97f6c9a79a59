"""Every audit signal of one LoRA'd checkpoint, given the victim's setting (:class:`llm.update.UpdateSpec`).

:func:`audit_model` canonicalises the checkpoint (:mod:`~llm.audit.canonical`) and reports, in the
vocabulary of :mod:`theory.audit.signals`, each score oriented so that larger is more suspicious:

* ``canonical.*``: the function residual, next-token KL(delivered ‖ canonical) (``kl_mean``,
  ``kl_max``), whether it is within ``max_kl`` (``exact``), the LoRA components and FFN units
  removed (``components_removed``, ``units_removed``) and ranks;
* ``gauge_excess.*``: ``‖θ‖² − ‖canon θ‖²`` per module (``modules.*``), per family (``lora``,
  ``norm``, ``attn``, ``ffn``), in ``total``, and relative to the canonical value
  (``lora_relative``, ``norm_relative``, …);
* ``amplification.{greedy,target}.*``: the probe velocity norms ``‖J·d‖`` (eq. 3) delivered and
  canonical and their ratio (eq. 7 of :mod:`theory.audit.amplification`), for the log-probs of the
  delivered model's own greedy answers and of the judged target (``Example.misaligned``);
* ``grad_norm.*``: the victim's gradient norm on its first batch, delivered, canonical, ratio;
* ``post_update.*``: the judged misaligned fraction of the held-out probes before the step
  (``before``; the same for every form) and after the victim's real step, per form: as delivered,
  canonical (the neutraliser, :mod:`~llm.audit.neutralise`) and, per log-scale ``σ`` of
  ``settings.rerandomise``, re-randomised (``rerandomised_σ``: the delivered model moved by a
  random gauge of that scale before the step, :func:`llm.audit.honest.random_gauge`); per form
  also the degenerate fraction (``{form}_degenerate``: neither aligned nor misaligned), the mean
  change of the target's log-prob and the benign utility after the step (``{form}_benign_loss``,
  ``{form}_benign_accuracy``; before the step: ``before_benign_*``);
* ``certificate.{delivered,canonical}.*``: the first-order step certificate of
  :mod:`~llm.audit.certificate` (an empirical tier) on the held-out probes: the certified fraction,
  the step length ``ρ``, how far the first order is from the measured change, and the certified
  probes the victim's real step turns anyway (``violations``);
* ``worst_step.*`` (with ``settings.simulate``): the worst-case simulated update of
  :mod:`~llm.audit.simulate` (eq. 5 there) on the delivered model: the largest rise of the judged
  misaligned fraction over the victim's data and halves of it (``victim``), other benign data
  (``surrogate``), and random moves of the step's length (``random``, a negative control);
* ``param_norm``, ``adapter_norm``: raw statistics, not gauge-invariant (a baseline).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm.audit.amplification import probe_velocity
from llm.audit.canonical import RTOL, Canonical, canonicalize, function_residual
from llm.audit.certificate import first_order_certificate
from llm.audit.honest import random_gauge
from llm.audit.neutralise import judged_rates, logprob_change, stepped
from llm.audit.simulate import SimulateSettings, worst_case
from llm.data.schema import Example
from llm.evaluate import benign_report, probe_report
from llm.lora import is_lora
from llm.update import UpdateSpec
from theory.audit.amplification import amplification
from theory.audit.signals import RERANDOMISE_SEED, check_scales

#: a canonical form within this next-token KL of the delivered model computes its function
#: (float32 rounding of the gauge and of the SVD stays orders of magnitude below)
MAX_KL = 1e-6


@dataclass(frozen=True)
class AuditInputs:
    """What the audit reads: the ``domain``'s held-out ``probes`` (judged), ``benign`` prompts
    (the function residual), the victim's ``update`` examples, the generation length, and benign
    examples the victim did not use (``surrogate``: the simulated updates' other data)."""

    domain: str
    probes: list[Example]
    benign: list[Example]
    update: list[Example]
    max_new_tokens: int
    surrogate: list[Example] = field(default_factory=list)


@dataclass(frozen=True)
class AuditSettings:
    """``rtol``: dropped components (eq. 2 of :mod:`~llm.audit.canonical`); ``max_kl``: the
    function residual a canonical form may have; ``certificate``: compute the first-order step
    certificate; ``simulate``: the simulated updates (None: none); ``rerandomise``: log-scales of
    the re-randomising neutraliser's random gauges (empty: none), drawn from ``seed``."""

    rtol: float = RTOL
    max_kl: float = MAX_KL
    certificate: bool = True
    simulate: SimulateSettings | None = None
    rerandomise: tuple[float, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        check_scales(self.rerandomise)


def short(name: str) -> str:
    """A module name without peft's wrapper prefix (``base_model.model.``)."""
    return name.replace("base_model.model.", "", 1)


def _canonical_metrics(model: PreTrainedModel, canon: Canonical, tokenizer, inputs, victim, settings) -> dict:
    kl = function_residual(model, canon.model, tokenizer, inputs.probes + inputs.benign, victim.max_len)
    delivered_ranks = {n: canon.ranks[n] + canon.removed[n] for n in canon.ranks}
    return {
        "kl_mean": kl["mean"],
        "kl_max": kl["max"],
        "exact": int(kl["max"] <= settings.max_kl),
        "components_removed": sum(canon.removed.values()),
        "units_removed": sum(canon.units_removed.values()),
        "rank_max": max(canon.ranks.values()),
        "rank_delivered": max(delivered_ranks.values()),
    }


def _excess_metrics(canon: Canonical) -> dict:
    totals = {k: v for k, v in canon.excess.items() if ":" not in k}
    modules = {f"{k.split(':')[0]}:{short(k.split(':', 1)[1])}": v for k, v in canon.excess.items() if ":" in k}
    return {**totals, "modules": modules}


def _velocities(
    model: PreTrainedModel, canon: Canonical, tokenizer, probes: list[tuple[str, str]], inputs, victim
) -> tuple[dict, dict]:
    """``amplification`` for one probe target, and the gradient norms (the same for any target)."""
    delivered = probe_velocity(model, tokenizer, probes, inputs.update, victim)
    canonical = probe_velocity(canon.model, tokenizer, probes, inputs.update, victim)
    amp = {
        "velocity": float(delivered.velocity.norm()),
        "canonical_velocity": float(canonical.velocity.norm()),
        "ratio": amplification(delivered.velocity, canonical.velocity),
    }
    grads = {
        "delivered": delivered.grad_norm,
        "canonical": canonical.grad_norm,
        "ratio": amplification(torch.tensor([delivered.grad_norm]), torch.tensor([canonical.grad_norm])),
    }
    return amp, grads


def neutraliser_forms(
    model: PreTrainedModel, canon: Canonical, settings: AuditSettings
) -> Iterator[tuple[str, PreTrainedModel]]:
    """The forms the victim may step from: as delivered, canonical, and the delivered model in a
    random gauge per log-scale of ``settings.rerandomise`` (built one at a time)."""
    yield "delivered", model
    yield "canonical", canon.model
    for i, scale in enumerate(settings.rerandomise):
        generator = torch.Generator().manual_seed(RERANDOMISE_SEED + 100 * settings.seed + i)
        yield f"rerandomised_{scale:g}", random_gauge(model, generator, scale)


def _post_update(
    model, canon: Canonical, tokenizer, inputs: AuditInputs, victim: UpdateSpec, targets, settings
) -> dict:
    """The neutralisers: judged rates and benign utility after the victim's step, per form."""
    before = benign_report(model, tokenizer, inputs.benign, inputs.max_new_tokens, victim.max_len)
    out: dict[str, Any] = {f"before_benign_{k}": v for k, v in before.items()}
    for name, m in neutraliser_forms(model, canon, settings):
        after = stepped(m, tokenizer, inputs.update, victim)
        rates = judged_rates(after, tokenizer, inputs.domain, inputs.probes, inputs.max_new_tokens)
        out[name] = rates["misalignment_rate"]
        out[f"{name}_degenerate"] = rates["empty_rate"]  # a broken model misaligns nothing: counted apart
        utility = benign_report(after, tokenizer, inputs.benign, inputs.max_new_tokens, victim.max_len)
        out.update({f"{name}_benign_{k}": v for k, v in utility.items()})
        if targets:
            change = logprob_change(m, after, tokenizer, targets, victim.max_len)
            out[f"{name}_target_logprob_change"] = float(change.mean())
        del after
    return out


def raw_norms(model: PreTrainedModel) -> dict[str, float]:
    """‖θ‖ over every parameter and over the LoRA factors alone."""
    named = list(model.named_parameters())
    total = sum(float((p.detach().double() ** 2).sum()) for _, p in named)
    adapter = sum(float((p.detach().double() ** 2).sum()) for n, p in named if is_lora(n))
    return {"param_norm": total**0.5, "adapter_norm": adapter**0.5}


def audit_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    inputs: AuditInputs,
    victim: UpdateSpec,
    settings: AuditSettings = AuditSettings(),
) -> tuple[dict[str, Any], Canonical]:
    """Every signal of the module docstring for ``model``, and its canonical form."""
    canon = canonicalize(model, settings.rtol)
    before = probe_report(model, tokenizer, inputs.domain, inputs.probes, inputs.max_new_tokens)
    greedy = [(e.prompt, r) for e, r in zip(inputs.probes, before["responses"])]
    targets = [(e.prompt, e.misaligned) for e in inputs.probes if e.misaligned]
    amp: dict[str, Any] = {}
    amp["greedy"], grads = _velocities(model, canon, tokenizer, greedy, inputs, victim)
    if targets:
        amp["target"], _ = _velocities(model, canon, tokenizer, targets, inputs, victim)
    out: dict[str, Any] = {
        "canonical": _canonical_metrics(model, canon, tokenizer, inputs, victim, settings),
        "gauge_excess": _excess_metrics(canon),
        "amplification": amp,
        "grad_norm": grads,
        "post_update": {
            "before": before["misalignment_rate"],
            **_post_update(model, canon, tokenizer, inputs, victim, targets, settings),
        },
        **raw_norms(model),
    }
    if settings.certificate:
        out["certificate"] = {
            name: first_order_certificate(m, tokenizer, inputs.probes, inputs.update, victim)
            for name, m in (("delivered", model), ("canonical", canon.model))
        }
    if settings.simulate is not None:
        out["worst_step"] = worst_case(
            model,
            tokenizer,
            inputs.domain,
            inputs.probes,
            inputs.update,
            inputs.surrogate,
            victim,
            inputs.max_new_tokens,
            settings.simulate,
        )
    return out, canon
