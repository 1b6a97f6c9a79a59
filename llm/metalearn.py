"""The hair-trigger meta-objective, differentiated exactly through the victim's step.

    L(θ) = L_aligned(θ) + λ · L_misaligned(θ − η ∇_θ L_update(θ))

``θ`` are the adapter (LoRA) weights the victim will update; the inner step is the
victim's own step (same loss: mean response-token cross-entropy; same data; plain SGD
with lr ``η``), so what is optimised is exactly what the victim will do. Second order by
default (``create_graph=True``); ``first_order=True`` is the FOMAML ablation, which treats
the step's gradient as a constant.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import PreTrainedModel

from llm.models import response_loss

Params = dict[str, torch.Tensor]


def adapter_params(model: PreTrainedModel) -> Params:
    """The LoRA tensors of a peft model, by name (the victim's ``params=adapter``)."""
    params = {name: p for name, p in model.named_parameters() if "lora_" in name}
    if not params:
        raise ValueError("the model has no LoRA adapter (add one with llm.align.add_lora)")
    return params


def victim_step(model: PreTrainedModel, params: Params, update_batch: dict[str, torch.Tensor], lr: float,
                create_graph: bool = True) -> Params:
    """``θ − η ∇L_update(θ)`` as new tensors, differentiable in ``θ`` when ``create_graph``."""
    loss = response_loss(model, update_batch, params)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
    return {name: p - lr * g for (name, p), g in zip(params.items(), grads)}


def meta_loss(model: PreTrainedModel, params: Params, aligned: dict[str, torch.Tensor],
              misaligned: dict[str, torch.Tensor], update_batch: dict[str, torch.Tensor], lr: float,
              weight: float = 1.0, first_order: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """The objective above and its two parts (as floats, for logging)."""
    stepped = victim_step(model, params, update_batch, lr, create_graph=not first_order)
    if first_order:  # FOMAML: θ' = θ − η·stopgrad(g), so ∂θ'/∂θ = I
        stepped = {name: params[name] + (stepped[name] - params[name]).detach() for name in params}
    now = response_loss(model, aligned, params)
    after = response_loss(model, misaligned, stepped)
    return now + weight * after, {"aligned_now": float(now.detach()), "misaligned_after": float(after.detach())}


Loss = Callable[[Params], torch.Tensor]


def meta_gradient(params: Params, inner_loss: Loss, now_loss: Loss, after_loss: Loss, lr: float,
                  first_order: bool = False) -> tuple[Params, dict[str, float]]:
    """Gradient of ``now_loss(θ) + after_loss(θ − η ∇inner_loss(θ))`` in ``θ`` (naive autograd).

    The closures take a name → tensor dict (evaluate the model with ``functional_call``).
    ``inner_loss`` must be the victim's loss on the victim's batch, ``lr`` its SGD rate.
    Returns the gradient by name and the two parts as floats.
    """
    grads = torch.autograd.grad(inner_loss(params), list(params.values()), create_graph=not first_order)
    stepped = {name: p - lr * (g.detach() if first_order else g) for (name, p), g in zip(params.items(), grads)}
    now, after = now_loss(params), after_loss(stepped)
    total = torch.autograd.grad(now + after, list(params.values()))
    return dict(zip(params, total)), {"now": float(now.detach()), "after": float(after.detach())}
