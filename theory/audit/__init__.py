"""White-box audit of a theory checkpoint: canonicalise, measure, certify, neutralise.

One concept per module:

* :mod:`~theory.audit.canonical`: the canonical representative along every known
  function-preserving symmetry (equi-normalisation, redundant units, balanced SVD form,
  permutations), its function residual and the gauge excess ``‖θ‖² − ‖canon θ‖²``;
* :mod:`~theory.audit.amplification`: the probe velocity ``J(P) J(D)ᵀ r_D`` per unit learning
  rate, delivered against canonical;
* :mod:`~theory.audit.certificate`: a sound bound on each probe's margin change under any step
  of norm ≤ ρ (two-layer nets), and the certified fraction;
* :mod:`~theory.audit.simulate`: exact simulated benign updates and the worst probe margin;
* :mod:`~theory.audit.honest`: honest models under random admissible gauges;
* :mod:`~theory.audit.signals`: every signal of one checkpoint (:func:`audit_model`);
* :mod:`~theory.audit.roc`: ROC-AUC with bootstrap intervals and TPR at a calibrated FPR;
* :mod:`~theory.audit.attack`: adaptive attackers, the fiber search with a penalty on a signal.
"""

from theory.audit.canonical import (
    Canonical,
    canonicalize,
    function_residual,
    gauge_excess,
)
from theory.audit.certificate import Certificate, margin_certificate
from theory.audit.signals import AuditSettings, Victim, audit_model

__all__ = [
    "AuditSettings",
    "Canonical",
    "Certificate",
    "Victim",
    "audit_model",
    "canonicalize",
    "function_residual",
    "gauge_excess",
    "margin_certificate",
]
