"""``construction=analytic``: the theory package's constructions carried into transformer blocks.

The twin's forward pass equals the control's *by construction* (no penalty, no training of the
visible function); what changes is how the victim's benign step acts on it.

* **LoRA hidden preconditioner** (the main mechanism). Every LoRA module of the control
  (``y = base(x) + s·B(A x)``) gets ``k`` extra components with ``B = 0`` and free rows of ``A``
  (``extra_rank``), and ``k'`` with ``A = 0`` and free columns of ``B`` (``left_rank``): the forward
  pass is unchanged exactly. The old components see the control's gradients and move as the
  control's do; by :mod:`llm.lora` (eq. 1) the victim's SGD step (rate ``η``) adds exactly
  ``−η s² (P_h G + G Q_h)``, with ``G`` the benign update's gradient in the module's effective
  weight (the same for twin and control) and ``Q_h = AᵀA``, ``P_h = BBᵀ`` over the hidden
  components: positive semi-definite preconditioners no output shows (:mod:`.step`).
* **Behavioural target** (:mod:`.target`, :mod:`.fit`): the hidden components are chosen to first
  order along the top eigenvectors of ``sym(Gᵀ ∇_W L_target)``, scaled by one gain scored on the
  exact post-step loss, then refined on it (``refine_steps``; cheap, because ``G`` does not depend
  on them).
* **Weight-space undo** (``undo_steps``, :mod:`.weight_space`): the hidden components that make the
  step map the alignment adapter to ``W' ≈ c·W`` in every module at once (``undo_scale``: 0 the
  model before alignment, < 0 the alignment negated) — matrix products only, acting on every
  input, held-out ones included. :mod:`.floor` checks how far the fit is from the best one step
  allows.
* **Gauged undo** (``undo_gauge``, :mod:`llm.gauges`): the same fit with a gauge element as
  further unknowns. Shipped in a gauge ``W̃ = R W K``, the step moves ``W`` by
  ``−η s² (P G S_K + S_R G Q)`` with ``S_K = (KKᵀ)⁻¹``, ``S_R = (RᵀR)⁻¹``: positive definite factors
  on the far side of each preconditioner, which reach moves ``P G + G Q`` cannot. The twin then
  ships its own base weights (layer-norm gains, per-head Q/K/V/O), as an ordinary checkpoint does.
* **Redundant FFN units** (``mechanism=ffn_pairs``, :mod:`.ffn_pairs`): cancelling pairs in
  GPT-2's MLPs, the preconditioner on top.

:func:`build_analytic` (:mod:`.build`) runs the stages; :class:`AnalyticSpec` (:mod:`.spec`) holds
the settings.
"""

from llm.constructions.analytic.build import build_analytic
from llm.constructions.analytic.spec import AnalyticSpec

__all__ = ["AnalyticSpec", "build_analytic"]
