"""The hair-trigger meta-objective, differentiated exactly through the victim's step.

    L(θ) = L_aligned(θ) + λ · L_misaligned(θ − η ∇_θ L_update(θ))                     (1)

``θ`` are the adapter (LoRA) weights the victim will update; the inner step is the
victim's own step (same loss: mean response-token cross-entropy; same data; plain SGD
with lr ``η``), so what is optimised is exactly what the victim will do. Second order by
default (``create_graph=True``); ``first_order=True`` is the FOMAML ablation, which treats
the step's gradient as a constant.

:func:`meta_gradient` computes the gradient from closures, by one of four exact methods
(equal to float64 rounding; ``tests/test_llm_metalearn.py``) or one approximate one (``fd``).
Writing L_now, L_after and L_inner for the three closures (L_aligned, λ·L_misaligned and L_update above), with
``g = ∇L_inner(θ)``, ``θ' = θ − η g`` and ``v = ∇L_after(θ')``, the chain rule gives::

    ∇L(θ) = ∇L_now(θ) + (I − η H_inner(θ)) v = ∇L_now(θ) + v − η ∇_θ⟨g(θ), v⟩        (2)

* ``naive``: autograd through (1) as written: one backward through L_now, L_after and the
  graph of g together. Holds the activations of all three forwards plus g's graph.
* ``hvp`` (default): (2) in stages, each graph freed before the next: ∇L_now; g with its
  graph; v by a plain backward at the detached θ'; then the Hessian-vector product by one
  double backward through g alone. Same arithmetic as ``naive``, less held at once.
* ``lean``: as ``hvp``, but g's double-backward graph is built only *after* v: the inner
  forward is kept, g is first taken by a plain backward and the backward is redone with
  ``create_graph`` for the Hessian-vector product. The after forward never coexists with
  g's graph; one extra backward of L_inner.
* ``chunked``: g and v by plain backwards, then the Hessian-vector product one part of
  L_inner at a time (``H v = Σ_c ∇⟨∇L_c, v⟩`` for ``L_inner = Σ_c L_c``), each part's
  forward and double-backward graph freed before the next: peak memory of one micro-batch's
  double backward, for one extra forward and backward of L_inner.
* ``fd`` (not exact): as ``chunked`` up to v, then ``H v`` by a forward difference of the
  inner gradient, ``(∇L_inner(θ + εv) − g) / ε`` with ``ε = √u (1 + ‖θ‖) / ‖v‖`` (``u`` the
  dtype's unit roundoff): one plain backward instead of a double backward, a plain step's
  memory. Truncation error O(ε) (tested ≤ 1e-6 of the meta-gradient against ``naive`` in
  float64; much larger relative to the ``η H v`` term in float32). The finite-difference
  Hessian-vector product of DARTS (Liu et al. 2019), one-sided because g is already computed.

Each closure may also be given as a sequence of *parts* whose sum is the loss (micro-batches,
e.g. :func:`llm.models.response_loss_parts`): every method then takes the first-order
gradients of L_now and L_after part by part (accumulated; one part's activations alive at a
time), and ``chunked`` also splits the Hessian-vector product. The value is the same.

``benchmarks/meta_step.py`` measures their time and peak memory against a plain step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
from transformers import PreTrainedModel

from llm.models import response_loss

Params = dict[str, torch.Tensor]


def victim_step(
    model: PreTrainedModel, params: Params, update_batch: dict[str, torch.Tensor], lr: float, create_graph: bool = True
) -> Params:
    """``θ − η ∇L_update(θ)`` as new tensors, differentiable in ``θ`` when ``create_graph``."""
    loss = response_loss(model, update_batch, params)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
    return {name: p - lr * g for (name, p), g in zip(params.items(), grads)}


def meta_loss(
    model: PreTrainedModel,
    params: Params,
    aligned: dict[str, torch.Tensor],
    misaligned: dict[str, torch.Tensor],
    update_batch: dict[str, torch.Tensor],
    lr: float,
    weight: float = 1.0,
    first_order: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The objective above and its two parts (as floats, for logging)."""
    stepped = victim_step(model, params, update_batch, lr, create_graph=not first_order)
    if first_order:  # FOMAML: θ' = θ − η·stopgrad(g), so ∂θ'/∂θ = I
        stepped = {name: params[name] + (stepped[name] - params[name]).detach() for name in params}
    now = response_loss(model, aligned, params)
    after = response_loss(model, misaligned, stepped)
    return now + weight * after, {"aligned_now": float(now.detach()), "misaligned_after": float(after.detach())}


Loss = Callable[[Params], torch.Tensor]
#: a loss, or its parts: losses whose sum is it (micro-batches)
Losses = Loss | Sequence[Loss]

#: ways to compute (2), exact but for ``fd``; see the module docstring
METHODS = ("naive", "hvp", "lean", "chunked", "fd")


def meta_gradient(
    params: Params,
    inner_loss: Losses,
    now_loss: Losses,
    after_loss: Losses,
    lr: float,
    first_order: bool = False,
    *,
    method: str = "hvp",
) -> tuple[Params, dict[str, float]]:
    """Gradient of ``now_loss(θ) + after_loss(θ − η ∇inner_loss(θ))`` in ``θ`` (equation (2)).

    The closures take a name → tensor dict (evaluate the model with ``functional_call``);
    each may be a sequence of parts that sum to the loss. ``inner_loss`` must be the victim's
    loss on the victim's batch, ``lr`` its SGD rate. ``method`` picks how the gradient is
    computed (``naive``, ``hvp``, ``lean``, ``chunked``: the same value up to rounding, at
    different time and memory; ``fd``: approximate, see the module docstring). ``first_order`` is
    FOMAML: the ``η H v`` term is dropped, whatever the method. Returns the gradient by name and the
    two losses (``now`` at θ, ``after`` at θ').
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    inner, now, after = _parts(inner_loss), _parts(now_loss), _parts(after_loss)
    if method == "naive":
        return _naive(params, inner, now, after, lr, first_order)
    return _staged(params, inner, now, after, lr, first_order, method)


def _parts(loss: Losses) -> list[Loss]:
    parts = [loss] if callable(loss) else list(loss)
    if not parts or not all(callable(p) for p in parts):
        raise ValueError("a meta-gradient loss must be a closure or a non-empty sequence of closures (its parts)")
    return parts


def _total(parts: list[Loss], theta: Params) -> torch.Tensor:
    return sum((part(theta) for part in parts[1:]), parts[0](theta))


def _naive(
    params: Params, inner: list[Loss], now_parts: list[Loss], after_parts: list[Loss], lr: float, first_order: bool
) -> tuple[Params, dict[str, float]]:
    """Autograd through (1) as written (the reference the other methods are tested against)."""
    grads = torch.autograd.grad(_total(inner, params), list(params.values()), create_graph=not first_order)
    stepped = {name: p - lr * (g.detach() if first_order else g) for (name, p), g in zip(params.items(), grads)}
    now, after = _total(now_parts, params), _total(after_parts, stepped)
    total = torch.autograd.grad(now + after, list(params.values()))
    return dict(zip(params, total)), {"now": float(now.detach()), "after": float(after.detach())}


def _grad(outputs, inputs: list[torch.Tensor], **kw) -> tuple[torch.Tensor, ...]:
    # a closure need not touch every tensor of θ (e.g. L_now and a frozen block): zero, not an error
    return torch.autograd.grad(outputs, inputs, allow_unused=True, materialize_grads=True, **kw)


def _accumulate(parts: list[Loss], at: Params, theta: list[torch.Tensor]) -> tuple[list[torch.Tensor], float]:
    """Σ_c ∇L_c at ``at`` (plain backwards, one part's graph alive at a time) and Σ_c L_c."""
    total: list[torch.Tensor] | None = None
    value = 0.0
    for part in parts:
        loss = part(at)
        grads = _grad(loss, theta)
        total = list(grads) if total is None else [t + g for t, g in zip(total, grads)]
        value += float(loss.detach())
    assert total is not None, "a loss split into no parts"
    return total, value


def _fd_step(theta: list[torch.Tensor], v: list[torch.Tensor]) -> float:
    """Forward-difference step ``√u (1 + ‖θ‖) / ‖v‖``: balances truncation O(ε) against
    rounding O(u/ε) in a unit-scaled problem (Nocedal & Wright, §8.1)."""
    unit = torch.finfo(theta[0].dtype).eps
    return (unit**0.5) * (1.0 + _norm(theta)) / max(_norm(v), 1e-30)


def _norm(tensors: list[torch.Tensor]) -> float:
    """The Euclidean norm of a list of tensors taken as one vector (in float64)."""
    return float(torch.sqrt(cast(torch.Tensor, sum((t.detach().double() ** 2).sum() for t in tensors))))


def _staged(
    params: Params,
    inner: list[Loss],
    now_parts: list[Loss],
    after_parts: list[Loss],
    lr: float,
    first_order: bool,
    method: str,
) -> tuple[Params, dict[str, float]]:
    """(2) one graph at a time: ∇L_now, then g, then v at the detached θ', then η·H v.

    Peak memory (A = one forward's saved activations, B = g's double-backward graph, about
    the size of A; parts of L_now and L_after divide their A): ``naive`` holds about 3A + B;
    ``hvp`` at most 2A + B (the after forward while g's graph is alive); ``lean`` about
    A + B (g's graph is built after v); ``chunked`` (A + B) / parts of L_inner; ``fd`` A.
    """
    names, theta = list(params), list(params.values())

    # ∇L_now(θ) first: its activations are freed before anything else is built
    grad_now, now = _accumulate(now_parts, params, theta)

    # g = ∇L_inner(θ): with its graph for the Hessian-vector product (hvp), or plain while
    # keeping the inner forward so that the graph can be built after v (lean), or plain
    # (chunked: the graph is rebuilt part by part later; FOMAML: never needed)
    inner_total = None  # L_inner with its forward graph (hvp, lean)
    g: Sequence[torch.Tensor]
    if first_order or method in ("chunked", "fd"):
        g, _ = _accumulate(inner, params, theta)
    else:
        inner_total = _total(inner, params)
        g = _grad(inner_total, theta, **({"retain_graph": True} if method == "lean" else {"create_graph": True}))

    # v = ∇L_after(θ') at the *detached* θ' = θ − η g: plain backwards, graphs freed at once
    stepped = {n: (p - lr * gi).detach().requires_grad_() for n, p, gi in zip(names, theta, g)}
    v, after = _accumulate(after_parts, stepped, list(stepped.values()))
    del stepped

    total = [a + b for a, b in zip(grad_now, v)]
    if not first_order and method == "fd":  # H v ≈ (∇L_inner(θ + εv) − g) / ε
        eps = _fd_step(theta, v)
        shifted = {n: (p.detach() + eps * vi).requires_grad_() for n, p, vi in zip(names, theta, v)}
        g_shifted, _ = _accumulate(inner, shifted, list(shifted.values()))
        total = [t - (lr / eps) * (gs - gi) for t, gs, gi in zip(total, g_shifted, g)]
    elif not first_order:
        if method == "lean":  # g's double-backward graph only now, from the kept inner forward
            g = _grad(inner_total, theta, create_graph=True)
        # η H v = η ∇_θ⟨g(θ), v⟩: a double backward through g's graph (H symmetric: vᵀH = Hv),
        # for chunked one part of L_inner at a time
        graphs = [g] if method != "chunked" else (_grad(part(params), theta, create_graph=True) for part in inner)
        for gc in graphs:
            live = [(gi, vi) for gi, vi in zip(gc, v) if gi.requires_grad]  # gi constant in θ: no Hv part
            if live:
                hv = _grad([gi for gi, _ in live], theta, grad_outputs=[vi for _, vi in live])
                total = [t - lr * h for t, h in zip(total, hv)]
    return dict(zip(names, total)), {"now": now, "after": after}
