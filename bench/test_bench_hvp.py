"""The Hessian-vector product and the Newton-CG solver built on it, beside their floor and peers.

Two kinds of group (readable ids ``n=...-d=...-k=...-dtype``):

* ``linear_cross_entropy_hvp ...``: one product ``H (S, s_b)`` at (W, b). ``floor``: the two GEMMs
  that hold all its multiply-adds, ``X [W; S]^T`` (N x 2K) and ``R^T X``, into preallocated
  outputs; ``fastsoftmax``; ``scikit-learn``: ``LinearModelLoss.gradient_hessian_product``'s
  ``hessp`` (its setup, the probabilities and the gradient, made once outside the timing, as its
  newton-cg does once per outer iteration). Every peer's product is checked against fastsoftmax's.
* ``sparse_linear_cross_entropy_hvp ...``: the same product on CSR X (text-like data of
  ``bench/test_bench_sparse.py``), fastsoftmax's fused CSR kernel beside scikit-learn's ``hessp``.
* ``training ...``: time to the optimum of ``LogisticRegression(C=1)`` (``alpha = 1/(C n)``), for
  fastsoftmax lbfgs and newton-cg and scikit-learn lbfgs and newton-cg, on a well-conditioned problem
  (standardized features) and an ill-conditioned one (the same features scaled by factors spread
  over four decades). Every run must reach the objective of a tight newton-cg solve to within
  ``REACH`` relative; ``tol`` is the same for all.

Small shapes by default (CI smoke test: ``--benchmark-disable``); the shapes of the report with
``FASTSOFTMAX_BENCH_FULL=1``::

    FASTSOFTMAX_BENCH_FULL=1 pytest bench/test_bench_hvp.py --benchmark-columns=median,min
"""

import warnings

import numpy as np
import pytest
from _cases import FULL, shape_id
from _harness import json_extras  # noqa: F401 (autouse fixture)
from sklearn._loss.loss import HalfMultinomialLoss
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.linear_model._linear_loss import LinearModelLoss

import fastsoftmax as fs
from fastsoftmax.datasets import make_synthetic
from fastsoftmax.estimator import SoftmaxRegression

HVP_SHAPES = (
    [(100000, 256, 10), (50000, 256, 100), (20000, 256, 1000)] if FULL
    else [(2000, 32, 10), (1000, 32, 50)]
)
HVP_CASES = [(s, dt) for s in HVP_SHAPES for dt in (np.float64, np.float32)]
TRAIN_SHAPE = (20000, 500, 20) if FULL else (1500, 20, 5)
ROUNDS = 3 if FULL else 1
C = 1.0
TOL = 1e-6
REACH = 1e-6  # relative distance to the tight optimum every timed run must reach


# ---------------------------------------------------------------- the product


@pytest.fixture(params=HVP_CASES, ids=[shape_id(*c) for c in HVP_CASES], scope="module")
def hvp_problem(request):
    (n, d, k), dtype = request.param
    X, y, W, b = make_synthetic(n, d, k, seed=0, dtype=dtype, coef=True)
    rng = np.random.default_rng(1)
    S = rng.standard_normal(W.shape).astype(dtype)
    s_b = rng.standard_normal(k).astype(dtype)
    expected = fs.linear_cross_entropy_hvp(X, W, b, y, S, s_b)
    return request.param, dict(X=X, W=W, b=b, y=y, S=S, s_b=s_b), expected


def _label(benchmark, group, impl, shape, dtype):
    n, d, k = shape
    benchmark.group = group
    benchmark.extra_info.update(op=group.split()[0], impl=impl, n=n, d=d, k=k,
                                dtype=np.dtype(dtype).name, flops=3 * 2 * n * d * k)


def _touched(shape, dtype):
    out = np.empty(shape, dtype=dtype)
    out.fill(0)
    return out


def test_hvp_floor(benchmark, hvp_problem):
    (shape, dtype), data, _ = hvp_problem
    _label(benchmark, f"linear_cross_entropy_hvp {shape_id(shape, dtype)}", "floor", shape, dtype)
    X, W, S = data["X"], data["W"], data["S"]
    WS = np.vstack([W, S])
    Z2 = _touched((X.shape[0], 2 * W.shape[0]), dtype)
    R = _touched((X.shape[0], W.shape[0]), dtype)
    HS = _touched(W.shape, dtype)

    def two_gemms():
        np.matmul(X, WS.T, out=Z2)
        np.matmul(R.T, X, out=HS)

    two_gemms()
    benchmark(two_gemms)


def test_hvp_fastsoftmax(benchmark, hvp_problem):
    (shape, dtype), data, _ = hvp_problem
    _label(benchmark, f"linear_cross_entropy_hvp {shape_id(shape, dtype)}", "fastsoftmax", shape,
           dtype)
    fn = lambda: fs.linear_cross_entropy_hvp(**data)  # noqa: E731
    fn()
    benchmark(fn)


def test_hvp_sklearn(benchmark, hvp_problem):
    (shape, dtype), data, expected = hvp_problem
    _label(benchmark, f"linear_cross_entropy_hvp {shape_id(shape, dtype)}", "scikit-learn", shape,
           dtype)
    X, W, b, y, S, s_b = (data[k] for k in ("X", "W", "b", "y", "S", "s_b"))
    lml = LinearModelLoss(HalfMultinomialLoss(n_classes=W.shape[0]), fit_intercept=True)
    _, hessp = lml.gradient_hessian_product(np.column_stack([W, b]), X, y.astype(dtype))
    direction = np.column_stack([S, s_b])
    product = hessp(direction)
    rtol = 1e-3 if dtype == np.float32 else 1e-8
    np.testing.assert_allclose(product[:, :-1], expected[0], rtol=rtol,
                               atol=rtol * float(np.abs(expected[0]).max()))
    benchmark(lambda: hessp(direction))


# ---------------------------------------------------------------- the product on sparse X

SPARSE_HVP_SHAPE = (200000, 2**17, 20, 56) if FULL else (3000, 2**12, 20, 30)


@pytest.fixture(params=[np.float64, np.float32], ids=["float64", "float32"], scope="module")
def sparse_hvp_problem(request):
    from test_bench_sparse import make_text_like

    n, d, k, t = SPARSE_HVP_SHAPE
    dtype = request.param
    X, y = make_text_like(n, d, k, t, dtype)
    rng = np.random.default_rng(1)
    W = (rng.normal(size=(k, d)) * 0.5).astype(dtype)
    b = (rng.normal(size=k) * 0.1).astype(dtype)
    S = rng.standard_normal(W.shape).astype(dtype)
    s_b = rng.standard_normal(k).astype(dtype)
    expected = fs.linear_cross_entropy_hvp(X, W, b, y, S, s_b)
    group = f"sparse_linear_cross_entropy_hvp n={n}-d={d}-k={k}-nnz={t}-{np.dtype(dtype).name}"
    return group, dtype, dict(X=X, W=W, b=b, y=y, S=S, s_b=s_b), expected


def test_sparse_hvp_fastsoftmax(benchmark, sparse_hvp_problem):
    """The fused CSR product (text-like data, as bench/test_bench_sparse.py)."""
    group, dtype, data, _ = sparse_hvp_problem
    _label(benchmark, group, "fastsoftmax", SPARSE_HVP_SHAPE[:3], dtype)
    fn = lambda: fs.linear_cross_entropy_hvp(**data)  # noqa: E731
    fn()
    benchmark(fn)


def test_sparse_hvp_sklearn(benchmark, sparse_hvp_problem):
    """scikit-learn's hessp on the same CSR (scipy's single-threaded sparse products)."""
    group, dtype, data, expected = sparse_hvp_problem
    _label(benchmark, group, "scikit-learn", SPARSE_HVP_SHAPE[:3], dtype)
    X, W, b, y, S, s_b = (data[k] for k in ("X", "W", "b", "y", "S", "s_b"))
    lml = LinearModelLoss(HalfMultinomialLoss(n_classes=W.shape[0]), fit_intercept=True)
    _, hessp = lml.gradient_hessian_product(np.column_stack([W, b]), X, y.astype(dtype))
    direction = np.column_stack([S, s_b])
    product = hessp(direction)
    rtol = 1e-3 if dtype == np.float32 else 1e-8
    np.testing.assert_allclose(product[:, :-1], expected[0], rtol=rtol,
                               atol=rtol * float(np.abs(expected[0]).max()))
    benchmark(lambda: hessp(direction))


# ---------------------------------------------------------------- training to the optimum


def make_training_problem(conditioning: str):
    n, d, k = TRAIN_SHAPE
    X, y = make_synthetic(n, d, k, seed=0, dtype=np.float64, separation=3.0)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    if conditioning == "ill":
        X *= 10.0 ** np.random.default_rng(2).uniform(-2.0, 2.0, size=d)
    return X, y


@pytest.fixture(params=["well", "ill"], scope="module")
def training_problem(request):
    X, y = make_training_problem(request.param)
    alpha = 1.0 / (C * len(y))
    tight = SoftmaxRegression(solver="newton-cg", alpha=alpha, tol=1e-10, max_iter=1000)
    with warnings.catch_warnings():  # float64 may stop flat above 1e-10: that is the optimum
        warnings.simplefilter("ignore", ConvergenceWarning)
        tight.fit(X, y)
    best = fs.linear_cross_entropy(X, tight.coef_, tight.intercept_, y, alpha=alpha)[0]
    group = f"training {request.param}-conditioned {shape_id(TRAIN_SHAPE, np.float64)}"
    return group, X, y, alpha, best


def _fit_and_check(benchmark, training_problem, impl, make):
    group, X, y, alpha, best = training_problem
    _label(benchmark, group, impl, TRAIN_SHAPE, np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        make().fit(X[:200], y[:200])  # JIT warm-up outside the timing
        model = benchmark.pedantic(lambda: make().fit(X, y), rounds=ROUNDS, iterations=1)
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1:
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    reached = fs.linear_cross_entropy(X, coef, intercept, y, alpha=alpha)[0]
    n_iter = int(np.max(model.n_iter_))
    benchmark.extra_info.update(objective_gap=(reached - best) / best, n_iter=n_iter)
    assert reached <= best * (1 + REACH), (impl, reached, best, n_iter)


def test_train_fastsoftmax_newton_cg(benchmark, training_problem):
    alpha = training_problem[3]
    _fit_and_check(benchmark, training_problem, "fastsoftmax newton-cg", lambda: SoftmaxRegression(
        solver="newton-cg", alpha=alpha, tol=TOL, max_iter=1000))


def test_train_fastsoftmax_lbfgs(benchmark, training_problem):
    alpha = training_problem[3]
    _fit_and_check(benchmark, training_problem, "fastsoftmax lbfgs", lambda: SoftmaxRegression(
        solver="lbfgs", alpha=alpha, tol=TOL, max_iter=20000))


@pytest.mark.parametrize("solver", ["newton-cg", "lbfgs"])
def test_train_sklearn(benchmark, training_problem, solver):
    _fit_and_check(benchmark, training_problem, f"scikit-learn {solver}", lambda: LogisticRegression(
        solver=solver, C=C, tol=TOL, max_iter=20000))
