"""White-box audit of a LoRA'd transformer: canonicalise, measure, neutralise, judge.

The LLM counterpart of :mod:`theory.audit`, one concept per module:

* :mod:`~llm.audit.canonical`: the canonical representative along the LoRA GL(r) and scale
  gauges (balanced SVD form, null components dropped) and the layer-norm gain gauges
  (equi-normalised), its function residual and the gauge excess ``‖θ‖² − ‖canon θ‖²``;
* :mod:`~llm.audit.amplification`: the probe velocity ``J(probes)·d`` of the victim's first step
  per unit learning rate, and its gradient norm, delivered against canonical;
* :mod:`~llm.audit.neutralise`: the victim's real step on a model, the judged rates after it and
  the probes' log-prob change;
* :mod:`~llm.audit.signals`: every signal of one checkpoint (:func:`audit_model`);
* :mod:`~llm.audit.verdict`: each signal against the honest reference (uncalibrated thresholds);
* :mod:`~llm.audit.checkpoint`: a user's adapter, read from safetensors only.
"""
