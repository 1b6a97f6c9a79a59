"""Set-up shared by the theory experiments: task, base model, fiber, black-box checks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from theory.construct import (
    ConstructionResult,
    LinearFiber,
    RedundantUnitFiber,
    build_twin,
    isolating_pairs_twin,
)
from theory.models import DTYPE, Net, Params
from theory.task import AlignmentTask, make_task, margin, train_aligned_base


@dataclass(frozen=True)
class Setup:
    net: Net  # the twin's architecture (hidden widths as stored in its params)
    base: Params  # the aligned base model, which is also the honest control
    task: AlignmentTask


def make_setup(cfg: DictConfig) -> Setup:
    """Sample the task and train the aligned base (a bias-free linear map for ``family=linear``,
    embedded into a deep linear net of hidden width ``d_in + redundant_units``)."""
    m, t = cfg.model, cfg.task
    task = make_task(m.d_in, m.n_classes, t.n_train, t.n_update, t.n_eval, t.n_probes, cfg.seed)
    if m.family == "mlp":
        net = Net((m.d_in, *m.hidden, m.n_classes), m.activation, m.bias)
        base = train_aligned_base(net, task, t.base_steps, t.base_lr, cfg.seed, t.safety_margin)
        return Setup(net, base, task)
    if m.family == "linear":
        if m.depth < 2:
            raise ValueError("model.depth must be ≥ 2 for a deep linear net")
        p0 = train_linear_base(task, t.base_steps, t.base_lr, cfg.seed)
        h = m.d_in + m.redundant_units
        net = Net((m.d_in, *([h] * (m.depth - 1)), m.n_classes), "linear", bias=False)
        embed = torch.eye(h, m.d_in, dtype=DTYPE)  # [I; 0]
        base = {"W1": embed}
        for l in range(2, m.depth):
            base[f"W{l}"] = torch.eye(h, dtype=DTYPE)
        base[f"W{m.depth}"] = p0 @ embed.T  # [P₀, 0]
        return Setup(net, base, task)
    raise ValueError(f"unknown model.family {m.family!r}; choose 'mlp' or 'linear'")


def train_linear_base(task: AlignmentTask, steps: int, lr: float, seed: int) -> torch.Tensor:
    """Bias-free linear classifier ``P₀`` aligned on *every* input: benign rows trained by
    cross-entropy, forbidden row set to their centroid, so ``z_f = mean_c z_c ≤ max_c z_c``
    (a bias-free linear map cannot be pushed below its rivals in all directions by training)."""
    benign = Net((task.probes.shape[1], task.n_classes - 1), "linear", bias=False)
    params = {k: v.requires_grad_() for k, v in benign.init(torch.Generator().manual_seed(seed)).items()}
    opt = torch.optim.Adam(params.values(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(benign.forward(params, task.x_train), task.y_train).backward()
        opt.step()
    rows = params["W1"].detach()
    p0 = torch.cat([rows, rows.mean(dim=0, keepdim=True)])
    worst = float(margin(task.probes @ p0.T, task.forbidden).max())
    if worst >= 0:  # only on an exact tie between all benign logits
        raise RuntimeError(f"linear base is not aligned (worst probe margin {worst:.3g})")
    return p0


def make_fiber(cfg: DictConfig, setup: Setup) -> RedundantUnitFiber | LinearFiber:
    if cfg.model.family == "linear":
        return LinearFiber(setup.net, setup.base, cfg["update"].lr)
    return RedundantUnitFiber(
        setup.net, setup.base, cfg.model.redundant_units, cfg["update"].lr, cfg.model.redundant_kind, cfg.model.gauge
    )


def twin_net(setup: Setup, twin: Params) -> Net:
    """The base architecture with the hidden widths the twin actually has."""
    return setup.net.fitted(twin)


def forward_max_abs_diff(net: Net, a: Params, b: Params, task: AlignmentTask, n_random: int, seed: int) -> float:
    """Black-box indistinguishability: max |f_a − f_b| over ``n_random`` inputs drawn from the
    input distribution, every probe and every data point. (The twins are exact in real
    arithmetic; what remains is float64 rounding, which grows with the input norm.)"""
    gen = torch.Generator().manual_seed(10_000 + seed)
    x = torch.cat(
        [
            torch.randn(n_random, task.probes.shape[1], generator=gen, dtype=DTYPE),
            task.probes,
            task.x_train,
            task.x_update,
            task.x_eval,
        ]
    )
    with torch.no_grad():
        return float((net.forward(a, x) - net.forward(b, x)).abs().max())


def misaligned(net: Net, params: Params, task: AlignmentTask) -> torch.Tensor:
    """Boolean mask over probes: argmax is the forbidden class."""
    with torch.no_grad():
        return margin(net.forward(params, task.probes), task.forbidden) > 0


def probe_split(task: AlignmentTask, n_flip: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen probes to flip and the rest to keep aligned (a seeded random split)."""
    n = task.probes.shape[0]
    if not 0 <= n_flip <= n:
        raise ValueError(f"n_flip={n_flip} must lie in [0, n_probes={n}]")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(20_000 + seed))
    return perm[:n_flip], perm[n_flip:]


def construct(cfg: DictConfig, setup: Setup, flip: torch.Tensor, keep: torch.Tensor) -> ConstructionResult:
    """Run the configured construction (``construction.name``: ``isolating`` or ``search``)."""
    c, upd = cfg.construction, cfg["update"]
    if c.name == "isolating":
        if cfg.model.family != "mlp":
            raise ValueError("construction=isolating needs an MLP (model=mlp_relu)")
        return isolating_pairs_twin(
            setup.net,
            setup.base,
            setup.task,
            flip,
            upd.lr,
            upd.loss,
            n_units=cfg.model.redundant_units,
            kappa=c.kappa,
            support_tries=c.support_tries,
            max_weight=c.max_weight,
            guard_benign=c.guard_benign,
            forward_tol=c.forward_tol,
            seed=cfg.seed,
        )
    if c.name == "search":
        return build_twin(
            setup.net,
            make_fiber(cfg, setup),
            setup.task,
            flip,
            keep,
            upd.lr,
            upd.loss,
            max_steps=c.max_steps,
            opt_lr=c.opt_lr,
            kappa=c.kappa,
            seed=cfg.seed,
            update_steps=upd.steps,
            deficit_cap=float(c.deficit_cap),
        )
    raise ValueError(f"unknown construction {c.name!r}; choose 'isolating' or 'search'")
