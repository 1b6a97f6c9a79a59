"""Symbolic sympy proofs of the identities the hair-trigger constructions use.

Every ``prove_*`` function checks one identity exactly with sympy, using small
matrices whose entries are all free symbols, a symbolic learning rate ``eta``
and, where the claim holds for every activation, an undefined activation
``sigma = sympy.Function('sigma')``.  Nothing is sampled numerically (except
the one GELU counterexample, which is a claim of *inequality*).  Each function
returns ``None`` and raises ``AssertionError`` naming the identity if it fails.

Conventions
-----------
* Column vectors.  Two-layer linear net ``f(x) = W2 W1 x`` with ``W1`` (h x d),
  ``W2`` (d_out x h) and end-to-end matrix ``P = W2 W1``.
* Square loss ``L = 1/2 sum_i ||P x_i - y_i||^2`` over two samples, so
  ``G = dL/dP = sum_i (P x_i - y_i) x_i^T``.
* One exact gradient-descent step ``theta' = theta - eta * grad L(theta)``;
  ``P'`` is the end-to-end matrix after that step.
* Generic loss.  By the chain rule the parameter gradient of *any* loss at a
  point depends on the loss only through ``G = dL/dP`` at that point.  So
  differentiating the surrogate ``L_G(theta) = <G, P(theta)>`` (``G`` a matrix
  of free symbols, held fixed) gives the exact parameter gradient of every
  loss at every point where dL/dP = ``G``; that is all one GD step needs.
  ``prove_linear_gradients`` checks the surrogate against the square loss;
  the gauge and null-space proofs use the surrogate, so they hold for any
  loss.  Their two parameter points share ``P`` and hence share ``G``.
* For the nonlinear unit proofs the output residual of sample ``i`` is
  ``r_i = dL/df(x_i)``, defined by differentiating a generic loss
  ``l(f(x_1), f(x_2))`` (an undefined sympy Function) w.r.t. a shift of
  ``f(x_i)``.

Zero is tested with ``expand`` (``cancel`` for rational functions); identities
in cos t, sin t are reduced modulo cos^2 + sin^2 - 1.  ``simplify`` is used
only on tiny expressions, which keeps the whole module fast (a few seconds).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import sympy as sp

__all__ = [
    "ALL_PROOFS",
    "assert_zero",
    "symbolic_matrix",
    "symbolic_vector",
    "one_step_expansion_residual",
    "prove_gauge_forward_equivalence",
    "prove_linear_gradients",
    "prove_one_step_expansion",
    "prove_gauge_changes_step",
    "prove_first_layer_null_space",
    "prove_second_layer_null_space",
    "prove_positive_rescaling",
    "prove_zero_outgoing_unit",
    "prove_cancelling_pair",
    "prove_lora_zero_init",
    "prove_first_order_ntk",
]

ETA = sp.Symbol("eta", real=True)
SIGMA = sp.Function("sigma")


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _reduce(expr: sp.Expr, simplify: bool) -> sp.Expr:
    """Bring ``expr`` to a form that is literally 0 iff it is identically 0."""
    expr = sp.expand(sp.sympify(expr))
    if expr == 0:
        return expr
    # Rational functions (e.g. entries of A^-1) need their fractions combined.
    if any(p.exp.is_negative for p in expr.atoms(sp.Pow)):
        expr = sp.cancel(sp.together(expr))
    if expr != 0 and simplify:
        expr = sp.simplify(expr)
    return expr


def assert_zero(expr_or_matrix, what: str, *, simplify: bool = False) -> None:
    """Raise ``AssertionError`` unless the expression/matrix is identically 0.

    Uses ``expand`` (plus ``cancel`` for rational functions); pass
    ``simplify=True`` only for small expressions that need it.
    """
    if isinstance(expr_or_matrix, sp.MatrixBase):
        items: list[tuple[tuple[int, int] | None, Any]] = [
            ((i, j), expr_or_matrix[i, j]) for i in range(expr_or_matrix.rows) for j in range(expr_or_matrix.cols)
        ]
    else:
        items = [(None, expr_or_matrix)]
    for index, entry in items:
        residual = _reduce(entry, simplify)
        if residual != 0:
            where = "" if index is None else f" at entry {index}"
            text = str(residual)
            if len(text) > 300:
                text = text[:300] + " ..."
            raise AssertionError(f"identity fails: {what}{where}; nonzero residual {text}")


def _assert_nonzero(expr, what: str) -> None:
    if _reduce(expr, simplify=False) == 0:
        raise AssertionError(f"expected a nonzero expression: {what}")


def symbolic_matrix(name: str, rows: int, cols: int) -> sp.Matrix:
    """``rows x cols`` matrix of independent real symbols ``name_ij``."""
    return sp.Matrix(rows, cols, lambda i, j: sp.Symbol(f"{name}_{i}{j}", real=True))


def symbolic_vector(name: str, n: int) -> sp.Matrix:
    """Column vector of independent real symbols ``name_i``."""
    return sp.Matrix(n, 1, lambda i, _: sp.Symbol(f"{name}_{i}", real=True))


def _matrix_gradient(scalar: sp.Expr, params: sp.Matrix) -> sp.Matrix:
    """d scalar / d params, shaped like ``params`` (entries: symbols)."""
    return params.applyfunc(lambda p: sp.diff(scalar, p))


def _square_loss(P: sp.Matrix, xs, ys) -> sp.Expr:
    return sum(((P * x - y).T * (P * x - y))[0, 0] for x, y in zip(xs, ys)) / 2


def _square_loss_G(P: sp.Matrix, xs, ys) -> sp.Matrix:
    return sum(((P * x - y) * x.T for x, y in zip(xs, ys)), sp.zeros(P.rows, xs[0].rows))


def _surrogate_gradients(W1: sp.Matrix, W2: sp.Matrix, G: sp.Matrix):
    """Gradients (dL/dW1, dL/dW2) at (W1, W2) of any loss with dL/dP = G.

    Obtained by differentiating <G, V2 V1> w.r.t. fresh symbols V1, V2 and
    then evaluating at V1 = W1, V2 = W2 (which may be arbitrary expressions).
    """
    V1 = symbolic_matrix("V1", *W1.shape)
    V2 = symbolic_matrix("V2", *W2.shape)
    surrogate = sum(G.multiply_elementwise(V2 * V1))
    at_point = dict(zip(list(V1) + list(V2), list(W1) + list(W2)))
    g1 = _matrix_gradient(surrogate, V1).xreplace(at_point)
    g2 = _matrix_gradient(surrogate, V2).xreplace(at_point)
    return g1, g2


def _end_to_end_after_step(W1, W2, g1, g2, eta=ETA) -> sp.Matrix:
    return (W2 - eta * g2) * (W1 - eta * g1)


def _dot(a: sp.Matrix, b: sp.Matrix) -> sp.Expr:
    return (a.T * b)[0, 0]


def _dsigma(z: sp.Expr) -> sp.Expr:
    """sigma'(z), in the same canonical form sympy's chain rule produces."""
    t = sp.Dummy("t")
    return sp.Subs(sp.Derivative(SIGMA(t), t), t, z)


def _generic_loss(outputs):
    """Generic loss l(f(x_1), f(x_2)) and the output residuals r_i.

    ``outputs`` is a list of output column vectors f(x_i).  Returns
    ``(loss, residuals)`` with ``residuals[i] = dl/df(x_i)`` (a column vector),
    defined by differentiating w.r.t. a shift of f(x_i) at shift 0.
    """
    ell = sp.Function("l")
    shifts = [symbolic_vector(f"delta{i}", f.rows) for i, f in enumerate(outputs)]
    shifted = ell(*itertools.chain.from_iterable(f + s for f, s in zip(outputs, shifts)))
    at_zero = {s: 0 for s in itertools.chain.from_iterable(shifts)}
    residuals = [s.applyfunc(lambda c: sp.diff(shifted, c).subs(at_zero)) for s in shifts]
    return shifted.subs(at_zero), residuals


# ---------------------------------------------------------------------------
# 1. GL(h) gauge
# ---------------------------------------------------------------------------


def prove_gauge_forward_equivalence() -> None:
    """(W2 A^-1)(A W1) = W2 W1 for every invertible A in GL(h).

    The basic hair-trigger pair: two parameter vectors related by an
    invertible change of basis of the hidden layer compute the same function,
    so no black-box evaluation can distinguish them.
    """
    W1 = symbolic_matrix("w1", 2, 3)  # h=2, d=3
    W2 = symbolic_matrix("w2", 3, 2)  # d_out=3
    A = symbolic_matrix("a", 2, 2)
    assert_zero((W2 * A.inv()) * (A * W1) - W2 * W1, "(W2 A^-1)(A W1) = W2 W1")


# ---------------------------------------------------------------------------
# 2. Gradients of the two-layer linear net
# ---------------------------------------------------------------------------


def prove_linear_gradients() -> None:
    """dL/dW1 = W2^T G and dL/dW2 = G W1^T, with G = sum_i (P x_i - y_i) x_i^T.

    Every update formula in the project (and in the proofs below) is built on
    these two gradients.  The true gradient is obtained by differentiating the
    scalar square loss w.r.t. every entry.  Also checks that differentiating
    the surrogate <G, W2 W1> gives the same gradients, which justifies using a
    generic symbolic G elsewhere.
    """
    d, h, d_out = 3, 2, 2  # all different, so any transpose mix-up shows
    W1 = symbolic_matrix("w1", h, d)
    W2 = symbolic_matrix("w2", d_out, h)
    xs = [symbolic_vector(f"x{i}", d) for i in (1, 2)]
    ys = [symbolic_vector(f"y{i}", d_out) for i in (1, 2)]
    P = W2 * W1
    L = _square_loss(P, xs, ys)
    G = _square_loss_G(P, xs, ys)
    g1, g2 = _matrix_gradient(L, W1), _matrix_gradient(L, W2)
    assert_zero(g1 - W2.T * G, "dL/dW1 = W2^T G")
    assert_zero(g2 - G * W1.T, "dL/dW2 = G W1^T")
    s1, s2 = _surrogate_gradients(W1, W2, G)
    assert_zero(s1 - g1, "surrogate <G, W2 W1> gives dL/dW1")
    assert_zero(s2 - g2, "surrogate <G, W2 W1> gives dL/dW2")


# ---------------------------------------------------------------------------
# 3. Exact one-step expansion
# ---------------------------------------------------------------------------


def one_step_expansion_residual(second_order: bool = True) -> sp.Matrix:
    """P' minus the claimed expansion, for the square loss with two samples.

    ``P'`` is computed by actually taking one GD step with the gradients
    obtained by differentiating the loss.  With ``second_order=False`` the
    eta^2 term is dropped from the claim (used to show the checker rejects a
    wrong identity).
    """
    d = h = d_out = 2
    W1 = symbolic_matrix("w1", h, d)
    W2 = symbolic_matrix("w2", d_out, h)
    xs = [symbolic_vector(f"x{i}", d) for i in (1, 2)]
    ys = [symbolic_vector(f"y{i}", d_out) for i in (1, 2)]
    P = W2 * W1
    L = _square_loss(P, xs, ys)
    G = _square_loss_G(P, xs, ys)
    P_new = _end_to_end_after_step(W1, W2, _matrix_gradient(L, W1), _matrix_gradient(L, W2))
    claim = P - ETA * (G * W1.T * W1 + W2 * W2.T * G)
    if second_order:
        claim += ETA**2 * G * W1.T * W2.T * G
    return P_new - claim


def prove_one_step_expansion() -> None:
    """P' = P - eta (G W1^T W1 + W2 W2^T G) + eta^2 G W1^T W2^T G  (exact).

    This closed form is what the project uses to predict, and to construct
    different, post-update functions: the first-order term depends on W1, W2
    individually, not only on P.
    """
    assert_zero(
        one_step_expansion_residual(second_order=True), "P' = P - eta(G W1^T W1 + W2 W2^T G) + eta^2 G W1^T W2^T G"
    )


# ---------------------------------------------------------------------------
# 4. The gauge changes the step
# ---------------------------------------------------------------------------


def _post_step_under_gauge(W1, W2, G, A, A_inv) -> sp.Matrix:
    V1, V2 = A * W1, W2 * A_inv
    g1, g2 = _surrogate_gradients(V1, V2, G)
    return _end_to_end_after_step(V1, V2, g1, g2)


def _reduce_mod_unit_circle(expr: sp.Expr, c: sp.Symbol, s: sp.Symbol):
    """Remainder of a polynomial in (c, s) modulo c^2 + s^2 - 1 (w.r.t. s).

    The remainder r0(c) + r1(c) s vanishes on the whole unit circle iff
    r0 = r1 = 0, so this decides identities in cos t, sin t exactly.
    """
    return sp.expand(sp.rem(sp.expand(expr), s**2 + c**2 - 1, s))


def prove_gauge_changes_step() -> None:
    """Under W1 -> A W1, W2 -> W2 A^-1 (same P, hence same G):

        first-order term  = G W1^T A^T A W1 + W2 A^-1 A^-T W2^T G,
        eta^2 term        = G W1^T W2^T G   (unchanged);

    for a rotation A(t) the post-update P' equals the untransformed one, for
    A = diag(c, 1) it does not:
        P'_A - P' = -eta (c^2 - 1) G W1^T E W1 - eta (c^-2 - 1) W2 E W2^T G,
    E = diag(1, 0), which is nonzero and vanishes at c = 1.

    This is the core hair-trigger mechanism: functionally identical
    parameters, different post-update functions; only non-orthogonal gauges
    can be told apart by a step.
    """
    h, d, d_out = 2, 3, 2
    W1 = symbolic_matrix("w1", h, d)
    W2 = symbolic_matrix("w2", d_out, h)
    G = symbolic_matrix("g", d_out, d)
    P_ref = _post_step_under_gauge(W1, W2, G, sp.eye(h), sp.eye(h))

    # General A: read off the eta and eta^2 coefficients of P'_A.
    A = symbolic_matrix("a", h, h)
    A_inv = A.inv()
    P_A = _post_step_under_gauge(W1, W2, G, A, A_inv)
    first = -sp.diff(P_A, ETA).subs(ETA, 0)
    second = sp.diff(P_A, ETA, 2).subs(ETA, 0) / 2
    assert_zero(
        first - (G * W1.T * A.T * A * W1 + W2 * A_inv * A_inv.T * W2.T * G),
        "gauge first-order term = G W1^T A^T A W1 + W2 A^-1 A^-T W2^T G",
    )
    assert_zero(second - G * W1.T * W2.T * G, "gauge eta^2 term = G W1^T W2^T G")

    # Rotation: A^-1 = A^T, and the post-update P' is unchanged.
    t = sp.Symbol("t", real=True)
    R = sp.Matrix([[sp.cos(t), -sp.sin(t)], [sp.sin(t), sp.cos(t)]])
    assert_zero(R.T * R - sp.eye(h), "rotation is orthogonal", simplify=True)
    diff_rot = _post_step_under_gauge(W1, W2, G, R, R.T) - P_ref
    c_, s_ = sp.symbols("c_ s_", real=True)
    on_circle = diff_rot.xreplace({sp.cos(t): c_, sp.sin(t): s_}).applyfunc(
        lambda e: _reduce_mod_unit_circle(e, c_, s_)
    )
    assert_zero(on_circle, "rotation gauge leaves P' unchanged")

    # Non-orthogonal diagonal gauge: P' changes, by an explicit amount.
    c = sp.Symbol("c", positive=True)
    D = sp.diag(c, 1)
    diff_diag = _post_step_under_gauge(W1, W2, G, D, D.inv()) - P_ref
    E = sp.diag(1, 0)
    expected = -ETA * (c**2 - 1) * G * W1.T * E * W1 - ETA * (c**-2 - 1) * W2 * E * W2.T * G
    assert_zero(diff_diag - expected, "diag(c,1) gauge changes P' as stated")
    _assert_nonzero(diff_diag[0, 0], "diag(c,1) gauge changes P'")
    assert_zero(diff_diag.subs(c, 1), "diag(c,1) change vanishes at c = 1")


# ---------------------------------------------------------------------------
# 5./6. Null-space redundancy
# ---------------------------------------------------------------------------


def _cross(a: sp.Matrix, b: sp.Matrix) -> sp.Matrix:
    return sp.Matrix(list(a)).cross(sp.Matrix(list(b)))


def prove_first_layer_null_space() -> None:
    """If W2 N = 0 then W1 -> W1 + N keeps f, and one step gives

        P'_N = P' - eta G (N^T N + W1^T N + N^T W1),

    with the eta^2 term G W1^T W2^T G unchanged.  Here h=3, d_out=2,
    N = n t^T with n = (row 1 of W2) x (row 2 of W2) and t free.

    Redundant first-layer directions invisible to W2 are invisible to any
    evaluation, yet they move the next step.
    """
    d, h, d_out = 2, 3, 2
    W1 = symbolic_matrix("w1", h, d)
    W2 = symbolic_matrix("w2", d_out, h)
    G = symbolic_matrix("g", d_out, d)
    n = _cross(W2[0, :], W2[1, :])
    N = n * symbolic_vector("t", d).T
    assert_zero(W2 * N, "W2 N = 0")
    assert_zero(W2 * (W1 + N) - W2 * W1, "forward map unchanged")

    P_ref = _end_to_end_after_step(W1, W2, *_surrogate_gradients(W1, W2, G))
    P_N = _end_to_end_after_step(W1 + N, W2, *_surrogate_gradients(W1 + N, W2, G))
    assert_zero(P_N - P_ref + ETA * G * (N.T * N + W1.T * N + N.T * W1), "P'_N - P' = -eta G (N^T N + W1^T N + N^T W1)")
    assert_zero(sp.diff(P_N, ETA, 2) / 2 - G * W1.T * W2.T * G, "eta^2 term unchanged by N")


def prove_second_layer_null_space() -> None:
    """If M W1 = 0 then W2 -> W2 + M keeps f, and one step gives

        P'_M = P' - eta (M M^T + W2 M^T + M W2^T) G,

    with the eta^2 term unchanged.  Here h=3, d=2, M = s m^T with
    m = (column 1 of W1) x (column 2 of W1) and s free.

    The second-layer analogue of ``prove_first_layer_null_space``.
    """
    d, h, d_out = 2, 3, 2
    W1 = symbolic_matrix("w1", h, d)
    W2 = symbolic_matrix("w2", d_out, h)
    G = symbolic_matrix("g", d_out, d)
    m = _cross(W1[:, 0], W1[:, 1])
    M = symbolic_vector("s", d_out) * m.T
    assert_zero(M * W1, "M W1 = 0")
    assert_zero((W2 + M) * W1 - W2 * W1, "forward map unchanged")

    P_ref = _end_to_end_after_step(W1, W2, *_surrogate_gradients(W1, W2, G))
    P_M = _end_to_end_after_step(W1, W2 + M, *_surrogate_gradients(W1, W2 + M, G))
    assert_zero(P_M - P_ref + ETA * (M * M.T + W2 * M.T + M * W2.T) * G, "P'_M - P' = -eta (M M^T + W2 M^T + M W2^T) G")
    assert_zero(sp.diff(P_M, ETA, 2) / 2 - G * W1.T * W2.T * G, "eta^2 term unchanged by M")


# ---------------------------------------------------------------------------
# 7. Positive rescaling of a unit
# ---------------------------------------------------------------------------


def _relu(z):
    return sp.Max(0, z)


def _gelu(z):
    return z / 2 * (1 + sp.erf(z / sp.sqrt(2)))


def prove_positive_rescaling() -> None:
    """For a > 0:  (v/a) phi(a (u.x + b)) = v phi(u.x + b)  for phi = ReLU
    and phi = leaky ReLU (any slope alpha); false for GELU.

    Rescaling a ReLU unit's incoming weights by a and outgoing weights by 1/a
    is a function-preserving symmetry used by the constructions; GELU is the
    counterexample showing the symmetry is activation-specific.

    The pre-activation z = u.x + b is real, so it is positive, negative or
    zero; each case is checked by substituting b = z - u.x with z = s, -s, 0
    (s > 0), which covers all real inputs.
    """
    a, s = sp.symbols("a s", positive=True)
    alpha = sp.Symbol("alpha", real=True)
    u, x, v = (symbolic_vector(n, 2) for n in ("u", "x", "v"))
    b = sp.Symbol("b", real=True)

    def leaky(z):
        return sp.Piecewise((z, z >= 0), (alpha * z, True))

    for name, phi in (("ReLU", _relu), ("leaky ReLU", leaky)):
        gap = v / a * phi(a * (_dot(u, x) + b)) - v * phi(_dot(u, x) + b)
        for z in (s, -s, sp.Integer(0)):
            assert_zero(gap.subs(b, z - _dot(u, x)), f"{name} rescaling with pre-activation {z}")

    # GELU: a = 2, pre-activation 1 gives (erf(sqrt 2) - erf(1/sqrt 2)) / 2.
    gelu_gap = _gelu(2 * sp.Integer(1)) / 2 - _gelu(sp.Integer(1))
    if sp.simplify(gelu_gap) == 0 or not gelu_gap.evalf() > sp.Float("0.1"):
        raise AssertionError(f"expected GELU to break positive rescaling, got gap {gelu_gap} = {gelu_gap.evalf()}")


# ---------------------------------------------------------------------------
# 8./9. Nonlinear units with a generic activation and a generic loss
# ---------------------------------------------------------------------------


def prove_zero_outgoing_unit() -> None:
    """A hidden unit (u, b, v) with v = 0, any activation sigma, any loss:

        f(x) unchanged,  dL/du = 0,  dL/db = 0,
        dL/dv = sum_i r_i sigma(u.x_i + b),
        and after one step it adds exactly
        -eta sum_i r_i sigma(u.x_i + b) sigma(u.x + b)  to the output,

    while the rest of the network (base(x; w)) sees the same residuals and
    the same gradient as without the unit.  A dead-but-wired unit is
    invisible to evaluation yet fires on the very next update.
    """
    w = sp.Symbol("w", real=True)  # a parameter of the rest of the network
    base_fns = [sp.Function(f"base{k}") for k in range(2)]
    u, v = symbolic_vector("u", 2), symbolic_vector("v", 2)
    b = sp.Symbol("b", real=True)
    xs = [symbolic_vector(f"x{i}", 2) for i in (1, 2)]
    x = symbolic_vector("x", 2)

    def base(point):
        return sp.Matrix([fn(*point, w) for fn in base_fns])

    def f(point):
        return base(point) + v * SIGMA(_dot(u, point) + b)

    L, rs = _generic_loss([f(p) for p in xs])
    L_base, rs_base = _generic_loss([base(p) for p in xs])
    at_zero = {vk: 0 for vk in v}
    grad_u = _matrix_gradient(L, u).subs(at_zero)
    grad_b = sp.diff(L, b).subs(at_zero)
    grad_v = _matrix_gradient(L, v).subs(at_zero)
    rs = [r.subs(at_zero) for r in rs]
    feature = [SIGMA(_dot(u, p) + b) for p in xs]

    assert_zero(f(x).subs(at_zero) - base(x), "v = 0 leaves f unchanged")
    assert_zero(grad_u, "dL/du = 0 at v = 0")
    assert_zero(grad_b, "dL/db = 0 at v = 0")
    assert_zero(
        grad_v - sum((r * phi for r, phi in zip(rs, feature)), sp.zeros(2, 1)), "dL/dv = sum_i r_i sigma(u.x_i + b)"
    )
    for r, r_base in zip(rs, rs_base):
        assert_zero(r - r_base, "residuals equal those of the base network")
    # doit() puts both chain-rule results into one canonical form.
    assert_zero((sp.diff(L, w).subs(at_zero) - sp.diff(L_base, w)).doit(), "base parameters get the same gradient")

    # Exact step of the unit's own parameters (v starts at 0).
    u_new, b_new, v_new = u - ETA * grad_u, b - ETA * grad_b, -ETA * grad_v
    added = v_new * SIGMA(_dot(u_new, x) + b_new)
    claim = -ETA * sum((r * phi for r, phi in zip(rs, feature)), sp.zeros(2, 1)) * SIGMA(_dot(u, x) + b)
    assert_zero(added - claim, "unit adds -eta sum_i r_i sigma(u.x_i+b) sigma(u.x+b)")


def prove_cancelling_pair() -> None:
    """Units (u, b, v) and (u, b, -v), any activation sigma, any loss:

        forward contribution = 0;
        grad_u1 = -grad_u2,  grad_b1 = -grad_b2,
        grad_v1 = grad_v2 = sum_i r_i sigma(u.x_i + b);
        no gradient reaches the inputs (earlier layers);
        d/deta [post-step contribution at x] at eta = 0 =
          -2 [ v v^T sum_i r_i sigma'(z_i) sigma'(z) (x_i.x + 1)
               + sum_i r_i sigma(z_i) sigma(z) ],
        z_i = u.x_i + b, z = u.x + b.

    A pair that cancels in every evaluation but not in the update.
    """
    u1, u2 = symbolic_vector("u1", 2), symbolic_vector("u2", 2)
    v1, v2 = symbolic_vector("v1", 2), symbolic_vector("v2", 2)
    b1, b2 = sp.symbols("b1 b2", real=True)
    xs = [symbolic_vector(f"x{i}", 2) for i in (1, 2)]
    x = symbolic_vector("x", 2)
    # Outputs of the rest of the network at the two samples: free symbols,
    # so any gradient w.r.t. x_i below flows through the pair only.
    base = [symbolic_vector(f"c{i}", 2) for i in (1, 2)]

    def pair(point, params=(u1, b1, v1, u2, b2, v2)):
        pu1, pb1, pv1, pu2, pb2, pv2 = params
        return pv1 * SIGMA(_dot(pu1, point) + pb1) + pv2 * SIGMA(_dot(pu2, point) + pb2)

    L, rs = _generic_loss([c + pair(p) for c, p in zip(base, xs)])
    cancelling = {**dict(zip(u2, u1)), b2: b1, **{v2k: -v1k for v2k, v1k in zip(v2, v1)}}

    def at_pair(e):
        return e.subs(cancelling)

    grads = {
        name: at_pair(_matrix_gradient(L, p) if isinstance(p, sp.Matrix) else sp.diff(L, p))
        for name, p in (("u1", u1), ("u2", u2), ("b1", b1), ("b2", b2), ("v1", v1), ("v2", v2))
    }
    rs = [at_pair(r) for r in rs]
    u, b, v = u1, b1, v1
    z = [_dot(u, p) + b for p in xs]
    zx = _dot(u, x) + b

    assert_zero(at_pair(pair(x)), "pair contributes 0 to the output")
    assert_zero(grads["u1"] + grads["u2"], "grad_u1 = -grad_u2")
    assert_zero(grads["b1"] + grads["b2"], "grad_b1 = -grad_b2")
    feature_grad = sum((r * SIGMA(zi) for r, zi in zip(rs, z)), sp.zeros(2, 1))
    assert_zero(grads["v1"] - feature_grad, "grad_v1 = sum_i r_i sigma(z_i)")
    assert_zero(grads["v2"] - feature_grad, "grad_v2 = sum_i r_i sigma(z_i)")
    assert_zero(at_pair(pair(x).jacobian(x)), "pair's input Jacobian is 0")
    for p in xs:
        assert_zero(at_pair(_matrix_gradient(L, p)), "no gradient flows to the inputs through the pair")

    # Exact post-step contribution, differentiated at eta = 0.
    stepped = (
        u1 - ETA * grads["u1"],
        b1 - ETA * grads["b1"],
        v1 - ETA * grads["v1"],
        u1 - ETA * grads["u2"],
        b1 - ETA * grads["b2"],
        -v1 - ETA * grads["v2"],
    )
    first_order = sp.diff(pair(x, stepped), ETA).subs(ETA, 0)
    claim = -2 * (
        v * v.T * sum((r * _dsigma(zi) * _dsigma(zx) * (_dot(p, x) + 1) for r, zi, p in zip(rs, z, xs)), sp.zeros(2, 1))
        + feature_grad * SIGMA(zx)
    )
    assert_zero(first_order - claim, "first-order post-step contribution")


# ---------------------------------------------------------------------------
# 10. LoRA with B = 0
# ---------------------------------------------------------------------------


def prove_lora_zero_init() -> None:
    """W_eff = W + B A with B = 0 (W frozen, A arbitrary):

        W_eff x = W x,  grad_A = B^T G = 0,  grad_B = G A^T,
        and after one step  Delta W = B' A' = -eta G A^T A  exactly
        (no eta^2 term, because A does not move in this step).

    The standard LoRA initialisation is itself a hair trigger: the adapter's
    A is invisible to evaluation but fixes the first update.
    """
    m, n, r = 2, 3, 2
    W = symbolic_matrix("w", m, n)
    A = symbolic_matrix("a", r, n)
    B = symbolic_matrix("b", m, r)
    xs = [symbolic_vector(f"x{i}", n) for i in (1, 2)]
    ys = [symbolic_vector(f"y{i}", m) for i in (1, 2)]
    W_eff = W + B * A
    L = _square_loss(W_eff, xs, ys)
    G = _square_loss_G(W_eff, xs, ys)
    grad_A, grad_B = _matrix_gradient(L, A), _matrix_gradient(L, B)
    assert_zero(grad_A - B.T * G, "grad_A = B^T G")
    assert_zero(grad_B - G * A.T, "grad_B = G A^T")

    at_zero = {bk: 0 for bk in B}
    G0 = G.subs(at_zero)
    x = symbolic_vector("x", n)
    assert_zero(W_eff.subs(at_zero) * x - W * x, "forward = W x at B = 0")
    assert_zero(grad_A.subs(at_zero), "grad_A = 0 at B = 0")
    A_new = A - ETA * grad_A.subs(at_zero)
    B_new = -ETA * grad_B.subs(at_zero)
    assert_zero(B_new * A_new + ETA * G0 * A.T * A, "Delta W = B' A' = -eta G A^T A")


# ---------------------------------------------------------------------------
# 11. First-order (empirical NTK) prediction
# ---------------------------------------------------------------------------


def prove_first_order_ntk() -> None:
    """For one training sample (x_1, y_1), r = P x_1 - y_1, G = r x_1^T:

        d/deta (P' x) at eta = 0 = -(G W1^T W1 + W2 W2^T G) x
                                 = -J(x) J(x_1)^T r,

    with J(x) = d(P x)/d theta the Jacobian w.r.t. the flattened entries of
    (W1, W2).  The project's first-order (empirical-NTK) predictor of the
    post-update function relies on this.
    """
    d = h = d_out = 2
    W1 = symbolic_matrix("w1", h, d)
    W2 = symbolic_matrix("w2", d_out, h)
    x1, y1 = symbolic_vector("x1", d), symbolic_vector("y1", d_out)
    x = symbolic_vector("x", d)
    P = W2 * W1
    L = _square_loss(P, [x1], [y1])
    r = P * x1 - y1
    G = r * x1.T
    P_new = _end_to_end_after_step(W1, W2, _matrix_gradient(L, W1), _matrix_gradient(L, W2))
    first_order = sp.diff(P_new * x, ETA).subs(ETA, 0)
    assert_zero(first_order + (G * W1.T * W1 + W2 * W2.T * G) * x, "d/deta P'x = -(G W1^T W1 + W2 W2^T G) x")
    theta = sp.Matrix(list(W1) + list(W2))
    J = (P * x).jacobian(theta)
    J1 = (P * x1).jacobian(theta)
    assert_zero(first_order + J * J1.T * r, "d/deta P'x = -J(x) J(x_1)^T r")


ALL_PROOFS: list[Callable[[], None]] = [
    prove_gauge_forward_equivalence,
    prove_linear_gradients,
    prove_one_step_expansion,
    prove_gauge_changes_step,
    prove_first_layer_null_space,
    prove_second_layer_null_space,
    prove_positive_rescaling,
    prove_zero_outgoing_unit,
    prove_cancelling_pair,
    prove_lora_zero_init,
    prove_first_order_ntk,
]
