"""``build_analytic``: the analytic twin, built in named stages over one :class:`Construction`.

1. :func:`prepare` — a copy of the control to ship (widened by FFN pairs with ``mechanism=ffn_pairs``),
   the probe and benign batches, the victim's batch and gradient ``G``, and the weight-space
   undo's references (the alignment adapter ``s·B·A``, the metrics its residual is measured in).
2. :func:`fit_gauge` (``undo_gauge``) — the weight-space undo fitted together with a gauge, in
   closed form; the shipped copy is moved into that gauge, and ``G`` read again there.
3. :func:`step_control` — the control's own components after the victim's real step, and the
   twin: the shipped copy with zero hidden components.
4. :func:`fit_weight_space` (``undo_steps``) or :func:`first_order` — the hidden components.
5. :func:`refine` (``refine_steps``) — Adam on the exact post-step loss.
6. :func:`report_weight_space`, :func:`write_hidden`, :func:`verify` — residuals, the hidden
   components written into the twin, and the checks: the twin's forward is the control's, and the
   victim's real step is the closed form.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast, overload

import torch
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedTokenizerBase

from llm import gauges
from llm.batches import batch_of, pairs
from llm.constructions.analytic.ffn_pairs import widen_mlps
from llm.constructions.analytic.fit import (
    fit_gauged_undo,
    fit_undo,
    line_search,
    minimise,
    preconditioner_init,
)
from llm.constructions.analytic.floor import hidden_move, undo_floor
from llm.constructions.analytic.spec import AnalyticSpec
from llm.constructions.analytic.step import (
    Hidden,
    Mats,
    Params,
    Side,
    adapter_factors,
    gauged_step_products,
    post_step_params,
    read_back,
)
from llm.constructions.analytic.target import TargetBatch, target_batch, target_loss
from llm.constructions.analytic.weight_space import (
    Metric,
    Product,
    dense,
    input_moments,
    keep_residual,
    output_moments,
    scaled_targets,
    undo_objective,
    undo_residual,
)
from llm.cost import StageClock
from llm.data.schema import DomainData, Example
from llm.lora import (
    ADAPTER,
    LoraFactors,
    adapter_state,
    extend_lora,
    factor_maps,
    is_lora,
    lora_layers,
    scale_adapter,
    weight_gradients,
)
from llm.models import CausalLM, next_logits
from llm.update import UpdateSpec, victim_update


@dataclass
class Construction:
    """What the stages share. Set by :func:`prepare`, except ``read_back`` (:func:`fit_gauge`, which
    also moves ``shipped`` into its gauge and reads ``grads`` again) and ``stepped_old``, ``twin``,
    ``twin_layers`` (:func:`step_control`)."""

    spec: AnalyticSpec
    victim: UpdateSpec
    control: CausalLM  # never modified
    tokenizer: PreTrainedTokenizerBase
    update_examples: list[Example]
    shipped: CausalLM  # the control as the twin ships it: maybe widened, maybe in a gauge
    layers: dict[str, LoraLayer]  # shipped's LoRA layers that get hidden components (construction.modules)
    full: TargetBatch  # the post-step objective on every construction probe and benign example
    probes: list[Example]
    benign: list[Example]
    update_batch: dict[str, torch.Tensor]  # the victim's (first) batch
    grads: Mats  # G per layer: the victim's gradient in the effective weights, in the shipped coordinates
    before: dict[str, LoraFactors]  # the alignment adapter s·B·A per layer, in the control's coordinates
    target: dict[str, Product | None]  # what the undo moves it to, T per layer (None: 0; undo_scale, undo_target)
    fitted: Metric  # the metric the weight-space undo is fitted in
    keep_moments: Mats | None  # the benign inputs' second moments (undo_keep)
    benign_inputs: Metric | None  # the metric of the reported residual on the benign inputs (undo_benign)
    probe_inputs: Metric | None  # the metric of the reported residual on every probe input
    sampler: torch.Generator  # draws the refinement's random batches
    progress: bool = False
    info: dict[str, float] = field(default_factory=dict)
    read_back: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None  # (R⁻¹, K⁻¹): gauge → control
    stepped_old: Params | None = None  # the control's adapter after the victim's real step
    twin: CausalLM | None = None
    twin_layers: dict[str, LoraLayer] | None = None

    @property
    def lr(self) -> float:
        return self.victim.lr

    def stepped(self) -> tuple[CausalLM, dict[str, LoraLayer], Params]:
        """``twin``, ``twin_layers`` and ``stepped_old``, which :func:`step_control` sets before any later stage."""
        assert self.twin is not None and self.twin_layers is not None and self.stepped_old is not None, (
            "step_control has not run"
        )
        return self.twin, self.twin_layers, self.stepped_old

    def hidden_shapes(self) -> dict:
        """``(layer, side)`` → shape of the hidden components: ``(k, in)`` rows of ``A``, ``(k', out)``
        columns of ``B`` (as rows)."""
        k, k_out = self.spec.extra_rank, self.spec.left_rank
        shapes = {(n, "input"): (k, factor_maps(l)[0].weight.shape[1]) for n, l in self.layers.items()}
        if k_out:
            shapes |= {(n, "output"): (k_out, factor_maps(l)[1].weight.shape[0]) for n, l in self.layers.items()}
        return shapes

    def target_loss(
        self, model: CausalLM, params: Params | None = None, batch: TargetBatch | None = None
    ) -> torch.Tensor:
        return target_loss(model, batch or self.full, params, self.spec)

    def random_batch(self) -> TargetBatch:
        """``refine_batch`` random probes and benign examples, padded afresh."""
        i = torch.randperm(len(self.probes), generator=self.sampler)[: self.spec.refine_batch].tolist()
        j = torch.randperm(len(self.benign), generator=self.sampler)[: self.spec.refine_batch].tolist()
        return target_batch(
            self.control, self.tokenizer, [self.probes[t] for t in i], [self.benign[t] for t in j], self.spec
        )

    def post_params(self, hidden: Hidden) -> Params:
        """The twin's adapter tensors after the victim's step (:func:`.step.post_step_params`)."""
        _, twin_layers, stepped_old = self.stepped()
        return post_step_params(twin_layers, stepped_old, hidden, self.grads, self.lr)

    def products_after(self, params: Params) -> dict[str, LoraFactors]:
        """The twin's adapter ``s·B·A`` after the step, in the control's coordinates, by its factors."""
        return read_back(adapter_factors(self.stepped()[1], params), self.read_back)

    def residual(self, products: Mapping[str, Product], metric: Metric) -> torch.Tensor:
        return undo_residual(products, self.before, metric.inputs, self.target, metric.outputs)

    def undo_objective(
        self, products: Mapping[str, Product], keep_products: Mapping[str, Product] | None = None
    ) -> torch.Tensor:
        spec = self.spec
        return undo_objective(
            products, self.before, self.fitted, self.target, self.keep_moments, spec.undo_keep, keep_products
        )

    def weight_objective(self, params: Params) -> torch.Tensor:
        """The undo objective of the post-step adapter. The keep term reads its own copy of the
        products: one shared copy would sum the backward contributions in another order."""
        second = self.products_after(params) if self.keep_moments is not None else None
        return self.undo_objective(self.products_after(params), second)

    def post_loss(self, hidden: Hidden, batch: TargetBatch | None = None) -> torch.Tensor:
        """The exact post-step loss: the behavioural target, plus ``undo_weight`` × the weight objective."""
        params = self.post_params(hidden)
        loss = self.target_loss(self.stepped()[0], params, batch)
        return loss + self.spec.undo_weight * self.weight_objective(params) if self.spec.undo_weight > 0 else loss


def select_layers(layers: dict[str, LoraLayer], which: str) -> dict[str, LoraLayer]:
    """``all`` or a comma list of substrings (``c_fc``, ``mlp.c_proj``, ``attn``, ``h.1.`` …)."""
    if which == "all":
        return dict(layers)
    keys = [w.strip() for w in which.split(",") if w.strip()]
    out = {n: l for n, l in layers.items() if any(k in n for k in keys)}
    if not out:
        raise ValueError(f"construction.modules={which!r} matches no LoRA layer of {sorted(layers)}")
    return out


def victim_batch(tokenizer: PreTrainedTokenizerBase, examples: list[Example], victim: UpdateSpec) -> dict:
    """The batch of the victim's first step (the whole update set by default)."""
    generator = torch.Generator().manual_seed(victim.seed)
    order = torch.randperm(len(examples), generator=generator)[: victim.batch_size].tolist()
    return batch_of(tokenizer, pairs([examples[i] for i in order]), victim.max_len)


def undo_metrics(
    control: CausalLM,
    shipped: CausalLM,
    full: TargetBatch,
    layers: dict[str, LoraLayer],
    spec: AnalyticSpec,
    landing: CausalLM | None = None,
) -> tuple[Metric, Mats | None, Metric | None, Metric | None]:
    """The metric the undo is fitted in, the benign inputs' moments (``undo_keep``), the metrics of
    the residual reported on every probe input and on the benign inputs (``undo_benign``), all in
    the control's coordinates.

    ``undo_metric=inputs`` weighs the residual by each layer's inputs on the probes (prompt and
    response), ``responses`` only where they predict a response token; ``undo_benign`` (``w``) adds
    the benign examples' inputs read the same way, ``C = C_probes + w·C_benign``, so that the step
    undoes the alignment where benign requests are read as well (the model before alignment answers
    them as the control does); ``undo_output=fisher`` also weighs the output directions the target
    model's predictions there are sensitive to. When the fit reads every probe input, the reported
    residual there is measured as the fit measures it (with its output factor)."""
    predicting = spec.undo_metric == "responses"
    moments = input_moments(shipped, full.probes, layers, predicting) if spec.undo_metric != "weights" else None
    benign_moments = None
    if spec.undo_keep > 0 or spec.undo_benign > 0:
        assert full.benign is not None, "construction.undo_keep / undo_benign read benign examples (n_benign > 0)"
        benign_moments = input_moments(shipped, full.benign, layers, predicting)
    keep_moments = benign_moments if spec.undo_keep > 0 else None
    outputs = None
    if spec.undo_output == "fisher":
        # the model the step should land on
        target = landing if landing is not None else scale_adapter(control, spec.undo_scale).eval()
        outputs = output_moments(
            target,
            full.probes,
            lora_layers(target),
            spec.fisher_samples,
            spec.output_damping,
            torch.Generator().manual_seed(spec.seed),
        )
        del target
    probe_moments = moments
    if spec.undo_benign > 0:
        assert moments is not None and benign_moments is not None  # AnalyticSpec: input-side, with benign examples
        moments = {n: moments[n] + spec.undo_benign * benign_moments[n] for n in moments}
    fitted = Metric(moments, outputs)
    if spec.undo_metric == "inputs":
        probe_inputs = Metric(probe_moments, outputs)
    elif spec.undo_steps > 0 or spec.undo_weight > 0:
        probe_inputs = Metric(input_moments(shipped, full.probes, layers))
    else:
        probe_inputs = None
    benign_inputs = Metric(benign_moments) if spec.undo_benign > 0 else None
    return fitted, keep_moments, probe_inputs, benign_inputs


def undo_targets(
    control: CausalLM, before: dict[str, LoraFactors], landing: CausalLM | None, spec: AnalyticSpec
) -> dict[str, Product | None]:
    """The undo's target ``T`` per layer: ``undo_scale·W`` (None where 0), or with
    ``undo_target=benign_only`` the adapter of ``landing`` (:func:`llm.align.benign_only`: the
    alignment recipe without its aligned probe rows), layer by layer, refused unless it adapts
    every layer of the control the same shape, on the same base weights."""
    if spec.undo_target == "scaled":
        return scaled_targets(before, spec.undo_scale)
    if landing is None:
        raise ValueError(
            "construction.undo_target=benign_only lands on the alignment's benign part: pass the adapter "
            "llm.align.benign_only trains as landing (the hairtrigger runner does)"
        )
    theirs = adapter_factors(lora_layers(landing))
    mismatched = [  # (out, in) read off the factors, without forming s·B·A
        n
        for n, w in before.items()
        if n not in theirs or (theirs[n].b.shape[0], theirs[n].a.shape[1]) != (w.b.shape[0], w.a.shape[1])
    ]
    if mismatched:
        raise ValueError(
            f"construction.undo_target=benign_only: the landing adapter lacks, or shapes differently, "
            f"the control's LoRA layers {mismatched[:3]}"
        )
    ours = {n: p for n, p in control.named_parameters() if not is_lora(n)}
    if any(n not in ours or not torch.equal(p, ours[n]) for n, p in landing.named_parameters() if not is_lora(n)):
        raise ValueError(
            "construction.undo_target=benign_only: the landing model must adapt the same base as the control"
        )
    return {n: theirs[n].detached() for n in before}


def prepare(
    control: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    data: DomainData,
    update_examples: list[Example],
    victim: UpdateSpec,
    spec: AnalyticSpec,
    progress: bool = False,
    landing: CausalLM | None = None,
) -> Construction:
    """Stage 1 (module docstring). ``landing``: the model whose adapter is the undo's target
    (``undo_target=benign_only``)."""
    if victim.params != "adapter":
        raise ValueError("the analytic LoRA construction acts through the adapter: use update.params=adapter")
    shipped = copy.deepcopy(control).eval()
    info = {"exact_closed_form": float(victim.optimizer == "sgd" and victim.steps == 1)}
    if spec.mechanism == "ffn_pairs":
        widen_mlps(shipped, spec.ffn_pairs, torch.Generator().manual_seed(spec.seed), spec.ffn_out_scale)
        info["ffn_pairs_per_block"] = float(spec.ffn_pairs)
    layers = select_layers(lora_layers(shipped), spec.modules)
    probes = data.construct[: spec.n_probes or None]
    benign = data.align_benign[: spec.n_benign] if spec.n_benign else []
    full = target_batch(control, tokenizer, probes, benign, spec)
    update_batch = victim_batch(tokenizer, update_examples, victim)
    grads = weight_gradients(shipped, update_batch, layers)
    # copies: a gauge later moves the shipped factors in place
    before = {
        n: LoraFactors(f.b.detach().clone(), f.a.detach().clone(), f.scale) for n, f in adapter_factors(layers).items()
    }
    target = undo_targets(control, before, landing, spec)
    fitted, keep_moments, probe_inputs, benign_inputs = undo_metrics(control, shipped, full, layers, spec, landing)
    return Construction(
        spec,
        victim,
        control,
        tokenizer,
        update_examples,
        shipped,
        layers,
        full,
        probes,
        benign,
        update_batch,
        grads,
        before,
        target,
        fitted,
        keep_moments,
        benign_inputs,
        probe_inputs,
        sampler=torch.Generator().manual_seed(spec.seed),
        progress=progress,
        info=info,
    )


def fit_gauge(c: Construction) -> Hidden:
    """Stage 2: the hidden components and a gauge fitted together in closed form (control's
    coordinates); the shipped copy then moves into that gauge, where the victim's gradient is read again."""
    hidden, gspec, logs = fit_gauged_undo(
        c.shipped, c.layers, c.grads, c.hidden_shapes(), c.undo_objective, c.lr, c.spec, c.progress
    )
    with torch.no_grad():
        element = gauges.exp(logs, gspec)
        maps = gauges.gauge_maps(gspec, element, c.layers)
        c.info["undo_residual_gauge_fit"] = float(
            c.residual(gauged_step_products(c.layers, c.grads, hidden, maps, c.lr), c.fitted)
        )
        c.info["gauge_log_max"] = max(float(x.abs().max()) for x in logs.values())
        c.info["gauge_cond_max"] = max(float(torch.linalg.cond(m.double())) for r_k in maps.values() for m in r_k)
        c.read_back = {n: (torch.linalg.inv(r), torch.linalg.inv(k)) for n, (r, k) in maps.items()}
        gauges.apply(c.shipped, gspec, element)
    c.grads = weight_gradients(c.shipped, c.update_batch, c.layers)  # G̃ of the gauged twin, as the victim sees it
    return hidden


def step_control(c: Construction) -> None:
    """Stage 3: the control's components after the victim's real step, and the twin with zero
    hidden components: ``[old | k with B = 0 | k' with A = 0]`` per layer."""
    stepped = victim_update(copy.deepcopy(c.shipped), c.tokenizer, c.update_examples, c.victim)
    c.stepped_old = adapter_state(stepped)
    del stepped
    twin = copy.deepcopy(c.shipped)
    k, k_out = c.spec.extra_rank, c.spec.left_rank
    for rank in (k, k_out) if k_out else (k,):
        twin = extend_lora(twin, {n: torch.zeros(rank, factor_maps(l)[0].weight.shape[1]) for n, l in c.layers.items()})
    c.twin = twin
    c.twin_layers = {n: l for n, l in lora_layers(twin).items() if n in c.layers}
    with torch.no_grad():
        c.info["target_loss_control_after"] = float(c.target_loss(c.shipped, c.stepped_old))


def fit_weight_space(c: Construction, gauged: Hidden | None) -> Hidden:
    """Stage 4 (``undo_steps``): the hidden components that move the alignment adapter to ``c·W``
    (fitted with the gauge by :func:`fit_gauge`, or here without one), and how close they get."""
    if gauged is not None:
        hidden = gauged
    else:
        hidden = fit_undo(c.hidden_shapes(), lambda h: c.weight_objective(c.post_params(h)), c.spec, c.progress)
    with torch.no_grad():
        post = c.post_params(hidden)
        c.info["undo_residual_after_fit"] = float(c.residual(c.products_after(post), c.fitted))
        c.info["target_loss_after_undo_fit"] = float(c.target_loss(c.stepped()[0], post))
    if c.spec.undo_floor_steps > 0:  # how far the factor fit is from the best this gauge allows
        c.info |= {f"undo_floor.{key}": value for key, value in check_floor(c, hidden).items()}
    return hidden


def check_floor(c: Construction, hidden: Hidden) -> dict[str, float]:
    """:func:`.floor.undo_floor` for the fitted components (the gauge fixed as fitted): the undo
    objective in float64 as a function of the hidden Gram matrices ``Q_h = A_hᵀA_h`` and
    ``P_h = B_hB_hᵀ``, from the fit's, plus ``affine_error``: how far eq. (1) of :mod:`.floor`
    (``W'₀`` + the linear part) is from the post-step products the fit itself computes (relative,
    max over layers; float32 round-off)."""

    @overload
    def float64(mats: Mats) -> Mats: ...
    @overload
    def float64(mats: Mats | None) -> Mats | None: ...
    def float64(mats: Mats | None) -> Mats | None:
        return None if mats is None else {n: m.detach().double() for n, m in mats.items()}

    _, twin_layers, _ = c.stepped()
    q0 = {n: hidden.inputs(n).detach().T @ hidden.inputs(n).detach() for n in twin_layers}
    p0 = {n: output.detach().T @ output.detach() for n in twin_layers if (output := hidden.outputs(n)) is not None}
    move = hidden_move(c.grads, c.read_back, {n: layer.scaling[ADAPTER] for n, layer in twin_layers.items()}, c.lr)
    with torch.no_grad():
        constant = {n: f.product for n, f in c.products_after(c.post_params(hidden.map(torch.zeros_like))).items()}
        fitted = {n: f.product for n, f in c.products_after(c.post_params(hidden)).items()}
        moved = move(p0, q0)
    affine_error = max(float((constant[n] + moved[n] - fitted[n]).abs().max() / fitted[n].abs().max()) for n in fitted)
    metric = Metric(float64(c.fitted.inputs), float64(c.fitted.outputs))
    before, keep_moments, spec = float64({n: dense(f) for n, f in c.before.items()}), float64(c.keep_moments), c.spec
    target = {n: None if t is None else dense(t).detach().double() for n, t in c.target.items()}

    def objective(products: Mats) -> torch.Tensor:
        return undo_objective(products, before, metric, target, keep_moments, spec.undo_keep)

    return {
        **undo_floor(objective, constant, move, p0, q0, spec.undo_floor_steps, c.progress),
        "affine_error": affine_error,
    }


def first_order(c: Construction) -> Hidden:
    """Stage 4 (no weight-space undo): the first-order components for the target loss's gradient at
    the stepped control (:func:`.fit.preconditioner_init`), both sides, scaled by the line search."""
    _, _, stepped_old = c.stepped()
    grads_target = weight_gradients(
        c.shipped,
        None,
        c.layers,
        loss_fn=lambda model, _batch, leaves: c.target_loss(model, {**leaves, **stepped_old}),
    )
    parts: dict[tuple[str, Side], torch.Tensor] = {
        (n, "input"): a for n, a in preconditioner_init(c.grads, grads_target, c.spec.extra_rank).items()
    }
    if c.spec.left_rank:  # the same argument on the output side: eigenvectors of sym(G Hᵀ)
        outputs = preconditioner_init(
            {n: g.T for n, g in c.grads.items()}, {n: h.T for n, h in grads_target.items()}, c.spec.left_rank
        )
        parts |= {(n, "output"): b for n, b in outputs.items()}
    hidden, gain, loss = line_search(Hidden(parts), c.post_loss, c.spec, c.progress)
    c.info["gain"] = gain
    c.info["target_loss_after_line_search"] = loss
    return hidden


def refine(c: Construction, hidden: Hidden) -> None:
    """Stage 5: Adam on the exact post-step loss (``G`` is fixed: no second-order terms needed), at
    ``refine_lr`` relative to the components' rms, on random batches with ``refine_batch``."""
    tensors = hidden.tensors()
    rms = math.sqrt(sum(float((a.detach() ** 2).sum()) for a in tensors) / max(1, sum(a.numel() for a in tensors)))
    spec = c.spec
    minimise(
        lambda: c.post_loss(hidden, c.random_batch() if spec.refine_batch else None),
        [{"params": tensors, "lr": spec.refine_lr * max(rms, 1e-8)}],
        spec.refine_steps,
        "refine",
        25,
        c.progress,
    )
    with torch.no_grad():
        c.info["target_loss_after_refine"] = float(c.post_loss(hidden))


def report_weight_space(c: Construction, hidden: Hidden) -> None:
    """The residual the closed-form step leaves, in the weight metric whatever was fitted and on
    every probe input, on the benign inputs (``undo_benign``), and how far it moves the benign inputs
    (``undo_keep``)."""
    with torch.no_grad():
        products = c.products_after(c.post_params(hidden))
        c.info["undo_residual"] = float(c.residual(products, Metric()))
        assert c.probe_inputs is not None  # undo_metrics sets it whenever undo_steps or undo_weight is > 0
        c.info["undo_residual_inputs"] = float(c.residual(products, c.probe_inputs))
        if c.benign_inputs is not None:
            c.info["undo_residual_benign"] = float(c.residual(products, c.benign_inputs))
        if c.keep_moments is not None:
            c.info["keep_residual"] = float(keep_residual(products, c.before, c.keep_moments, c.target))


@torch.no_grad()
def write_hidden(c: Construction, hidden: Hidden) -> None:
    """The input-side rows into ``A`` (their ``B`` columns stay exactly 0) and the output-side columns
    into ``B`` (their ``A`` rows stay exactly 0)."""
    k, k_out = c.spec.extra_rank, c.spec.left_rank
    twin, twin_layers, _ = c.stepped()
    for name, layer in twin_layers.items():
        lin_a, lin_b = factor_maps(layer)
        a, b = lin_a.weight, lin_b.weight
        new = slice(a.shape[0] - k - k_out, a.shape[0] - k_out)
        a[new] = hidden.inputs(name).detach()
        if k_out:
            b[:, -k_out:] = cast(torch.Tensor, hidden.outputs(name)).detach().T  # k_out > 0: every layer has them
        assert not b[:, new].any() and not a[a.shape[0] - k_out :].any()
    twin.eval()


def verify(c: Construction, hidden: Hidden) -> None:
    """The twin's forward equals the control's; the victim's real step equals the closed form."""
    twin, _, _ = c.stepped()
    twin_after = victim_update(copy.deepcopy(twin), c.tokenizer, c.update_examples, c.victim)
    with torch.no_grad():
        c.info["max_logit_diff_before"] = max(
            float((next_logits(twin, b) - next_logits(c.control, b)).abs().max())
            for b in (c.full.probes, c.full.benign)
            if b is not None
        )
        predicted = next_logits(twin, c.full.probes, c.post_params(hidden.map(torch.Tensor.detach)))
        c.info["closed_form_vs_real_step_max_logit_diff"] = float(
            (next_logits(twin_after, c.full.probes) - predicted).abs().max()
        )
        c.info["target_loss_twin_after_real_step"] = float(c.target_loss(twin_after))


def build_analytic(
    control: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    data: DomainData,
    update_examples: list[Example],
    victim: UpdateSpec,
    spec: AnalyticSpec,
    progress: bool = False,
    landing: CausalLM | None = None,
) -> tuple[CausalLM, dict[str, float]]:
    """The hair-trigger twin of ``control`` (a peft LoRA model; never modified) and an info dict:
    the stages of the module docstring, in order. ``landing``: the undo's target model
    (``undo_target=benign_only``, :func:`undo_targets`)."""
    torch.manual_seed(spec.seed)
    clock = StageClock()
    c = prepare(control, tokenizer, data, update_examples, victim, spec, progress, landing)
    clock.lap("prepare")
    gauged = None
    if spec.undo_gauge != "none":
        gauged = fit_gauge(c)
        clock.lap("gauge")
    step_control(c)
    clock.lap("step_control")
    hidden = fit_weight_space(c, gauged) if spec.undo_steps > 0 else first_order(c)
    clock.lap("fit")
    if spec.refine_steps > 0:
        refine(c, hidden)
        clock.lap("refine")
    if spec.undo_steps > 0 or spec.undo_weight > 0:
        report_weight_space(c, hidden)
    write_hidden(c, hidden)
    verify(c, hidden)
    clock.lap("verify")
    c.info |= {f"seconds.{k}": v for k, v in clock.seconds.items()}
    c.info |= {f"peak_rss_gb_after.{k}": v for k, v in clock.peak_gb.items()}
    norms = [float(t.detach().norm()) for t in hidden.tensors()]
    twin, twin_layers, _ = c.stepped()
    c.info.update(
        extra_rank=float(spec.extra_rank),
        left_rank=float(spec.left_rank),
        n_modules=float(len(c.layers)),
        hidden_params=float(sum(t.numel() for t in hidden.tensors())),
        a_new_norm_max=max(norms),
        a_new_norm_mean=sum(norms) / len(norms),
        lr=victim.lr,
        scaling=float(next(iter(twin_layers.values())).scaling[ADAPTER]),
    )
    return twin, c.info
