"""Shared pieces of the benchmark suite: problem shapes, data, and the peers' implementations.

By default the suite runs small shapes (a smoke test for CI: `pytest bench --benchmark-disable`).
Set FASTSOFTMAX_BENCH_FULL=1 for the large N x d x K problems the README reports.
"""

import os

import numpy as np
import pytest

FULL = os.environ.get("FASTSOFTMAX_BENCH_FULL", "") not in ("", "0")

LINEAR_SHAPES = (
    [(60000, 784, 10), (100000, 256, 100), (20000, 512, 1000)]
    if FULL
    else [(2000, 64, 10), (1000, 32, 100)]
)
DTYPES = [np.float32, np.float64]


def shape_id(shape, dtype):
    n, d, k = shape
    return f"n={n}-d={d}-k={k}-{np.dtype(dtype).name}"


def make_problem(shape, dtype, seed=0):
    n, d, k = shape
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d), dtype=np.float64).astype(dtype)
    W = (rng.standard_normal((k, d)) / np.sqrt(d)).astype(dtype)
    b = (0.1 * rng.standard_normal(k)).astype(dtype)
    y = rng.integers(0, k, size=n)
    return X, W, b, y


def import_torch():
    """PyTorch, or a skip with the reason (it is an optional benchmark dependency)."""
    return pytest.importorskip("torch", reason="PyTorch CPU is optional: pip install '.[bench]'")
