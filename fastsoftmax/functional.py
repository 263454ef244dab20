"""The public functions of fastsoftmax: dtype and layout, allocation, tiling, kernel calls.

Input checks live in :mod:`fastsoftmax._validation`.

Conventions (shared by every function here and by ``reference``):

* ``X``: ``(n_samples, n_features)``; ``W``: ``(n_classes, n_features)`` (scikit-learn's ``coef_``,
  torch's ``Linear.weight``); ``b``: ``(n_classes,)`` or None; ``Z``: logits ``(n_samples, n_classes)``.
* ``y``: integer class codes in ``[0, n_classes)``, shape ``(n_samples,)``.
* ``sample_weight``: ``(n_samples,)``, finite and non-negative, or None (all ones). Any scale is
  legal: the mean is computed as for the same weights rescaled to order one (5e-324 and 1e308
  included); a ``"sum"`` or ``"none"`` result beyond the float range raises ``ValueError``.
* dtype: float32 inputs give float32 results; anything else is converted to float64. The loss is a
  Python float accumulated in float64 whatever the dtype.
* ``reduction="mean"`` divides by ``sum(sample_weight)`` (n_samples when None), ``"sum"`` does not,
  ``"none"`` (``cross_entropy`` only) returns per-sample weighted losses. Gradients are those of the
  reduced loss.
* ``label_smoothing=eps`` follows PyTorch: ``(1 - eps) * nll + eps * mean_k(-log p_k)``.

No function modifies its inputs. Bad input raises ``ValueError`` or ``TypeError`` naming the argument.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from fastsoftmax import _kernels as _k
from fastsoftmax import _sparse
from fastsoftmax._threads import single_threaded_blas
from fastsoftmax._validation import (
    add_l2,
    as_float,
    check_direction,
    check_grad_range,
    check_labels,
    check_linear,
    check_linear_options,
    check_logits,
    check_out,
    check_per_sample,
    check_reduction,
    check_scalar,
    check_total,
    check_weights,
    finish_out,
    float_dtype,
    is_sparse,
    raise_bad_logits,
    raise_nonfinite_params,
    readonly,
    reject_sparse,
)

__all__ = [
    "cross_entropy",
    "cross_entropy_grad",
    "linear_cross_entropy",
    "linear_cross_entropy_hvp",
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
# The BLAS path's cut (`_tile_plan`): sub-tile rows (from TILE_ITEMS sub-tiles per tile), chains.
TILE_ITEMS = 8
SUB_ROWS_MIN = 32
SUB_ROWS_MAX = 512
SUB_ROWS_ALIGN = 16
COL_BLOCK_MIN = 64
# Runs of consecutive sub-tiles with a K x d partial each: at most CHAINS, and the partials other
# than dW itself within SLOT_BYTES, below glibc's largest mmap threshold (32 MB), so that a loop of
# calls reuses their pages instead of faulting in fresh ones at every call (docs/design.md,
# "One thread pool"). Where not even two chains fit, dW is cut into blocks per tile instead.
CHAINS = 16
SLOT_BYTES = 30 * 2**20
# Row chunks of the small-K kernel: at most this many (each holds a K x d partial dW), fixed by the
# problem size only so that results do not depend on the thread count.
SMALL_K_CHUNKS = 16
SMALL_K_CHUNK_ROWS = 128  # a 256-row SGD batch still uses two cores
SMALL_K_PARTIALS_BYTES = 64 * 2**20
# Below this many multiply-adds per product (N x K x d) the small-K kernel runs its serial twin
# (same chunks, same bits): a small job (the command line's default, 1437 x 64 x 10, 0.92e6) then
# never compiles the parallel twin, the slower of the two to compile, at the price of about 0.1 ms
# a call; a 256-row SGD batch of 784 features and 10 classes (2.0e6) still uses every core
# (docs/design.md, "Measured facts").
SMALL_K_PARALLEL_MIN_WORK = 2**20


def _row_blocks(n_rows: int) -> int:
    """Number of prange iterations (blocks of ROW_BLOCK rows) of the row kernels."""
    return _k.n_blocks(n_rows, _k.ROW_BLOCK)


def _by_width(n_classes: int, flat, rows):
    """The row kernel pair for n_classes: `flat` (exps over a block's rows as one flat array) up
    to FLAT_K_MAX classes, else `rows` (the split of the one kernel that held both). Kernels of
    their own, so that a call compiles only the one it runs."""
    return flat if n_classes <= _k.FLAT_K_MAX else rows


# ------------------------------------------------------------------------------------------------
# Row functions on given logits
# ------------------------------------------------------------------------------------------------


def softmax(Z, *, out: np.ndarray | None = None) -> np.ndarray:
    """Row-wise softmax ``exp(Z - max) / sum(exp(Z - max))``.

    Parameters
    ----------
    Z : array-like of shape (n_samples, n_classes)
        Logits, n_classes >= 1; -inf entries (masked classes) get probability 0.
    out : ndarray of shape (n_samples, n_classes), optional
        Where to write the result, of the result's dtype; may be ``Z`` itself (an in-place
        softmax) but must not otherwise overlap ``Z``. When the call raises for bad rows of
        ``Z``, ``out`` (``Z`` itself with ``out=Z``) may already hold the other rows' results:
        a C-contiguous one is checked in the pass that writes it.

    Returns
    -------
    P : ndarray of shape (n_samples, n_classes)
        float32 for float32 ``Z``, else float64; ``out`` when given. Rows sum to one.

    Raises
    ------
    ValueError
        ``Z`` is not 2-D or has no column; a row holds NaN or +inf, or is entirely -inf;
        ``out`` has the wrong shape, is read-only or partly overlaps ``Z``.
    TypeError
        ``Z`` does not hold real numbers; ``out`` is not an ndarray of the result's dtype.

    Notes
    -----
    The row maximum is subtracted before exponentiating, so logits of any finite magnitude are
    safe; row sums are accumulated in float64 whatever the dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import softmax
    >>> softmax(np.array([[0.0, 0.0], [0.0, -np.inf]]))
    array([[0.5, 0.5],
           [1. , 0. ]])
    """
    return _row_softmax(Z, out, log=False)


def log_softmax(Z, *, out: np.ndarray | None = None) -> np.ndarray:
    """Row-wise log-softmax ``Z - max - log(sum(exp(Z - max)))``.

    Parameters
    ----------
    Z : array-like of shape (n_samples, n_classes)
        Logits, n_classes >= 1; -inf entries (masked classes) give -inf.
    out : ndarray of shape (n_samples, n_classes), optional
        Where to write the result, of the result's dtype; may be ``Z`` itself but must not
        otherwise overlap it. When the call raises for bad rows of ``Z``, ``out`` (``Z`` itself
        with ``out=Z``) may already hold the other rows' results: a C-contiguous one is checked
        in the pass that writes it.

    Returns
    -------
    L : ndarray of shape (n_samples, n_classes)
        float32 for float32 ``Z``, else float64; ``out`` when given. ``exp(L)`` rows sum to one.

    Raises
    ------
    ValueError
        As :func:`softmax`: a bad shape, a row with NaN or +inf or entirely -inf, a bad ``out``.
    TypeError
        ``Z`` does not hold real numbers; ``out`` is not an ndarray of the result's dtype.

    Notes
    -----
    Computed as ``(Z - max) - log(s)`` in this order, which keeps the small differences of rows
    with huge equal logits exact (``log(softmax(Z))`` would lose them, and underflow to -inf).

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import log_softmax
    >>> log_softmax(np.array([[1e4, 1e4]]))
    array([[-0.69314718, -0.69314718]])
    """
    return _row_softmax(Z, out, log=True)


def _row_softmax(Z, out, log: bool) -> np.ndarray:
    Zc = check_logits(Z)
    target, copy = check_out(out, Zc.shape, Zc.dtype, Zc)
    if log:
        kernel = _by_width(Zc.shape[1], _k._log_softmax_rows_flat, _k._log_softmax_rows)
    else:
        kernel = _by_width(Zc.shape[1], _k._softmax_rows_flat, _k._softmax_rows)
    bad = kernel(_row_blocks(Zc.shape[0]), Zc, target, np.empty(0, Zc.dtype), copy)
    raise_bad_logits(bad)
    return finish_out(target, out)


def cross_entropy(
    Z,
    y,
    *,
    sample_weight=None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
):
    """Weighted cross-entropy of logits ``Z`` against integer labels ``y``.

    The loss of sample i is ``l_i = log(sum_k exp(Z[i, k])) - Z[i, y_i]``, or with label smoothing
    ``(1 - eps) * l_i + eps * mean_k(-log p_ik)``; it is weighted by ``sample_weight[i]`` and
    reduced over the samples.

    Parameters
    ----------
    Z : array-like of shape (n_samples, n_classes)
        Logits, n_classes >= 1; -inf entries are masked classes.
    y : array-like of int, shape (n_samples,)
        Class codes in ``[0, n_classes)``.
    sample_weight : array-like of shape (n_samples,), optional
        Finite non-negative weights; None weighs every sample 1.
    label_smoothing : float in [0, 1], default 0
        PyTorch's label smoothing ``eps``.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"`` divides the weighted sum by ``sum(sample_weight)`` (n_samples when None),
        ``"sum"`` does not, ``"none"`` returns the weighted per-sample losses.

    Returns
    -------
    loss : float or ndarray of shape (n_samples,)
        A Python float (accumulated in float64) for ``"mean"`` and ``"sum"``; for ``"none"`` an
        array in Z's dtype (float32 for float32 Z, else float64).

    Raises
    ------
    ValueError
        Bad shapes; a label outside ``[0, n_classes)``; negative or non-finite weights; a mean
        over no samples or zero total weight; ``label_smoothing`` outside [0, 1]; an unknown
        reduction; a row of Z with NaN or +inf or entirely -inf; weights so large that the
        ``"sum"`` (or a ``"none"`` entry) exceeds the floating-point range.
    TypeError
        Non-numeric ``Z`` or ``sample_weight``, non-integer ``y``, non-real ``label_smoothing``.

    Notes
    -----
    A masked label (``Z[i, y_i] = -inf``) gives an infinite loss unless its weight is 0. The mean
    is invariant to the scale of ``sample_weight``: weights as small as 5e-324 or as large as
    1e308 give the result of the same weights rescaled to order one.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import cross_entropy
    >>> Z = np.array([[2.0, 0.0], [0.0, 0.0]])
    >>> round(cross_entropy(Z, [0, 1]), 6)
    0.410038
    >>> cross_entropy(Z, [0, 1], reduction="none")
    array([0.12692801, 0.69314718])
    """
    Zc = check_logits(Z)
    y = check_labels(y, *Zc.shape)
    eps = check_scalar("label_smoothing", label_smoothing, 0.0, 1.0)
    reduction = check_reduction(reduction)
    w, denom = check_weights(sample_weight, Zc.shape[0], reduction)
    losses = np.empty(Zc.shape[0], dtype=np.float64)
    kernel = _by_width(Zc.shape[1], _k._xent_rows_flat, _k._xent_rows)
    raise_bad_logits(kernel(_row_blocks(len(y)), Zc, y, w, eps, losses))
    if reduction == "none":
        return check_per_sample(losses, denom, Zc.dtype, sample_weight is not None)
    return check_total(float(losses.sum()), denom)


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

    Parameters
    ----------
    Z : array-like of shape (n_samples, n_classes)
        Logits, n_classes >= 1; -inf entries are masked classes.
    y : array-like of int, shape (n_samples,)
        Class codes in ``[0, n_classes)``.
    sample_weight : array-like of shape (n_samples,), optional
        Finite non-negative weights; None weighs every sample 1.
    label_smoothing : float in [0, 1], default 0
        PyTorch's label smoothing ``eps``.
    reduction : {"mean", "sum"}, default "mean"
        As :func:`cross_entropy`; the gradient is that of the reduced loss.
    out : ndarray of shape (n_samples, n_classes), optional
        Where to write dZ, of its dtype; may be ``Z`` itself (overwritten by its gradient) but
        must not otherwise overlap ``Z``, nor overlap ``y`` or ``sample_weight``. When the call
        raises for bad rows of ``Z``, ``out`` (``Z`` itself with ``out=Z``) may already hold the
        other rows' gradients: a C-contiguous one is checked in the pass that writes it (with
        ``"sum"`` and weights beyond 2**64, in a read-only pass before).

    Returns
    -------
    loss : float
        The loss :func:`cross_entropy` gives for the same arguments.
    dZ : ndarray of shape (n_samples, n_classes)
        ``(softmax(Z) - T) * w[:, None] / sum(w)`` for ``"mean"`` (without the division for
        ``"sum"``), T the one-hot targets smoothed as ``(1 - eps) * onehot + eps / n_classes``;
        float32 for float32 Z, else float64; ``out`` when given.

    Raises
    ------
    ValueError
        As :func:`cross_entropy` (``reduction="none"`` is refused); a bad ``out``, or one that
        overlaps an input; with ``"sum"``, weights beyond the dtype's range.
    TypeError
        As :func:`cross_entropy`; ``out`` not an ndarray of the result's dtype.

    Notes
    -----
    dZ is exactly 0 where the prediction is certain and right (and everywhere when n_classes
    is 1); a masked label gives an infinite loss but a finite gradient.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import cross_entropy_grad
    >>> loss, dZ = cross_entropy_grad(np.zeros((2, 2)), [0, 1])
    >>> round(loss, 6)
    0.693147
    >>> dZ
    array([[-0.25,  0.25],
           [ 0.25, -0.25]])
    """
    Zc = check_logits(Z)
    labels_given = y
    y = check_labels(y, *Zc.shape)
    eps = check_scalar("label_smoothing", label_smoothing, 0.0, 1.0)
    reduction = check_reduction(reduction, ("mean", "sum"))
    w, denom = check_weights(sample_weight, Zc.shape[0], reduction)
    check_grad_range(w, denom, Zc.dtype, summed=False)
    target, copy = check_out(out, Zc.shape, Zc.dtype, Zc, y=labels_given,
                             sample_weight=sample_weight)
    N = Zc.shape[0]
    # Only "sum" with a denominator below 1 (weights beyond 2**WEIGHT_EXP, rescaled by
    # `check_weights`) can make the reduced loss overflow from finite per-sample losses. Then the
    # loss is computed and checked first, by the read-only pass of `cross_entropy`: raised after
    # the gradient pass, the error came with `out` (Z itself, for out=Z) already overwritten.
    # Elsewhere no extra pass: the loss comes with the gradient.
    first = reduction == "sum" and denom < 1.0
    loss = _checked_loss_before_writing(Zc, y, w, eps, denom, np.empty(N)) if first else None
    no_db = np.empty((_row_blocks(N), 0), dtype=np.float64)
    kernel = _by_width(Zc.shape[1], _k._xent_grad_rows_flat, _k._xent_grad_rows)
    block_losses = np.empty(no_db.shape[0], dtype=np.float64)  # not N per-sample losses
    bad = kernel(
        no_db.shape[0], Zc, target, np.empty(0, Zc.dtype), copy, y, w, eps, 1.0 / denom,
        block_losses, no_db,
    )
    raise_bad_logits(bad)
    if loss is None:
        loss = check_total(float(block_losses.sum()), denom)
    return loss, finish_out(target, out)


def _checked_loss_before_writing(Zc, y, w, eps, denom, losses) -> float:
    """The reduced loss of `cross_entropy` (per-sample losses in `losses`), or its ValueError
    (NaN rows, overflow of the weighted sum), before anything is written."""
    kernel = _by_width(Zc.shape[1], _k._xent_rows_flat, _k._xent_rows)
    raise_bad_logits(kernel(_row_blocks(len(y)), Zc, y, w, eps, losses))
    return check_total(float(losses.sum()), denom)


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
    X : array-like or scipy.sparse matrix or array of shape (n_samples, n_features)
        The data. Sparse X is used in CSR form (CSC, COO and other formats are converted once)
        through a fused CSR kernel; it is never modified or densified.
    W : array-like of shape (n_classes, n_features)
        Weights (scikit-learn's ``coef_``, torch's ``Linear.weight``), n_classes >= 1.
    b : array-like of shape (n_classes,) or None
        Intercepts; None for none.
    y : array-like of int, shape (n_samples,)
        Class codes in ``[0, n_classes)``.
    sample_weight : array-like of shape (n_samples,), optional
        Finite non-negative weights; None weighs every sample 1.
    label_smoothing : float in [0, 1], default 0
        PyTorch's label smoothing ``eps``.
    alpha : float >= 0, default 0
        L2 penalty: adds ``alpha/2 ||W||_F^2`` to the loss and ``alpha W`` to dW (b is not
        penalized).
    reduction : {"mean", "sum"}, default "mean"
        As :func:`cross_entropy`; the gradients are those of the reduced loss.
    return_dX : bool, default False
        Also return the gradient with respect to X (for a layer inside a network). Refused for
        sparse X (ValueError): dX would be a dense (n_samples, n_features) array.

    Returns
    -------
    loss : float
        Accumulated in float64, penalty included.
    dW : ndarray of shape (n_classes, n_features)
    db : ndarray of shape (n_classes,), or None when b is None
    dX : ndarray of shape (n_samples, n_features), only with ``return_dX=True``
        The arrays are float32 when X, W and b are all float32, else float64.

    Raises
    ------
    ValueError
        Bad shapes (W's features must match X's, b's length W's classes); a label out of range;
        bad weights, ``label_smoothing`` or ``alpha``; an unknown reduction; X, W or b holding NaN
        or infinity (the message names which); finite inputs whose logits ``X W^T + b`` overflow
        (the message gives max |X| and max |W|); with ``"sum"``, weights beyond the dtype's
        range.
    TypeError
        Non-numeric arrays, non-integer ``y``, non-real scalars.

    Notes
    -----
    Extra memory is O(tile x n_classes + chunks x n_classes x n_features), independent of
    n_samples (beyond the (n_samples,) float64 per-sample losses). Up to 32 classes a fused kernel
    reads each row of X once for both ``X W^T`` and ``G^T X``; above, tiles of rows go through
    BLAS. Results do not depend on the number of threads.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import linear_cross_entropy
    >>> X = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> loss, dW, db = linear_cross_entropy(X, np.zeros((2, 2)), np.zeros(2), [0, 1])
    >>> round(loss, 6)
    0.693147
    >>> dW
    array([[-0.25,  0.25],
           [ 0.25, -0.25]])
    >>> db
    array([0., 0.])
    """
    reject_sparse(y=y, sample_weight=sample_weight)
    if is_sparse(X):
        return _sparse.linear_cross_entropy(X, W, b, y, sample_weight, label_smoothing, alpha,
                                            reduction, return_dX)
    reject_sparse(W=W, b=b)
    X, W, b, dtype = check_linear(X, W, b)
    y, eps, alpha, w, denom = check_linear_options(
        y, X.shape[0], W.shape[0], dtype, sample_weight=sample_weight,
        label_smoothing=label_smoothing, alpha=alpha, reduction=reduction,
    )
    return _linear_cross_entropy_checked(X, W, b, y, w, eps, alpha, denom, return_dX)


_ALL_ROWS = readonly(np.empty(0, dtype=np.intp))


def _no_bias(dtype) -> np.ndarray:
    """The kernels' empty bias: read-only as a given (validated) b is, so that calls with and
    without b share one compiled specialization per dtype."""
    return readonly(np.empty(0, dtype))


def _linear_cross_entropy_checked(X, W, b, y, w, eps, alpha, denom, return_dX=False, rows=_ALL_ROWS,
                                  serial=False):
    """`linear_cross_entropy` on arguments already validated and converted (as the solvers hold
    them: read-only C-contiguous views, intp labels, float64 weights or an empty array), for the
    problem made of the rows `rows` of X (a mini-batch; empty for all of X) with labels and weights
    given per row of that problem. Small K reads the rows in place; larger K gathers them first.
    `serial` runs the small-K kernel's serial twin (same bits) whatever Numba's thread count."""
    if rows.shape[0] and W.shape[0] > SMALL_K_MAX:
        X, rows = readonly(np.take(X, rows, axis=0)), _ALL_ROWS
    N = rows.shape[0] if rows.shape[0] else X.shape[0]
    dX = np.empty((N, X.shape[1]) if return_dX else (0, 0), dtype=X.dtype)
    losses = np.empty(N, dtype=np.float64)
    args = (X, W, b, y, w, eps, 1.0 / denom, losses, dX)
    if W.shape[0] <= SMALL_K_MAX:
        dW, db, bad = _linear_small_k(*args, rows, serial)
    else:
        dW, db, bad = _linear_tiled(*args)
    total = float(losses.sum())
    # Finite X, W, b with representable logits give finite results; otherwise name the culprit.
    if bad or np.isnan(total) or not np.isfinite(dW).all():
        raise_nonfinite_params(X, W, b, logits=bool(bad) or bool(np.isnan(total)))
    loss = check_total(total, denom)
    if alpha:
        loss = add_l2(alpha, W, dW, loss)
    return (loss, dW, db, dX) if return_dX else (loss, dW, db)


def _small_k_chunks(N: int, K: int, d: int, itemsize: int) -> int:
    """How many row chunks (each with its own partial dW) the small-K kernel uses."""
    by_rows = _k.n_blocks(N, SMALL_K_CHUNK_ROWS)
    by_memory = SMALL_K_PARTIALS_BYTES // max(1, K * d * itemsize)
    return max(1, min(SMALL_K_CHUNKS, by_rows, by_memory))


def _linear_small_k(X, W, b, y, w, eps, scale, losses, dX, rows, serial=False):
    N = losses.shape[0]
    K, d = W.shape
    C = _small_k_chunks(N, K, d, X.dtype.itemsize)
    dW_parts = np.empty((C, K, d), dtype=X.dtype)
    db_parts = np.empty((C, K if b is not None else 0), dtype=np.float64)
    bias = b if b is not None else _no_bias(X.dtype)
    tasks = C if N * K * d >= SMALL_K_PARALLEL_MIN_WORK and not serial else 1
    bad = _k._linear_xent_small(
        tasks, X, rows, W, bias, y, w, eps, scale, losses, dW_parts, db_parts, dX
    )
    if C == 1:
        dW = dW_parts[0]
    elif C == 2:
        # The same bits as the float64 sum below: two float32 values added in float64, then
        # rounded to float32, give their float32 sum (53 >= 2 * 24 + 2 bits make the double
        # rounding innocuous); float64 data is one addition either way. A fifth of the time.
        dW = np.add(dW_parts[0], dW_parts[1])
    else:
        dW = np.add.reduce(dW_parts, axis=0, dtype=np.float64).astype(X.dtype)
    db = None if b is None else db_parts.sum(axis=0).astype(X.dtype)
    return dW, db, bad


class _TilePlan(NamedTuple):
    """How the BLAS path cuts a problem, from its size only (never the thread count)."""

    rows: int  # without chains: rows of a tile (its logits stay in a scratch buffer of rows x K)
    sub_rows: int  # rows of a sub-tile: one GEMM of each product
    chains: int  # runs of consecutive sub-tiles, each one item with a K x d partial of dW (the
    # first one dW itself); 0: dW by blocks instead, per tile
    col_block: int  # without chains: classes or features of dW per parallel item
    by_class: bool  # without chains: dW cut into blocks of classes (K >= d) or of features
    class_block: int  # without chains: classes per block of a tile's logits (the loss)

    def n_tasks(self, N: int) -> int:
        """Parallel items (of the first tile without chains; 1: the serial twin runs)."""
        return self.chains or _k.n_blocks(min(N, self.rows), self.sub_rows)

    def scratch(self, K: int, d: int, dtype, workers: int, logit_cols: int):
        """The kernels' scratch arrays: logits (logit_cols columns: one block of sub-tile rows
        per worker with chains, a tile without), per-item db partials, the chains' partials."""
        items = self.chains or _k.n_blocks(self.rows, self.sub_rows)
        logit_rows = workers * self.sub_rows if self.chains else self.rows
        return (
            np.empty((logit_rows, logit_cols), dtype=dtype),
            np.empty((items, K), dtype=np.float64),
            np.empty((max(0, self.chains - 1), K, d), dtype=dtype),
        )


def _tile_plan(N: int, K: int, d: int, itemsize: int, n_logit_arrays: int = 1) -> _TilePlan:
    """Sub-tiles of SUB_ROWS_MIN..SUB_ROWS_MAX rows, a TILE_ITEMS-th of a tile of at most
    TILE_BYTES of logits (n_logit_arrays arrays of rows x K); up to CHAINS chains of consecutive
    sub-tiles while their partials fit in SLOT_BYTES, else dW cut along its longer side into
    TILE_ITEMS blocks per tile (docs/design.md, "Threading and determinism")."""
    rows = TILE_BYTES // (n_logit_arrays * K * itemsize)
    rows = int(min(TILE_ROWS_MAX, max(TILE_ROWS_MIN, rows), max(N, 1)))
    sub = _round_up(-(-rows // TILE_ITEMS), SUB_ROWS_ALIGN)
    sub = int(min(SUB_ROWS_MAX, max(SUB_ROWS_MIN, sub)))
    if rows > sub:
        rows -= rows % sub  # whole sub-tiles
    n_sub = _k.n_blocks(N, sub)
    chains = int(min(CHAINS, n_sub, 1 + SLOT_BYTES // max(1, K * d * itemsize)))
    if chains < 2 and n_sub > 1:
        chains = 0
    by_class = K >= d
    block = _round_up(-(-(K if by_class else d) // TILE_ITEMS), SUB_ROWS_ALIGN)
    class_block = _round_up(-(-K // TILE_ITEMS), SUB_ROWS_ALIGN)
    return _TilePlan(rows, sub, chains, int(max(COL_BLOCK_MIN, block)), by_class,
                     int(max(COL_BLOCK_MIN, class_block)))


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _linear_tiled(X, W, b, y, w, eps, scale, losses, dX):
    """The BLAS path of the loss (`_k._linear_xent_tiled`): per sub-tile, Z = X_s W^T, the fused
    row pass, dX_s = G_s W and G_s^T X_s into its chain's partial (or dW += G^T X_t by blocks per
    tile), with every GEMM single-threaded inside Numba's one parallel region."""
    N, d = X.shape
    K = W.shape[0]
    plan = _tile_plan(N, K, d, X.dtype.itemsize)
    workers = numba.get_num_threads()
    Z, db_parts, slots = plan.scratch(K, d, X.dtype, workers, K)
    dW = np.zeros((K, d), dtype=X.dtype)
    db = np.zeros(K if b is not None else 0, dtype=np.float64)
    bias = b if b is not None else _no_bias(X.dtype)
    with single_threaded_blas():
        bad = _k._linear_xent_tiled(
            plan.n_tasks(N), X, W, bias, y, w, eps, scale, losses, dW, db, dX, Z,
            db_parts[:, :db.shape[0]], slots, plan.chains, plan.rows, plan.sub_rows,
            plan.col_block, plan.by_class, plan.class_block, workers,
        )
    return dW, (None if b is None else db.astype(X.dtype)), bad


def linear_softmax(X, W, b) -> np.ndarray:
    """Class probabilities of a linear model, ``softmax(X W^T + b)`` (predict_proba).

    Parameters
    ----------
    X : array-like or scipy.sparse matrix or array of shape (n_samples, n_features)
        The data; sparse X goes through a CSR kernel (other formats are converted once).
    W : array-like of shape (n_classes, n_features)
        Weights, n_classes >= 1.
    b : array-like of shape (n_classes,) or None
        Intercepts; None for none. A -inf intercept masks its class.

    Returns
    -------
    P : ndarray of shape (n_samples, n_classes)
        Rows sum to one; float32 when X, W and b are all float32, else float64.

    Raises
    ------
    ValueError
        Bad shapes; X, W or b holding NaN or infinity (the message names which); finite inputs
        whose logits ``X W^T + b`` overflow (the message gives max |X| and max |W|).
    TypeError
        Non-numeric arrays.

    Notes
    -----
    Up to 32 classes a fused kernel computes the logits and the softmax row by row without
    BLAS; above, one GEMM writes the logits into the output, which the softmax overwrites in
    place. No array other than the output is allocated.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import linear_softmax
    >>> linear_softmax(np.array([[1.0], [-1.0]]), np.array([[1.0], [-1.0]]), None)
    array([[0.88079708, 0.11920292],
           [0.11920292, 0.88079708]])
    """
    if is_sparse(X):
        return _sparse.linear_softmax(X, W, b)
    reject_sparse(W=W, b=b)
    X, W, b, dtype = check_linear(X, W, b)
    N = X.shape[0]
    K = W.shape[0]
    out = np.empty((N, K), dtype=dtype)
    bias = b if b is not None else _no_bias(dtype)
    if K <= SMALL_K_MAX:
        bad = _k._linear_softmax_small(_row_blocks(N), X, W, bias, out)
    else:
        sub = _tile_plan(N, K, X.shape[1], X.dtype.itemsize).sub_rows
        with single_threaded_blas():
            bad = _k._linear_softmax_tiled(_k.n_blocks(N, sub), X, W, bias, out, sub,
                                           numba.get_num_threads())
    if bad:
        raise_nonfinite_params(X, W, b)
    return out


# ------------------------------------------------------------------------------------------------
# The Hessian-vector product of the linear layer (second-order solvers)
# ------------------------------------------------------------------------------------------------


def linear_cross_entropy_hvp(
    X,
    W,
    b,
    y,
    S,
    s_b,
    *,
    sample_weight=None,
    label_smoothing: float = 0.0,
    alpha: float = 0.0,
    reduction: str = "mean",
):
    """The Hessian of the :func:`linear_cross_entropy` objective at ``(W, b)`` times ``(S, s_b)``.

    Per sample, with ``p = softmax(x W^T + b)`` and ``t = x S^T + s_b``, the Hessian of the
    cross-entropy in the logits applied to t is ``r = p * (t - p.t)``; then
    ``HS = sum_i w_i r_i^T x_i / normalizer + alpha S`` and ``Hs_b = sum_i w_i r_i / normalizer``.
    Without ever holding the logits, as the loss.

    Parameters
    ----------
    X : array-like or scipy.sparse matrix or array of shape (n_samples, n_features)
        The data. Sparse X is used in CSR form (other formats are converted once) through a
        fused CSR kernel, as in :func:`linear_cross_entropy`; it is never modified or densified.
    W : array-like of shape (n_classes, n_features)
        The point: weights, n_classes >= 1.
    b : array-like of shape (n_classes,) or None
        The point: intercepts; None for none.
    y : array-like of int, shape (n_samples,)
        Class codes in ``[0, n_classes)``: validated only, the Hessian does not depend on them.
    S : array-like of shape (n_classes, n_features)
        The direction for W; finite.
    s_b : array-like of shape (n_classes,) or None
        The direction for b; None exactly when b is None.
    sample_weight : array-like of shape (n_samples,), optional
        Finite non-negative weights; None weighs every sample 1.
    label_smoothing : float in [0, 1], default 0
        Validated only: the smoothed target is constant in the logits, so the Hessian is the
        same for every value.
    alpha : float >= 0, default 0
        L2 penalty of the objective: adds ``alpha S`` to HS (b is not penalized).
    reduction : {"mean", "sum"}, default "mean"
        As :func:`linear_cross_entropy`: the Hessian is that of the reduced loss.

    Returns
    -------
    HS : ndarray of shape (n_classes, n_features)
    Hs_b : ndarray of shape (n_classes,), or None when b is None
        float32 when X, W, b, S and s_b are all float32, else float64.

    Raises
    ------
    ValueError
        Bad shapes (S must have W's shape, s_b b's; s_b None exactly when b is None); S or s_b
        holding NaN or infinity; the errors of :func:`linear_cross_entropy` for X, W, b, y,
        ``sample_weight``, ``label_smoothing``, ``alpha`` and ``reduction``; finite inputs whose
        products overflow.
    TypeError
        Non-numeric arrays, non-integer ``y``, non-real scalars.

    Notes
    -----
    Up to 32 classes a fused kernel reads each group of rows of X once for ``X W^T``, ``X S^T``
    and ``R^T X``; above, sub-tiles of rows go through BLAS GEMMs around a fused row pass. Sparse
    X goes through one fused CSR kernel at every n_classes. Extra
    memory is O(tile x n_classes + chunks x n_classes x n_features), independent of n_samples;
    results do not depend on any thread count (Numba's, OpenMP's or BLAS's). ``p.t`` and the sums
    of exponentials are float64.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import linear_cross_entropy_hvp
    >>> X = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> S = np.array([[1.0, 0.0], [0.0, 0.0]])
    >>> HS, Hs_b = linear_cross_entropy_hvp(X, np.zeros((2, 2)), None, [0, 1], S, None)
    >>> HS
    array([[ 0.125,  0.   ],
           [-0.125,  0.   ]])
    >>> Hs_b is None
    True
    """
    reject_sparse(y=y, sample_weight=sample_weight)
    if is_sparse(X):
        return _sparse.linear_cross_entropy_hvp(X, W, b, y, S, s_b, sample_weight,
                                                label_smoothing, alpha, reduction)
    X, W, b, S, s_b = _check_hvp_arrays(X, W, b, S, s_b)
    N = X.shape[0]
    check_labels(y, N, W.shape[0])
    check_scalar("label_smoothing", label_smoothing, 0.0, 1.0)
    alpha = check_scalar("alpha", alpha, 0.0)
    reduction = check_reduction(reduction, ("mean", "sum"))
    w, denom = check_weights(sample_weight, N, reduction)
    check_grad_range(w, denom, X.dtype, summed=True)
    return _linear_hvp_checked(X, W, b, S, s_b, w, alpha, denom)


def _check_hvp_arrays(X, W, b, S, s_b):
    """X, W, b, S, s_b validated and converted to their common float dtype (float32 only when
    all five are float32)."""
    X, W, b, _ = check_linear(X, W, b)
    S, s_b = check_direction(S, s_b, W, b)
    dtype = float_dtype(X, W, b, S, s_b)
    X, W, S = as_float("X", X, dtype), as_float("W", W, dtype), as_float("S", S, dtype)
    if b is not None:
        b, s_b = as_float("b", b, dtype), as_float("s_b", s_b, dtype)
    return X, W, b, S, s_b


def _linear_hvp_checked(X, W, b, S, s_b, w, alpha, denom):
    """`linear_cross_entropy_hvp` on arguments already validated and converted (as the solvers
    hold them: read-only C-contiguous views of one dtype, float64 weights or an empty array)."""
    if W.shape[0] <= SMALL_K_MAX:
        HS, hsb, bad = _hvp_small_k(X, W, S, b, s_b, w, 1.0 / denom)
    else:
        HS, hsb, bad = _hvp_tiled(X, W, S, b, s_b, w, 1.0 / denom)
    if bad:
        raise_nonfinite_params(X, W, b)
    if not (np.isfinite(HS).all() and (hsb is None or np.isfinite(hsb).all())):
        raise ValueError(
            f"the Hessian-vector product overflowed {X.dtype} (max |X| = "
            f"{float(np.abs(X).max()):.3g}, max |S| = {float(np.abs(S).max()):.3g}): scale X or "
            "S down, or with reduction='sum' scale sample_weight down"
        )
    if alpha:
        add_l2(alpha, S, HS, name="S")
    return HS, (None if hsb is None else hsb.astype(X.dtype))


def _hvp_small_k(X, W, S, b, s_b, w, scale):
    N, d = X.shape
    K = W.shape[0]
    C = _small_k_chunks(N, K, d, X.dtype.itemsize)
    HS_parts = np.empty((C, K, d), dtype=X.dtype)
    hsb_parts = np.empty((C, K if b is not None else 0), dtype=np.float64)
    none = readonly(np.empty(0, X.dtype))
    bad = _k._linear_hvp_small(C, X, np.concatenate([W, S]), none if b is None else b,
                               none if b is None else s_b, w, scale, HS_parts, hsb_parts)
    if C == 1:
        HS = HS_parts[0]
    else:
        HS = np.add.reduce(HS_parts, axis=0, dtype=np.float64).astype(X.dtype)
    return HS, (None if b is None else hsb_parts.sum(axis=0)), bad


def _hvp_tiled(X, W, S, b, s_b, w, scale):
    """The BLAS path of the product (`_k._linear_hvp_tiled`): per sub-tile, [Z | T] = X_s [W; S]^T
    in one GEMM, the row pass turning T into R and R_s^T X_s into its chain's partial (or
    HS += R^T X_t by blocks per tile); the plan is the loss's for two logit arrays."""
    N, d = X.shape
    K = W.shape[0]
    plan = _tile_plan(N, K, d, X.dtype.itemsize, n_logit_arrays=2)
    workers = numba.get_num_threads()
    ZT, hsb_parts, slots = plan.scratch(K, d, X.dtype, workers, 2 * K)
    WS = np.concatenate([W, S])
    HS = np.zeros((K, d), dtype=X.dtype)
    hsb = np.zeros(K if b is not None else 0, dtype=np.float64)
    none = readonly(np.empty(0, X.dtype))
    with single_threaded_blas():
        bad = _k._linear_hvp_tiled(
            plan.n_tasks(N), X, WS, none if b is None else b, none if b is None else s_b,
            w, scale, HS, hsb, ZT, hsb_parts[:, :hsb.shape[0]], slots, plan.chains, plan.rows,
            plan.sub_rows, plan.col_block, plan.by_class, plan.class_block, workers,
        )
    return HS, (None if b is None else hsb), bad
