"""What the benchmark suite measures: shapes, dtypes, operations, implementations, data, nominal cost.

By default the suite runs small shapes (a smoke test for CI: `pytest bench --benchmark-disable`).
Set FASTSOFTMAX_BENCH_FULL=1 for the large N x d x K problems the README reports.

This module imports nothing else from bench/: the implementations (`_impls.py`), the timing harness
(`_harness.py`) and the memory probe (`_peakmem.py`) all build on it. Every problem comes from
`fastsoftmax.datasets.make_synthetic`, the project's one problem generator.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from fastsoftmax.datasets import make_synthetic

FULL = os.environ.get("FASTSOFTMAX_BENCH_FULL", "") not in ("", "0")

# (N, d, K): MNIST-sized, many samples, 100 and 1000 classes, a language-model-sized head.
SHAPES = (
    [
        (60000, 784, 10),
        (1000000, 128, 10),
        (100000, 256, 100),
        (20000, 512, 1000),
        (4096, 1024, 32000),
    ]
    if FULL
    else [(2000, 64, 10), (1000, 32, 100)]
)
DTYPES = [np.float32, np.float64]
CASES = [(s, dt) for s in SHAPES for dt in DTYPES]

LINEAR_OPS = ("linear_cross_entropy", "linear_cross_entropy+dX", "linear_softmax")
ELEMENTWISE_OPS = ("softmax", "cross_entropy_grad")
OPERATIONS = LINEAR_OPS + ELEMENTWISE_OPS
IMPLEMENTATIONS = ("floor", "fastsoftmax", "reference", "scikit-learn", "torch")


def shape_id(shape, dtype, op: str | None = None) -> str:
    """`n=...-d=...-k=...-float32`; the elementwise operations never see d, so it is left out."""
    n, d, k = shape
    dims = f"n={n}-k={k}" if op in ELEMENTWISE_OPS else f"n={n}-d={d}-k={k}"
    return f"{dims}-{np.dtype(dtype).name}"


def make_problem(shape, dtype, seed=0):
    """X (N, d), W (K, d), b (K,), y (N,) int64 of `make_synthetic`, all but y in `dtype`."""
    n, d, k = shape
    X, y, W, b = make_synthetic(n, d, k, seed=seed, dtype=dtype, coef=True)
    return X, W, b, y


def make_logits(shape, dtype, seed=0):
    """Logits Z (N, K) of the size a trained linear layer gives (standard deviation 3), labels y.

    The elementwise operations start from logits, not from a linear problem: drawing them directly
    keeps the data of the 4096 x 32000 case cheap (no N x d x K product to make it).
    """
    n, _, k = shape
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, k), dtype=dtype)
    Z *= dtype(3.0)
    y = rng.integers(0, k, size=n)
    return Z, y


def make_data(op: str, shape, dtype, seed=0) -> dict:
    """The keyword arguments of `_impls.build` for `op`: Z and y, or X, W, b and y."""
    if op in ELEMENTWISE_OPS:
        Z, y = make_logits(shape, dtype, seed)
        return {"Z": Z, "y": y}
    X, W, b, y = make_problem(shape, dtype, seed)
    return {"X": X, "W": W, "b": b, "y": y}


# Training problems of bench/test_bench_newton.py: (N, d, K) of the synthetic ones.
NEWTON_SHAPE = (20000, 500, 20) if FULL else (1500, 20, 5)
NEWTON_PROBLEMS = ("well-conditioned", "digits-raw", "ill-conditioned")


def make_newton_problem(name: str, seed=0):
    """X (float64) and y of a newton-cg training problem (see bench/test_bench_newton.py).

    ``well-conditioned``: standardized `make_synthetic` features, overlapping classes
    (``separation=3``); ``ill-conditioned``: the same features each scaled by 10**u, u uniform in
    [-2, 2] (a Hessian whose diagonal spans eight decades); ``digits-raw``: scikit-learn's digits
    at their raw 0..16 scale (the full run: all 1797 rows; CI: the first 600).
    """
    if name == "digits-raw":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        n = len(y) if FULL else 600
        return np.ascontiguousarray(X[:n]), y[:n].astype(np.int64)
    n, d, k = NEWTON_SHAPE
    X, y = make_synthetic(n, d, k, seed=seed, dtype=np.float64, separation=3.0)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    if name == "ill-conditioned":
        X *= 10.0 ** np.random.default_rng(seed + 2).uniform(-2.0, 2.0, size=d)
    return X, y


def data_bytes(op: str, shape, dtype) -> int:
    n, d, k = shape
    item = np.dtype(dtype).itemsize
    if op in ELEMENTWISE_OPS:
        return n * k * item + n * 8
    return (n * d + k * d + k) * item + n * 8


def import_torch():
    """PyTorch with one thread per core, or a skip with the reason (an optional dependency)."""
    torch = pytest.importorskip("torch", reason="PyTorch CPU is optional: pip install '.[bench]'")
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch


# --------------------------------------------------------------------------------------------------
# Cost model: the same nominal counts for every implementation, so throughputs compare directly.
# --------------------------------------------------------------------------------------------------

GEMMS = {"linear_cross_entropy": 2, "linear_cross_entropy+dX": 3, "linear_softmax": 1}


def nominal_cost(op: str, shape, dtype) -> dict:
    """Useful flops (2NdK per matrix product) for the linear operations; for the elementwise ones,
    the bytes of one read and one write of the N x K array (their floor)."""
    n, d, k = shape
    item = np.dtype(dtype).itemsize
    if op in ELEMENTWISE_OPS:
        return {"flops": None, "bytes": 2 * n * k * item}
    return {"flops": 2 * n * d * k * GEMMS[op], "bytes": None}
