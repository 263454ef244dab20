"""Fused linear layer + cross-entropy (loss, dW, db) beside the two-GEMM floor and the peers.

One benchmark group per shape and dtype, so each group compares implementations side by side.
"""

import numpy as np
import pytest
from _common import DTYPES, LINEAR_SHAPES, import_torch, make_problem, shape_id

import fastsoftmax as fs
import reference as ref

CASES = [(s, dt) for s in LINEAR_SHAPES for dt in DTYPES]
IDS = [shape_id(s, dt) for s, dt in CASES]


@pytest.fixture(params=CASES, ids=IDS, scope="module")
def problem(request):
    shape, dtype = request.param
    return shape_id(shape, dtype), make_problem(shape, dtype)


def test_floor_two_gemms(benchmark, problem):
    """The floor: X @ W.T into a preallocated Z, then Z.T @ X (NumPy's BLAS)."""
    group, (X, W, b, y) = problem
    benchmark.group = f"linear_cross_entropy {group}"
    Z = np.empty((X.shape[0], W.shape[0]), dtype=X.dtype)

    def floor():
        np.matmul(X, W.T, out=Z)
        return Z.T @ X

    benchmark(floor)


def test_fastsoftmax(benchmark, problem):
    group, (X, W, b, y) = problem
    benchmark.group = f"linear_cross_entropy {group}"
    fs.linear_cross_entropy(X, W, b, y)  # compile outside the measurement
    loss, dW, db = benchmark(fs.linear_cross_entropy, X, W, b, y)
    assert np.isfinite(loss) and dW.dtype == X.dtype


def test_reference(benchmark, problem):
    group, (X, W, b, y) = problem
    benchmark.group = f"linear_cross_entropy {group}"
    benchmark(ref.linear_cross_entropy, X, W, b, y)


def test_sklearn(benchmark, problem):
    from sklearn._loss.loss import HalfMultinomialLoss
    from sklearn.linear_model._linear_loss import LinearModelLoss

    group, (X, W, b, y) = problem
    benchmark.group = f"linear_cross_entropy {group}"
    lml = LinearModelLoss(base_loss=HalfMultinomialLoss(n_classes=W.shape[0]), fit_intercept=True)
    coef = np.hstack([W, b[:, None]])
    yf = y.astype(X.dtype)
    loss, grad = benchmark(lml.loss_gradient, coef, X, yf, l2_reg_strength=0.0, n_threads=1)
    # scikit-learn's multinomial loss is the same mean cross-entropy
    assert loss == pytest.approx(fs.linear_cross_entropy(X, W, b, y)[0], rel=1e-3)


def test_torch(benchmark, problem):
    torch = import_torch()
    group, (X, W, b, y) = problem
    benchmark.group = f"linear_cross_entropy {group}"
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    Wt = torch.from_numpy(W.copy()).requires_grad_()
    bt = torch.from_numpy(b.copy()).requires_grad_()

    def step():
        Wt.grad = None
        bt.grad = None
        loss = torch.nn.functional.cross_entropy(torch.nn.functional.linear(Xt, Wt, bt), yt)
        loss.backward()
        return loss.item()

    loss = benchmark(step)
    assert loss == pytest.approx(fs.linear_cross_entropy(X, W, b, y)[0], rel=1e-3)
