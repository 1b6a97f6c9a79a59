"""Run every symbolic proof in theory/proofs.py as a test (marker: symbolic).

Also checks that the zero-checker can fail, so a passing proof means
something.
"""

import pytest
import sympy as sp

from theory.proofs import ALL_PROOFS, assert_zero, one_step_expansion_residual

pytestmark = pytest.mark.symbolic


@pytest.mark.parametrize("proof", ALL_PROOFS, ids=lambda f: f.__name__)
def test_proof(proof):
    assert proof() is None


def test_one_step_expansion_without_eta2_term_is_rejected():
    with pytest.raises(AssertionError, match="identity fails"):
        assert_zero(one_step_expansion_residual(second_order=False), "one-step expansion without the eta^2 term")


def test_assert_zero_rejects_nonzero_rational_and_scalar():
    a, b = sp.symbols("a b")
    with pytest.raises(AssertionError, match="entry \\(1, 0\\)"):
        assert_zero(sp.Matrix([[0], [a / b - b / a]]), "rational")
    with pytest.raises(AssertionError):
        assert_zero((a + b) ** 2 - a**2 - b**2, "missing cross term")


def test_assert_zero_accepts_identities_needing_cancel():
    a, b = sp.symbols("a b")
    assert_zero((a**2 - b**2) / (a - b) - a - b, "difference of squares")
    binomial = (a + b) ** 2 - a**2 - 2 * a * b - b**2
    assert_zero(sp.Matrix(2, 2, lambda i, j: binomial), "binomial")
