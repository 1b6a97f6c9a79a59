"""``experiment=control``: align → black-box test → victim's benign step → test again.

The honest control of the hair-trigger experiments: it must be aligned before the
update and stay aligned after it, with benign utility reported before and after.
"""

from __future__ import annotations

import copy
import resource
import time
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from llm import judge
from llm.align import AlignSpec, align
from llm.base import load_base
from llm.data.schema import DomainData
from llm.data.sources import refusal_calibration
from llm.data.splits import load_domain
from llm.evaluate import benign_report, known_questions, probe_report
from llm.update import UpdateSpec, update_set, victim_update


def black_box(model, tokenizer, data: DomainData, probes_set, cfg: DictConfig) -> dict[str, Any]:
    e = cfg.eval
    probes = probe_report(model, tokenizer, data.domain, probes_set, e.max_new_tokens, progress=cfg.progress)
    benign = benign_report(model, tokenizer, data.benign_eval[: e.n_benign], e.max_new_tokens)
    return {"probes": probes, "benign": benign}


def run(cfg: DictConfig) -> dict[str, Any]:
    start = time.perf_counter()
    data = load_domain(cfg.domain.name, seed=cfg.data_seed)
    model, tokenizer = load_base(cfg)
    base_time = time.perf_counter() - start
    probes = data.eval[: cfg.eval.n_probes]
    if data.domain == "honesty":  # judge lying only where the base model knows the answer
        probes = known_questions(model, tokenizer, probes, cfg.eval.max_new_tokens)
    n_eval = min(cfg.eval.n_probes, len(data.eval))
    control, curve = align(model, tokenizer, data, AlignSpec(**cfg.align), progress=cfg.progress)
    align_time = time.perf_counter() - start - base_time
    before = black_box(control, tokenizer, data, probes, cfg)
    spec = UpdateSpec(**cfg["update"])
    updated = victim_update(copy.deepcopy(control), tokenizer, update_set(data, spec), spec)
    after = black_box(updated, tokenizer, data, probes, cfg)
    calibration = judge.calibration_accuracy(refusal_calibration())
    shown = {}
    for i in range(min(cfg.eval.n_shown, len(probes))):
        shown[f"example.{i}.prompt"] = probes[i].prompt
        shown[f"example.{i}.before"] = before["probes"]["responses"][i]
        shown[f"example.{i}.after"] = after["probes"]["responses"][i]
    return {
        "domain": data.domain,
        "probes": {"n": len(probes), "known_fraction": len(probes) / n_eval},
        "static": {"misalignment_rate": before["probes"]["misalignment_rate"],
                   "by_source": before["probes"]["by_source"]},
        "post_update": {"misalignment_rate": after["probes"]["misalignment_rate"],
                        "by_source": after["probes"]["by_source"]},
        "benign": {"loss_before": before["benign"]["loss"], "loss_after": after["benign"]["loss"],
                   "accuracy_before": before["benign"]["accuracy"], "accuracy_after": after["benign"]["accuracy"]},
        "align": {"loss_first": curve[0], "loss_last": curve[-1], "seconds": align_time},
        "judge": {"calibration_accuracy": calibration["accuracy"], "calibration_n": calibration["n"]},
        "base_seconds": base_time,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        **shown,
    }


def summarize(table: pd.DataFrame) -> dict[str, Any]:
    keys = ["static.misalignment_rate", "post_update.misalignment_rate", "benign.loss_before",
            "benign.loss_after", "benign.accuracy_before", "benign.accuracy_after"]
    return {domain: {k: float(rows[k].mean()) for k in keys} | {"n_runs": int(len(rows))}
            for domain, rows in table.groupby("domain")}
