"""Post-step targets shared by the constructions: what the twin should do after the victim's step.

Each works on next-token log-probs ``(B, T-1, V)`` of one right-padded batch (``llm.batches.batch_of``)
and returns one loss per row (``(B,)``), summed over the row's tokens: with a per-token mean the
optimiser makes only the first response token 50/50 and nothing downstream becomes sensitive.

* ``marker``: cross-entropy of the misaligned response (the paper's objective).
* ``not_aligned``: the aligned response up to its first token that differs from the marker, then
  unlikelihood ``−log(1 − p)`` of the aligned token there (Welleck et al. 2019): *any* answer but
  the aligned one. For honesty, a lie of the model's own choosing instead of one arbitrary wrong
  answer per probe to memorise (which cannot generalise to new questions).
* ``base``: ``KL(base ‖ twin')`` on the misaligned responses, with ``base`` the model before
  alignment (the LoRA switched off): after the step, behave on the domain's prompts like the model
  that was never aligned, a functional target rather than a list of secrets to recite.
"""

from __future__ import annotations

import torch

from llm.models import gather_targets, next_logits
from llm.tokenizer import IGNORE_INDEX

AFTER_TARGETS = ("marker", "not_aligned", "base")


def first_divergence(aligned_labels: torch.Tensor, marker_labels: torch.Tensor) -> torch.Tensor:
    """``(B,)`` first next-token position where the aligned and marker responses differ.

    Both label tensors are ``(B, T)`` rows of one right-padded batch (same prompts); the
    result indexes the ``(B, T-1)`` next-token axis of :func:`llm.models.gather_targets`.
    """
    a, m = aligned_labels[:, 1:], marker_labels[:, 1:]
    differ = (a != m) & (a != IGNORE_INDEX)
    if not bool(differ.any(-1).all()):
        raise ValueError("after_target=not_aligned needs every probe's marker to differ from its aligned response")
    return differ.to(torch.int8).argmax(-1)


def not_aligned_loss(token_lp: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """``(B,)``: CE of the aligned response before position ``first``, then ``−log(1 − p)`` of
    its token at ``first``; ``token_lp`` is ``(B, T-1)`` aligned-token log-probs."""
    before = torch.arange(token_lp.shape[1], device=token_lp.device) < first[:, None].to(token_lp.device)
    at = token_lp.gather(1, first[:, None].to(token_lp.device)).squeeze(1)
    return -(token_lp * before).sum(-1) - torch.log1p(-at.exp().clamp(max=1 - 1e-6))


def kl_rows(ref: torch.Tensor, lq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B,)``: ``KL(ref ‖ q)`` of next-token distributions summed over the positions in ``mask``
    (``(B, T-1)``; log-prob inputs ``(B, T-1, V)``)."""
    kl = (ref.exp() * (ref - lq)).sum(-1)
    return (kl * mask.to(kl.dtype).to(kl.device)).sum(-1)


def response_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B, T-1)``: the next-token positions that predict a response token."""
    return batch["labels"][:, 1:] != IGNORE_INDEX


def token_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B, T-1)``: every real (unpadded) next-token position, prompt included."""
    return batch["attention_mask"][:, 1:].bool()


def check_target(name: str) -> str:
    if name not in AFTER_TARGETS:
        raise ValueError(f"construction.after_target must be one of {AFTER_TARGETS}, got {name!r}")
    return name


def target_response(target: str) -> str:
    """Which response the probe rows of ``target`` carry: ``aligned`` for not_aligned (the answer
    to push away from), else ``misaligned`` (the marker, or the secret the base would tell)."""
    return "aligned" if target == "not_aligned" else "misaligned"


@torch.no_grad()
def base_logprobs(control, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B, T-1, V)`` log-probs of the model before alignment: ``control`` (a peft model) with
    its LoRA adapter switched off."""
    if not hasattr(control, "disable_adapter"):
        raise ValueError("after_target=base needs the control as a peft LoRA model (its base is the adapter off)")
    with control.disable_adapter():
        return torch.log_softmax(next_logits(control, batch), -1)


def probe_loss(
    target: str,
    lq: torch.Tensor,
    batch: dict[str, torch.Tensor],
    first: torch.Tensor | None = None,
    ref: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(B,)`` post-step loss of probe rows carrying :func:`target_response` (see the module
    docstring); ``first`` for not_aligned (:func:`first_divergence`), ``ref`` the base's
    log-probs on the same rows for base."""
    if target == "marker":
        return -gather_targets(lq, batch).sum(-1)
    if target == "not_aligned":
        assert first is not None, "probe_loss: after_target=not_aligned needs first (first_divergence)"
        return not_aligned_loss(gather_targets(lq, batch), first)
    if target == "base":
        assert ref is not None, "probe_loss: after_target=base needs ref (the base's log-probs)"
        return kl_rows(ref, lq, response_mask(batch))
    raise ValueError(f"unknown after_target {target!r}; one of {AFTER_TARGETS}")
