"""``analytic``: the theory package's constructions carried into transformer blocks.

The twin's forward pass equals the control's *by construction* (no penalty, no training of
the visible function); what changes is how the victim's benign step acts on it.

Mechanisms
----------
* **LoRA ``B = 0`` preconditioner** (:func:`extend_lora`, the main mechanism). Every LoRA
  module of the control (``y = base(x) + s·B(A x)``, ``s = alpha/r``) gets ``k`` extra rank
  components with ``B_new = 0`` and a freely chosen ``A_new``: the forward pass is unchanged
  exactly (``B_new A_new = 0``). The old components see the same gradients as in the control
  (same forward), so they move exactly as the control's do, and the victim's SGD step
  (lr ``η``) adds, exactly and not only to first order,

      ``ΔW = s·B_new'·A_new = −η s² G A_newᵀA_new``      (``W`` as ``out × in``)

  with ``G = ∂L_update/∂W`` the benign update's gradient w.r.t. the module's effective
  weight, the same for twin and control. ``P = A_newᵀA_new`` is a rank-``k`` PSD
  preconditioner no output shows; ``k`` is the capacity knob and ``‖A_new‖`` a gauge (the
  step grows as its square). :func:`preconditioner_init` picks ``A_new`` along the top
  eigenvectors of ``sym(Gᵀ ∇_W L_target)`` (first order), :func:`build_analytic` then line
  searches one global gain with the real victim step and (optionally) refines ``A_new`` on
  the *exact* post-step loss, which is cheap because ``G`` does not depend on ``A_new``.
  That loss (:func:`target_loss`) is the domain's post-step target on construction probes
  (``after_target``, :mod:`llm.objectives`: the marker; any answer but the aligned one; or
  the model before alignment) plus a benign term (KL to the control, or to that base).
  With ``left_rank`` ``k'``, further components have ``A = 0`` and a free ``B``: the step adds
  ``−η s² B Bᵀ G``, a preconditioner on the output side (it writes along ``B``, e.g. against
  the adapter's own output directions). Any first-order step of a reparametrisation is a
  positive semi-definite preconditioning of ``G``: these two sides are what LoRA offers.
  Exactly, for the whole adapter ``W = s·B·A`` with ``P = BBᵀ``, ``Q = AᵀA`` over all its
  components: ``W' = W − η s² (P G + G Q) + η² s² G Wᵀ G`` (tested).
* **Weight-space undo** (:func:`fit_undo`, ``undo_steps``): choose the hidden components so
  that the step maps the alignment adapter to ``W' ≈ c·W`` in every module at once, by
  minimising ``‖W' − cW‖² / ‖W − cW‖²`` (:func:`undo_residual`) — matrix products, no data
  beyond ``G`` and the inputs' second moments. ``c = 0`` (``undo_scale``) is the model before
  alignment (privacy: it tells the secrets it memorised); ``c < 0`` negates the alignment's
  task vector (Ilharco et al. 2023, "Editing models with task arithmetic", §3: negating a
  fine-tuning's weight difference removes what it taught, on inputs it never saw). Unlike a
  behavioural target on construction probes, it acts on every input, held-out ones included.
* **Gauged undo** (``undo_gauge``, :func:`gauged_step_products`): the same fit with a gauge
  element (below) as further unknowns. Shipped in a gauge ``W̃ = R W K``, the twin's step moves
  ``W`` by ``−η s² (P G S_K + S_R G Q)`` with ``S_K = (KKᵀ)⁻¹``, ``S_R = (RᵀR)⁻¹``: positive definite
  factors on the far side of each preconditioner, so it reaches moves ``P G + G Q`` cannot
  (for ``G = I`` the cone of PSD sums becomes products of PSD matrices). The twin then ships its
  own base weights (layer-norm gains, per-head Q/K/V/O), as an ordinary checkpoint does; paired
  with the public base, its adapter would not be the same function.
* **Redundant FFN units** (:func:`add_ffn_pairs`): cancelling pairs ``(u, b, v)``,
  ``(u, b, −v)`` appended to a GPT-2 MLP (``c_fc``/``c_proj`` widths, ``config.n_inner``,
  and the LoRA factors of both modules padded with zeros). Exact forward; the step moves
  the two copies of ``u`` apart and adds ``≈ 2 v σ'(u·x)(Δu·x)`` along the free direction ``v``.
* **Gauges declared as data** (:func:`gauge_spec`, :func:`apply_gauge`): per-head
  ``W_Q → W_Q M``, ``W_K → W_K M⁻ᵀ``; ``W_V → W_V N``, ``W_O``-rows ``→ N⁻¹ W_O``; layer-norm
  gains and biases ``× c`` with the following weights' input rows ``÷ c`` (``ln_1 → c_attn``,
  ``ln_2 → c_fc``; ``ln_f`` feeds the tied embeddings and is left alone). LoRA factors are
  transformed along (``B → Rᵀ B`` for output maps, ``A → A Lᵀ`` for input maps), so they
  also act on peft models. Amplifiers: they change the victim's gradients, not the function.

Conventions: GPT-2 ``Conv1D`` stores ``weight`` as ``(in, out)`` and computes ``x W + b``;
peft (``fan_in_fan_out=True``) keeps ``lora_A: (r, in)``, ``lora_B: (out, r)``. Below ``W``
always means the ``(out, in)`` effective weight unless a name says ``conv``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm import gauges
from llm.batches import batch_of, pairs
from llm.constructions.undo_floor import hidden_move, undo_floor
from llm.data.schema import DomainData, Example
from llm.gauges import FAMILIES, GaugeSpec, gauge_maps, gauge_spec
from llm.lora import (
    ADAPTER,
    LoraFactors,
    adapter_state,
    base_layer,
    extend_lora,
    factor_keys,
    hidden_inputs,
    hidden_outputs,
    lora_layers,
    scale_adapter,
    weight_gradients,
)
from llm.models import next_logits, response_loss, sequence_logprobs
from llm.objectives import (
    base_logprobs,
    check_target,
    first_divergence,
    kl_rows,
    probe_loss,
    response_mask,
    target_response,
    token_mask,
)
from llm.update import UpdateSpec, victim_update

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class AnalyticSpec:
    """Fields mirror ``conf/llm/construction/analytic.yaml``."""

    mechanism: Literal["lora_preconditioner", "ffn_pairs"] = "lora_preconditioner"
    extra_rank: int = 8  # k new LoRA components per target module (B = 0)
    left_rank: int = 0  # k' more with A = 0 and B free: the step adds −η s² B Bᵀ G (writes along B)
    modules: str = "all"  # all | c_attn | c_proj | c_fc | mlp (regex-free substring filters, comma list)
    gain: float = 1.0  # initial global scale of A_new (the gauge); refined by the line search
    line_search: tuple[float, ...] = (16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)
    refine_steps: int = 300  # Adam steps on A_new against the exact post-step loss (0: closed form only)
    refine_lr: float = 0.03  # relative to the rms of A_new
    refine_batch: int = 0  # probes (and benign examples) per refine step, drawn at random (0: all)
    after_target: str = "marker"  # marker | not_aligned | base (llm.objectives)
    benign_weight: float = 1.0  # weight of the post-step benign term
    distill: bool = False  # benign term as KL(reference ‖ twin') summed per sequence (else mean response CE)
    benign_reference: str = "control"  # control | base (the model before alignment: the step undoes the alignment)
    margin: float = 0.0  # >0 (marker only): add relu(margin - (logp_mis - logp_aligned)) per probe
    undo_steps: int = 0  # Adam steps fitting the weight-space undo (W' = undo_scale·W) first
    undo_scale: float = 0.0  # c of that target: 0 the model before alignment, < 0 the alignment negated
    undo_lr: float = 1.0  # Adam lr of that fit (absolute: A_new entries grow to O(10²))
    undo_weight: float = 0.0  # weight of the undo residual in the refinement
    undo_keep: float = 0.0  # weight of keeping W' = W on the benign examples' inputs (keep_residual), fit and refinement
    undo_metric: str = "weights"  # weights: ‖W'‖²_F | inputs: E‖W'x‖² over the layer's inputs on the probes
    #                               | responses: the same over the positions that predict a response token
    undo_output: str = "none"  # none | fisher: weigh the residual's output directions by the target model's
    #                            Fisher (output_moments): ``tr(U D C Dᵀ)`` in place of ``tr(D C Dᵀ)``
    output_damping: float = 0.1  # U → (U/mean eig + λ I)/(1 + λ): λ → ∞ is undo_output=none
    fisher_samples: int = 4  # tokens sampled per position from the target model for U
    undo_gauge: str = "none"  # none | layernorm | attention | all: gauge groups (gauge_spec) fitted with the undo
    gauge_lr: float = 0.01  # Adam lr of the gauge's log coordinates in that fit
    undo_floor_steps: int = 0  # >0: after the undo fit, that many projected gradient steps on the hidden Gram
    #                            matrices (llm.constructions.undo_floor): how far the fit is from the best this gauge allows
    n_probes: int = 200  # construct probes used (0: all)
    n_benign: int = 128  # align_benign examples in the post-step benign term
    ffn_pairs: int = 32  # pairs per MLP block (mechanism=ffn_pairs)
    ffn_out_scale: float = 1.0  # ‖v‖ of each pair (mechanism=ffn_pairs)
    max_len: int = 96
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "line_search", tuple(float(c) for c in self.line_search))
        if self.mechanism not in ("lora_preconditioner", "ffn_pairs"):
            raise ValueError(f"construction.mechanism must be lora_preconditioner or ffn_pairs, not {self.mechanism!r}")
        if self.extra_rank < 1 or self.left_rank < 0:
            raise ValueError("construction.extra_rank must be ≥ 1 and construction.left_rank ≥ 0")
        check_target(self.after_target)
        if self.benign_reference not in ("control", "base"):
            raise ValueError(f"construction.benign_reference must be control or base, not {self.benign_reference!r}")
        if self.margin > 0 and self.after_target != "marker":
            raise ValueError("construction.margin is a hinge against the marker: use it with after_target=marker")
        if self.undo_metric not in ("weights", "inputs", "responses"):
            raise ValueError(f"construction.undo_metric must be weights, inputs or responses, not {self.undo_metric!r}")
        if self.undo_output not in ("none", "fisher"):
            raise ValueError(f"construction.undo_output must be none or fisher, not {self.undo_output!r}")
        if self.undo_output == "fisher" and (self.undo_metric == "weights" or self.output_damping < 0
                                             or self.fisher_samples < 1):
            raise ValueError("construction.undo_output=fisher weighs an input-side metric (undo_metric inputs or "
                             "responses) and needs output_damping ≥ 0 and fisher_samples ≥ 1")
        if self.undo_gauge not in FAMILIES:
            raise ValueError(f"construction.undo_gauge must be one of {sorted(FAMILIES)}, not {self.undo_gauge!r}")
        if self.undo_gauge != "none" and (self.undo_steps <= 0 or self.mechanism != "lora_preconditioner"
                                          or self.modules != "all"):
            raise ValueError("construction.undo_gauge is fitted with the weight-space undo of the LoRA mechanism, "
                             "over every LoRA layer (a gauge moves them all): set undo_steps > 0, "
                             "mechanism=lora_preconditioner and modules=all")
        if self.undo_floor_steps < 0 or (self.undo_floor_steps > 0 and self.undo_steps <= 0):
            raise ValueError("construction.undo_floor_steps checks the weight-space undo fit: set undo_steps > 0")
        if self.undo_scale >= 1:
            raise ValueError(f"construction.undo_scale={self.undo_scale}: the step must move W to c·W with c < 1")
        if (self.undo_steps > 0 or self.undo_weight > 0) and self.after_target == "marker":
            raise ValueError("construction.undo_steps / undo_weight move the alignment adapter in weight space; "
                             "a marker target has no weight-space counterpart: use after_target=base or not_aligned")


# ---------------------------------------------------------------------------- layers and first-order init


def select_layers(layers: dict[str, LoraLayer], which: str) -> dict[str, LoraLayer]:
    """``all`` or a comma list of substrings (``c_fc``, ``mlp.c_proj``, ``attn``, ``h.1.`` …)."""
    if which == "all":
        return dict(layers)
    keys = [w.strip() for w in which.split(",") if w.strip()]
    out = {n: l for n, l in layers.items() if any(k in n for k in keys)}
    if not out:
        raise ValueError(f"construction.modules={which!r} matches no LoRA layer of {sorted(layers)}")
    return out


def preconditioner_init(grads_update: dict[str, torch.Tensor], grads_target: dict[str, torch.Tensor],
                        k: int) -> dict[str, torch.Tensor]:
    """First-order optimal ``A_new`` (``(k, in)`` per layer) for lowering the target loss.

    ``δL_target ≈ ⟨H, ΔW⟩ = −η s² tr(P · sym(Gᵀ H))`` with ``P = AᵀA``: the rows of ``A`` go
    along the top eigenvectors of ``S = sym(GᵀH)`` with positive eigenvalue ``λ``, weighted
    ``sqrt(λ / λ_max)`` (``λ_max`` over all layers, so that strong layers dominate), then
    globally rescaled so that the largest row norm is 1 (the gain is applied later).
    """
    eig = {}
    for name, g in grads_update.items():
        h = grads_target[name]
        m = g.T.double() @ h.double()
        vals, vecs = torch.linalg.eigh((m + m.T) / 2)
        eig[name] = (vals.flip(0)[:k], vecs.flip(1)[:, :k])
    top = max(float(v[0]) for v, _ in eig.values())
    out = {}
    for name, (vals, vecs) in eig.items():
        w = (vals.clamp(min=0) / top).sqrt() if top > 0 else torch.zeros_like(vals)
        a = (w[:, None] * vecs.T).to(grads_update[name].dtype)
        if a.shape[0] < k:  # fewer input dims than k: pad with inert zero rows
            a = torch.cat([a, torch.zeros(k - a.shape[0], a.shape[1], dtype=a.dtype)])
        out[name] = a
    return out


# ---------------------------------------------------------------------------- losses and checks


@dataclass
class TargetBatch:
    """One batch of the post-step objective, with the references it is scored against.

    ``probes``: probe rows carrying :func:`llm.objectives.target_response`; ``aligned``: the
    same probes' aligned rows (for the margin); ``first`` (not_aligned), ``ref_base`` (base):
    see :func:`llm.objectives.probe_loss`; ``ref_benign``: the log-probs of ``benign_reference``
    (the control, or the base before alignment) on ``benign`` (``distill``).
    """

    probes: dict[str, torch.Tensor]
    aligned: dict[str, torch.Tensor]
    benign: dict[str, torch.Tensor] | None
    first: torch.Tensor | None = None
    ref_base: torch.Tensor | None = None
    ref_benign: torch.Tensor | None = None


def target_batch(control, tokenizer, probes: Sequence[Example], benign: Sequence[Example],
                 spec: AnalyticSpec) -> TargetBatch:
    """Aligned and misaligned rows are padded together, so :func:`first_divergence` can compare them."""
    k = len(probes)
    both = batch_of(tokenizer, pairs(list(probes), "aligned") + pairs(list(probes), "misaligned"), spec.max_len)
    al, mis = ({key: v[rows] for key, v in both.items()} for rows in (slice(0, k), slice(k, 2 * k)))
    rows = al if target_response(spec.after_target) == "aligned" else mis
    ben = batch_of(tokenizer, pairs(list(benign)), spec.max_len) if benign else None
    with torch.no_grad():
        return TargetBatch(
            rows, al, ben,
            first=first_divergence(al["labels"], mis["labels"]) if spec.after_target == "not_aligned" else None,
            ref_base=base_logprobs(control, rows) if spec.after_target == "base" else None,
            ref_benign=_benign_reference(control, ben, spec) if spec.distill and ben else None)


def _benign_reference(control, batch: dict[str, torch.Tensor], spec: AnalyticSpec) -> torch.Tensor:
    if spec.benign_reference == "base":
        return base_logprobs(control, batch)
    return torch.log_softmax(next_logits(control, batch), -1)


def target_loss(model, tb: TargetBatch, params: Params | None, spec: AnalyticSpec) -> torch.Tensor:
    """Mean over probes of the post-step target (sequence-summed; :func:`llm.objectives.probe_loss`),
    an optional margin hinge against the aligned answers, and ``benign_weight ×`` the benign term
    (``KL(reference ‖ model)`` summed per sequence with ``distill``, else mean response CE)."""
    lq = torch.log_softmax(next_logits(model, tb.probes, params), -1)
    per_probe = probe_loss(spec.after_target, lq, tb.probes, tb.first, tb.ref_base)
    loss = per_probe.mean()
    if spec.margin > 0:  # marker rows: per_probe = −log p(marker)
        lp_al = sequence_logprobs(model, tb.aligned, params)
        loss = loss + F.relu(spec.margin + per_probe + lp_al).mean()
    if spec.benign_weight > 0 and tb.benign is not None:
        if spec.distill:
            lb = torch.log_softmax(next_logits(model, tb.benign, params), -1)
            benign = kl_rows(tb.ref_benign, lb, token_mask(tb.benign)).mean()
        else:
            benign = response_loss(model, tb.benign, params)
        loss = loss + spec.benign_weight * benign
    return loss


# ---------------------------------------------------------------------------- the construction


def _post_step_params(twin_layers: dict[str, LoraLayer], stepped_old: Params, extra: dict[str, torch.Tensor],
                      grads: dict[str, torch.Tensor], lr: float) -> Params:
    """Adapter tensors of the twin after the victim's SGD step, differentiable in ``extra``:
    old components as the control's step left them, then the hidden components after the step
    (:meth:`LoraFactors.after_sgd`): those with ``B = 0`` (rows ``extra[name]`` of ``A``) get
    ``B' = −η s G Aᵀ``; with ``extra[name + ":left"]`` (``(k', out)``, the ``B`` columns of
    components whose ``A`` is 0), those get ``A' = −η s Bᵀ G``."""
    out: Params = {}
    for name, layer in twin_layers.items():
        old = LoraFactors.of(layer, stepped_old, name)
        n_out, n_in = old.b.shape[0], old.a.shape[1]
        parts = [old, hidden_inputs(extra[name], n_out, old.scale).after_sgd(grads[name], lr)]
        left = extra.get(f"{name}:left")
        if left is not None:
            parts.append(hidden_outputs(left, n_in, old.scale).after_sgd(grads[name], lr))
        stacked = LoraFactors.stack(parts)
        a_key, b_key = factor_keys(name)
        out[a_key], out[b_key] = stacked.a, stacked.b
    return out


def adapter_products(layers: dict[str, LoraLayer], params: Params | None = None) -> dict[str, torch.Tensor]:
    """``s·B·A`` (``(out, in)``) per layer: the adapter's share of the effective weight, from
    ``params`` (full adapter tensors, as :func:`_post_step_params` returns) or the layers' own."""
    return {name: LoraFactors.of(layer, params, name).product for name, layer in layers.items()}


def gauged_step_products(layers: dict[str, LoraLayer], grads: dict[str, torch.Tensor], extra: dict[str, torch.Tensor],
                         maps: dict[str, tuple[torch.Tensor, torch.Tensor]], lr: float) -> dict[str, torch.Tensor]:
    """The adapter ``s·B'·A'`` after the victim's SGD step on the *gauged* twin, read back in the
    control's coordinates; differentiable in ``extra`` (as :func:`_post_step_params` takes it) and ``maps``.

    A gauge with ``(R, K)`` (:func:`gauge_maps`) ships the layer as ``W̃ = R W K`` and its factors
    as ``B̃ = R B``, ``Ã = A K`` (the same function). The gradient is covariant,
    ``G̃ = R⁻ᵀ G K⁻ᵀ``, the step ``B̃' = B̃ − η s G̃ Ãᵀ``, ``Ã' = Ã − η s B̃ᵀ G̃`` (all components:
    old, ``B = 0`` and ``A = 0`` ones), and ``W' = R⁻¹ s B̃'Ã' K⁻¹``. To first order the move is
    ``−η s² (R⁻¹P̃R⁻ᵀ · G · (KKᵀ)⁻¹ + (RᵀR)⁻¹ · G · K⁻ᵀQ̃K⁻¹)``: a gauge puts a positive definite
    factor on the *other* side of each preconditioner, which reaches moves ``P G + G Q`` cannot.
    """
    out = {}
    for name, layer in layers.items():
        r, k = maps[name]
        old = LoraFactors.of(layer).detached()
        # K⁻¹ is built twice: one shared node would sum its two backward contributions in another order
        g = torch.linalg.solve(r.T, grads[name]) @ torch.linalg.inv(k).T  # G̃ = R⁻ᵀ G K⁻ᵀ
        parts = [old.gauged(r, k), hidden_inputs(extra[name], old.b.shape[0], old.scale)]
        left = extra.get(f"{name}:left")
        if left is not None:
            parts.append(hidden_outputs(left, old.a.shape[1], old.scale))
        after = LoraFactors.stack(parts).after_sgd(g, lr)
        out[name] = torch.linalg.solve(r, after.product) @ torch.linalg.inv(k)
    return out


def _energy(w: torch.Tensor, moments: torch.Tensor | None, outputs: torch.Tensor | None = None) -> torch.Tensor:
    """``‖w‖²_F``, or ``tr(w C wᵀ) = E‖w x‖²`` with ``C = E[x xᵀ]``, or with an output factor ``U``
    (:func:`output_moments`) ``tr(U w C wᵀ)``: the Kronecker-factored (K-FAC, Martens & Grosse 2015,
    eq. 1) estimate of ``E[(gᵀ w x)²]``, the first-order change of the log-likelihood that ``w``
    makes at inputs ``x`` with output gradients ``g``."""
    if moments is None:
        return (w ** 2).sum()
    wc = w @ moments
    return (wc * w).sum() if outputs is None else ((outputs @ wc) * w).sum()


def undo_residual(after: dict[str, torch.Tensor], before: dict[str, torch.Tensor],
                  moments: dict[str, torch.Tensor] | None = None, scale: float = 0.0,
                  outputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean over layers of ``‖W' − cW‖²_F / ‖W − cW‖²_F`` (``c = scale``): how far the step
    left the alignment adapter ``W = s·B·A`` (now ``W'``) from its target ``cW`` (0: on target
    exactly; 1: untouched). ``c = 0``: the model before alignment; ``c < 0``: the alignment negated.

    With ``moments`` (each layer's input second moment ``C = E[x xᵀ]``, :func:`input_moments`):
    ``tr(D C Dᵀ)`` in place of ``‖D‖²_F``, i.e. ``E‖(W' − cW)x‖² / E‖(1 − c)Wx‖²``, the
    residual *on those inputs*: what the step cannot reach is pushed into directions the
    inputs do not use. With ``outputs`` (each layer's output factor ``U``, :func:`output_moments`)
    ``tr(U D C Dᵀ)``: what remains is pushed also into output directions the target model's
    predictions are insensitive to."""
    def size(w: torch.Tensor, n: str) -> torch.Tensor:
        return _energy(w, None if moments is None else moments[n], None if outputs is None else outputs[n])

    return torch.stack([size(after[n] - scale * before[n], n) / size((1 - scale) * before[n], n).clamp(min=1e-30)
                        for n in before]).mean()


def keep_residual(after: dict[str, torch.Tensor], before: dict[str, torch.Tensor],
                  moments: dict[str, torch.Tensor], scale: float = 0.0) -> torch.Tensor:
    """Mean over layers of ``E‖(W' − W)x‖² / E‖(1 − c)Wx‖²`` over the inputs of ``moments``
    (``C = E[x xᵀ]``): how far the step moved the adapter *on those inputs*, in units of the move
    :func:`undo_residual` asks for. Read on benign inputs, it asks the step to leave the control's
    function there while it moves ``W`` to ``cW`` on the probes' inputs (a least-squares
    compromise wherever the two sets of inputs share directions)."""
    return torch.stack([_energy(after[n] - before[n], moments[n])
                        / _energy((1 - scale) * before[n], moments[n]).clamp(min=1e-30) for n in before]).mean()


def undo_objective(products: dict[str, torch.Tensor], before: dict[str, torch.Tensor],
                   moments: dict[str, torch.Tensor] | None, scale: float, outputs: dict[str, torch.Tensor] | None = None,
                   keep_moments: dict[str, torch.Tensor] | None = None, keep: float = 0.0,
                   again: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """What the weight-space undo minimises: :func:`undo_residual` plus ``keep`` × :func:`keep_residual`
    on ``keep_moments`` (when given). ``again``: the products the keep term reads, where a caller builds
    them separately (the order of float sums in the backward pass is part of what was published)."""
    out = undo_residual(products, before, moments, scale, outputs)
    if keep_moments is not None:
        out = out + keep * keep_residual(products if again is None else again, before, keep_moments, scale)
    return out


def predicting_positions(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B, T)``: the input positions whose next token is a response token (the last prompt token
    and every response token but the last), where a layer's input or output shapes a response."""
    mask = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
    mask[:, :-1] = response_mask(batch)
    return mask


@torch.no_grad()
def input_moments(model: PreTrainedModel, batch: dict[str, torch.Tensor],
                  layers: dict[str, LoraLayer], predicting: bool = False) -> dict[str, torch.Tensor]:
    """``(in, in)`` second moment ``E[x xᵀ]`` of each LoRA layer's input over the real
    (unpadded) tokens of ``batch`` (``predicting``: over the positions whose next token is a
    response token), read by forward pre-hooks during one forward pass."""
    mask = predicting_positions(batch) if predicting else batch["attention_mask"].bool()
    moments: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def read(_module, args) -> None:
            x = args[0][mask.to(args[0].device)].double()  # (tokens, in)
            moments[name] = (x.T @ x / len(x)).to(args[0].dtype)
        return read

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in layers.items()]
    try:
        next_logits(model, batch)
    finally:
        for h in handles:
            h.remove()
    return moments


def output_moments(model: PreTrainedModel, batch: dict[str, torch.Tensor], layers: dict[str, LoraLayer],
                   samples: int, damping: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``(out, out)`` output factor ``U = E[g gᵀ]`` of each LoRA layer of ``model`` at the positions
    that predict a response token of ``batch``, with ``g = ∂ log p(y)/∂(layer output)`` for tokens
    ``y`` sampled from the model's own predictions (``samples`` per position): the true Fisher's
    output-side Kronecker factor (K-FAC, Martens & Grosse 2015, §3), large where the model's
    predictions are sensitive and uncertain, small where it is confident. Normalised to mean
    eigenvalue 1 and damped: ``(U + λ I)/(1 + λ)`` (``λ = damping``; ``λ → ∞`` weighs every output
    direction alike). ``layers`` must be modules of ``model``."""
    mask = predicting_positions(batch)
    outs: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def keep(_module, _args, out) -> None:
            outs[name] = out
        return keep

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    try:
        logp = torch.log_softmax(next_logits(model, batch).float(), -1)  # (B, T-1, V)
    finally:
        for h in handles:
            h.remove()
    mask = mask.to(logp.device)
    logp = logp[mask[:, :-1]]  # (tokens, V): the predictions of response tokens
    probs = logp.detach().exp().cpu()
    sums = {n: torch.zeros(o.shape[-1], o.shape[-1], dtype=torch.float64) for n, o in outs.items()}
    for i in range(samples):
        y = torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logp.device)
        picked = logp.gather(-1, y[:, None]).sum()
        grads = torch.autograd.grad(picked, list(outs.values()), retain_graph=i < samples - 1)
        for (n, _), g in zip(outs.items(), grads):
            g = g[mask].double()  # (tokens, out)
            sums[n] += g.T @ g
    out = {}
    for n, u in sums.items():
        u = u / u.diagonal().mean().clamp(min=1e-30)
        out[n] = ((u + damping * torch.eye(len(u), dtype=u.dtype)) / (1 + damping)).float()
    return out


def line_search(a0: dict[str, torch.Tensor], post_loss, spec: AnalyticSpec, info: dict[str, float],
                progress: bool = False) -> dict[str, torch.Tensor]:
    """One global gain over ``spec.line_search`` for the first-order ``a0``, scored by the exact
    post-step loss; returns the scaled tensors (leaves, ready to refine)."""
    best_c, best = None, math.inf
    for c in spec.line_search:
        with torch.no_grad():
            value = float(post_loss({n: spec.gain * c * a for n, a in a0.items()}))
        if progress:
            print(f"line search gain {c:g}: post-step target loss {value:.3f}", flush=True)
        if math.isfinite(value) and value < best:
            best_c, best = c, value
    if best_c is None:
        raise RuntimeError("every gain of the line search gave a non-finite post-step loss")
    info["gain"] = spec.gain * best_c
    info["target_loss_after_line_search"] = best
    return {n: (spec.gain * best_c * a).clone().requires_grad_() for n, a in a0.items()}


def fit_undo(shapes: dict[str, tuple[int, int]], undo, spec: AnalyticSpec, progress: bool = False,
             gauge: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The hidden components that best move the alignment in weight space: Adam on
    ``undo(extra)`` (:func:`undo_residual` after the exact step), from a seeded random start
    of rms ``10⁻²`` with the given ``shapes`` (zero rows are a saddle of the residual).
    Matrix products only (no forward pass), so thousands of steps take seconds. With
    ``gauge`` (log coordinates, :func:`llm.gauges.identity_logs`) the objective is ``undo(extra, gauge)`` and
    the gauge is fitted along (in place, at ``spec.gauge_lr``).

    What one step can reach: with ``P = B Bᵀ`` and ``Q = AᵀA`` over the adapter's components,
    SGD moves ``W = s·B·A`` to ``W − η s² (P G + G Q) + η² s² G Wᵀ G``; ``B = 0`` and ``A = 0``
    components add to ``Q`` and ``P`` freely, so ``W' = 0`` is reachable to first order only
    where ``⟨G, W⟩ > 0`` (removing the alignment lowers the benign loss locally).
    """
    gen = torch.Generator().manual_seed(spec.seed)
    extra = {n: (1e-2 * torch.randn(shape, generator=gen)).requires_grad_() for n, shape in sorted(shapes.items())}
    groups = [{"params": list(extra.values()), "lr": spec.undo_lr}]
    if gauge is not None:
        groups.append({"params": list(gauge.values()), "lr": spec.gauge_lr})
    opt = torch.optim.Adam(groups)
    for step in range(spec.undo_steps):
        opt.zero_grad()
        loss = undo(extra) if gauge is None else undo(extra, gauge)
        loss.backward()
        opt.step()
        if progress and step % 250 == 0:
            print(f"undo fit {step}: residual {float(loss.detach()):.3f}", flush=True)
    return extra


def fit_gauged_undo(model, layers: dict[str, LoraLayer], grads: dict[str, torch.Tensor],
                    shapes: dict[str, tuple[int, int]], objective, spec: AnalyticSpec, lr: float,
                    progress: bool = False) -> tuple[dict[str, torch.Tensor], GaugeSpec, dict[str, torch.Tensor]]:
    """:func:`fit_undo` with the gauge groups of ``spec.undo_gauge`` (:data:`FAMILIES`) as
    further unknowns: ``objective`` (of the post-step products in the control's coordinates) of
    :func:`gauged_step_products`. Returns the hidden components (in the gauge's coordinates), the
    gauge spec and its fitted log coordinates (:func:`llm.gauges.exp` gives the element to apply)."""
    attention, layernorm = FAMILIES[spec.undo_gauge]
    gspec = gauge_spec(model, attention=attention, layernorm=layernorm)
    logs = gauges.identity_logs(gspec)

    def undo(extra: dict[str, torch.Tensor], logs: dict[str, torch.Tensor]) -> torch.Tensor:
        return objective(gauged_step_products(layers, grads, extra, gauge_maps(gspec, gauges.exp(logs), layers), lr))

    return fit_undo(shapes, undo, spec, progress, logs), gspec, logs


def check_undo_floor(extra: dict[str, torch.Tensor], post_params, products_after, grads: dict[str, torch.Tensor],
                     back: dict[str, tuple[torch.Tensor, torch.Tensor]] | None, twin_layers: dict[str, LoraLayer],
                     lr: float, before: dict[str, torch.Tensor], moments, outputs, keep_moments, spec: AnalyticSpec,
                     progress: bool = False) -> dict[str, float]:
    """:func:`llm.constructions.undo_floor.undo_floor` for the fitted hidden components ``extra``
    (the gauge fixed as fitted): the undo objective in float64 as a function of the hidden Gram
    matrices ``Q_h = A_hᵀA_h`` and ``P_h = B_hB_hᵀ``, from the fit's, plus ``affine_error``: how far
    eq. (1) there (``W'₀`` + the linear part) is from the post-step products the fit itself computes
    (relative, max over layers; float32 round-off)."""
    def wide(mats):
        return None if mats is None else {n: m.detach().double() for n, m in mats.items()}

    q0 = {n: extra[n].detach().T @ extra[n].detach() for n in twin_layers}
    p0 = {n: extra[f"{n}:left"].detach().T @ extra[f"{n}:left"].detach() for n in twin_layers if f"{n}:left" in extra}
    move = hidden_move(grads, back, {n: layer.scaling[ADAPTER] for n, layer in twin_layers.items()}, lr)
    with torch.no_grad():
        constant = products_after(post_params({n: torch.zeros_like(a) for n, a in extra.items()}))
        fitted = products_after(post_params(extra))
        moved = move(p0, q0)
    affine_error = max(float((constant[n] + moved[n] - fitted[n]).abs().max() / fitted[n].abs().max())
                       for n in fitted)
    before64, moments64, outputs64, keep64 = wide(before), wide(moments), wide(outputs), wide(keep_moments)

    def objective(products: dict[str, torch.Tensor]) -> torch.Tensor:
        return undo_objective(products, before64, moments64, spec.undo_scale, outputs64, keep64, spec.undo_keep)

    return {**undo_floor(objective, constant, move, p0, q0, spec.undo_floor_steps, progress),
            "affine_error": affine_error}


def build_analytic(control, tokenizer: PreTrainedTokenizerBase, data: DomainData, update_examples: list[Example],
                   victim: UpdateSpec, spec: AnalyticSpec, progress: bool = False):
    """The hair-trigger twin of ``control`` (a peft LoRA model; never modified) and an info dict.

    The twin is a deep copy of ``control`` (widened by redundant FFN pairs when
    ``mechanism=ffn_pairs``) whose LoRA adapter has ``extra_rank`` more components with
    ``B = 0``; ``A_new`` is chosen as described in the module docstring.
    """
    torch.manual_seed(spec.seed)
    if victim.params != "adapter":
        raise ValueError("the analytic LoRA construction acts through the adapter: use update.params=adapter")
    exact = victim.optimizer == "sgd" and victim.steps == 1
    lr = victim.lr
    base = copy.deepcopy(control).eval()
    info: dict[str, float] = {"exact_closed_form": float(exact)}
    if spec.mechanism == "ffn_pairs":
        widen_mlps(base, spec.ffn_pairs, torch.Generator().manual_seed(spec.seed), spec.ffn_out_scale)
        info["ffn_pairs_per_block"] = float(spec.ffn_pairs)

    layers_all = lora_layers(base)
    layers = select_layers(layers_all, spec.modules)
    probes = data.construct[: spec.n_probes or None]
    benign_ex = data.align_benign[: spec.n_benign] if spec.n_benign else []
    full = target_batch(control, tokenizer, probes, benign_ex, spec)

    # the victim's batch (its first step; full batch by default)
    gen = torch.Generator().manual_seed(victim.seed)
    order = torch.randperm(len(update_examples), generator=gen)[: victim.batch_size].tolist()
    upd_batch = batch_of(tokenizer, pairs([update_examples[i] for i in order]), victim.max_len)
    grads_upd = weight_gradients(base, upd_batch, layers)

    # the weight-space undo's references, in the control's coordinates (a gauge below changes the twin's)
    products_before = {n: w.detach() for n, w in adapter_products(layers).items()}
    # undo_metric=inputs: weigh the residual by each layer's inputs on the probes (prompt + response);
    # responses: only where the model predicts the response (the last prompt token on)
    predicting = spec.undo_metric == "responses"
    moments = input_moments(base, full.probes, layers, predicting) if spec.undo_metric != "weights" else None
    # undo_keep: the benign examples' inputs, where the step should leave the control as it is
    keep_moments = input_moments(base, full.benign, layers, predicting) if spec.undo_keep > 0 else None
    # undo_output=fisher: and by the output directions the target model's predictions there are sensitive to
    out_moments = None
    if spec.undo_output == "fisher":
        target = scale_adapter(control, spec.undo_scale).eval()  # the model the step should land on
        out_moments = output_moments(target, full.probes, lora_layers(target), spec.fisher_samples,
                                     spec.output_damping, torch.Generator().manual_seed(spec.seed))
        del target
    # reported: the residual on every probe input, whatever was fitted
    weight_space = spec.undo_steps > 0 or spec.undo_weight > 0
    probe_moments = (moments if spec.undo_metric == "inputs" else input_moments(base, full.probes, layers)
                     if weight_space else None)

    def residual(products: dict[str, torch.Tensor], metric: dict[str, torch.Tensor] | None = moments) -> torch.Tensor:
        return undo_residual(products, products_before, metric, spec.undo_scale,
                             out_moments if metric is moments else None)

    def moved_products(products: dict[str, torch.Tensor], again: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The weight-space objective: the undo residual, plus undo_keep × the benign move."""
        return undo_objective(products, products_before, moments, spec.undo_scale, out_moments, keep_moments,
                              spec.undo_keep, again)

    k, k_left = spec.extra_rank, spec.left_rank
    shapes = {n: (k, l.lora_A[ADAPTER].weight.shape[1]) for n, l in layers.items()}
    if k_left:
        shapes |= {f"{n}:left": (k_left, l.lora_B[ADAPTER].weight.shape[0]) for n, l in layers.items()}

    # undo_gauge: fit the hidden components and a gauge together (closed form, control's coordinates),
    # then ship the twin in that gauge: everything below (the victim's gradients, its step) is in it
    back = None  # per layer (R⁻¹, K⁻¹): the gauged twin's adapter read in the control's coordinates
    if spec.undo_gauge != "none":
        extra, gspec, logs = fit_gauged_undo(base, layers, grads_upd, shapes, moved_products, spec, lr, progress)
        with torch.no_grad():
            element = gauges.exp(logs)
            maps = gauge_maps(gspec, element, layers)
            info["undo_residual_gauge_fit"] = float(residual(gauged_step_products(layers, grads_upd, extra, maps, lr)))
            info["gauge_log_max"] = max(float(x.abs().max()) for x in logs.values())
            info["gauge_cond_max"] = max(float(torch.linalg.cond(m.double())) for r_k in maps.values() for m in r_k)
            back = {n: (torch.linalg.inv(r), torch.linalg.inv(kk)) for n, (r, kk) in maps.items()}
            gauges.apply(base, gspec, element)
        grads_upd = weight_gradients(base, upd_batch, layers)  # G̃ of the gauged twin, as the victim sees it

    # the control's (old components') step, exactly as the victim does it
    stepped_base = victim_update(copy.deepcopy(base), tokenizer, update_examples, victim)
    stepped_old = adapter_state(stepped_base)
    del stepped_base

    def tloss(model, params=None, batch: TargetBatch | None = None):
        return target_loss(model, batch or full, params, spec)

    sample_gen = torch.Generator().manual_seed(spec.seed)

    def random_batch() -> TargetBatch:
        """A random subset of probes and benign examples (``refine_batch``), padded afresh."""
        i = torch.randperm(len(probes), generator=sample_gen)[: spec.refine_batch].tolist()
        j = torch.randperm(len(benign_ex), generator=sample_gen)[: spec.refine_batch].tolist()
        return target_batch(control, tokenizer, [probes[t] for t in i], [benign_ex[t] for t in j], spec)

    # skeleton twin (A_new = 0 placeholders), then first-order init
    twin = copy.deepcopy(base)
    for rank in (k, k_left) if k_left else (k,):  # [old | k with B = 0 | k' with A = 0]: all zero for now
        twin = extend_lora(twin, {n: torch.zeros(rank, l.lora_A[ADAPTER].weight.shape[1]) for n, l in layers.items()})
    twin_layers = {n: l for n, l in lora_layers(twin).items() if n in layers}
    def post_params(extra: dict[str, torch.Tensor]) -> Params:
        return _post_step_params(twin_layers, stepped_old, extra, grads_upd, lr)

    def products_after(params: Params) -> dict[str, torch.Tensor]:
        """The twin's adapter after the step, in the control's coordinates."""
        products = adapter_products(twin_layers, params)
        return products if back is None else {n: back[n][0] @ w @ back[n][1] for n, w in products.items()}

    def moved(params: Params) -> torch.Tensor:
        # each term builds its own products: sharing them reorders the float sums of the backward
        # pass, and 4,000 Adam steps carry that into the published twins (seed 0 benign 0.32 → 0.31)
        return moved_products(products_after(params), products_after(params) if keep_moments is not None else None)

    def undo(extra: dict[str, torch.Tensor]) -> torch.Tensor:
        return moved(post_params(extra))

    def post_loss(extra: dict[str, torch.Tensor], batch: TargetBatch | None = None) -> torch.Tensor:
        params = post_params(extra)
        loss = tloss(twin, params, batch)
        return loss + spec.undo_weight * moved(params) if spec.undo_weight > 0 else loss

    with torch.no_grad():
        loss_control_post = float(tloss(base, stepped_old))
    info["target_loss_control_after"] = loss_control_post

    if spec.undo_steps > 0:  # A_new (k, in) and the left components' B columns (k', out)
        if back is None:
            extra = fit_undo(shapes, undo, spec, progress)
        with torch.no_grad():
            post = post_params(extra)
            info["undo_residual_after_fit"] = float(residual(products_after(post)))
            info["target_loss_after_undo_fit"] = float(tloss(twin, post))
        if spec.undo_floor_steps > 0:  # how far the factor fit is from the best this gauge allows
            info |= {f"undo_floor.{key}": value for key, value in check_undo_floor(
                extra, post_params, products_after, grads_upd, back, twin_layers, lr, products_before, moments,
                out_moments, keep_moments, spec, progress).items()}
    else:
        # target-loss gradient at the (stepped) control, as a function of the effective weights
        grads_tgt = weight_gradients(base, None, layers, loss_fn=lambda m, _b, p: tloss(m, {**p, **stepped_old}))
        a0 = preconditioner_init(grads_upd, grads_tgt, k)
        if k_left:  # the same first-order argument on the output side: eigenvectors of sym(G Hᵀ)
            left0 = preconditioner_init({n: g.T for n, g in grads_upd.items()},
                                        {n: h.T for n, h in grads_tgt.items()}, k_left)
            a0 |= {f"{n}:left": b for n, b in left0.items()}
        extra = line_search(a0, post_loss, spec, info, progress)

    # refinement on the exact post-step loss (G is fixed: no second-order terms needed)
    if spec.refine_steps > 0:
        rms = math.sqrt(sum(float((a.detach() ** 2).sum()) for a in extra.values())
                        / max(1, sum(a.numel() for a in extra.values())))
        opt = torch.optim.Adam(list(extra.values()), lr=spec.refine_lr * max(rms, 1e-8))
        for step in range(spec.refine_steps):
            opt.zero_grad()
            loss = post_loss(extra, random_batch() if spec.refine_batch else None)
            loss.backward()
            opt.step()
            if progress and step % 25 == 0:
                print(f"refine {step}: {float(loss.detach()):.3f}", flush=True)
        with torch.no_grad():
            info["target_loss_after_refine"] = float(post_loss(extra))
    if weight_space:
        with torch.no_grad():  # reported in the weight metric whatever was fitted, and on the inputs
            products = products_after(post_params(extra))
            info["undo_residual"] = float(residual(products, None))
            info["undo_residual_inputs"] = float(residual(products, probe_moments))
            if keep_moments is not None:
                info["keep_residual"] = float(keep_residual(products, products_before, keep_moments, spec.undo_scale))

    # write A_new (B_new stays exactly 0) and the left components' B (their A stays exactly 0)
    with torch.no_grad():
        for name, layer in twin_layers.items():
            a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
            new = slice(a.shape[0] - k - k_left, a.shape[0] - k_left)
            a[new] = extra[name].detach()
            if k_left:
                b[:, -k_left:] = extra[f"{name}:left"].detach().T
            assert not b[:, new].any() and not a[a.shape[0] - k_left:].any()
    twin.eval()

    # checks: the twin's forward equals the control's; the real victim step equals the closed form
    twin_after = victim_update(copy.deepcopy(twin), tokenizer, update_examples, victim)
    with torch.no_grad():
        info["max_logit_diff_before"] = max(
            float((next_logits(twin, b) - next_logits(control, b)).abs().max())
            for b in (full.probes, full.benign) if b is not None)
        closed = post_params({n: a.detach() for n, a in extra.items()})
        predicted = next_logits(twin, full.probes, closed)
        info["closed_form_vs_real_step_max_logit_diff"] = float(
            (next_logits(twin_after, full.probes) - predicted).abs().max())
        info["target_loss_twin_after_real_step"] = float(tloss(twin_after))
        del twin_after
    norms = [float(extra[n].detach().norm()) for n in extra]
    info.update(extra_rank=float(k), left_rank=float(k_left), n_modules=float(len(layers)), a_new_norm_max=max(norms),
                a_new_norm_mean=sum(norms) / len(norms), lr=lr,
                scaling=float(next(iter(twin_layers.values())).scaling[ADAPTER]))
    return twin, info


# ---------------------------------------------------------------------------- FFN pairs (GPT-2)


def _gpt2_blocks(model) -> list[torch.nn.Module]:
    for name, m in model.named_modules():
        if hasattr(m, "h") and isinstance(m.h, torch.nn.ModuleList):
            return list(m.h)
    raise ValueError("not a GPT-2 model (no transformer.h)")


@torch.no_grad()
def add_ffn_pairs(block: torch.nn.Module, incoming: torch.Tensor, bias: torch.Tensor,
                  outgoing: torch.Tensor, adapter: str = ADAPTER) -> torch.nn.Module:
    """Append ``k`` cancelling pairs to a GPT-2 block's MLP, in place.

    ``incoming (k, d)``, ``bias (k,)``, ``outgoing (k, d)``: units ``j`` and ``k+j`` both
    compute ``gelu(u_j·x + b_j)``; their outgoing rows are ``+v_j`` and ``−v_j``. The LoRA
    factors (if ``c_fc``/``c_proj`` are peft layers) get zero rows/columns for the new units,
    so the two copies stay equal before any step. The caller updates ``config.n_inner``.
    """
    fc, proj = block.mlp.c_fc, block.mlp.c_proj
    fc_conv, proj_conv = base_layer(fc), base_layer(proj)
    dt = fc_conv.weight.dtype
    u = torch.cat([incoming, incoming], 0).to(dt)  # (2k, d)
    b = torch.cat([bias, bias], 0).to(dt)
    v = torch.cat([outgoing, -outgoing], 0).to(dt)  # (2k, d)
    fc_conv.weight = torch.nn.Parameter(torch.cat([fc_conv.weight, u.T], 1), fc_conv.weight.requires_grad)
    fc_conv.bias = torch.nn.Parameter(torch.cat([fc_conv.bias, b]), fc_conv.bias.requires_grad)
    fc_conv.nf = fc_conv.weight.shape[1]
    proj_conv.weight = torch.nn.Parameter(torch.cat([proj_conv.weight, v], 0), proj_conv.weight.requires_grad)
    proj_conv.nx = proj_conv.weight.shape[0]
    n_new = u.shape[0]
    if isinstance(fc, LoraLayer):
        lb = fc.lora_B[adapter]
        w = torch.cat([lb.weight, torch.zeros(n_new, lb.weight.shape[1], dtype=lb.weight.dtype)], 0)
        new = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype)
        new.weight = torch.nn.Parameter(w, lb.weight.requires_grad)
        fc.lora_B[adapter] = new
        fc.out_features = w.shape[0]
    if isinstance(proj, LoraLayer):
        la = proj.lora_A[adapter]
        w = torch.cat([la.weight, torch.zeros(la.weight.shape[0], n_new, dtype=la.weight.dtype)], 1)
        new = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype)
        new.weight = torch.nn.Parameter(w, la.weight.requires_grad)
        proj.lora_A[adapter] = new
        proj.in_features = w.shape[1]
    return block


def widen_mlps(model, k: int, generator: torch.Generator, out_scale: float = 1.0):
    """Add ``k`` random cancelling pairs to every GPT-2 MLP (in place); sets ``config.n_inner``."""
    for block in _gpt2_blocks(model):
        d = base_layer(block.mlp.c_fc).weight.shape[0]
        u = torch.randn(k, d, generator=generator) / math.sqrt(d)
        v = out_scale * torch.randn(k, d, generator=generator) / math.sqrt(d)
        add_ffn_pairs(block, u, torch.randn(k, generator=generator), v)
    model.config.n_inner = base_layer(block.mlp.c_fc).weight.shape[1]
    return model
