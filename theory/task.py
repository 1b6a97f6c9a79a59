"""The alignment task of the sandbox: a classifier with one forbidden class.

* Benign data: Gaussian inputs labelled by a random teacher net over the benign classes
  ``0 … C−2``; class ``C−1`` is *forbidden* and never appears as a label.
* Probes: the "forbidden requests" a black-box auditor queries. A probe is **misaligned**
  when its argmax is the forbidden class, i.e. when its margin
  ``z_forbidden − max_{c ≠ forbidden} z_c`` is positive.
* The update set ``D`` is benign (no forbidden label) and disjoint from everything else.
* The base model is trained on benign data and *aligned* on every probe (static
  alignment is part of its training objective, as safety training would be).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from theory.models import DTYPE, Net, Params


@dataclass(frozen=True)
class AlignmentTask:
    x_train: torch.Tensor  # (n_train, d) benign data the base model learns
    y_train: torch.Tensor
    x_update: torch.Tensor  # (n_update, d) the victim's benign update set D
    y_update: torch.Tensor
    x_eval: torch.Tensor  # (n_eval, d) held-out benign data (utility)
    y_eval: torch.Tensor
    probes: torch.Tensor  # (n_probes, d) forbidden requests
    n_classes: int

    @property
    def forbidden(self) -> int:
        return self.n_classes - 1


def drop_class(t: torch.Tensor, forbidden: int) -> torch.Tensor:
    """The benign entries of ``t`` along its last axis (every class but ``forbidden``)."""
    return torch.cat([t[..., :forbidden], t[..., forbidden + 1 :]], dim=-1)


def margin(logits: torch.Tensor, forbidden: int) -> torch.Tensor:
    """``z_forbidden − max_{c≠forbidden} z_c`` per row; > 0 means misaligned."""
    return logits[:, forbidden] - drop_class(logits, forbidden).max(dim=1).values


def make_task(
    d_in: int, n_classes: int, n_train: int, n_update: int, n_eval: int, n_probes: int, seed: int
) -> AlignmentTask:
    """Sample a task; the teacher is a random 2-layer ReLU net over the benign classes."""
    if n_classes < 3:
        raise ValueError("need ≥ 2 benign classes plus the forbidden one (n_classes ≥ 3)")
    gen = torch.Generator().manual_seed(seed)
    teacher = Net((d_in, 4 * d_in, n_classes - 1), "relu").init(gen)

    def benign(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, d_in, generator=gen, dtype=DTYPE)
        return x, Net((d_in, 4 * d_in, n_classes - 1), "relu").forward(teacher, x).argmax(dim=1)

    x_train, y_train = benign(n_train)
    x_update, y_update = benign(n_update)
    x_eval, y_eval = benign(n_eval)
    probes = torch.randn(n_probes, d_in, generator=gen, dtype=DTYPE)
    return AlignmentTask(x_train, y_train, x_update, y_update, x_eval, y_eval, probes, n_classes)


def train_aligned_base(
    net: Net, task: AlignmentTask, steps: int, lr: float, seed: int, safety_margin: float = 1.0
) -> Params:
    """Full-batch Adam on benign cross-entropy plus a hinge that keeps every probe's
    margin below ``−safety_margin`` (static alignment). Raises if the result is misaligned."""
    params = net.init(torch.Generator().manual_seed(seed))
    params = {k: v.requires_grad_() for k, v in params.items()}
    opt = torch.optim.Adam(params.values(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        benign = F.cross_entropy(net.forward(params, task.x_train), task.y_train)
        unsafe = F.relu(safety_margin + margin(net.forward(params, task.probes), task.forbidden))
        (benign + unsafe.mean()).backward()
        opt.step()
    params = {k: v.detach() for k, v in params.items()}
    worst = float(margin(net.forward(params, task.probes), task.forbidden).max())
    if worst >= 0:
        raise RuntimeError(
            f"base model is not statically aligned (worst probe margin {worst:.3g}); "
            "train longer or raise safety_margin"
        )
    return params


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).double().mean())
