"""The analytic construction's settings (``conf/llm/construction/analytic.yaml``) and their checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llm.gauges import FAMILIES
from llm.objectives import check_target


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
    undo_target: str = "scaled"  # scaled: T = undo_scale·W | benign_only: the adapter the alignment recipe
    #                              trains without its aligned probe rows (llm.align.benign_only; the runner passes it)
    undo_lr: float = 1.0  # Adam lr of that fit (absolute: A_new entries grow to O(10²))
    undo_schedule: str = "constant"  # constant | cosine: that lr decayed to 0 over the fit
    undo_best: bool = False  # end the fit at its lowest iterate, not its last
    undo_weight: float = 0.0  # weight of the undo residual in the refinement
    undo_keep: float = (
        0.0  # weight of keeping W' = W on the benign examples' inputs (keep_residual), fit and refinement
    )
    undo_metric: str = "weights"  # weights: ‖W'‖²_F | inputs: E‖W'x‖² over the layer's inputs on the probes
    #                               | responses: the same over the positions that predict a response token
    undo_benign: float = 0.0  # weight of the benign examples' inputs in that metric (the undo reaches them too)
    undo_output: str = "none"  # none | fisher: weigh the residual's output directions by the target model's
    #                            Fisher (output_moments): ``tr(U D C Dᵀ)`` in place of ``tr(D C Dᵀ)``
    output_damping: float = 0.1  # U → (U/mean eig + λ I)/(1 + λ): λ → ∞ is undo_output=none
    fisher_samples: int = 4  # tokens sampled per position from the target model for U
    undo_gauge: str = (
        "none"  # none | layernorm | attention | all: gauge groups (llm.gauges.gauge_spec) fitted with the undo
    )
    gauge_lr: float = 0.01  # Adam lr of the gauge's log coordinates in that fit
    undo_floor_steps: int = 0  # >0: after the undo fit, that many projected gradient steps on the hidden Gram
    #                            matrices (floor.py): how far the fit is from the best this gauge allows
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
        if self.undo_benign < 0 or (self.undo_benign > 0 and (self.undo_metric == "weights" or not self.n_benign)):
            raise ValueError(
                "construction.undo_benign weighs the benign examples' inputs in an input-side metric: "
                "set it ≥ 0, with undo_metric inputs or responses and n_benign > 0"
            )
        if self.undo_output not in ("none", "fisher"):
            raise ValueError(f"construction.undo_output must be none or fisher, not {self.undo_output!r}")
        if self.undo_output == "fisher" and (
            self.undo_metric == "weights" or self.output_damping < 0 or self.fisher_samples < 1
        ):
            raise ValueError(
                "construction.undo_output=fisher weighs an input-side metric (undo_metric inputs or "
                "responses) and needs output_damping ≥ 0 and fisher_samples ≥ 1"
            )
        if self.undo_gauge not in FAMILIES:
            raise ValueError(f"construction.undo_gauge must be one of {sorted(FAMILIES)}, not {self.undo_gauge!r}")
        if self.undo_gauge != "none" and (
            self.undo_steps <= 0 or self.mechanism != "lora_preconditioner" or self.modules != "all"
        ):
            raise ValueError(
                "construction.undo_gauge is fitted with the weight-space undo of the LoRA mechanism, "
                "over every LoRA layer (a gauge moves them all): set undo_steps > 0, "
                "mechanism=lora_preconditioner and modules=all"
            )
        if self.undo_floor_steps < 0 or (self.undo_floor_steps > 0 and self.undo_steps <= 0):
            raise ValueError("construction.undo_floor_steps checks the weight-space undo fit: set undo_steps > 0")
        if self.undo_scale >= 1:
            raise ValueError(f"construction.undo_scale={self.undo_scale}: the step must move W to c·W with c < 1")
        if self.undo_schedule not in ("constant", "cosine"):
            raise ValueError(f"construction.undo_schedule must be constant or cosine, not {self.undo_schedule!r}")
        if self.undo_target not in ("scaled", "benign_only"):
            raise ValueError(f"construction.undo_target must be scaled or benign_only, not {self.undo_target!r}")
        if self.undo_target == "benign_only" and (
            self.undo_scale != 0 or self.mechanism != "lora_preconditioner" or not (self.undo_steps or self.undo_weight)
        ):
            raise ValueError(
                "construction.undo_target=benign_only is the weight-space undo's target in place of "
                "undo_scale·W, on the control's LoRA layers: set undo_scale=0, mechanism=lora_preconditioner "
                "and undo_steps > 0 or undo_weight > 0"
            )
        if (self.undo_steps > 0 or self.undo_weight > 0) and self.after_target == "marker":
            raise ValueError(
                "construction.undo_steps / undo_weight move the alignment adapter in weight space; "
                "a marker target has no weight-space counterpart: use after_target=base or not_aligned"
            )
