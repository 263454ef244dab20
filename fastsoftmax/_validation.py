"""Input checks and conversions of the functional API, shared with the solvers.

Every function here either returns arrays in the form the kernels take (C-contiguous, read-only,
float32 or float64, ``intp`` labels) or raises ``ValueError`` / ``TypeError`` naming the argument.
No scikit-learn here: ``import fastsoftmax`` stays free of it, and ``sklearn.utils.validation.
check_scalar`` accepts NaN and infinity, which these checks reject.

Ownership: arrays the kernels *index with* (the labels) are always copied before they are checked,
so a caller's thread writing into ``y`` during a call cannot turn checked labels into out-of-range
indices; sample weights are copied too, so what was checked is what is used.
"""

from __future__ import annotations

import numbers
import sys
from typing import NamedTuple

import numpy as np

from fastsoftmax import _kernels as _k
from fastsoftmax import _kernels_sparse as _ks
from fastsoftmax._kernels import n_blocks

REDUCTIONS = ("mean", "sum", "none")

# Sample weights whose largest entry lies in [2**-WEIGHT_EXP, 2**WEIGHT_EXP] are used as given;
# outside it they are rescaled by a power of two first (see check_weights).
WEIGHT_EXP = 64


def float_dtype(*arrays) -> np.dtype:
    """float32 when every given array is float32, float64 otherwise."""
    present = [a for a in arrays if a is not None]
    if present and all(a.dtype == np.float32 for a in present):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def as_numeric(name: str, a, ndim: int) -> np.ndarray:
    """`a` as an ndarray of real numbers with `ndim` dimensions (not yet converted in dtype)."""
    reject_sparse(**{name: a})  # np.asarray would make a 0-d object array of it
    try:
        arr = np.asarray(a)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be array-like of real numbers: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    return arr


def readonly(a: np.ndarray) -> np.ndarray:
    """A read-only view. Numba compiles a separate specialization for read-only arrays (seconds, and
    one per combination of arguments): every input reaches the kernels read-only, whatever the
    caller's flags, so one specialization per dtype serves them all."""
    view = a.view()
    view.flags.writeable = False
    return view


def as_float(name: str, arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """C-contiguous read-only array of `dtype` (a view when possible; never the caller's array to
    write). `name` is for symmetry with the other checks; conversion of a checked numeric array
    cannot fail."""
    return readonly(np.ascontiguousarray(arr, dtype=dtype))


# From this many labels on, `check_labels` copies and checks intp labels in one parallel pass
# (`_kernels._copy_labels`); fewer go through numpy, which also spares small problems (the command
# line's digits) that kernel's compilation.
LABEL_KERNEL_MIN = 2**16


def check_labels(y, n_samples: int, n_classes: int) -> np.ndarray:
    """Labels as a new read-only intp array, every entry checked to lie in [0, n_classes).

    Always a copy, made before the range check: the kernels index with these labels, and the
    caller's array (even one already intp and contiguous) may change under a concurrent writer.
    """
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
    if n_samples and y.dtype.kind == "u" and y.max() > np.iinfo(np.intp).max:
        raise ValueError(f"y holds label {y.max()}, outside [0, n_classes={n_classes})")
    if (n_samples >= LABEL_KERNEL_MIN and y.dtype == np.intp and y.flags.c_contiguous
            and y.dtype.isnative):
        labels = np.empty(n_samples, dtype=np.intp)
        if not _k._copy_labels(n_blocks(n_samples, _k.LABEL_BLOCK), y, labels, n_classes):
            return readonly(labels)
    else:
        labels = np.array(y, dtype=np.intp, order="C", copy=True)
    if n_samples:
        lo, hi = labels.min(), labels.max()
        if lo < 0 or hi >= n_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(f"y holds label {bad}, outside [0, n_classes={n_classes})")
    return readonly(labels)


def check_scalar(name: str, value, low: float, high: float = np.inf) -> float:
    """`value` as a finite Python float in [low, high] (bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (low <= value <= high) or not np.isfinite(value):
        raise ValueError(f"{name} must be finite and in [{low}, {high}], got {value}")
    return value


def check_reduction(reduction, allowed=REDUCTIONS) -> str:
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {allowed}, got {reduction!r}")
    return reduction


def check_weights(sample_weight, n_samples: int, reduction: str):
    """Weights for the kernels (float64, a new array; size 0 for None) and the denominator.

    The kernels compute ``loss = sum_i w_i l_i / denom`` and the gradient rows
    ``(p_i - t_i) * w_i / denom``. For ``"mean"``, ``denom`` is the sum of the returned weights;
    for ``"sum"`` and ``"none"``, ``w_i / denom`` is the caller's weight.

    Weights whose largest entry lies outside ``[2**-WEIGHT_EXP, 2**WEIGHT_EXP]`` (all 5e-324, or
    1e308, where ``sum(w)`` or ``1 / sum(w)`` overflows) are first multiplied by the power of two
    that brings the largest near [0.5, 1), and ``denom`` for ``"sum"``/``"none"`` becomes the
    inverse power of two. Multiplying by a power of two is exact (save for weights over 2**1022
    times smaller than the largest, rounded in the subnormal range or to 0, whose share of the
    result is below float64 resolution anyway), so the mean is exactly what the same
    weights rescaled to order one give; the sum's overflow, when the true value exceeds the
    float64 range, is reported by :func:`check_total`. Weights inside the range are used as given.
    Callers that only need relative weights (the solvers' mini-batch means) may ignore ``denom``.
    """
    if sample_weight is None:
        total = float(n_samples)
        if reduction == "mean" and not total > 0:
            raise ValueError("reduction='mean' is undefined: there are no samples")
        return readonly(np.empty(0, dtype=np.float64)), (total if reduction == "mean" else 1.0)
    w = as_numeric("sample_weight", sample_weight, 1)
    if w.shape[0] != n_samples:
        raise ValueError(f"sample_weight has {w.shape[0]} entries but there are {n_samples} samples")
    w = np.array(w, dtype=np.float64, order="C", copy=True)
    if not np.isfinite(w).all():
        raise ValueError("sample_weight must be finite")
    if n_samples and w.min() < 0:
        raise ValueError("sample_weight must be non-negative")
    largest = float(w.max()) if n_samples else 0.0
    unscale = 1.0
    if largest > 0 and not 2.0**-WEIGHT_EXP <= largest <= 2.0**WEIGHT_EXP:
        # Clipped so that both 2**exponent and 2**-exponent are normal floats: the kernels get
        # 1 / denom as the gradient's scale.
        exponent = int(np.clip(np.frexp(largest)[1], -1022, 1022))
        w = np.ldexp(w, -exponent)
        unscale = float(np.ldexp(1.0, -exponent))
    total = float(w.sum())
    if reduction == "mean" and not total > 0:
        what = "there are no samples" if n_samples == 0 else "sample_weight sums to zero"
        raise ValueError(f"reduction='mean' is undefined: {what}")
    return readonly(w), (total if reduction == "mean" else unscale)


def check_linear_options(y, n_samples: int, n_classes: int, dtype: np.dtype, *, sample_weight,
                         label_smoothing, alpha, reduction):
    """The options of `linear_cross_entropy` (dense or sparse X), checked in this order: labels,
    label_smoothing, alpha, reduction ("mean" or "sum"), sample_weight and the range of the
    gradients it implies. Returns (y, smoothing, alpha, weights, denominator)."""
    y = check_labels(y, n_samples, n_classes)
    smoothing = check_scalar("label_smoothing", label_smoothing, 0.0, 1.0)
    alpha = check_scalar("alpha", alpha, 0.0)
    reduction = check_reduction(reduction, ("mean", "sum"))
    w, denom = check_weights(sample_weight, n_samples, reduction)
    check_grad_range(w, denom, dtype, summed=True)
    return y, smoothing, alpha, w, denom


def check_grad_range(w: np.ndarray, denom: float, dtype: np.dtype, summed: bool) -> None:
    """Refuse weights that make the gradients unrepresentable in `dtype`.

    A gradient row ``(p_i - t_i) * w_i / denom`` reaches ``max(w) / denom`` in magnitude, and a
    sum over samples (db, and dW through X) ``sum(w) / denom`` (``summed=True``). With
    ``reduction="mean"`` these are at most 1; with ``"sum"`` and weights such as 1e308 they are
    beyond the range of the dtype: say so rather than return infinities or NaN.
    """
    if not w.size:
        return
    bound = float(w.sum() if summed else w.max()) / denom
    if bound > float(np.finfo(dtype).max):
        what = "sum(sample_weight)" if summed else "max(sample_weight)"
        raise ValueError(
            f"{what} = {bound:.3g} is beyond the {dtype} range, and with reduction='sum' the "
            "gradients reach it: scale sample_weight down or use reduction='mean'"
        )


def check_total(total: float, denom: float) -> float:
    """The reduced loss ``total / denom`` (``total``: the sum of the per-sample weighted losses);
    a ValueError naming sample_weight when only the weights' scale (``denom`` < 1 with ``"sum"``)
    makes it overflow."""
    loss = total / denom
    if np.isinf(loss) and np.isfinite(total):
        raise _weighted_overflow("the weighted sum of the losses")
    return loss


class L2Overflow(ValueError):
    """The L2 term left the dtype's range (`add_l2`): the solvers of gd and sgd turn it into their
    message naming the learning rate, as for weights that overflowed."""


def add_l2(alpha: float, A: np.ndarray, G: np.ndarray, loss: float | None = None,
           name: str = "W"):
    """The L2 term, after the checks of the unpenalized results: ``G += alpha * A`` in place
    (dW with W, or HS with the direction S) and, when ``loss`` is given, ``loss + alpha / 2
    ||A||^2`` returned. A ValueError naming `name` when either leaves the dtype's range (a huge
    alpha times a huge W): the check of G before the term could not see it."""
    bad = _k._axpy(alpha, A, G)
    if loss is not None:
        loss += 0.5 * alpha * _k._sum_squares(A)
    if bad or (loss is not None and not np.isfinite(loss)):
        raise L2Overflow(
            f"the L2 term alpha * {name} overflowed {G.dtype} (alpha = {alpha:.3g}, max |{name}| = "
            f"{float(np.abs(A).max(initial=0.0)):.3g}): lower alpha or scale the data"
        )
    return loss


def check_per_sample(losses: np.ndarray, denom: float, dtype: np.dtype, weighted: bool):
    """``losses / denom`` in `dtype` (``reduction="none"``). With sample weights, a ValueError
    naming sample_weight when a weighted loss that is finite in float64 overflows on the way."""
    if not weighted:
        return losses.astype(dtype, copy=False)
    with np.errstate(over="ignore"):
        out = (losses / denom if denom != 1.0 else losses).astype(dtype, copy=False)
    if not np.isfinite(out).all() and (np.isfinite(losses) & np.isinf(out)).any():
        raise _weighted_overflow(f"a weighted per-sample loss (in {dtype})")
    return out


def _weighted_overflow(what: str) -> ValueError:
    return ValueError(
        f"{what} exceeds the floating-point range because of the scale of sample_weight: "
        "scale sample_weight down or use reduction='mean'"
    )


def check_out(out, shape, dtype, source: np.ndarray | None, **inputs):
    """Validate `out`; returns (array to compute into, whether rows must first be copied from the
    source). A non-contiguous `out` is computed into a scratch array and copied at the end.

    `out` may be the source (``Z``) itself, computed in place; it must not share memory with any
    of the other `inputs` (given by argument name), which the kernels would read while it is
    being written.
    """
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
    for name, a in inputs.items():
        if a is not None and np.shares_memory(out, np.asarray(a)):
            raise ValueError(f"out overlaps {name}: pass an array that does not share memory with it")
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


def finish_out(result: np.ndarray, out):
    """The array to return: `out` when given (filled from the scratch result if needed)."""
    if out is not None and result is not out:
        np.copyto(out, result)
        return out
    return result


def check_logits(Z) -> np.ndarray:
    Z = as_numeric("Z", Z, 2)
    if Z.shape[1] == 0:
        raise ValueError("Z must have at least one column (class)")
    return as_float("Z", Z, float_dtype(Z))


def raise_bad_logits(n_bad: int) -> None:
    if n_bad:
        raise ValueError(
            f"Z has {n_bad} row(s) with NaN or +inf, or with every entry -inf: "
            "softmax and cross-entropy are undefined there"
        )


def check_linear(X, W, b):
    """Validated C-contiguous X, W, b (or None) in their common float dtype."""
    X = as_numeric("X", X, 2)
    W = as_numeric("W", W, 2)
    if b is not None:
        b = as_numeric("b", b, 1)
    if W.shape[0] == 0:
        raise ValueError("W must have at least one row (class)")
    if W.shape[1] != X.shape[1]:
        raise ValueError(
            f"W has {W.shape[1]} features per class but X has {X.shape[1]} features per sample"
        )
    if b is not None and b.shape[0] != W.shape[0]:
        raise ValueError(f"b has {b.shape[0]} entries but W has {W.shape[0]} classes")
    dtype = float_dtype(X, W, b)
    X, W = as_float("X", X, dtype), as_float("W", W, dtype)
    return X, W, (None if b is None else as_float("b", b, dtype)), dtype


def _nonfinite_summary(a: np.ndarray) -> str:
    n_nan = int(np.isnan(a).sum())
    n_inf = int(np.isinf(a).sum())
    parts = [f"{n} {what}" for n, what in ((n_nan, "NaN"), (n_inf, "infinite")) if n]
    first = np.unravel_index(int(np.flatnonzero(~np.isfinite(a.ravel()))[0]), a.shape)
    index = tuple(int(i) for i in first)
    return f"{' and '.join(parts)} entr{'y' if n_nan + n_inf == 1 else 'ies'}, first at {index}"


def _max_abs(a: np.ndarray | None) -> float:
    return float(np.abs(a).max()) if a is not None and a.size else 0.0


def raise_nonfinite_params(X, W, b, *, logits: bool = True) -> None:
    """Called when the linear layer's results came out NaN or infinite.

    Names the argument that holds NaN or infinity (and how many of which). When X, W and b are all
    finite, the arithmetic overflowed: ``logits=True`` (rows of ``X W^T + b`` were NaN or +inf)
    says so with the magnitudes of the inputs; ``logits=False`` (finite logits, non-finite dW)
    points at the weighted sum of the gradients.
    """
    for name, a in (("W", W), ("b", b), ("X", X)):
        if a is not None and not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or infinity: {_nonfinite_summary(a)}")
    sizes = f"max |X| = {_max_abs(X):.3g}, max |W| = {_max_abs(W):.3g}"
    if b is not None:
        sizes += f", max |b| = {_max_abs(b):.3g}"
    dtype = float_dtype(X, W, b)
    if logits:
        raise ValueError(
            f"X W^T + b overflowed to infinity in {dtype} ({sizes}): the logits are not "
            "representable; scale the data, or, if W was being fitted, lower the learning rate"
        )
    raise ValueError(
        f"the gradient dW = G^T X overflowed {dtype} ({sizes}): scale X down, or with "
        "reduction='sum' scale sample_weight down or use reduction='mean'"
    )


# ------------------------------------------------------------------------------------------------
# Sparse X (scipy.sparse), for fastsoftmax._sparse
# ------------------------------------------------------------------------------------------------


class CsrInput(NamedTuple):
    """A checked CSR matrix as the sparse kernels take it: read-only contiguous arrays, indptr and
    indices of one integer dtype (int32 or int64), data in the float dtype, every column index in
    [0, n_features)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    shape: tuple[int, int]


def is_sparse(a) -> bool:
    """Whether `a` is a scipy.sparse matrix or array (scipy is only imported if already loaded:
    nothing else can be sparse)."""
    sp = sys.modules.get("scipy.sparse")
    return sp is not None and sp.issparse(a)


def reject_sparse(**arrays) -> None:
    """TypeError for any of the given arguments (by name) that is a scipy.sparse object: only X
    may be sparse."""
    for name, a in arrays.items():
        if is_sparse(a):
            raise TypeError(
                f"{name} must be a dense array, got a scipy.sparse {type(a).__name__}: only X may "
                f"be sparse (pass {name}.toarray())"
            )


def check_sparse_X(X, dtype: np.dtype) -> CsrInput:
    """Sparse X as a `CsrInput` in `dtype`. CSR is used in place (never written); other formats
    are converted to CSR once. Indices are checked to lie in range, since the kernels index with
    them; NaN and inf in the data are found afterwards, from the kernels' bad-row counts."""
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, got a sparse object of shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise TypeError(f"X must hold real numbers, got dtype {X.dtype}")
    if X.format != "csr":
        X = X.tocsr()
    n, d = X.shape
    index_dtype = np.int32 if X.indptr.dtype == X.indices.dtype == np.int32 else np.int64
    # A copy (n_samples + 1 integers), checked below: the kernels take their row ranges from it,
    # so a concurrent write to the caller's indptr cannot send them outside indices and data.
    # Column indices are bounded inside the kernels instead (copying them would cost nnz).
    indptr = readonly(np.array(X.indptr, dtype=index_dtype, order="C", copy=True))
    indices = readonly(np.ascontiguousarray(X.indices, dtype=index_dtype))
    nnz = int(indptr[-1]) if indptr.shape[0] == n + 1 else -1
    if nnz < 0 or nnz > indices.shape[0] or indptr[0] != 0 or (np.diff(indptr) < 0).any():
        raise ValueError("X is not a valid CSR matrix: its indptr is inconsistent")
    if X.indices.ndim != 1 or X.data.ndim != 1 or X.data.shape[0] < nnz:
        # scipy checks none of this when .data or .indices is reassigned; the kernels read
        # data[p] for every stored entry p < indptr[-1], unchecked.
        raise ValueError(
            f"X is not a valid CSR matrix: its indptr ends at {nnz} stored entries, its data "
            f"holds {X.data.size} in {X.data.ndim} dimension(s) and its indices "
            f"{X.indices.size} in {X.indices.ndim}")
    indices = indices[:nnz]
    if nnz and _ks._count_outside(n_blocks(nnz, _ks.INDEX_BLOCK), indices, d):
        raise ValueError(f"X is not a valid CSR matrix: a column index lies outside [0, {d})")
    data = readonly(np.ascontiguousarray(X.data[:nnz], dtype=dtype))
    return CsrInput(indptr, indices, data, (n, d))


def check_sparse_linear(X, W, b):
    """Sparse X as a `CsrInput`, and W, b (dense, checked as in `check_linear`), in their common
    float dtype (float32 when X's data, W and b are all float32, else float64)."""
    reject_sparse(W=W, b=b)
    W = as_numeric("W", W, 2)
    if b is not None:
        b = as_numeric("b", b, 1)
    if W.shape[0] == 0:
        raise ValueError("W must have at least one row (class)")
    if X.ndim == 2 and W.shape[1] != X.shape[1]:
        raise ValueError(
            f"W has {W.shape[1]} features per class but X has {X.shape[1]} features per sample"
        )
    if b is not None and b.shape[0] != W.shape[0]:
        raise ValueError(f"b has {b.shape[0]} entries but W has {W.shape[0]} classes")
    dtype = float_dtype(X, W, b)
    Xc = check_sparse_X(X, dtype)
    W = as_float("W", W, dtype)
    return Xc, W, (None if b is None else as_float("b", b, dtype)), dtype


def raise_nonfinite_sparse(X: CsrInput, W, b, *, logits: bool = True) -> None:
    """`raise_nonfinite_params` for a sparse X: names X when its stored values hold NaN or
    infinity, else defers to the dense message (W, b, or an overflow)."""
    if not np.isfinite(X.data).all():
        n_nan, n_inf = int(np.isnan(X.data).sum()), int(np.isinf(X.data).sum())
        raise ValueError(
            f"X contains NaN or infinity: {n_nan} NaN and {n_inf} infinite stored entries"
        )
    for name, a in (("W", W), ("b", b)):
        if a is not None and not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or infinity: {_nonfinite_summary(a)}")
    dense_stand_in = X.data.reshape(1, -1)  # only its magnitudes are reported
    raise_nonfinite_params(dense_stand_in, W, b, logits=logits)


def check_direction(S, s_b, W: np.ndarray, b: np.ndarray | None):
    """The direction ``(S, s_b)`` of a Hessian-vector product at ``(W, b)``, as numeric arrays
    (not yet converted in dtype): S of W's shape, s_b of b's (None exactly when b is None), both
    finite."""
    S = as_numeric("S", S, 2)
    if S.shape != W.shape:
        raise ValueError(f"S must have W's shape {W.shape}, got {S.shape}")
    if b is None:
        if s_b is not None:
            raise ValueError("s_b must be None when b is None (there is no intercept)")
    else:
        if s_b is None:
            raise ValueError("s_b must be given when b is given (the intercept's direction)")
        s_b = as_numeric("s_b", s_b, 1)
        if s_b.shape != b.shape:
            raise ValueError(f"s_b must have b's shape {b.shape}, got {s_b.shape}")
    for name, a in (("S", S), ("s_b", s_b)):
        if a is not None and not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or infinity: {_nonfinite_summary(a)}")
    return S, s_b
