"""Sparse X (CSR): fused loss + dW + db beside scikit-learn's and PyTorch's sparse paths, and training.

Text-like synthetic data (`make_text_like`): a Zipf-distributed vocabulary, class-dependent topic
words, log term counts, L2-normalized rows. One benchmark group per shape and dtype
(`sparse_linear_cross_entropy n=...-d=...-k=...-nnz=...-float32`), comparing

* fastsoftmax: `linear_cross_entropy(X, W, b, y)` on the CSR matrix;
* scikit-learn: `LinearModelLoss(HalfMultinomialLoss(n_classes=K), fit_intercept=True)
  .loss_gradient` on the same CSR (what LogisticRegression's lbfgs evaluates; scipy's sparse
  products are single-threaded);
* torch: `torch.sparse.mm` on a CSR tensor, `cross_entropy`, backward for W and b.

Every peer's loss is checked against fastsoftmax's before timing. The training group fits
`SoftmaxRegression(solver="lbfgs")` and `LogisticRegression` (same C, tol) on a text-like problem.
Small shapes by default (a smoke test: `--benchmark-disable`); FASTSOFTMAX_BENCH_FULL=1 for
200000 x 2**17 x 20 (~50 stored entries a row) and an RCV1-shaped 800000 x 47236 x 50 (~76).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from _harness import json_extras  # noqa: F401 (autouse fixture)

import fastsoftmax as fs

FULL = os.environ.get("FASTSOFTMAX_BENCH_FULL", "") not in ("", "0")

# (N, d, K, stored entries drawn per row before duplicates are summed)
SHAPES = ([(200000, 2**17, 20, 56), (800000, 47236, 50, 90)] if FULL
          else [(3000, 2**12, 20, 30), (2000, 1000, 50, 40)])
DTYPES = [np.float32, np.float64]
CASES = [(s, dt) for s in SHAPES for dt in DTYPES]
IMPLEMENTATIONS = ("fastsoftmax", "scikit-learn", "torch")
TRAIN_SHAPE = (30000, 65536, 20, 50) if FULL else (2000, 2048, 5, 30)


def make_text_like(n, d, k, tokens_per_row, dtype, seed=0, topic_words=300, topic_share=0.3):
    """CSR X (n, d) and labels y of a text-like problem.

    Each row draws `tokens_per_row` words: a share `topic_share` from its class's `topic_words`
    topic words, the rest from a Zipf vocabulary (word r with probability ~ 1 / (r + 2.7)).
    Counts become log(1 + count), rows are L2-normalized (TF-IDF-like scale).
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    ranks = np.arange(1, d + 1, dtype=np.float64)
    cdf = np.cumsum(1.0 / (ranks + 2.7))
    cdf /= cdf[-1]
    tokens = n * tokens_per_row
    rows = np.repeat(np.arange(n, dtype=np.int32), tokens_per_row)
    cols = np.minimum(np.searchsorted(cdf, rng.random(tokens)), d - 1).astype(np.int32)
    topics = rng.integers(0, d, size=(k, topic_words)).astype(np.int32)
    from_topic = rng.random(tokens) < topic_share
    cols[from_topic] = topics[y[rows[from_topic]], rng.integers(0, topic_words, from_topic.sum())]
    X = sp.csr_matrix((np.ones(tokens, dtype=dtype), (rows, cols)), shape=(n, d))
    X.sum_duplicates()
    X.data = np.log1p(X.data)
    norms = np.sqrt(np.add.reduceat(X.data.astype(np.float64) ** 2, X.indptr[:-1]))
    X.data /= np.repeat(norms, np.diff(X.indptr)).astype(dtype)
    return X, y


def shape_id(shape, dtype) -> str:
    n, d, k, t = shape
    return f"n={n}-d={d}-k={k}-nnz={t}-{np.dtype(dtype).name}"


@pytest.fixture(params=CASES, ids=[shape_id(*c) for c in CASES], scope="module")
def problem(request):
    shape, dtype = request.param
    n, d, k, t = shape
    X, y = make_text_like(n, d, k, t, dtype)
    rng = np.random.default_rng(1)
    W = (rng.normal(size=(k, d)) * 0.5).astype(dtype)
    b = (rng.normal(size=k) * 0.1).astype(dtype)
    expected = fs.linear_cross_entropy(X, W, b, y)[0]
    return shape, dtype, dict(X=X, y=y, W=W, b=b), expected


def _sklearn(data):
    from sklearn._loss.loss import HalfMultinomialLoss
    from sklearn.linear_model._linear_loss import LinearModelLoss

    X, W, b = data["X"], data["W"], data["b"]
    loss = LinearModelLoss(base_loss=HalfMultinomialLoss(n_classes=W.shape[0]),
                           fit_intercept=True)
    coef = np.hstack([W, b[:, None]])
    y = data["y"].astype(X.dtype)
    return lambda: loss.loss_gradient(coef, X, y, l2_reg_strength=0.0, n_threads=1)[0]


def _torch(data):
    torch = pytest.importorskip("torch")
    X = data["X"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Sparse CSR tensor support is in beta"
        Xt = torch.sparse_csr_tensor(
            torch.from_numpy(X.indptr.astype(np.int64)), torch.from_numpy(X.indices.astype(np.int64)),
            torch.from_numpy(X.data), size=X.shape, check_invariants=True,
        )
    W = torch.from_numpy(data["W"]).requires_grad_()
    b = torch.from_numpy(data["b"]).requires_grad_()
    y = torch.from_numpy(data["y"])

    def step():
        W.grad = b.grad = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            loss = torch.nn.functional.cross_entropy(torch.sparse.mm(Xt, W.T) + b, y)
            loss.backward()
        return float(loss.detach())

    return step


def build(impl, data):
    if impl == "fastsoftmax":
        return lambda: fs.linear_cross_entropy(data["X"], data["W"], data["b"], data["y"])[0]
    return _sklearn(data) if impl == "scikit-learn" else _torch(data)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_sparse_linear_cross_entropy(benchmark, problem, impl):
    """loss, dW, db on CSR X."""
    shape, dtype, data, expected = problem
    n, d, k, _ = shape
    benchmark.group = f"sparse_linear_cross_entropy {shape_id(shape, dtype)}"
    benchmark.extra_info.update(op="sparse_linear_cross_entropy", impl=impl, n=n, d=d, k=k,
                                nnz=int(data["X"].nnz), dtype=np.dtype(dtype).name)
    fn = build(impl, data)
    loss = float(fn())  # warm-up: JIT compilation, thread pools
    rel = 1e-3 if np.dtype(dtype) == np.float32 else 1e-8
    assert loss == pytest.approx(expected, rel=rel), (impl, loss, expected)
    benchmark(fn)


def _objective(X, y, coef, intercept, C):
    """LogisticRegression's multinomial objective, per sample: mean loss + ||W||^2 / (2 C N)."""
    loss = fs.linear_cross_entropy(X, coef, intercept, y)[0]
    return loss + 0.5 * float((coef.astype(np.float64) ** 2).sum()) / (C * X.shape[0])


@pytest.mark.parametrize("impl", ["fastsoftmax", "scikit-learn"])
def test_sparse_training(benchmark, impl):
    """lbfgs to LogisticRegression's optimum (same C and tol) on a text-like problem, float64."""
    from sklearn.linear_model import LogisticRegression

    n, d, k, t = TRAIN_SHAPE
    X, y = make_text_like(n, d, k, t, np.float64, seed=3)
    C, tol = 10.0, 1e-4
    benchmark.group = f"sparse_training n={n}-d={d}-k={k}-nnz={t}-float64"
    benchmark.extra_info.update(op="sparse_training", impl=impl, n=n, d=d, k=k)
    if impl == "fastsoftmax":
        model = fs.SoftmaxRegression(solver="lbfgs", alpha=1.0 / (C * n), tol=tol, max_iter=1000)
    else:
        model = LogisticRegression(C=C, tol=tol, max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of the smoke shapes
        benchmark.pedantic(model.fit, args=(X, y), rounds=1, iterations=1, warmup_rounds=1)
    benchmark.extra_info["objective"] = _objective(X, y, model.coef_, model.intercept_, C)
