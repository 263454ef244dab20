"""Training to the optimum with newton-cg: fastsoftmax beside its own lbfgs and scikit-learn's solvers.

One group per problem (``training <problem> n=...-d=...-k=...-float64``), four rows: fastsoftmax
newton-cg (``impl="fastsoftmax"``, so the report's ×fastsoftmax column is the ratio to it),
fastsoftmax lbfgs, scikit-learn newton-cg and lbfgs. All minimize the objective of
``LogisticRegression(C=1)`` (``SoftmaxRegression(alpha=1/(C n))``, see ``bench/_cases.py``) with the
same ``tol`` on the gradient's max-abs. The problems (``_cases.NEWTON_PROBLEMS``):

* ``well-conditioned``: standardized synthetic features;
* ``digits-raw``: scikit-learn's digits at their raw 0..16 scale (constant columns included);
* ``ill-conditioned``: the synthetic features scaled by factors spread over four decades
  (20000 x 500 x 20 in the full run).

Every run's objective is compared with a tight optimum (fastsoftmax newton-cg at ``tol=1e-10``;
a run more than ``REACH`` below it fails, naming the reference as wrong): ``extra_info`` records
``objective_gap`` (relative), ``reached`` (gap <= ``REACH``), the iterations (``n_iter``) and, for
fastsoftmax newton-cg, the conjugate-gradient products (``n_cg``). A run that did not reach the
optimum stays in the JSON with ``reached=False`` and is reported as an expected failure (fastsoftmax
newton-cg, the subject, fails instead): it is never timed silently as if it had. (At ``tol=1e-6``
both lbfgs stop on raw digits 3e-5 above the optimum, on their relative-decrease test.)

Small problems by default (CI smoke test: ``--benchmark-disable``); the full sizes with
``FASTSOFTMAX_BENCH_FULL=1``::

    FASTSOFTMAX_BENCH_FULL=1 pytest bench/test_bench_newton.py --benchmark-columns=median,min
"""

import warnings

import numpy as np
import pytest
from _cases import FULL, NEWTON_PROBLEMS, make_newton_problem, shape_id
from _harness import json_extras  # noqa: F401 (autouse fixture)
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

import fastsoftmax as fs
from fastsoftmax import functional as F
from fastsoftmax.estimator import SoftmaxRegression

ROUNDS = 3 if FULL else 1
C = 1.0
TOL = 1e-6
REACH = 1e-6  # relative distance to the tight optimum every timed run must reach
MAX_ITER = {"newton-cg": 1000, "lbfgs": 100000}  # Newton iterations / L-BFGS iterations


def objective(X, y, coef, intercept, alpha) -> float:
    """The mean cross-entropy plus alpha/2 ||W||^2 in float64; a binary LogisticRegression's one
    vector beta is the softmax pair (-beta/2, beta/2)."""
    coef, intercept = np.asarray(coef, np.float64), np.asarray(intercept, np.float64)
    if coef.shape[0] == 1:
        coef, intercept = np.vstack([-coef[0] / 2, coef[0] / 2]), np.array([-1, 1]) * intercept / 2
    return fs.linear_cross_entropy(np.asarray(X, np.float64), coef, intercept, y, alpha=alpha)[0]


@pytest.fixture(params=NEWTON_PROBLEMS, ids=lambda p: p, scope="module")
def problem(request):
    """(group, X, y, alpha, tight optimum)."""
    X, y = make_newton_problem(request.param)
    alpha = 1.0 / (C * len(y))
    with warnings.catch_warnings():  # at 1e-10 float64 may stop flat: that is the optimum
        warnings.simplefilter("ignore", ConvergenceWarning)
        tight = SoftmaxRegression(solver="newton-cg", alpha=alpha, tol=1e-10, max_iter=1000)
        best = objective(X, y, *_coefs(tight.fit(X, y)), alpha)
    n, d = X.shape
    group = f"training {request.param} {shape_id((n, d, int(y.max()) + 1), X.dtype)}"
    return group, X, y, alpha, best


def _coefs(model):
    return model.coef_, model.intercept_


def _counting_products():
    """Wrap the Hessian-vector product to count the conjugate-gradient products of a run."""
    counter = []
    original = F._linear_hvp_checked

    def counted(*args):
        counter.append(1)
        return original(*args)

    return counter, original, counted


def _fit_and_check(benchmark, problem, impl, solver, make, count_cg=False):
    group, X, y, alpha, best = problem
    n, d = X.shape
    benchmark.group = group
    benchmark.extra_info.update(op="training", impl=impl, solver=solver, n=n, d=d,
                                k=int(y.max()) + 1, dtype=np.dtype(X.dtype).name, tol=TOL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        make().fit(X[:200], y[:200])  # JIT warm-up outside the timing
        model = benchmark.pedantic(lambda: make().fit(X, y), rounds=ROUNDS, iterations=1)
        if count_cg:  # one more run, untimed, to count its products
            counter, original, counted = _counting_products()
            F._linear_hvp_checked = counted
            try:
                make().fit(X, y)
            finally:
                F._linear_hvp_checked = original
            benchmark.extra_info["n_cg"] = len(counter)
    gap = (objective(X, y, *_coefs(model), alpha) - best) / best
    benchmark.extra_info.update(objective_gap=float(gap), reached=bool(gap <= REACH),
                                n_iter=int(np.max(model.n_iter_)))
    assert gap >= -REACH, ("the tight reference optimum is not optimal", impl, gap)
    if gap > REACH and impl != "fastsoftmax":
        # Visible in the summary (x) and the JSON (reached=False), without failing the smoke run:
        # at this tol lbfgs may stop on its relative-decrease test (ftol) short of the optimum.
        pytest.xfail(f"{impl} stopped {gap:.2g} (relative) above the optimum")
    assert gap <= REACH, (f"{impl} did not reach the optimum", gap, benchmark.extra_info)


def test_newton_cg_fastsoftmax(benchmark, problem):
    alpha = problem[3]
    _fit_and_check(benchmark, problem, "fastsoftmax", "newton-cg", lambda: SoftmaxRegression(
        solver="newton-cg", alpha=alpha, tol=TOL, max_iter=MAX_ITER["newton-cg"]), count_cg=True)


def test_lbfgs_fastsoftmax(benchmark, problem):
    alpha = problem[3]
    _fit_and_check(benchmark, problem, "fastsoftmax lbfgs", "lbfgs", lambda: SoftmaxRegression(
        solver="lbfgs", alpha=alpha, tol=TOL, max_iter=MAX_ITER["lbfgs"]))


@pytest.mark.parametrize("solver", ["newton-cg", "lbfgs"])
def test_sklearn(benchmark, problem, solver):
    _fit_and_check(benchmark, problem, f"scikit-learn {solver}", solver, lambda: LogisticRegression(
        solver=solver, C=C, tol=TOL, max_iter=MAX_ITER[solver]))
