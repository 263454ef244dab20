"""The functions that run on one chunk, where it lives (importable without dask).

Each takes the chunk's index ``i`` first (for error messages) and the arguments shared by all
chunks as ``shared``. A chunk task returns small results only: counts, class totals, or one
float64 vector ``[loss, dW.ravel(), db]`` of partial sums.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fastsoftmax import functional as F
from fastsoftmax.dask._backend import task_threads

__all__ = [
    "ChunkError", "ChunkStats", "Spec", "encode_labels", "encode_labels_chunk", "loss_grad",
    "predict_block", "stats", "weights_chunk",
]


class Spec(NamedTuple):
    """What every evaluation's chunk task needs besides the chunk and the parameters."""

    n_classes: int
    n_features: int
    dtype: str
    fit_intercept: bool
    label_smoothing: float
    n_jobs: int | None


class ChunkError(ValueError):
    """A chunk's evaluation failed (non-finite X, overflowing logits): the client adds the
    chunk's rows to the message."""

    def __init__(self, chunk: int, message: str):
        super().__init__(chunk, message)
        self.chunk, self.message = chunk, message

    def __str__(self) -> str:
        return f"chunk {self.chunk} of X: {self.message}"


class ChunkStats(NamedTuple):
    """The one pass over a chunk's labels and weights before the fit (X is not read: the first
    evaluation finds non-finite values, as it reads X anyway)."""

    n_rows: int
    labels: np.ndarray  # the distinct labels of the chunk, sorted
    label_totals: np.ndarray  # float64 per label: the sum of its sample weights (or its count)
    max_weight: float
    bad_weight: str  # what is wrong with the chunk's sample weights; "" when nothing


def encode_labels(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Labels to codes ``0..n_classes-1``; ValueError naming labels that are not in classes."""
    y = np.asarray(y).ravel()
    if y.size == 0:
        return np.empty(0, dtype=np.intp)
    codes = np.minimum(np.searchsorted(classes, y), len(classes) - 1).astype(np.intp)
    unknown = classes[codes] != y
    if np.any(unknown):
        raise ValueError(
            f"y contains labels not in classes: {np.unique(y[unknown])[:10]!r} "
            f"(classes={classes!r})"
        )
    return codes


def stats(i: int, X: np.ndarray, y: np.ndarray, sample_weight, shared) -> ChunkStats:
    """Rows, distinct labels with their weighted counts, and weight checks of chunk i. With
    ``shared`` (the given classes), a label outside them raises ValueError."""
    y = np.asarray(y).ravel()
    n = X.shape[0]
    if y.shape[0] != n:
        raise ValueError(
            f"y has {y.shape[0]} rows in chunk {i} where X has {n}: y (and sample_weight) "
            "must be partitioned like X"
        )
    if shared is not None:
        encode_labels(y, shared)
    labels, inverse = np.unique(y, return_inverse=True)
    bad_weight, max_weight = "", 0.0
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight, dtype=np.float64).ravel()
        bad_weight = _weight_problem(sample_weight, n)
        if bad_weight:
            return ChunkStats(n, labels, np.zeros(len(labels)), 0.0, bad_weight)
        max_weight = float(sample_weight.max()) if n else 0.0
    totals = np.bincount(inverse.ravel(), weights=sample_weight, minlength=len(labels))
    return ChunkStats(n, labels, totals.astype(np.float64), max_weight, "")


def _weight_problem(sample_weight: np.ndarray, n: int) -> str:
    if sample_weight.shape[0] != n:
        return f"{sample_weight.shape[0]} weights for {n} rows of X"
    if not np.isfinite(sample_weight).all():
        return "NaN or infinite weights"
    if np.any(sample_weight < 0):
        return "negative weights"
    return ""


def encode_labels_chunk(i: int, y: np.ndarray, shared) -> np.ndarray:
    """`encode_labels` of chunk i against the classes in ``shared``."""
    return encode_labels(y, shared)


def weights_chunk(i: int, y_codes: np.ndarray, sample_weight, shared) -> np.ndarray:
    """Per-row weights of chunk i: sample weight times class weight times ``scale`` (a power of
    two, exact), float64; ``shared`` is ``(class_weight or None, scale)``."""
    class_weight, scale = shared
    w = np.ones(y_codes.shape[0]) if sample_weight is None else np.asarray(
        sample_weight, dtype=np.float64).ravel()
    if class_weight is not None:
        w = w * class_weight[y_codes]
    return w * scale if scale != 1.0 else w


def unpack(theta: np.ndarray, spec: Spec):
    """W (n_classes, n_features) and b (or None) in the data dtype from the packed float64
    vector ``[W.ravel(), b]`` (the in-memory lbfgs's conversion)."""
    n_coef = spec.n_classes * spec.n_features
    W = theta[:n_coef].reshape(spec.n_classes, spec.n_features).astype(spec.dtype, copy=False)
    b = theta[n_coef:].astype(spec.dtype, copy=False) if spec.fit_intercept else None
    return W, b


def loss_grad(i: int, X, y_codes, w, shared) -> np.ndarray:
    """``[loss, dW.ravel(), db]`` summed (not averaged) over chunk i, float64, without the
    penalty: the client divides the tree sum by the total weight and adds the penalty."""
    theta, spec = shared
    W, b = unpack(theta, spec)
    try:
        with task_threads(spec.n_jobs):
            loss, dW, db = F.linear_cross_entropy(
                X, W, b, y_codes, sample_weight=w, label_smoothing=spec.label_smoothing,
                reduction="sum",
            )
    except ValueError as exc:
        raise ChunkError(i, str(exc)) from None
    out = np.empty(1 + theta.shape[0], dtype=np.float64)
    out[0] = loss
    out[1:1 + dW.size] = dW.ravel()
    if db is not None:
        out[1 + dW.size:] = db
    return out


def predict_block(X: np.ndarray, estimator, method: str, n_jobs: int | None) -> np.ndarray:
    """``estimator.<method>(X)`` for one block of rows, with the task's kernel threads (an empty
    block, as a filtered DataFrame leaves, gives an empty result: scikit-learn refuses 0 rows)."""
    if X.shape[0] == 0:
        K = len(estimator.classes_)
        if method == "predict":
            return np.empty(0, dtype=estimator.classes_.dtype)
        if method == "decision_function" and K == 2:
            return np.empty(0, dtype=estimator.coef_.dtype)
        return np.empty((0, K), dtype=estimator.coef_.dtype)
    with task_threads(n_jobs):
        return getattr(estimator, method)(X)
