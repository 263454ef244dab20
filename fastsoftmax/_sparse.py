"""The sparse-X paths of the functional API (scipy.sparse X through the CSR kernels).

`functional.linear_cross_entropy` and `functional.linear_softmax` hand sparse X here. Extra memory
is bounded independently of n_samples: the loss + gradient holds W^T padded to whole vectors
(n_features x Kp, Kp = n_classes rounded up to 8 float32 or 4 float64) and per-chunk partials
dW^T of that size, at most `SPARSE_WORK_BYTES` / 2 in all (one when a single one exceeds it);
the Hessian-vector product [W^T | S^T] padded (n_features x 2 Kp) and partials within
`SPARSE_WORK_BYTES` / 3; plus dW (n_classes x n_features), per-chunk scalars and the merge's
float64 buffer per thread (`_kernels_sparse.merge_block`) (docs/design.md, "Layers", "Sparse
input").
"""

from __future__ import annotations

import numpy as np

from fastsoftmax import _kernels as _k
from fastsoftmax import _kernels_sparse as _ks
from fastsoftmax._validation import (
    CsrInput,
    add_l2,
    as_float,
    check_direction,
    check_linear_options,
    check_sparse_linear,
    check_total,
    float_dtype,
    raise_nonfinite_sparse,
    readonly,
)

# Row chunks of the CSR kernels, each with its own partial (n_features, n_classes padded) dW^T or
# HS^T: at most SPARSE_CHUNKS, at least SPARSE_CHUNK_ROWS rows each, partials within half of
# SPARSE_WORK_BYTES in all (a third for the Hessian-vector product's), and at least
# SPARSE_ENTRIES_PER_FEATURE stored entries per chunk for every feature beyond the first
# SPARSE_MIN_CHUNKS chunks (filling and merging a partial streams n_features x n_classes entries,
# the gather and scatter touch stored entries x n_classes). Measured at 2 threads: 200000 x 2^17 x
# 20 (76 stored entries per feature) float32 took 42.5 ms with 2 chunks, 49.8 with 4 and 55.8
# with 8 (the rule had been 8 entries per feature, giving 4); at 30000 x 65536 x 20 (22 per
# feature) float64, 1 chunk took 16.3 ms against 11.8 with 2 (one thread, 29.8 against 32.7 ms:
# a second chunk costs a little on one core and halves the time on two, hence the minimum of 2).
# Fixed by the problem size only, so that results do not depend on the thread count.
SPARSE_CHUNKS = 16
SPARSE_MIN_CHUNKS = 2
SPARSE_CHUNK_ROWS = 256
SPARSE_WORK_BYTES = 128 * 2**20
SPARSE_ENTRIES_PER_FEATURE = 32
# Rows per block of a chunk of the fused CSR kernel (a multiple of _kernels.ROW_BLOCK); the bits
# do not depend on it.
SPARSE_ROW_BLOCK = 1024


def sparse_chunks(N: int, nnz: int, K: int, d: int, itemsize: int, width: int = 2) -> int:
    """How many row chunks the CSR kernels use: the largest power of two within the limits above
    (a power of two shares evenly among 2, 4, 8 or 16 threads; 3 chunks on 2 threads would leave
    one thread idle for a third of the time). K is the partial's width (the padded n_classes);
    the partials are held within SPARSE_WORK_BYTES / `width`: 2 for the loss, 3 for the
    Hessian-vector product."""
    by_rows = _k.n_blocks(N, SPARSE_CHUNK_ROWS)
    by_memory = SPARSE_WORK_BYTES // max(1, width * K * d * itemsize)
    by_work = max(SPARSE_MIN_CHUNKS, nnz // max(1, SPARSE_ENTRIES_PER_FEATURE * d))
    limit = max(1, min(SPARSE_CHUNKS, by_rows, by_memory, by_work))
    return 1 << (limit.bit_length() - 1)


def aligned_workspace(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialized C-contiguous array starting on a 64-byte boundary (a cache line). numpy's
    large arrays start 16 bytes past one, so a workspace row of 2 x 20 float32 (160 bytes) spanned
    4 cache lines instead of 3 every other row, and one of 2 x 20 float64 (320 bytes) 6 instead
    of 5: that many more lines for every stored entry's gather and scatter."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def linear_cross_entropy(X, W, b, y, sample_weight, label_smoothing, alpha, reduction, return_dX):
    """`functional.linear_cross_entropy` for scipy.sparse X (same arguments and results)."""
    if return_dX:
        raise ValueError(
            "return_dX=True is not supported for sparse X: dX = G W is a dense (n_samples, "
            "n_features) array, as large as X.toarray(); pass a dense X to get it"
        )
    Xc, W, b, dtype = check_sparse_linear(X, W, b)
    y, eps, alpha, w, denom = check_linear_options(
        y, Xc.shape[0], W.shape[0], dtype, sample_weight=sample_weight,
        label_smoothing=label_smoothing, alpha=alpha, reduction=reduction,
    )
    return linear_cross_entropy_checked(Xc, W, b, y, w, eps, alpha, denom)


def linear_cross_entropy_checked(X: CsrInput, W, b, y, w, eps, alpha, denom, dW=None):
    """The sparse `linear_cross_entropy` on validated arguments (as `check_sparse_linear`,
    `check_labels` and `check_weights` return them): (loss, dW, db). ``dW``, when given, is a
    C-contiguous writable (n_classes, n_features) array of W's dtype that receives the gradient
    (the lbfgs solver passes a view of its float64 gradient vector: no copy per evaluation)."""
    N, d = X.shape
    K = W.shape[0]
    dtype = W.dtype
    WT = padded_transpose(W)
    C = sparse_chunks(N, X.data.shape[0], WT.shape[1], d, dtype.itemsize)
    loss_parts = np.empty(C, dtype=np.float64)
    parts = aligned_workspace((C, d, WT.shape[1]), dtype)
    db_parts = np.empty((C, K if b is not None else 0), dtype=np.float64)
    # Read-only whoever calls (a solver's iterate may be writable): one specialization per dtype.
    bias = readonly(b if b is not None else np.empty(0, dtype))
    bad = _ks._csr_linear_xent(
        C, X.indptr, X.indices, X.data, WT, bias, y, w, eps, 1.0 / denom, loss_parts, parts,
        db_parts, SPARSE_ROW_BLOCK, K,
    )
    del WT
    if dW is None:
        dW = np.empty((K, d), dtype=dtype)
    bad_dW = merge_partials(parts, dW)
    del parts
    total = float(loss_parts.sum())
    if bad or bad_dW or np.isnan(total):
        raise_nonfinite_sparse(X, W, b, logits=bool(bad) or bool(np.isnan(total)))
    loss = check_total(total, denom)
    if alpha:
        loss = add_l2(alpha, W, dW, loss)
    db = None if b is None else db_parts.sum(axis=0).astype(dtype)
    return loss, dW, db


def merge_partials(parts, dW) -> int:
    """dW (K, d) := the chunks' partials (C, d, Kp) summed in chunk order (`_merge_dWT`); returns
    how many of its entries are NaN or infinite."""
    K, d = dW.shape
    block = _ks.merge_block(K)
    return _ks._merge_dWT(_k.n_blocks(d, block), parts, dW, block)


def padded_transpose(W, S=None) -> np.ndarray:
    """W^T as the fused CSR kernel reads it: (n_features, Kp), Kp = n_classes rounded up to whole
    vectors of `_kernels_sparse.VECTOR_BYTES` (8 float32, 4 float64), zeros in the extra columns,
    starting on a 64-byte boundary (`aligned_workspace`); with S (W's shape and dtype), [W^T | S^T]
    (n_features, 2 Kp), each padded so, as the Hessian-vector product reads it."""
    K, d = W.shape
    per_vector = _ks.VECTOR_BYTES // W.dtype.itemsize
    Kp = -(-K // per_vector) * per_vector
    blocks = (W,) if S is None else (W, S)
    WT = aligned_workspace((d, len(blocks) * Kp), W.dtype)
    for i, A in enumerate(blocks):
        _ks._transpose_padded(_k.n_blocks(d, _ks.TRANSPOSE_BLOCK), A, WT, i * Kp, Kp)
    return WT


def linear_softmax(X, W, b) -> np.ndarray:
    """`functional.linear_softmax` for scipy.sparse X."""
    Xc, W, b, dtype = check_sparse_linear(X, W, b)
    return linear_softmax_checked(Xc, W, b)


def linear_softmax_checked(X: CsrInput, W, b, WT=None) -> np.ndarray:
    """The sparse `linear_softmax` on validated arguments: (n_samples, n_classes) probabilities.
    WT, when given, is `padded_transpose(W)` (a caller running blocks of rows makes it once)."""
    N = X.shape[0]
    dtype = W.dtype
    out = np.empty((N, W.shape[0]), dtype=dtype)
    bias = readonly(b if b is not None else np.empty(0, dtype))  # see linear_cross_entropy_checked
    if WT is None:
        WT = padded_transpose(W)
    bad = _ks._csr_linear_softmax(
        _k.n_blocks(N, _k.ROW_BLOCK), X.indptr, X.indices, X.data, WT, bias, out
    )
    if bad:
        raise_nonfinite_sparse(X, W, b)
    return out


def linear_cross_entropy_hvp(X, W, b, y, S, s_b, sample_weight, label_smoothing, alpha,
                             reduction):
    """`functional.linear_cross_entropy_hvp` for scipy.sparse X (same arguments and results)."""
    Xc, W, b, dtype = check_sparse_linear(X, W, b)
    S, s_b = check_direction(S, s_b, W, b)
    if float_dtype(W, b, S, s_b) != dtype:  # float32 X, W, b with a float64 direction
        dtype = np.dtype(np.float64)
        Xc = Xc._replace(data=as_float("X", Xc.data, dtype))
        W, b = as_float("W", W, dtype), (None if b is None else as_float("b", b, dtype))
    S = as_float("S", S, dtype)
    s_b = None if b is None else as_float("s_b", s_b, dtype)
    _, _, alpha, w, denom = check_linear_options(
        y, Xc.shape[0], W.shape[0], dtype, sample_weight=sample_weight,
        label_smoothing=label_smoothing, alpha=alpha, reduction=reduction,
    )
    return linear_hvp_checked(Xc, W, b, S, s_b, w, alpha, denom)


def linear_hvp_checked(X: CsrInput, W, b, S, s_b, w, alpha, denom):
    """The sparse `linear_cross_entropy_hvp` on validated arguments (X as `check_sparse_linear`
    returns it; W, b, S, s_b read-only C-contiguous in X's dtype; float64 weights or an empty
    array): (HS, Hs_b)."""
    N, d = X.shape
    K = W.shape[0]
    dtype = W.dtype
    WST = padded_transpose(W, S)
    Kp = WST.shape[1] // 2
    C = sparse_chunks(N, X.data.shape[0], Kp, d, dtype.itemsize, width=3)
    parts = aligned_workspace((C, d, Kp), dtype)
    hsb_parts = np.empty((C, K if b is not None else 0), dtype=np.float64)
    none = readonly(np.empty(0, dtype))
    bad = _ks._csr_linear_hvp(
        C, X.indptr, X.indices, X.data, WST, none if b is None else b,
        none if b is None else s_b, w, 1.0 / denom, parts, hsb_parts, SPARSE_ROW_BLOCK, K,
    )
    del WST
    HS = np.empty((K, d), dtype=dtype)
    bad_HS = merge_partials(parts, HS)
    del parts
    if bad:
        raise_nonfinite_sparse(X, W, b)
    hsb = None if b is None else hsb_parts.sum(axis=0)
    if bad_HS or not (hsb is None or np.isfinite(hsb).all()):
        raise ValueError(
            f"the Hessian-vector product overflowed {dtype} (max |X| = "
            f"{float(np.abs(X.data).max(initial=0.0)):.3g}, max |S| = "
            f"{float(np.abs(S).max(initial=0.0)):.3g}): scale X or S down, or with "
            "reduction='sum' scale sample_weight down"
        )
    if alpha:
        add_l2(alpha, S, HS, name="S")
    return HS, (None if hsb is None else hsb.astype(dtype))
