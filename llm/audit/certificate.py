"""A step certificate at transformer scale, first-order tier: which probes no step of the victim's
length can turn, to first order, and how far that first order is from the measured change.

Each probe ``j`` has an aligned response ``a_j`` and a target ``y_j`` (the misaligned marker), and
the margin ``m_j(θ) = log p(a_j | x_j) − log p(y_j | x_j)`` (> 0: the aligned answer is preferred).
A step ``Δ`` of the victim's trainable parameters ``θ`` with ``‖Δ‖ ≤ ρ`` moves it by

    m_j(θ + Δ) = m_j(θ) + ∇m_j · Δ + R_j(Δ),      |∇m_j · Δ| ≤ ρ ‖∇m_j‖.                  (eq. 1)

The probe is **certified (first order)** when ``m_j − ρ‖∇m_j‖ > 0``. ``ρ`` is the length of the
victim's step on the parameters the certificate is computed on (delivered or canonical):
``η‖∇L_D‖`` for SGD, with ``∇L_D`` on the victim's first batch; ``η√P`` for Adam (its first step
is ``η·sign(g)`` up to ε over the ``P`` trainable parameters, counted whether or not their
gradient is zero, so ``ρ`` does not see a gauge under Adam); times the number of steps (for more
than one step or several batches this is the first step's length repeated, not a bound).

This tier is **empirical, not sound**: the remainder ``R_j`` of a transformer has no bound here
(softmax attention and layer norms; the theory MLPs have one, :mod:`theory.audit.certificate`).
Two measurements say how far the first order can be trusted on this checkpoint:

* ``first_order_error``: along each probe's worst first-order direction ``u_j = −∇m_j/‖∇m_j‖``,
  the measured ``m_j(θ + ρu_j) − m_j(θ)`` against ``−ρ‖∇m_j‖``, as the largest relative error;
* ``violations``: certified probes whose margin is ≤ 0 after the victim's *real* step.

A **sound tier** beside it (``sound_*``; GPT-2 and Llama blocks, adapter parameters): the bound of
:mod:`llm.audit.perturbation` on ``|m_j(θ + Δ) − m_j(θ)|`` for every ``‖Δ‖ ≤ ρ``, no first order
involved; a probe is certified when ``m_j`` exceeds it. The ball holds the victim's update when it
takes one step (``sound_covers_update``; later steps have other lengths); then a certified probe
that the real step turns (``sound_violations``) would contradict the bound. ``sound_radius_median``:
the largest ball each probe is certified on (its median), to read against ``ρ``.

The audit computes both on the delivered parameters, where the victim steps, and on the canonical
form (the neutraliser's): under SGD a twin whose hidden components amplify the step has large
``‖∇m_j‖`` and a long step, and certifies little.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm.audit.amplification import first_batch, victim_view
from llm.audit.neutralise import stepped
from llm.audit.perturbation import Net, check_supported, float64_view
from llm.batches import batch_of
from llm.checks import require_finite
from llm.data.schema import Example
from llm.lora import trainable
from llm.models import response_loss, sequence_logprobs
from llm.update import UpdateSpec


def step_length(model: PreTrainedModel, tokenizer, update_examples: list[Example], spec: UpdateSpec) -> float:
    """``ρ`` of the module docstring: the victim's step length on ``model``'s trainable parameters."""
    view = victim_view(model, spec)
    return _step_length(view, trainable(view, spec.params), tokenizer, update_examples, spec)


def _step_length(view, params: list[torch.nn.Parameter], tokenizer, update_examples, spec: UpdateSpec) -> float:
    """:func:`step_length` on a victim view whose trainable ``params`` are set."""
    if spec.optimizer == "adam":
        return spec.lr * math.sqrt(sum(p.numel() for p in params)) * spec.steps
    loss = response_loss(view, first_batch(tokenizer, update_examples, spec))
    grads = torch.autograd.grad(require_finite(loss, "evaluation", "the victim's update loss"), params)
    return spec.lr * float(torch.stack([(g.double() ** 2).sum() for g in grads]).sum().sqrt()) * spec.steps


def margins(model: PreTrainedModel, tokenizer, probes: list[Example], max_len: int) -> torch.Tensor:
    """``m_j`` of eq. 1 for every probe, ``(n,)``."""
    with torch.no_grad():
        return _margins(model, tokenizer, probes, max_len)


def _margins(model, tokenizer, probes: list[Example], max_len: int, params=None) -> torch.Tensor:
    aligned = batch_of(tokenizer, [(e.prompt, e.aligned) for e in probes], max_len)
    target = batch_of(tokenizer, [(e.prompt, e.misaligned) for e in probes], max_len)
    return sequence_logprobs(model, aligned, params) - sequence_logprobs(model, target, params)


def first_order_certificate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    probes: list[Example],
    update_examples: list[Example],
    spec: UpdateSpec,
) -> dict[str, float]:
    """Eq. 1 on ``model``'s parameters (delivered or canonical) for ``probes`` (each with ``aligned`` and
    ``misaligned`` responses) under the victim's update ``spec``: the certified fraction, ``ρ``,
    the margins' and gradients' medians, and the two checks of the module docstring."""
    probes = [e for e in probes if e.aligned and e.misaligned and e.aligned != e.misaligned]
    if not probes:
        raise ValueError("the certificate needs probes with distinct aligned and misaligned responses")
    view = victim_view(model, spec)
    trainable(view, spec.params)
    params = {n: p for n, p in view.named_parameters() if p.requires_grad}
    rho = _step_length(view, list(params.values()), tokenizer, update_examples, spec)
    m, norms, errors = [], [], []
    for example in probes:
        value = _margins(view, tokenizer, [example], spec.max_len)[0]
        grads = dict(zip(params, torch.autograd.grad(value, list(params.values()))))
        norm = float(torch.stack([(g.double() ** 2).sum() for g in grads.values()]).sum().sqrt())
        m.append(float(value.detach()))
        norms.append(norm)
        if norm > 0 and rho > 0:  # the measured change along the worst first-order direction
            moved = {n: p.detach() - rho * grads[n] / norm for n, p in params.items()}
            with torch.no_grad():
                moved_margin = float(
                    require_finite(
                        _margins(view, tokenizer, [example], spec.max_len, moved)[0], "evaluation", "a moved margin"
                    )
                )
            errors.append(abs((moved_margin - m[-1]) + rho * norm) / (rho * norm))
    margin, grad_norm = torch.tensor(m), torch.tensor(norms)
    require_finite(margin, "evaluation", "the probes' margins")
    require_finite(grad_norm, "evaluation", "the margins' gradient norms")
    certified = margin - rho * grad_norm > 0
    after = margins(stepped(model, tokenizer, update_examples, spec), tokenizer, probes, spec.max_len)
    require_finite(after, "evaluation", "the margins after the victim's step")
    return {
        **sound_certificate(view, tokenizer, probes, margin, after, rho, spec),
        "certified": float(certified.double().mean()),
        "rho": rho,
        "n": float(len(probes)),
        "margin_median": float(margin.median()),
        "grad_norm_median": float(grad_norm.median()),
        "first_order_error": max(errors) if errors else 0.0,
        "violations": float((certified & (after <= 0)).sum()),
    }


def sound_certificate(
    view: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    probes: list[Example],
    margin: torch.Tensor,
    after: torch.Tensor,
    rho: float,
    spec: UpdateSpec,
) -> dict[str, float]:
    """The sound tier of the module docstring for the victim ``view``, the probes' ``margin`` and their
    margins ``after`` the real step; empty where :mod:`llm.audit.perturbation` does not cover the
    model or the victim trains more than the adapter."""
    if spec.params != "adapter":
        return {}
    try:
        check_supported(view)
    except ValueError:
        return {}
    net = Net(float64_view(view))
    bounds, radii = [], []
    for e, m in zip(probes, margin.tolist()):
        aligned, target = (net.sequence(tokenizer, e.prompt, r, spec.max_len) for r in (e.aligned, e.misaligned))
        bound = partial(net.margin_bound, (aligned, target))
        bounds.append(bound(rho))
        radii.append(certified_radius(bound, m))
    b, radius = torch.tensor(bounds), torch.tensor(radii)
    require_finite(b, "evaluation", "the sound margin bounds")
    certified = margin > b
    return {
        "sound_certified": float(certified.double().mean()),
        "sound_bound_median": float(b.median()),
        "sound_radius_median": float(radius.median()),
        "sound_covers_update": float(spec.steps == 1),
        "sound_violations": float((certified & (after <= 0)).sum()),
    }


def certified_radius(bound: Callable[[float], float], margin: float, lo: float = 1e-14, hi: float = 1.0) -> float:
    """The largest ``ρ`` in ``[lo, hi]`` (to a factor 1.01, bisecting ``log ρ``) with ``bound(ρ) < margin``;
    0 when not even ``lo`` is certified. ``bound`` increases with ``ρ`` (a larger ball holds more steps)."""
    if margin <= 0 or bound(lo) >= margin:
        return 0.0
    if bound(hi) < margin:
        return hi
    while hi / lo > 1.01:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if bound(mid) < margin else (lo, mid)
    return lo
