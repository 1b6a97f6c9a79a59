"""``experiment=audit``: the white-box audit of LoRA'd checkpoints (:mod:`llm.audit`).

Two modes:

* **a user's checkpoint** (``audit.adapter`` set): ``model`` is the base (e.g. ``model=local
  model.path=DIR``) and ``audit.adapter`` a peft adapter folder (``save_pretrained``, safetensors
  only). The audited model is ``model``; with ``audit.control`` (another adapter on the same
  base, known honest) that adapter is audited too and is the honest reference.
* **in the pipeline** (``audit.adapter=null``): the control and, with ``construction`` other
  than ``none``, its twin are built from the config exactly as ``experiment=hairtrigger`` builds
  them; both are audited, the control is the honest reference.

Every audited model gets every signal of :func:`llm.audit.signals.audit_model` under the victim's
setting (``update``; the first cell of ``victims`` where several are given), and a verdict. With
``audit.calibration`` (a population summary, by default the published
``results/llm/audit_population_summary.json``) each signal's threshold is that population's, at
its false-positive rate on all its honest models (tiny GPT-2 and Llama, safety, the paper's
step: on other models and settings it is an extrapolation). With ``audit.calibration=null`` the
rule is eq. 4 of :mod:`llm.audit.verdict`: flagged when a score exceeds ``audit.tau`` times the
control's, and at least ``audit.tau · audit.floor`` (uncalibrated). With a twin and its
control, ``collapse.*`` compares their canonical forms: the largest gap between their adapter
products ``s·B·A`` and between their probes' log-prob change under the victim's real step,
canonical and delivered.
"""

from __future__ import annotations

import copy
import math
from typing import Any, cast

import torch
from omegaconf import DictConfig
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm import gauges
from llm.audit.canonical import Canonical
from llm.audit.checkpoint import load_adapter
from llm.audit.neutralise import logprob_change, stepped
from llm.audit.signals import AuditInputs, AuditSettings, audit_model
from llm.audit.simulate import SimulateSettings
from llm.audit.verdict import SIGNALS, Rule, calibrated, thresholds, verdict
from llm.base import load_base
from llm.checks import require_finite_model
from llm.data.schema import DomainData, Example
from llm.data.splits import load_domain
from llm.experiments.hairtrigger import (
    aligned_control,
    check_settings,
    constructed_twin,
    judged_probes,
    require_finite_metrics,
)
from llm.lora import LoraFactors, lora_layers
from llm.update import UpdateSpec, update_set
from sweeps.errors import ConfigError
from theory.experiments.audit import rerandomise_scales

Models = dict[str, PreTrainedModel]


def settings(cfg: DictConfig) -> tuple[AuditSettings, Rule]:
    """``audit.*`` checked (a bad value is a :class:`ConfigError` naming its key)."""
    a = cfg.get("audit")
    if a is None:
        raise ConfigError("audit", "missing: run with experiment=audit (conf/llm/experiment/audit.yaml)")
    for key, low, high in (("rtol", 0.0, 1.0), ("max_kl", 0.0, math.inf), ("tau", 0.0, math.inf)):
        value = a.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not low < float(value) < high:
            raise ConfigError(f"audit.{key}", f"must be a number in ({low:g}, {high:g}), not {value!r}")
    if not isinstance(a.get("floor"), (int, float)) or not 0 <= float(a.floor) < math.inf:
        raise ConfigError("audit.floor", f"must be a finite number ≥ 0, not {a.get('floor')!r}")
    for key in ("adapter", "control", "calibration"):
        if a.get(key) is not None and not str(a[key]).strip():
            raise ConfigError(f"audit.{key}", "must be a folder or null")
    if a.get("control") is not None and a.get("adapter") is None:
        raise ConfigError("audit.control", "is the honest reference of audit.adapter: set audit.adapter too")
    simulate = None
    if a.get("simulate") is not None and a.simulate.enabled:
        options = {k: v for k, v in a.simulate.items() if k != "enabled"}
        try:
            simulate = SimulateSettings(**{**options, "lr_fractions": tuple(options.get("lr_fractions", (0.5, 1.0)))})
        except (TypeError, ValueError) as error:
            raise ConfigError("audit.simulate", str(error)) from error
    certificate = a.get("certificate", True)
    if not isinstance(certificate, bool):
        raise ConfigError("audit.certificate", f"must be true or false, not {certificate!r}")
    audit = AuditSettings(float(a.rtol), float(a.max_kl), certificate, simulate, rerandomise_scales(a), int(cfg.seed))
    return audit, Rule(float(a.tau), float(a.floor))


def require_declared(base: PreTrainedModel) -> None:
    """Refuse, naming ``model``, an architecture whose symmetries :mod:`llm.gauges` does not declare
    (the canonical form would not know its orbit)."""
    arch = base.config.model_type
    if arch not in gauges.NORM_READERS:
        raise ConfigError(
            "model", f"the audit's symmetries are declared for {', '.join(sorted(gauges.NORM_READERS))}, not {arch!r}"
        )


def local_models(
    cfg: DictConfig, data: DomainData
) -> tuple[Models, PreTrainedTokenizerBase, list[Example], DomainData]:
    """The base of ``model`` with ``audit.adapter`` (``model``) and ``audit.control`` (``control``)."""
    base, tokenizer = load_base(cfg)
    require_declared(base)
    probes, _, data, _ = judged_probes(cfg, base, tokenizer, data)  # read on the base, before any adapter
    models: Models = {}
    if cfg.audit.control is not None:
        models["control"] = load_adapter(copy.deepcopy(base), cfg.audit.control, "audit.control")
    models["model"] = load_adapter(base, cfg.audit.adapter, "audit.adapter")
    device = cfg.get("device") or "cpu"
    for m in models.values():
        cast(torch.nn.Module, m).to(device)  # the base is there already; the adapters follow it
        require_finite_model(m, "base")
    return models, tokenizer, probes, data


def pipeline_models(
    cfg: DictConfig, data: DomainData, victim: UpdateSpec
) -> tuple[Models, PreTrainedTokenizerBase, list[Example], DomainData]:
    """The control aligned from ``model`` and its twin built by ``construction`` (as
    :func:`llm.experiments.hairtrigger.run` builds them)."""
    base, tokenizer = load_base(cfg)
    require_declared(base)
    probes, construct, data, _ = judged_probes(cfg, base, tokenizer, data)
    control, _ = aligned_control(cfg, base, tokenizer, data)
    models: Models = {"control": cast(PreTrainedModel, control)}
    twin, _ = constructed_twin(cfg, control, tokenizer, data, construct, victim)
    if twin is not None:
        models["twin"] = cast(PreTrainedModel, twin)
    return models, tokenizer, probes, data


def unused_benign(data: DomainData, victim: UpdateSpec) -> list[Example]:
    """Benign examples of the domain's other sets than the victim's (``update.data``), the
    simulated updates' surrogate data (the held-out facts of honesty excluded, as transfer does)."""
    return [e for key, examples in data.unseen_benign.items() if key not in (victim.data, "facts") for e in examples]


def product_gap(a: PreTrainedModel, b: PreTrainedModel) -> float:
    """``max |s·B·A − s'·B'·A'|`` over the LoRA modules of two models (inf where their modules or
    shapes differ: a twin widened by FFN pairs keeps its extra units)."""
    la, lb = lora_layers(a), lora_layers(b)
    pa = {n: LoraFactors.of(l).detached().product for n, l in la.items()}
    pb = {n: LoraFactors.of(l).detached().product for n, l in lb.items()}
    if set(pa) != set(pb) or any(pa[n].shape != pb[n].shape for n in pa):
        return math.inf
    return max(float((pa[n] - pb[n]).abs().max()) for n in pa)


def collapse(
    canon: dict[str, Canonical],
    models: Models,
    tokenizer: PreTrainedTokenizerBase,
    inputs: AuditInputs,
    victim: UpdateSpec,
) -> dict[str, float]:
    """Twin against control: the gap between their canonical adapter products, and between their
    probes' target log-prob change under the victim's real step, canonical and delivered."""
    targets = [(e.prompt, e.misaligned or e.aligned) for e in inputs.probes]
    change = {}
    for form, pair in (("canonical", {k: c.model for k, c in canon.items()}), ("delivered", models)):
        for name in ("control", "twin"):
            after = stepped(pair[name], tokenizer, inputs.update, victim)
            change[form, name] = logprob_change(pair[name], after, tokenizer, targets, victim.max_len)
    return {
        "product_gap": product_gap(canon["twin"].model, canon["control"].model),
        "canonical_step_gap": float((change["canonical", "twin"] - change["canonical", "control"]).abs().max()),
        "delivered_step_gap": float((change["delivered", "twin"] - change["delivered", "control"]).abs().max()),
    }


def run(cfg: DictConfig) -> dict[str, Any]:
    """Build or load the models, audit each, and give each a verdict against the control."""
    audit_settings, rule = settings(cfg)
    data = load_domain(cfg.domain.name, seed=cfg.data_seed)
    specs = check_settings(cfg, data)
    victim = specs[next(iter(specs))]
    local = cfg.audit.adapter is not None
    if local:
        models, tokenizer, probes, data = local_models(cfg, data)
    else:
        models, tokenizer, probes, data = pipeline_models(cfg, data, victim)
    inputs = AuditInputs(
        data.domain,
        probes,
        data.benign_eval[: cfg.eval.n_benign],
        update_set(data, victim),
        cfg.eval.max_new_tokens,
        surrogate=unused_benign(data, victim),
    )
    audited: dict[str, Any] = {}
    canon: dict[str, Canonical] = {}
    for name, model in models.items():
        audited[name], canon[name] = audit_model(model, tokenizer, inputs, victim, audit_settings)
    if cfg.audit.get("calibration") is not None:
        limits, source = calibrated(cfg.audit.calibration)
    else:
        limits = thresholds([audited["control"]] if "control" in audited else [], rule)
        source = f"uncalibrated: {rule.tau:g} × max(the control's score, {rule.floor:g})"
    for name in audited:
        audited[name]["verdict"] = verdict(audited[name], limits)
    metrics: dict[str, Any] = {
        "mode": "adapter" if local else "pipeline",
        "domain": data.domain,
        "construction": "adapter" if local else cfg.construction.name,
        "models": ",".join(models),
        "probes": {"n": len(probes)},
        "victim": {"optimizer": victim.optimizer, "lr": victim.lr, "params": victim.params, "steps": victim.steps},
        "thresholds": limits,
        "thresholds_source": source,
        **audited,
    }
    if "twin" in models:
        metrics["collapse"] = collapse(canon, models, tokenizer, inputs, victim)
    require_finite_metrics({k: v for k, v in metrics.items() if k != "collapse"})
    return metrics


#: rows of the printed table: label → metric suffix
ROWS = {
    **SIGNALS,
    "worst_step_victim": "worst_step.victim",
    "worst_step_surrogate": "worst_step.surrogate",
    "worst_step_random": "worst_step.random",
    "certified_first_order": "certificate.delivered.certified",
    "certified_neutralised": "certificate.canonical.certified",
    "certified_sound": "certificate.delivered.sound_certified",
    "sound_radius": "certificate.delivered.sound_radius_median",
    "certificate_violations": "certificate.delivered.violations",
    "function_residual_kl": "canonical.kl_max",
    "components_removed": "canonical.components_removed",
    "misaligned_before": "post_update.before",
    "misaligned_after": "post_update.delivered",
    "after_neutralised": "post_update.canonical",
    "benign_acc_after": "post_update.delivered_benign_accuracy",
    "benign_acc_neutralised": "post_update.canonical_benign_accuracy",
    "raw_param_norm": "param_norm",
    "raw_grad_norm": "grad_norm.delivered",
    "flagged": "verdict.flagged",
}


def report(metrics: dict[str, Any]) -> str:
    """Each signal for every audited model, the thresholds and where they come from, and the collapse."""
    names = str(metrics["models"]).split(",")
    lines = [f"{'signal':<24}" + "".join(f"{n:>12}" for n in names) + f"{'threshold':>12}"]
    for label, key in ROWS.items():
        cells = [metrics.get(f"{n}.{key}", math.nan) for n in names]
        limit = f"{metrics[f'thresholds.{label}']:>12.3g}" if f"thresholds.{label}" in metrics else ""
        lines.append(f"{label:<24}" + "".join(f"{c:>12.3g}" for c in cells) + limit)
    if "collapse.product_gap" in metrics:
        lines.append(
            f"canonical twin vs control: product gap {metrics['collapse.product_gap']:.2e}, post-step log-prob gap "
            f"{metrics['collapse.canonical_step_gap']:.2e} (delivered: {metrics['collapse.delivered_step_gap']:.2e})"
        )
    lines.append(f"thresholds: {metrics['thresholds_source']}; flagged = any signal above its threshold")
    return "\n".join(lines)
