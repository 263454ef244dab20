"""The public functions of fastsoftmax: validation, dtype and layout, allocation, tiling.

Conventions (shared by every function here and by ``reference``):

* ``X``: ``(n_samples, n_features)``; ``W``: ``(n_classes, n_features)`` (scikit-learn's ``coef_``,
  torch's ``Linear.weight``); ``b``: ``(n_classes,)`` or None; ``Z``: logits ``(n_samples, n_classes)``.
* ``y``: integer class codes in ``[0, n_classes)``, shape ``(n_samples,)``.
* ``sample_weight``: ``(n_samples,)``, finite and non-negative, or None (all ones).
* dtype: float32 inputs give float32 results; anything else is converted to float64. The loss is a
  Python float accumulated in float64 whatever the dtype.
* ``reduction="mean"`` divides by ``sum(sample_weight)`` (n_samples when None), ``"sum"`` does not,
  ``"none"`` (``cross_entropy`` only) returns per-sample weighted losses. Gradients are those of the
  reduced loss.
* ``label_smoothing=eps`` follows PyTorch: ``(1 - eps) * nll + eps * mean_k(-log p_k)``.

No function modifies its inputs. Bad input raises ``ValueError`` or ``TypeError`` naming the argument.
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy.linalg import blas as _blas

from fastsoftmax import _kernels as _k

__all__ = [
    "cross_entropy",
    "cross_entropy_grad",
    "linear_cross_entropy",
    "linear_softmax",
    "log_softmax",
    "softmax",
]

# Up to this many classes the linear layer skips BLAS (see _kernels, "small-K"); above it, tiles of
# rows go through two BLAS GEMMs with a fused row pass between them.
SMALL_K_MAX = 32
# Bytes of logits held per tile on the BLAS path: bounds extra memory independently of n_samples.
TILE_BYTES = 64 * 2**20
TILE_ROWS_MAX = 8192
TILE_ROWS_MIN = 64
# From this many classes a row pass between BLAS GEMMs (the tiled loss, linear_softmax) runs in
# parallel (measured on the loss at 100 classes: serial 1.07-1.12x the floor, parallel 1.34-1.63x; at
# 1000: serial 1.11-1.20x, parallel 1.00-1.12x). See `_row_pass_tasks`.
TILED_PARALLEL_MIN_K = 512
# Row chunks of the small-K kernel: at most this many (each holds a K x d partial dW), fixed by the
# problem size only so that results do not depend on the thread count.
SMALL_K_CHUNKS = 16
SMALL_K_CHUNK_ROWS = 128  # a 256-row SGD batch still uses two cores
SMALL_K_PARTIALS_BYTES = 64 * 2**20

_REDUCTIONS = ("mean", "sum", "none")


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------


def _float_dtype(*arrays) -> np.dtype:
    """float32 when every given array is float32, float64 otherwise."""
    present = [a for a in arrays if a is not None]
    if present and all(a.dtype == np.float32 for a in present):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _as_numeric(name: str, a, ndim: int) -> np.ndarray:
    """`a` as an ndarray of real numbers with `ndim` dimensions (not yet converted in dtype)."""
    try:
        arr = np.asarray(a)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be array-like of real numbers: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    return arr


def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only view. Numba compiles a separate specialization for read-only arrays (seconds, and
    one per combination of arguments): every input reaches the kernels read-only, whatever the
    caller's flags, so one specialization per dtype serves them all."""
    view = a.view()
    view.flags.writeable = False
    return view


def _as_float(name: str, arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """C-contiguous read-only array of `dtype` (a view when possible; never the caller's array to
    write)."""
    return _readonly(np.ascontiguousarray(arr, dtype=dtype))


def _check_labels(y, n_samples: int, n_classes: int) -> np.ndarray:
    try:
        y = np.asarray(y)
    except Exception as exc:
        raise TypeError(f"y must be an array of integer class codes: {exc}") from None
    if y.dtype.kind not in "iu":
        raise TypeError(f"y must hold integer class codes, got dtype {y.dtype}")
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {y.shape}")
    if y.shape[0] != n_samples:
        raise ValueError(f"y has {y.shape[0]} labels but there are {n_samples} samples")
    if n_samples:
        lo, hi = y.min(), y.max()
        if lo < 0 or hi >= n_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(f"y holds label {bad}, outside [0, n_classes={n_classes})")
    return _readonly(np.ascontiguousarray(y, dtype=np.intp))


def _check_scalar(name: str, value, low: float, high: float = np.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (low <= value <= high) or not np.isfinite(value):
        raise ValueError(f"{name} must be finite and in [{low}, {high}], got {value}")
    return value


def _check_reduction(reduction, allowed=_REDUCTIONS) -> str:
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {allowed}, got {reduction!r}")
    return reduction


def _check_weights(sample_weight, n_samples: int, reduction: str):
    """float64 weights (size 0 for None) and the normalizer of the reduction."""
    if sample_weight is None:
        w = _readonly(np.empty(0, dtype=np.float64))
        total = float(n_samples)
    else:
        w = _as_numeric("sample_weight", sample_weight, 1)
        if w.shape[0] != n_samples:
            raise ValueError(
                f"sample_weight has {w.shape[0]} entries but there are {n_samples} samples"
            )
        w = _readonly(np.ascontiguousarray(w, dtype=np.float64))
        if not np.isfinite(w).all():
            raise ValueError("sample_weight must be finite")
        if n_samples and w.min() < 0:
            raise ValueError("sample_weight must be non-negative")
        total = float(w.sum())
    if reduction == "mean" and not total > 0:
        what = "there are no samples" if n_samples == 0 else "sample_weight sums to zero"
        raise ValueError(f"reduction='mean' is undefined: {what}")
    return w, (total if reduction == "mean" else 1.0)


def _check_out(out, shape, dtype, source: np.ndarray | None):
    """Validate `out`; returns (array to compute into, whether rows must first be copied from the
    source). A non-contiguous `out` is computed into a scratch array and copied at the end."""
    if out is None:
        return np.empty(shape, dtype=dtype), True
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"out must have shape {shape}, got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"out must have dtype {dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    if source is not None and np.shares_memory(out, source):
        same = (
            out.flags.c_contiguous
            and out.__array_interface__["data"][0] == source.__array_interface__["data"][0]
        )
        if not same:
            raise ValueError("out overlaps the input without being the same array")
        return out, False
    if not out.flags.c_contiguous:
        return np.empty(shape, dtype=dtype), True
    return out, True


def _finish_out(result: np.ndarray, out):
    if out is not None and result is not out:
        np.copyto(out, result)
        return out
    return result


def _check_logits(Z) -> np.ndarray:
    Z = _as_numeric("Z", Z, 2)
    if Z.shape[1] == 0:
        raise ValueError("Z must have at least one column (class)")
    return _as_float("Z", Z, _float_dtype(Z))


def _row_blocks(n_rows: int) -> int:
    """Number of prange iterations (blocks of ROW_BLOCK rows) of the row kernels."""
    return _k.n_blocks(n_rows, _k.ROW_BLOCK)


def _row_pass_tasks(n_rows: int, n_classes: int) -> int:
    """Parallel tasks of a row pass that runs between BLAS GEMMs: its row blocks from
    TILED_PARALLEL_MIN_K classes, else 1 (serial). Below that, a Numba parallel region costs more
    in fighting OpenBLAS's spinning threads for the cores than it saves; from there on rows are
    long enough that it pays (docs/design.md, "Threading and determinism"). Either way the results
    are the same bits: the kernel pairs' twins agree bitwise."""
    return _row_blocks(n_rows) if n_classes >= TILED_PARALLEL_MIN_K else 1


def _raise_bad_logits(n_bad: int) -> None:
    if n_bad:
        raise ValueError(
            f"Z has {n_bad} row(s) with NaN or +inf, or with every entry -inf: "
            "softmax and cross-entropy are undefined there"
        )


def _check_linear(X, W, b):
    """Validated C-contiguous X, W, b (or None) in their common float dtype."""
    X = _as_numeric("X", X, 2)
    W = _as_numeric("W", W, 2)
    if b is not None:
        b = _as_numeric("b", b, 1)
    if W.shape[0] == 0:
        raise ValueError("W must have at least one row (class)")
    if W.shape[1] != X.shape[1]:
        raise ValueError(
            f"W has {W.shape[1]} features per class but X has {X.shape[1]} features per sample"
        )
    if b is not None and b.shape[0] != W.shape[0]:
        raise ValueError(f"b has {b.shape[0]} entries but W has {W.shape[0]} classes")
    dtype = _float_dtype(X, W, b)
    X, W = _as_float("X", X, dtype), _as_float("W", W, dtype)
    return X, W, (None if b is None else _as_float("b", b, dtype)), dtype


def _raise_nonfinite_params(X, W, b) -> None:
    """Called when results came out NaN: name the argument that holds NaN or inf."""
    for name, a in (("W", W), ("b", b), ("X", X)):
        if a is not None and not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or infinity")
    raise ValueError("X W^T + b overflowed to infinity: the logits are not representable")


# ------------------------------------------------------------------------------------------------
# Row functions on given logits
# ------------------------------------------------------------------------------------------------


def softmax(Z, *, out: np.ndarray | None = None) -> np.ndarray:
    """Row-wise softmax ``exp(Z - max) / sum(exp(Z - max))``.

    Parameters
    ----------
    Z : array-like of shape (n_samples, n_classes)
        Logits; -inf entries (masked classes) get probability 0.
    out : ndarray of shape (n_samples, n_classes), optional
        Where to write the result (may be ``Z`` itself for an in-place softmax).

    Returns
    -------
    P : ndarray of shape (n_samples, n_classes), float32 for float32 Z, else float64.
    """
    return _row_softmax(Z, out, log=False)


def log_softmax(Z, *, out: np.ndarray | None = None) -> np.ndarray:
    """Row-wise log-softmax ``Z - max - log(sum(exp(Z - max)))``; see :func:`softmax`."""
    return _row_softmax(Z, out, log=True)


def _row_softmax(Z, out, log: bool) -> np.ndarray:
    Zc = _check_logits(Z)
    target, copy = _check_out(out, Zc.shape, Zc.dtype, Zc)
    bad = _k._softmax_rows(_row_blocks(Zc.shape[0]), Zc, target, np.empty(0, Zc.dtype), copy, log)
    _raise_bad_logits(bad)
    return _finish_out(target, out)


def cross_entropy(
    Z,
    y,
    *,
    sample_weight=None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
):
    """Cross-entropy of logits ``Z`` (n_samples, n_classes) against integer labels ``y``.

    Returns a Python float for ``reduction="mean"`` or ``"sum"``, and the weighted per-sample losses
    (n_samples,) in Z's dtype for ``"none"``.
    """
    Zc = _check_logits(Z)
    y = _check_labels(y, *Zc.shape)
    eps = _check_scalar("label_smoothing", label_smoothing, 0.0, 1.0)
    reduction = _check_reduction(reduction)
    w, denom = _check_weights(sample_weight, Zc.shape[0], reduction)
    losses = np.empty(Zc.shape[0], dtype=np.float64)
    _raise_bad_logits(_k._xent_rows(_row_blocks(len(y)), Zc, y, w, eps, losses))
    if reduction == "none":
        return losses.astype(Zc.dtype, copy=False)
    return float(losses.sum()) / denom


def cross_entropy_grad(
    Z,
    y,
    *,
    sample_weight=None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    out: np.ndarray | None = None,
):
    """The reduced cross-entropy and its gradient with respect to the logits, in one pass.

    Returns ``(loss, dZ)`` with ``dZ = (softmax(Z) - Y) * w / sum(w)`` for ``reduction="mean"``
    (without the division for ``"sum"``), Y the (smoothed) one-hot targets. ``out`` may be ``Z``.
    """
    Zc = _check_logits(Z)
    y = _check_labels(y, *Zc.shape)
    eps = _check_scalar("label_smoothing", label_smoothing, 0.0, 1.0)
    reduction = _check_reduction(reduction, ("mean", "sum"))
    w, denom = _check_weights(sample_weight, Zc.shape[0], reduction)
    target, copy = _check_out(out, Zc.shape, Zc.dtype, Zc)
    N = Zc.shape[0]
    losses = np.empty(N, dtype=np.float64)
    no_db = np.empty((_row_blocks(N), 0), dtype=np.float64)
    bad = _k._xent_grad_rows(
        no_db.shape[0], Zc, target, np.empty(0, Zc.dtype), copy, y, w, eps, 1.0 / denom, losses,
        no_db,
    )
    _raise_bad_logits(bad)
    return float(losses.sum()) / denom, _finish_out(target, out)


# ------------------------------------------------------------------------------------------------
# The linear layer
# ------------------------------------------------------------------------------------------------


def linear_cross_entropy(
    X,
    W,
    b,
    y,
    *,
    sample_weight=None,
    label_smoothing: float = 0.0,
    alpha: float = 0.0,
    reduction: str = "mean",
    return_dX: bool = False,
):
    """Loss and gradients of ``cross_entropy(X W^T + b, y)`` without ever holding the logits.

    Parameters
    ----------
    X : array-like (n_samples, n_features)
    W : array-like (n_classes, n_features)
    b : array-like (n_classes,) or None
    y : integer array (n_samples,) of class codes in [0, n_classes)
    sample_weight : array-like (n_samples,) or None
    label_smoothing : float in [0, 1]
    alpha : float >= 0
        L2 penalty: adds ``alpha/2 ||W||_F^2`` to the loss and ``alpha W`` to dW (b is not penalized).
    reduction : {"mean", "sum"}
    return_dX : bool
        Also return the gradient with respect to X (for a layer inside a network).

    Returns
    -------
    loss : float
    dW : ndarray (n_classes, n_features)
    db : ndarray (n_classes,) or None when b is None
    dX : ndarray (n_samples, n_features), only with ``return_dX=True``

    Extra memory is O(tile x n_classes + chunks x n_classes x n_features), independent of
    n_samples (beyond the (n_samples,) float64 per-sample losses).
    """
    X, W, b, dtype = _check_linear(X, W, b)
    N = X.shape[0]
    y = _check_labels(y, N, W.shape[0])
    eps = _check_scalar("label_smoothing", label_smoothing, 0.0, 1.0)
    alpha = _check_scalar("alpha", alpha, 0.0)
    reduction = _check_reduction(reduction, ("mean", "sum"))
    w, denom = _check_weights(sample_weight, N, reduction)
    return _linear_cross_entropy_checked(X, W, b, y, w, eps, alpha, denom, return_dX)


_ALL_ROWS = _readonly(np.empty(0, dtype=np.intp))


def _linear_cross_entropy_checked(X, W, b, y, w, eps, alpha, denom, return_dX=False, rows=_ALL_ROWS):
    """`linear_cross_entropy` on arguments already validated and converted (as the solvers hold
    them: read-only C-contiguous views, intp labels, float64 weights or an empty array), for the
    problem made of the rows `rows` of X (a mini-batch; empty for all of X) with labels and weights
    given per row of that problem. Small K reads the rows in place; larger K gathers them first."""
    if rows.shape[0] and W.shape[0] > SMALL_K_MAX:
        X, rows = _readonly(np.take(X, rows, axis=0)), _ALL_ROWS
    N = rows.shape[0] if rows.shape[0] else X.shape[0]
    dX = np.empty((N, X.shape[1]) if return_dX else (0, 0), dtype=X.dtype)
    losses = np.empty(N, dtype=np.float64)
    args = (X, W, b, y, w, eps, 1.0 / denom, losses, dX)
    if W.shape[0] <= SMALL_K_MAX:
        dW, db, bad = _linear_small_k(*args, rows)
    else:
        dW, db, bad = _linear_tiled(*args)
    loss = float(losses.sum()) / denom
    # Finite X, W, b give finite gradients; anything else means non-finite parameters or data.
    if bad or np.isnan(loss) or not np.isfinite(dW).all():
        _raise_nonfinite_params(X, W, b)
    if alpha:
        loss += 0.5 * alpha * _k._sum_squares(W)
        _k._axpy(alpha, W, dW)
    return (loss, dW, db, dX) if return_dX else (loss, dW, db)


def _small_k_chunks(N: int, K: int, d: int, itemsize: int) -> int:
    """How many row chunks (each with its own partial dW) the small-K kernel uses."""
    by_rows = _k.n_blocks(N, SMALL_K_CHUNK_ROWS)
    by_memory = SMALL_K_PARTIALS_BYTES // max(1, K * d * itemsize)
    return max(1, min(SMALL_K_CHUNKS, by_rows, by_memory))


def _linear_small_k(X, W, b, y, w, eps, scale, losses, dX, rows):
    N = losses.shape[0]
    K, d = W.shape
    C = _small_k_chunks(N, K, d, X.dtype.itemsize)
    dW_parts = np.empty((C, K, d), dtype=X.dtype)
    db_parts = np.empty((C, K if b is not None else 0), dtype=np.float64)
    bias = b if b is not None else np.empty(0, X.dtype)
    bad = _k._linear_xent_small(
        C, X, rows, W, bias, y, w, eps, scale, losses, dW_parts, db_parts, dX
    )
    if C == 1:
        dW = dW_parts[0]
    else:
        dW = np.add.reduce(dW_parts, axis=0, dtype=np.float64).astype(X.dtype)
    db = None if b is None else db_parts.sum(axis=0).astype(X.dtype)
    return dW, db, bad


def _tile_rows(K: int, itemsize: int) -> int:
    rows = TILE_BYTES // (K * itemsize)
    return int(min(TILE_ROWS_MAX, max(TILE_ROWS_MIN, rows)))


def _linear_tiled(X, W, b, y, w, eps, scale, losses, dX):
    """Tiles of rows: Z = X_t W^T (BLAS), fused row pass in place, dW += G^T X_t (BLAS, beta=1).

    All three products use scipy's BLAS (the one Numba links against), so one OpenBLAS thread pool
    serves the loop; `_row_pass_tasks` decides whether the row pass between them runs in parallel.
    """
    N, d = X.shape
    K = W.shape[0]
    gemm = _blas.get_blas_funcs("gemm", dtype=X.dtype)
    T = _tile_rows(K, X.dtype.itemsize)
    Zbuf = np.empty((min(T, max(N, 1)), K), dtype=X.dtype)
    dW = np.zeros((K, d), dtype=X.dtype)
    db = np.zeros(K, dtype=np.float64) if b is not None else None
    db_parts = np.zeros((_row_blocks(Zbuf.shape[0]), K if b is not None else 0), dtype=np.float64)
    bias = b if b is not None else np.empty(0, X.dtype)
    bad = 0
    for lo in range(0, N, T):
        hi = min(N, lo + T)
        Xt = X[lo:hi]
        Zt = Zbuf[: hi - lo]
        # Fortran view: Z_t^T (K x n) = W (K x d) @ X_t^T (d x n)
        if d:
            gemm(1.0, W.T, Xt.T, c=Zt.T, trans_a=1, overwrite_c=1)
        else:  # no features: BLAS rejects empty operands, and the logits are just b
            Zt.fill(0)
        if db is not None:
            db_parts[:] = 0.0
        bad += _k._xent_grad_rows(
            _row_pass_tasks(hi - lo, K),
            _readonly(Zt), Zt, bias, False, y[lo:hi], w[lo:hi] if w.size else w, eps, scale,
            losses[lo:hi], db_parts,
        )
        if db is not None:
            db += db_parts.sum(axis=0)
        if not d:
            continue
        # dW^T (d x K) += X_t^T (d x n) @ G_t (n x K)
        gemm(1.0, Xt.T, Zt.T, beta=1.0, c=dW.T, trans_b=1, overwrite_c=1)
        if dX.shape[0]:
            # dX_t^T (d x n) = W^T (d x K) @ G_t^T (K x n)
            gemm(1.0, W.T, Zt.T, c=dX[lo:hi].T, overwrite_c=1)
    return dW, (None if db is None else db.astype(X.dtype)), bad


def linear_softmax(X, W, b) -> np.ndarray:
    """Class probabilities of a linear model, ``softmax(X W^T + b)`` (predict_proba).

    Returns an (n_samples, n_classes) array in the common dtype of the inputs.
    """
    X, W, b, dtype = _check_linear(X, W, b)
    N = X.shape[0]
    K = W.shape[0]
    out = np.empty((N, K), dtype=dtype)
    bias = b if b is not None else np.empty(0, dtype)
    if K <= SMALL_K_MAX:
        bad = _k._linear_softmax_small(_row_blocks(N), X, W, bias, out)
    else:
        if N and X.shape[1]:
            gemm = _blas.get_blas_funcs("gemm", dtype=dtype)
            gemm(1.0, W.T, X.T, c=out.T, trans_a=1, overwrite_c=1)
        else:
            out.fill(0)
        bad = _k._softmax_rows(_row_pass_tasks(N, K), _readonly(out), out, bias, False, False)
    if bad:
        _raise_nonfinite_params(X, W, b)
    return out
