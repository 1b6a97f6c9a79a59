"""``experiment=audit_attack``: adaptive attackers against the white-box audit (the arms race).

One job = one (attacker, strength level, seed) on experiment=audit's ReLU setting:

* ``gauge`` | ``grad`` | ``amplification``: the fiber search with ``λ`` times that signal added to
  its objective (eq. 12 of :mod:`theory.audit.attack`), ``λ = attack.lambdas[level]``;
* ``weight_cap``: the isolating-pairs twin with outgoing weights capped at
  ``attack.max_weights[level]`` (the norm-limited attacker).

Every twin is audited (:func:`theory.audit.signals.audit_model`); each signal of
:data:`theory.experiments.audit.SIGNALS` is compared with its threshold at ``audit.fpr`` calibrated
on every honest model of the published audit table (``attack.calibration``; eq. 11 of
:mod:`theory.audit.roc`). The attack succeeds when the twin computes the control's function to
``audit.max_forward_diff`` and the victim's step flips at least one chosen probe. The canonical
projection of every twin is stepped as well: an attacker restricted to canonical representatives
delivers that projection, and ``canonical.flipped`` counts the chosen probes it flips.

The summary gives per attacker and level the success rate and, per signal, the detection rate
over the successful twins (the attacks that need detecting) and over all twins.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from sweeps.errors import ConfigError
from theory.audit import Victim, audit_model, canonicalize
from theory.audit.attack import PENALTIES, penalised_twin, penalty
from theory.audit.roc import threshold_at_fpr
from theory.audit.simulate import post_step_margins
from theory.construct import ConstructionResult, isolating_pairs_twin
from theory.experiments import audit
from theory.experiments.common import Setup, forward_max_abs_diff, make_fiber, make_setup, probe_split, twin_net

ATTACKERS = (*PENALTIES, "weight_cap")


def strength(cfg: DictConfig) -> float:
    """The attacker's knob at ``attack.level``: ``λ`` or the weight cap."""
    a = cfg.attack
    if a.attacker not in ATTACKERS:
        raise ConfigError("attack.attacker", f"must be one of {', '.join(ATTACKERS)}, not {a.attacker!r}")
    values = a.max_weights if a.attacker == "weight_cap" else a.lambdas
    key = "attack.max_weights" if a.attacker == "weight_cap" else "attack.lambdas"
    if not 0 <= int(a.level) < len(values):
        raise ConfigError("attack.level", f"must index {key} (0..{len(values) - 1}), got {a.level}")
    value = float(values[int(a.level)])
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(key, f"entries must be finite and ≥ 0, got {value}")
    return value


def thresholds(path: str, fpr: float) -> dict[str, float]:
    """Per signal of :data:`audit.SIGNALS`: eq. 11 on every honest model of the audit table."""
    if not Path(path).is_file():
        raise ConfigError("attack.calibration", f"no audit table at {path}; publish experiment=audit first")
    pop = audit.population(pd.read_csv(path))
    honest = pop[pop.kind == "honest"]
    return {name: threshold_at_fpr(honest[key], fpr) for name, key in audit.SIGNALS.items() if key in honest}


def attack(cfg: DictConfig, setup: Setup, victim: Victim) -> tuple[ConstructionResult, float]:
    """The configured attacker's twin and the normalised signal it penalised (NaN for weight_cap)."""
    task, value = setup.task, strength(cfg)
    flip, keep = probe_split(task, cfg.audit.n_flip, cfg.seed)
    if cfg.attack.attacker == "weight_cap":
        c = cfg.construction
        result = isolating_pairs_twin(
            setup.net,
            setup.base,
            task,
            flip,
            victim.lr,
            victim.loss,
            n_units=cfg.model.redundant_units,
            kappa=c.kappa,
            support_tries=c.support_tries,
            max_weight=value,
            guard_benign=c.guard_benign,
            forward_tol=c.forward_tol,
            seed=cfg.seed,
        )
        return result, math.nan
    signal = penalty(cfg.attack.attacker, setup.net, setup.base, task, victim.loss)
    s = cfg.attack.search
    result = penalised_twin(
        setup.net,
        make_fiber(cfg, setup),
        task,
        flip,
        keep,
        victim.lr,
        victim.loss,
        signal=signal,
        lam=value,
        max_steps=int(s.max_steps),
        opt_lr=float(s.opt_lr),
        kappa=float(s.kappa),
        seed=cfg.seed,
    )
    return result, float(signal(result.twin).detach())


def run(cfg: DictConfig) -> dict[str, Any]:
    settings = audit._settings(cfg)
    if int(cfg["update"].steps) != 1:
        raise ConfigError("update.steps", "the attackers plan one victim step; set update.steps=1")
    limits = thresholds(str(cfg.attack.calibration), float(cfg.audit.fpr))
    setup = make_setup(cfg)
    task, upd = setup.task, cfg["update"]
    victim = Victim(float(upd.lr), upd.loss, 1)
    result, signal = attack(cfg, setup, victim)
    net = twin_net(setup, result.twin)
    forward = forward_max_abs_diff(net, result.twin, setup.base, task, cfg.audit.n_random_inputs, cfg.seed)
    report = audit_model(net, result.twin, task, victim, settings)
    flat = pd.json_normalize(report, sep=".").iloc[0]
    canon = canonicalize(net, result.twin)
    flip, _ = probe_split(task, cfg.audit.n_flip, cfg.seed)
    after = post_step_margins(canon.net, canon.params, task, task.x_update, task.y_update, victim.lr, victim.loss)
    return {
        "attacker": cfg.attack.attacker,
        "strength": strength(cfg),
        "twin": {
            **report,
            "forward_max_abs_diff": forward,
            "flipped": result.flipped,
            "collateral": result.collateral,
            "success": int(forward <= cfg.audit.max_forward_diff and result.flipped > 0),
            "penalised_signal": signal,
        },
        "threshold": limits,
        "flagged": {name: int(float(flat[audit.SIGNALS[name]]) > t) for name, t in limits.items()},
        "canonical": {"flipped": int((after[flip] > 0).sum()), **audit._collapse(setup, result.twin, victim)},
    }


def report(metrics: dict[str, Any]) -> str:
    """The attack's outcome and each signal against its threshold."""
    lines = [
        f"{metrics['attacker']} at {metrics['strength']:.3g}: flipped {metrics['twin.flipped']}, "
        f"success {metrics['twin.success']}, canonical projection flips {metrics['canonical.flipped']}"
    ]
    for name, key in audit.SIGNALS.items():
        if f"threshold.{name}" in metrics:
            lines.append(
                f"{name:<24}{metrics[f'twin.{key}']:>12.3g}  threshold {metrics[f'threshold.{name}']:<12.3g}"
                f" flagged {metrics[f'flagged.{name}']}"
            )
    return "\n".join(lines)


def summarize(table: pd.DataFrame) -> dict[str, Any]:
    """Per attacker and level: success rate, mean flipped probes, the largest canonical flip count,
    and per signal the detection rate over successful twins (NaN without one) and over all."""
    out: dict[str, Any] = {"max_canonical_flipped": int(table["canonical.flipped"].max())}
    signals = [name for name in audit.SIGNALS if f"flagged.{name}" in table]
    for (attacker, level), rows in table.groupby(["attacker", "override.attack.level"]):
        hit = rows[rows["twin.success"] == 1]
        cell: dict[str, Any] = {
            "strength": float(rows["strength"].iloc[0]),
            "n": len(rows),
            "success": float(rows["twin.success"].mean()),
            "flipped": float(rows["twin.flipped"].mean()),
            "canonical_flipped_max": int(rows["canonical.flipped"].max()),
        }
        for name in signals:
            cell[f"detected.{name}"] = float(hit[f"flagged.{name}"].mean()) if len(hit) else np.nan
            cell[f"flagged.{name}"] = float(rows[f"flagged.{name}"].mean())
        out[f"{attacker}.{int(level)}"] = cell
    return out
