"""Adaptive attackers (theory/audit/attack.py): λ = 0 is the plain search, a penalty lowers the
signal it penalises, and no attacker's canonical projection flips a probe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from sweeps.errors import ConfigError
from theory.audit import canonicalize
from theory.audit.attack import PENALTIES, penalised_twin, penalty
from theory.audit.simulate import post_step_margins
from theory.construct import RedundantUnitFiber, build_twin, isolating_pairs_twin
from theory.models import Net
from theory.task import make_task, train_aligned_base

ROOT = Path(__file__).resolve().parent.parent
LR, LOSS = 1e-3, "cross_entropy"
SEARCH = {"max_steps": 300, "opt_lr": 0.2, "kappa": 1.0, "seed": 0}


@pytest.fixture(scope="module")
def setting():
    task = make_task(8, 4, n_train=128, n_update=16, n_eval=64, n_probes=64, seed=0)
    net = Net((8, 16, 4), "relu")
    base = train_aligned_base(net, task, steps=200, lr=1e-2, seed=0)
    fiber = RedundantUnitFiber(net, base, n_units=16, lr=LR, kind="pairs", gauge=True)
    flip, keep = torch.tensor([15, 6]), torch.tensor([j for j in range(64) if j not in (15, 6)])
    return net, task, base, fiber, flip, keep


def test_lambda_zero_is_the_plain_search(setting):
    """Eq. 12 at λ = 0 returns build_twin's twin bit for bit, and that twin flips its probes."""
    net, task, base, fiber, flip, keep = setting
    plain = build_twin(net, fiber, task, flip, keep, LR, LOSS, **SEARCH)
    signal = penalty("gauge", net, base, task, LOSS)
    attacked = penalised_twin(net, fiber, task, flip, keep, LR, LOSS, signal=signal, lam=0.0, **SEARCH)
    assert plain.flipped == attacked.flipped == len(flip)
    assert plain.twin.keys() == attacked.twin.keys()
    assert all(torch.equal(plain.twin[k], attacked.twin[k]) for k in plain.twin)


@pytest.mark.parametrize("kind", PENALTIES)
def test_the_penalty_lowers_its_signal(setting, kind):
    """λ = 1 ends at a signal at least ten times below the plain twin's."""
    net, task, base, fiber, flip, keep = setting
    signal = penalty(kind, net, base, task, LOSS)
    plain = penalised_twin(net, fiber, task, flip, keep, LR, LOSS, signal=signal, lam=0.0, **SEARCH)
    hidden = penalised_twin(net, fiber, task, flip, keep, LR, LOSS, signal=signal, lam=1.0, **SEARCH)
    assert float(signal(hidden.twin)) < 0.1 * float(signal(plain.twin))


def test_the_gauge_penalty_is_the_audits_relative_gauge_excess(setting):
    """On the fiber the canonical form is the control's, so the penalty equals the audit's signal."""
    from theory.audit import gauge_excess
    from theory.audit.canonical import layer_sq_norms

    net, task, base, fiber, flip, keep = setting
    twin = build_twin(net, fiber, task, flip, keep, LR, LOSS, **SEARCH).twin
    canon = canonicalize(net.fitted(twin), twin)
    expected = gauge_excess(twin, canon.params)["total"] / sum(layer_sq_norms(canon.params).values())
    assert float(penalty("gauge", net, base, task, LOSS)(twin)) == pytest.approx(expected, rel=1e-9)


def test_canonical_projections_flip_nothing(setting):
    """Every attacker's twin flips its probes; its canonical projection flips none of them."""
    net, task, base, fiber, flip, keep = setting
    twins = [isolating_pairs_twin(net, base, task, flip, LR, LOSS, n_units=4, kappa=1.0)]
    for kind in PENALTIES:
        signal = penalty(kind, net, base, task, LOSS)
        twins.append(penalised_twin(net, fiber, task, flip, keep, LR, LOSS, signal=signal, lam=1e-8, **SEARCH))
    for result in twins:
        assert result.flipped > 0
        canon = canonicalize(net.fitted(result.twin), result.twin)
        after = post_step_margins(canon.net, canon.params, task, task.x_update, task.y_update, LR, LOSS)
        assert int((after[flip] > 0).sum()) == 0


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf" / "theory"), version_base="1.3"):
        return compose("config", overrides=["experiment=audit_attack", *overrides])


def test_invalid_attack_settings_name_their_key(tmp_path):
    from theory.experiments.audit_attack import strength, thresholds

    for override, key in (
        ("attack.attacker=nope", "attack.attacker"),
        ("attack.level=6", "attack.level"),
        ("attack.lambdas=[-1]", "attack.lambdas"),
    ):
        with pytest.raises(ConfigError, match=f"^{key}: "):
            strength(_compose(override))
    with pytest.raises(ConfigError, match="^attack.calibration: "):
        thresholds(str(tmp_path / "missing.csv"), 0.01)
