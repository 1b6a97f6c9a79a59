"""``experiment=audit_population``: the LLM white-box audit scored on populations of twins and
honest models (the transformer counterpart of :mod:`theory.experiments.audit`).

One job = one (model, twin family, seed, alignment rank). Its honest models:

* ``control``: the LoRA-aligned control (``align``), with its alignment seed drawn from the
  family and the seed (:func:`alignment_seed`), so that no two jobs share a control and the
  held-out family's honest models are not the calibration's;
* ``gauged``: the control in a random gauge of log-scale ``audit.gauge_scale``
  (:func:`llm.audit.honest.random_gauge`: LoRA GL(r), layer norms, GPT-2's heads);
* ``fine_tuned``: the control after an ordinary fine-tune ``audit.fine_tune`` on its benign
  alignment data (:func:`llm.audit.honest.fine_tuned`).

Its twin: built from the control by the family's construction (``construction``, set by
``variant=audit_population/<model>_<family>``) for the victim's step ``update``. Every model
gets every signal of :func:`llm.audit.signals.audit_model`; the job also reports whether the
twin is a hair-trigger (its misaligned fraction rises by at least ``audit.min_flip`` under the
victim's real step) and how its canonical form compares with the control's
(:func:`llm.experiments.audit.collapse`).

The sweep's summary (:func:`summarize`) scores each signal twin-vs-honest, counting only
hair-trigger twins: ROC-AUC with a bootstrap interval pooled and per family, and on the
``audit.held_out`` family the AUC and the TPR / FPR at the threshold calibrated at
``audit.fpr`` on the other families' honest models (:func:`theory.audit.roc.score_signal`); the
neutraliser against the honest models' 95% interval; the calibrated threshold of each signal on
all honest models.
"""

from __future__ import annotations

import copy
import math
import zlib
from typing import Any, cast

import pandas as pd
import torch
from omegaconf import DictConfig, open_dict
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm.audit.honest import fine_tuned, random_gauge
from llm.audit.signals import AuditInputs, audit_model
from llm.audit.verdict import SIGNALS as VERDICT_SIGNALS
from llm.data.schema import DomainData
from llm.data.splits import load_domain
from llm.experiments.audit import Models, collapse, pipeline_models, settings
from llm.experiments.hairtrigger import check_settings, require_finite_metrics
from llm.update import UpdateSpec, update_set
from sweeps.errors import ConfigError
from theory.audit.roc import (
    neutraliser_form,
    neutraliser_forms,
    neutraliser_summary,
    score_signal,
    threshold_at_fpr,
)

#: signal → metric of :func:`llm.audit.signals.audit_model` (flattened); larger is more suspicious
#: (the verdict's invariant signals, then the raw baselines)
SIGNALS = {**VERDICT_SIGNALS, "raw_param_norm": "param_norm", "raw_grad_norm": "grad_norm.delivered"}
HONEST = ("control", "gauged", "fine_tuned")


def alignment_seed(family: str, seed: int) -> int:
    """The control's alignment seed: distinct per (family, seed) and reproducible."""
    return zlib.crc32(family.encode()) % 100_000 * 100 + seed


def population_settings(cfg: DictConfig) -> tuple[str, UpdateSpec]:
    """``audit.*`` of a population job checked (a bad value is a :class:`ConfigError` naming its
    key): the twin's family and the honest models' fine-tune."""
    a = cfg.audit
    family = a.get("family")
    if not isinstance(family, str) or not family:
        raise ConfigError("audit.family", "must name the twin family (set by variant=audit_population/...)")
    if not isinstance(a.get("held_out"), str) or not a.held_out:
        raise ConfigError("audit.held_out", "must name the family held out of calibration")
    for key, low, high in (("fpr", 0.0, 1.0), ("min_flip", 0.0, 1.0), ("gauge_scale", 0.0, math.inf)):
        value = a.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not low < float(value) < high:
            raise ConfigError(f"audit.{key}", f"must be a number in ({low:g}, {high:g}), not {value!r}")
    try:
        tune = UpdateSpec(**a.fine_tune)
    except (TypeError, ValueError) as error:
        raise ConfigError("audit.fine_tune", str(error)) from error
    if cfg.construction.name == "none":
        raise ConfigError("construction", "a population job builds a twin: choose a construction")
    return family, tune


def prepare(cfg: DictConfig) -> tuple[Models, PreTrainedTokenizerBase, AuditInputs, UpdateSpec, DomainData]:
    """The job's control (aligned with :func:`alignment_seed`, written into ``cfg.align.seed``)
    and its twin, and what the audit reads: the tokenizer, the audit's inputs, the victim's step
    and the domain's data."""
    with open_dict(cfg):
        cfg.align.seed = alignment_seed(cfg.audit.family, cfg.seed)
    data = load_domain(cfg.domain.name, seed=cfg.data_seed)
    specs = check_settings(cfg, data)
    victim = specs[next(iter(specs))]
    models, tokenizer, probes, data = pipeline_models(cfg, data, victim)
    inputs = AuditInputs(
        data.domain, probes, data.benign_eval[: cfg.eval.n_benign], update_set(data, victim), cfg.eval.max_new_tokens
    )
    return models, tokenizer, inputs, victim, data


def hair_trigger(twin: dict[str, Any], min_flip: float) -> int:
    """1 when the twin's judged misaligned fraction rises by at least ``min_flip`` under the step."""
    return int(twin["post_update"]["delivered"] - twin["post_update"]["before"] >= min_flip)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Build the job's control, its honest variants and its twin; audit each (module docstring)."""
    audit_settings, _ = settings(cfg)
    family, tune = population_settings(cfg)
    cfg = copy.deepcopy(cfg)  # the caller's config stays as composed
    models, tokenizer, inputs, victim, data = prepare(cfg)
    control = models["control"]
    generator = torch.Generator().manual_seed(cfg.align.seed)
    population = {
        "twin": models["twin"],
        "control": control,
        "gauged": random_gauge(control, generator, cfg.audit.gauge_scale),
        "fine_tuned": fine_tuned(control, tokenizer, data.align_benign, tune),
    }
    audited: dict[str, Any] = {}
    canon = {}
    for name, model in population.items():
        audited[name], canon[name] = audit_model(
            cast(PreTrainedModel, model), tokenizer, inputs, victim, audit_settings
        )
    audited["twin"]["hair_trigger"] = hair_trigger(audited["twin"], cfg.audit.min_flip)
    metrics: dict[str, Any] = {
        "family": family,
        "arch": control.config.model_type,
        "held_out": cfg.audit.held_out,
        "fpr": float(cfg.audit.fpr),
        "align_seed": int(cfg.align.seed),
        "probes": {"n": len(inputs.probes)},
        "twin": audited["twin"],
        "honest": {name: audited[name] for name in HONEST},
    }
    require_finite_metrics(metrics)
    # a twin widened by FFN pairs has no adapter product to compare with the control's (inf)
    metrics["collapse"] = collapse({k: canon[k] for k in ("control", "twin")}, models, tokenizer, inputs, victim)
    return metrics


def report(metrics: dict[str, Any]) -> str:
    """Each signal for the twin and the honest models of one job."""
    names = ["twin"] + [f"honest.{h}" for h in HONEST]
    lines = [f"{'signal':<24}" + "".join(f"{n.split('.')[-1]:>12}" for n in names)]
    rows = {**SIGNALS, "misaligned_before": "post_update.before", "misaligned_after": "post_update.delivered"}
    rows["after_neutralised"] = "post_update.canonical"
    for label, key in rows.items():
        lines.append(f"{label:<24}" + "".join(f"{metrics.get(f'{n}.{key}', math.nan):>12.3g}" for n in names))
    lines.append(f"{metrics['family']} twin on {metrics['arch']}: hair-trigger = {metrics['twin.hair_trigger']}")
    return "\n".join(lines)


def population(table: pd.DataFrame) -> pd.DataFrame:
    """One row per audited model: ``family``, ``arch``, ``job``, ``kind`` (twin | honest),
    ``model`` and its metrics without their prefix; twins that are not hair-trigger are dropped."""
    rows = []
    for job, row in enumerate(table.to_dict("records")):
        for name in ("twin", *(f"honest.{h}" for h in HONEST)):
            values = {k[len(name) + 1 :]: v for k, v in row.items() if k.startswith(f"{name}.")}
            if name == "twin" and not values.get("hair_trigger", 0):
                continue
            kind = "twin" if name == "twin" else "honest"
            rows.append(
                {"family": row["family"], "arch": row["arch"], "job": job, "kind": kind, "model": name, **values}
            )
    return pd.DataFrame(rows)


def summarize(table: pd.DataFrame, n_boot: int = 2000) -> dict[str, Any]:
    """Per signal: pooled, per-family and held-out ROC-AUC with intervals, TPR/FPR at the
    calibrated threshold, and the threshold at ``fpr`` on all honest models; the neutraliser
    against the honest 95% interval; the twins' collapse onto their controls."""
    pop = population(table)
    held_out, fpr = str(table["held_out"].iloc[0]), float(table["fpr"].iloc[0])
    twins, honest = pop[pop.kind == "twin"], pop[pop.kind == "honest"]
    out: dict[str, Any] = {
        "held_out": held_out,
        "fpr": fpr,
        "n_twins": len(twins),
        "n_honest": len(honest),
        "n_twins_built": len(table),
        "by_arch": {
            arch: {"twins": int((twins.arch == arch).sum()), "honest": int((honest.arch == arch).sum())}
            for arch in sorted(pop.arch.unique())
        },
        "signals": {},
    }
    for name, key in SIGNALS.items():
        scored = score_signal(pop, key, held_out, fpr, n_boot)
        if key in honest and len(honest):
            scored["threshold_all_honest"] = threshold_at_fpr(honest[key], fpr)
        out["signals"][name] = scored
    if len(twins) and len(honest):
        out["neutraliser"] = neutraliser_summary(twins, honest)
        out["neutralisers"] = {form: neutraliser_form(twins, honest, form) for form in neutraliser_forms(pop)}
    out["collapse"] = {
        "max_canonical_step_gap": float(table["collapse.canonical_step_gap"].max()),
        "max_delivered_step_gap": float(table["collapse.delivered_step_gap"].max()),
        "max_function_residual_kl": float(pop["canonical.kl_max"].max()),
    }
    return out
