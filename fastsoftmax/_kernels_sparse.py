"""Numba kernels of fastsoftmax for CSR X: the sparse family of the linear layer.

Design
------
* X comes as its CSR arrays (indptr, indices, data). The logits of row i are b plus, for each stored
  entry (column j, value v) of the row, v times row j of W^T. W is laid out transposed: each stored
  entry then reads K contiguous weights (a column of the (K, d) W would be K loads d apart), and its
  gradient goes back to K contiguous entries of a partial dW^T.
* Rows are cut into C chunks fixed by the caller from the problem size (never the thread count);
  chunk c owns rows [c N / C, (c+1) N / C), its own workspace (d, 2K), filled from W^T (made
  once by the caller), whose row j is
  [W^T[j], partial dW^T[j]] in the data dtype (weights and gradient of a feature in adjacent cache
  lines), its partial db (K,) float64 and loss sum (float64). Per row, in a (1, K) buffer: the
  logits from the non-zeros, then the shared dense row pass (`_row_grad` of _kernels: max, exp,
  float64 sums, loss, gradient), then the gradient row scattered into the chunk's dW^T. No N x K
  array is ever held.
* The caller merges the partials in chunk order: `_merge_dWT` sums every entry over the chunks in
  float64, in chunk order, and writes dW (K, d) transposed back, in parallel over blocks of features.
* The Hessian-vector product (`_csr_linear_hvp`) runs the same chunks with a workspace (d, 3K)
  whose row j is [W^T[j], S^T[j], partial HS^T[j]]: one gather of 2K weights per stored entry gives
  the logits of W and of the direction S, the dense row pass `_row_hvp` turns them into
  r = p * (t - p.t), and r is scattered into the partial; `_merge_dWT` merges those partials too.
* The gathers are latency-bound (each stored entry reads a random row of a workspace larger than
  L2): every gather prefetches the whole workspace row of the stored entry `PREFETCH_AHEAD`
  entries ahead (`llvm.prefetch`), so that its loads, and the scatter's read-modify-writes of the
  same row, find it in cache. The bits do not change; the time did (see `PREFETCH_AHEAD`).
* Every parallel kernel is a pair (`@_parallel_kernel`, _parallel.py) whose twins call one compiled
  block function, as in _kernels: the bits do not depend on the twin or on the number of threads.
* Stored entries are used as they come: unsorted columns are fine, and duplicate entries of a column
  add up in the logits and in the gradient as scipy's products add them (to rounding), so the caller
  never copies or canonicalizes X. The kernels index W^T with `indices`: the caller checks their range.
* A row whose logits come out NaN or +inf (NaN or inf in X, W or b, or an overflow) counts as bad, as
  in _kernels; the functional layer turns the count into a ValueError naming the culprit.

Argument notes as in _kernels: IN is only read, OUT only written, INOUT both; "data dtype" is float32
or float64, the same for every array so marked; "index dtype" is int32 or int64, the same for indptr
and indices; optional arrays have size 0 when absent.
"""

import numpy as np
from llvmlite import ir
from numba import config, prange, types
from numba.extending import intrinsic

from fastsoftmax._kernels import (
    ROW_BLOCK,
    _add,
    _fma,
    _jit,
    _mul,
    _n_blocks,
    _parallel_kernel,
    _row_grad,
    _row_hvp,
    _softmax_block_rows,
)

MERGE_BLOCK = 256  # features per prange iteration of the partials' merge
# Stored entries between the one whose workspace row is prefetched and the one being used: the
# fused loss + gradient on one thread (CPU time, 200000 x 2^17 x 20 text-like float32) took 191 ms
# without prefetching, 145 ms at 64 entries ahead, 148 at 128, 155 at 256; at 800000 x 47236 x 50
# 1848 ms without, 1079, 1039 and 1038 ms (docs/design.md, "Sparse input"). With the cheaper
# prefetch of `_prefetch_rows4`, 32, 64, 128 and 256 entries ahead were within 5% of each other.
PREFETCH_AHEAD = 128


@intrinsic
def _prefetch(typingctx, arr, row, offset):
    """llvm.prefetch (for reading, kept in all cache levels) of the byte `offset` of row `row` of
    the 2-D C-contiguous `arr`. A hint: it never faults and changes no result."""
    sig = types.void(arr, row, offset)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        stride = builder.extract_value(ary.strides, 0)
        row_v, off_v = (builder.zext(a, stride.type) if a.type.width < stride.type.width else a
                        for a in args[1:])
        i8p = ir.IntType(8).as_pointer()
        ptr = builder.gep(builder.bitcast(ary.data, i8p),
                          [builder.add(builder.mul(row_v, stride), off_v)])
        i32 = ir.IntType(32)
        fn = builder.module.declare_intrinsic(
            "llvm.prefetch", [i8p], ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]))
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


if config.DISABLE_JIT:  # NUMBA_DISABLE_JIT=1: intrinsics exist only in compiled code

    def _prefetch(arr, row, offset):  # noqa: F811
        pass


# Column indices are cast to unsigned before indexing W^T and dW^T: Numba's wraparound of negative
# indices (a compare and select per access) otherwise stays in the inner loops; the functional layer
# has checked every index to lie in [0, d).


@_jit(inline=True)
def _column(indices, p, last):
    """Column index of stored entry p, at most `last`: the indices were checked before the call,
    but they are the caller's memory, and a concurrent write must not make the kernel read or
    write outside W^T (a wrong result for a racy caller, never a crash). Unsigned, so a negative
    index cannot slip under the bound; a min costs nothing beside the K-long loop it feeds."""
    return min(np.uint64(indices[p]), last)


@_jit(inline=True)
def _prefetch_row(WT, indices, p, last):
    """Prefetch the row of WT (all of it: 2K or 3K columns for a workspace) of stored entry p, if
    there is one: the lines holding its first byte, every 64 bytes after, and its last byte."""
    if p < indices.shape[0]:
        _prefetch_lines(WT, _column(indices, p, last), WT.shape[1] * WT.itemsize)


@_jit(inline=True)
def _prefetch_rows4(WT, indices, p, last):
    """`_prefetch_row` of stored entries p..p+3, with one bounds check for the four, and none
    when they are not all there (the last stored entries of X go without): a check and the row's
    byte count per entry made the gather 1.8x slower, and so did a fallback branch to
    `_prefetch_row` for the end (instructions, not memory: the same with every row in L1)."""
    if p + 3 < indices.shape[0]:
        nbytes = WT.shape[1] * WT.itemsize
        for q in range(4):
            _prefetch_lines(WT, _column(indices, p + q, last), nbytes)


@_jit(inline=True)
def _prefetch_lines(WT, j, nbytes):
    """Prefetch the lines of row j of WT: its first byte, every 64 bytes after, its last byte."""
    for off in range(0, nbytes, 64):
        _prefetch(WT, j, off)
    _prefetch(WT, j, nbytes - 1)


@_jit(inline=True)
def _csr_row_logits(indptr, indices, data, WT, i, A, r):
    """A[r] := X[i] @ W, from the stored entries of row i of X and W^T: columns 0..K-1 of WT
    (d, K or more), K = A.shape[1].

    Four stored entries per pass over A[r]: with one, every pass waited for the previous pass's
    stores to A[r] (a loop-carried dependency through memory that LLVM cannot keep in registers,
    K being unknown), and the logits took 2.5x as long as with four."""
    K = A.shape[1]
    last = np.uint64(WT.shape[0] - 1)
    # Strict arithmetic (explicit fma, `_mul`, `_add`): with reassoc the five-term sum below was
    # reordered differently in different modules, so a kernel loaded from the cache and one
    # compiled in the process differed in the last bits (tests/test_kernel_pairs.py).
    for k in range(K):
        A[r, k] = 0
    p, hi = indptr[i], indptr[i + 1]
    while p + 3 < hi:
        _prefetch_rows4(WT, indices, p + PREFETCH_AHEAD, last)
        c0, c1 = _column(indices, p, last), _column(indices, p + 1, last)
        c2, c3 = _column(indices, p + 2, last), _column(indices, p + 3, last)
        v0, v1, v2, v3 = data[p], data[p + 1], data[p + 2], data[p + 3]
        for k in range(K):
            t01 = _fma(v1, WT[c1, k], _mul(v0, WT[c0, k]))
            t23 = _fma(v3, WT[c3, k], _mul(v2, WT[c2, k]))
            A[r, k] = _add(A[r, k], _add(t01, t23))
        p += 4
    while p < hi:
        _prefetch_row(WT, indices, p + PREFETCH_AHEAD, last)
        c0, v0 = _column(indices, p, last), data[p]
        for k in range(K):
            A[r, k] = _fma(v0, WT[c0, k], A[r, k])
        p += 1


@_jit(inline=True)
def _csr_row_scatter(indptr, indices, data, G, i, dWT, off):
    """dW^T[j, off:off+K] += X[i, j] * G[0] for every stored entry (column j) of row i of X,
    K = G.shape[1].

    Two stored entries per pass share each load of G[0] (1.6x faster in float32 than one: the
    loads of G could not be hoisted past the stores to dW^T, which might alias it). The two rows
    go through 1-D slices, and a duplicate column (both entries in one row) through a branch of
    its own: indexing the 2-D dW^T in the loop, the scatter took 2-2.4x as long (rows in L1, 20
    and 50 classes); the bits are the same. Explicit fma: whether a multiply
    and add contract must not depend on the module (see `_csr_row_logits`)."""
    K = G.shape[1]
    last = np.uint64(dWT.shape[0] - 1)
    p, hi = indptr[i], indptr[i + 1]
    while p + 1 < hi:
        c0, c1 = _column(indices, p, last), _column(indices, p + 1, last)
        v0, v1 = data[p], data[p + 1]
        if c0 != c1:
            r0, r1 = dWT[c0, off:off + K], dWT[c1, off:off + K]
            for k in range(K):
                g = G[0, k]
                r0[k] = _fma(v0, g, r0[k])
                r1[k] = _fma(v1, g, r1[k])
        else:  # a duplicate column: the two updates in order, as two passes would make them
            for k in range(K):
                g = G[0, k]
                dWT[c0, off + k] = _fma(v1, g, _fma(v0, g, dWT[c0, off + k]))
        p += 2
    if p < hi:
        c0, v0 = _column(indices, p, last), data[p]
        for k in range(K):
            dWT[c0, off + k] = _fma(v0, G[0, k], dWT[c0, off + k])


@_parallel_kernel
def _csr_linear_xent(indptr, indices, data, WT, b, y, sample_weight, smoothing, scale, loss_parts,
                     work, db_parts):
    """Fused loss and gradients of softmax(X W^T + b) for CSR X, chunked over rows; returns the
    number of bad rows.

    indptr        IN  (N + 1,) index dtype: CSR row pointers of X (n_features = WT.shape[0])
    indices       IN  (nnz,) index dtype: column of every stored entry, each in [0, d)
    data          IN  (nnz,) data dtype: value of every stored entry
    WT            IN  (d, K) data dtype, C-contiguous: W transposed
    b             IN  (K,) data dtype; size 0: no bias
    y             IN  (N,) intp: labels in [0, K)
    sample_weight IN  (N,) float64; size 0: all ones
    smoothing     IN  float in [0, 1]: label smoothing
    scale         IN  float: factor of the gradients (1 / the reduction's denominator)
    loss_parts    OUT (C,) float64: chunk c's sum of weighted per-sample losses (not scaled)
    work          OUT (C, d, 2K) data dtype: chunk c's workspace, row j = [W^T[j], partial dW^T[j]]
                      (merge the partials with `_merge_dWT`)
    db_parts      OUT (C, K) float64: chunk c's partial db; shape (C, 0): no bias gradient
    """
    N = indptr.shape[0] - 1
    n_chunks = work.shape[0]
    bad = 0
    for c in prange(n_chunks):
        bad += _csr_xent_chunk(indptr, indices, data, WT, b, y, sample_weight, smoothing, scale,
                               c * N // n_chunks, (c + 1) * N // n_chunks, c, loss_parts,
                               work[c], db_parts[c])
    return bad


@_jit()
def _init_work(WT, work):
    """work[j] := [W^T[j], zeros]: each stored entry then reads its K weights and adds its K
    gradient entries within one 2K-wide row (adjacent cache lines, one page): the fused row pass
    was 1.4x faster than with W^T and the partial dW^T in two arrays. Copied from W^T made once
    by the caller: transposing W in every chunk took twice as long (4 chunks, float32)."""
    d, K = WT.shape
    for j in range(d):
        for k in range(K):
            work[j, k] = WT[j, k]
            work[j, K + k] = 0


@_jit()
def _csr_xent_chunk(indptr, indices, data, WT, b, y, sample_weight, smoothing, scale, lo, hi, c,
                    loss_parts, work, db):
    """Rows lo..hi of `_csr_linear_xent` into chunk c's loss_parts[c], workspace (d, 2K) and db
    (K,) or (0,) (one prange iteration, shared by both twins)."""
    K = WT.shape[1]
    _init_work(WT, work)
    g = np.empty((1, K), dtype=work.dtype)
    db[:] = 0.0
    bad = 0
    total = 0.0
    for i in range(lo, hi):
        _csr_row_logits(indptr, indices, data, work, i, g, 0)
        wi = sample_weight[i] if sample_weight.shape[0] > 0 else 1.0
        loss, row_bad = _row_grad(g, 0, g, 0, b, False, y[i], wi, smoothing, scale)
        total += loss
        bad += row_bad
        if wi == 0.0:  # a zero gradient row: nothing to add
            continue
        if db.shape[0] > 0:
            for k in range(K):
                db[k] += g[0, k]
        _csr_row_scatter(indptr, indices, data, g, i, work, K)
    loss_parts[c] = total
    return bad


@_parallel_kernel
def _merge_dWT(work, dW):
    """dW[k, j] := sum over chunks c, in chunk order, of the partial work[c, j, off + k], summed in
    float64, where off = work.shape[2] - K: the partial is the last K columns of a workspace row.

    work IN  (C, d, mK) data dtype: the chunks' workspaces of `_csr_linear_xent` (m = 2) or
             `_csr_linear_hvp` (m = 3)
    dW   OUT (K, d) data dtype, C-contiguous
    """
    d = work.shape[1]
    for blk in prange(_n_blocks(d, MERGE_BLOCK)):
        lo = blk * MERGE_BLOCK
        _merge_block(work, dW, lo, min(d, lo + MERGE_BLOCK))


@_jit()
def _merge_block(work, dW, lo, hi):
    """Features lo..hi of `_merge_dWT` (one prange iteration, shared by both twins)."""
    C = work.shape[0]
    K = dW.shape[0]
    off = work.shape[2] - K
    acc = np.empty(K, dtype=np.float64)
    for j in range(lo, hi):
        acc[:] = 0.0
        for c in range(C):
            for k in range(K):
                acc[k] += work[c, j, off + k]
        for k in range(K):
            dW[k, j] = acc[k]


@_parallel_kernel
def _csr_linear_softmax(indptr, indices, data, WT, b, out):
    """out := softmax(X W^T + b) for CSR X; returns the number of bad rows.

    indptr  IN  (N + 1,) index dtype: CSR row pointers of X
    indices IN  (nnz,) index dtype: column of every stored entry, each in [0, d)
    data    IN  (nnz,) data dtype: value of every stored entry
    WT      IN  (d, K) data dtype, C-contiguous: W transposed
    b       IN  (K,) data dtype; size 0: no bias
    out     OUT (N, K) data dtype, C-contiguous
    """
    N = out.shape[0]
    bad = 0
    for blk in prange(_n_blocks(N, ROW_BLOCK)):
        lo = blk * ROW_BLOCK
        bad += _csr_softmax_block(indptr, indices, data, WT, b, out, lo, min(N, lo + ROW_BLOCK))
    return bad


@_jit()
def _csr_softmax_block(indptr, indices, data, WT, b, out, lo, hi):
    """Rows lo..hi of `_csr_linear_softmax` (one prange iteration, shared by both twins): the
    logits of the block, then the dense softmax rows in place while the block is in cache."""
    for i in range(lo, hi):
        _csr_row_logits(indptr, indices, data, WT, i, out, i)
    return _softmax_block_rows(out, out, b, False, lo, hi)


@_parallel_kernel
def _csr_linear_hvp(indptr, indices, data, W, S, b, s_b, sample_weight, scale, work, hsb_parts):
    """Hessian-vector product of the linear layer's cross-entropy for CSR X, chunked over rows as
    `_csr_linear_xent`; returns the number of bad rows. Per row: p = softmax(x W^T + b) and
    t = x S^T + s_b from one gather of 2K weights per stored entry, r = p * (t - p.t) scaled by
    the row's weight (`_row_hvp` of _kernels), r scattered into the chunk's partial HS^T.

    indptr        IN  (N + 1,) index dtype: CSR row pointers of X (n_features = W.shape[1])
    indices       IN  (nnz,) index dtype: column of every stored entry, each in [0, d)
    data          IN  (nnz,) data dtype: value of every stored entry
    W             IN  (K, d) data dtype, C-contiguous: the point
    S             IN  (K, d) data dtype, C-contiguous: the direction
    b             IN  (K,) data dtype: intercept; size 0: none
    s_b           IN  (K,) data dtype: intercept of the direction; size 0: none
    sample_weight IN  (N,) float64; size 0: all ones
    scale         IN  float: 1 / the reduction's denominator
    work          OUT (C, d, 3K) data dtype: chunk c's workspace, row j = [W^T[j], S^T[j],
                      partial HS^T[j]] (merge the partials with `_merge_dWT`)
    hsb_parts     OUT (C, K) float64: chunk c's partial sum of r; shape (C, 0): no intercept
    """
    N = indptr.shape[0] - 1
    n_chunks = work.shape[0]
    bad = 0
    for c in prange(n_chunks):
        bad += _csr_hvp_chunk(indptr, indices, data, W, S, b, s_b, sample_weight, scale,
                              c * N // n_chunks, (c + 1) * N // n_chunks, work[c], hsb_parts[c])
    return bad


@_jit()
def _init_work_hvp(W, S, work):
    """work[j] := [W^T[j], S^T[j], zeros]: the logits of W and of S are one gather of 2K
    contiguous weights per stored entry, and r goes back into the same row."""
    K, d = W.shape
    for j in range(d):
        for k in range(K):
            work[j, k] = W[k, j]
            work[j, K + k] = S[k, j]
            work[j, 2 * K + k] = 0


@_jit()
def _csr_hvp_chunk(indptr, indices, data, W, S, b, s_b, sample_weight, scale, lo, hi, work, hsb):
    """Rows lo..hi of `_csr_linear_hvp` into this chunk's workspace (d, 3K) and hsb (K,) or (0,)
    (one prange iteration, shared by both twins)."""
    K = W.shape[0]
    _init_work_hvp(W, S, work)
    zt = np.empty((1, 2 * K), dtype=work.dtype)
    z = np.empty((1, K), dtype=work.dtype)
    t = np.empty((1, K), dtype=work.dtype)
    hsb[:] = 0.0
    bad = 0
    for i in range(lo, hi):
        _csr_row_logits(indptr, indices, data, work, i, zt, 0)
        for k in range(K):
            z[0, k] = zt[0, k]
            t[0, k] = zt[0, K + k]
        wi = sample_weight[i] if sample_weight.shape[0] > 0 else 1.0
        bad += 1 if _row_hvp(z, t, 0, b, s_b, wi * scale) else 0
        if wi == 0.0:  # a zero row of r: nothing to add
            continue
        if hsb.shape[0] > 0:
            for k in range(K):
                hsb[k] += t[0, k]
        _csr_row_scatter(indptr, indices, data, t, i, work, 2 * K)
    return bad
