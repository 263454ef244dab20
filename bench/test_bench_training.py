"""Training benchmarks: SoftmaxRegression beside scikit-learn and a plain PyTorch loop.

Two groups per shape (readable ids ``n=...-d=...-k=...-dtype``):

* ``lbfgs ...``: time to scikit-learn's optimum. ``LogisticRegression(C=C, solver="lbfgs")`` and
  ``SoftmaxRegression(alpha=1/(C n))`` on the same data with the same ``tol``; each run must reach
  scikit-learn's objective. scikit-learn is timed as shipped and with its BLAS limited to one
  thread: its threaded BLAS calls interleave with single-threaded work and a second BLAS copy
  (scipy's, in L-BFGS-B), and on two cores one BLAS thread is its faster configuration
  (docs/design.md, "Measured facts").
* ``sgd recipe ...``: the Dive into Deep Learning recipe (batch 256, learning rate 0.1, no weight
  decay, reshuffled epochs) in float32, beside the same loop in PyTorch (``nn.Linear`` +
  ``optim.SGD``), the textbook NumPy loop on ``reference``, and the matrix work of the same epochs
  (one full-batch fused call per epoch: the cost a mini-batch epoch should approach).

Small shapes by default (CI smoke test: ``pytest bench --benchmark-disable``); the shapes the
issue reports with ``FASTSOFTMAX_BENCH_FULL=1``::

    FASTSOFTMAX_BENCH_FULL=1 pytest bench/test_bench_training.py --benchmark-columns=median,min
"""

import warnings

import numpy as np
import pytest
from _cases import FULL, import_torch, shape_id
from _harness import json_extras  # noqa: F401 (autouse fixture)
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

import reference
from fastsoftmax import functional as F
from fastsoftmax.datasets import make_synthetic
from fastsoftmax.estimator import SoftmaxRegression

SHAPE = (60000, 784, 10) if FULL else (3000, 64, 10)
ROUNDS = 3 if FULL else 1
C = 1.0
TOL = 1e-4  # scikit-learn's default
EPOCHS = 10 if FULL else 2
BATCH, LEARNING_RATE = 256, 0.1


def make_problem(shape, dtype, seed=0):
    """Gaussian features, labels drawn from a softmax model: learnable, not separable.

    ``separation=3`` (rather than ``make_synthetic``'s default 8) keeps the classes overlapping,
    so L-BFGS needs a realistic number of iterations to reach the optimum.
    """
    n, d, k = shape
    return make_synthetic(n, d, k, seed=seed, dtype=dtype, separation=3.0)


def objective(X, y, coef, intercept, alpha):
    X64 = np.asarray(X, np.float64)
    W, b = np.asarray(coef, np.float64), np.asarray(intercept, np.float64)
    return F.linear_cross_entropy(X64, W, b, y, alpha=alpha)[0]


def run(benchmark, fn):
    return benchmark.pedantic(fn, rounds=ROUNDS, iterations=1)


def label(benchmark, group, impl, dtype):
    """The group, and what bench/report.py needs to put the row in its training table."""
    n, d, k = SHAPE
    benchmark.group = group
    benchmark.extra_info.update(op="training", impl=impl, n=n, d=d, k=k,
                                dtype=np.dtype(dtype).name)


# ---------------------------------------------------------------- lbfgs: time to the optimum


@pytest.fixture(params=[np.float64, np.float32], ids=lambda dt: shape_id(SHAPE, dt),
                scope="module")
def lbfgs_problem(request):
    X, y = make_problem(SHAPE, request.param)
    alpha = 1.0 / (C * len(y))
    sk = LogisticRegression(C=C, tol=TOL, max_iter=1000).fit(X, y)
    with warnings.catch_warnings():  # compile the kernels for this dtype outside the timing
        warnings.simplefilter("ignore", ConvergenceWarning)
        SoftmaxRegression(alpha=alpha, max_iter=2).fit(X[:500], y[:500])
    return shape_id(SHAPE, request.param), X, y, alpha, objective(X, y, sk.coef_, sk.intercept_,
                                                                   alpha)


def _check_reached(X, y, model, alpha, f_sk):
    # float64 stops within 1e-6 of scikit-learn's objective; float32 data within 1e-4
    rel = 1e-6 if X.dtype == np.float64 else 1e-4
    assert objective(X, y, model.coef_, model.intercept_, alpha) <= f_sk * (1 + rel)


def test_lbfgs_sklearn(benchmark, lbfgs_problem):
    group, X, y, alpha, f_sk = lbfgs_problem
    label(benchmark, f"lbfgs {group}", "scikit-learn", X.dtype)
    model = run(benchmark, lambda: LogisticRegression(C=C, tol=TOL, max_iter=1000).fit(X, y))
    _check_reached(X, y, model, alpha, f_sk)


def test_lbfgs_sklearn_blas_1_thread(benchmark, lbfgs_problem):
    group, X, y, alpha, f_sk = lbfgs_problem
    label(benchmark, f"lbfgs {group}", "scikit-learn (BLAS 1 thread)", X.dtype)

    def fit():
        with threadpool_limits(1, user_api="blas"):
            return LogisticRegression(C=C, tol=TOL, max_iter=1000).fit(X, y)

    _check_reached(X, y, run(benchmark, fit), alpha, f_sk)


def test_lbfgs_fastsoftmax(benchmark, lbfgs_problem):
    group, X, y, alpha, f_sk = lbfgs_problem
    label(benchmark, f"lbfgs {group}", "fastsoftmax", X.dtype)
    model = run(benchmark, lambda: SoftmaxRegression(alpha=alpha, tol=TOL, max_iter=1000).fit(X, y))
    assert model.coef_.dtype == X.dtype
    _check_reached(X, y, model, alpha, f_sk)


# ---------------------------------------------------------------- the textbook SGD recipe


@pytest.fixture(scope="module")
def sgd_problem():
    X, y = make_problem(SHAPE, np.float32)
    SoftmaxRegression(solver="sgd", alpha=0.0, max_iter=1, tol=None).fit(X[:600], y[:600])
    F.linear_cross_entropy(X, np.zeros((SHAPE[2], SHAPE[1]), np.float32),
                           np.zeros(SHAPE[2], np.float32), y)
    return f"sgd recipe {shape_id(SHAPE, np.float32)}-epochs={EPOCHS}", X, y


def test_sgd_fastsoftmax(benchmark, sgd_problem):
    group, X, y = sgd_problem
    label(benchmark, group, "fastsoftmax", X.dtype)
    est = SoftmaxRegression(solver="sgd", alpha=0.0, batch_size=BATCH, learning_rate=LEARNING_RATE,
                            max_iter=EPOCHS, tol=None, random_state=0)
    model = run(benchmark, lambda: est.fit(X, y))
    assert model.coef_.dtype == np.float32
    assert model.loss_curve_[-1] < model.loss_curve_[0]


def test_sgd_matrix_work(benchmark, sgd_problem):
    """One full-batch fused loss-and-gradient call per epoch: the work the epochs do."""
    group, X, y = sgd_problem
    label(benchmark, group, "matrix work (1 full-batch call per epoch)", X.dtype)
    n_classes, n_features = SHAPE[2], SHAPE[1]
    W, b = np.zeros((n_classes, n_features), np.float32), np.zeros(n_classes, np.float32)

    def epochs():
        for _ in range(EPOCHS):
            F.linear_cross_entropy(X, W, b, y)

    run(benchmark, epochs)


def test_sgd_reference_numpy(benchmark, sgd_problem):
    """The textbook NumPy loop: gather a batch, reference.linear_cross_entropy, update."""
    group, X, y = sgd_problem
    label(benchmark, group, "reference", X.dtype)
    n_classes, n_features = SHAPE[2], SHAPE[1]

    def train():
        rng = np.random.RandomState(0)
        W, b = np.zeros((n_classes, n_features), np.float32), np.zeros(n_classes, np.float32)
        for _ in range(EPOCHS):
            order = rng.permutation(len(y))
            for start in range(0, len(y), BATCH):
                rows = order[start:start + BATCH]
                _, dW, db = reference.linear_cross_entropy(X[rows], W, b, y[rows])
                W -= LEARNING_RATE * dW
                b -= LEARNING_RATE * db
        return W

    assert run(benchmark, train).dtype == np.float32


@pytest.mark.parametrize("threads", ["default", 1], ids=["threads=default", "threads=1"])
def test_sgd_torch(benchmark, sgd_problem, threads):
    """The same recipe as a plain PyTorch CPU loop: nn.Linear, cross_entropy, optim.SGD."""
    torch = import_torch()
    group, X, y = sgd_problem
    label(benchmark, group, f"torch (threads={threads})", X.dtype)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    previous = torch.get_num_threads()

    def train():
        torch.manual_seed(0)
        model = torch.nn.Linear(X.shape[1], SHAPE[2])
        optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
        for _ in range(EPOCHS):
            order = torch.randperm(len(yt))
            for start in range(0, len(yt), BATCH):
                rows = order[start:start + BATCH]
                loss = torch.nn.functional.cross_entropy(model(Xt[rows]), yt[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return loss.item()

    if threads != "default":
        torch.set_num_threads(threads)
    try:
        assert np.isfinite(run(benchmark, train))
    finally:
        torch.set_num_threads(previous)
