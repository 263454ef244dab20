"""Numba kernels of fastsoftmax for CSR X: the sparse family of the linear layer.

Design
------
* X comes as its CSR arrays (indptr, indices, data). The logits of row i are b plus, for each stored
  entry (column j, value v) of the row, v times row j of W^T. W is laid out transposed: each stored
  entry then reads K contiguous weights (a column of the (K, d) W would be K loads d apart), and its
  gradient goes back to K contiguous entries of a partial dW^T.
* Rows are cut into C chunks fixed by the caller from the problem size (never the thread count);
  chunk c owns rows [c N / C, (c+1) N / C), its own partial dW^T (d, Kp), partial db (K,) float64
  and loss sum (float64). All chunks read one W^T (d, Kp) made by the caller, K padded to Kp,
  whole vectors of VECTOR_BYTES (zeros past K). A chunk runs its rows in blocks of `block`
  rows, in two phases: (A) the logits of the block's rows from the stored entries into a
  (block, Kp) buffer, one vector fma per VECTOR_BYTES of a W^T row (`_vec_fma4`, llvm.fma
  intrinsics), then the dense block row pass of _kernels (`_xent_grad_block`: max, exp,
  float64 sums, loss, gradient, across rows); (B) each gradient row scattered into the chunk's
  dW^T. No N x K array is ever held.
* The caller merges the partials in chunk order: `_merge_dWT` sums every entry over the chunks in
  float64, in chunk order, and writes dW (K, d) transposed back, in parallel over blocks of features.
* The Hessian-vector product (`_csr_linear_hvp`) runs the same chunks and blocks over one shared
  [W^T | S^T] (d, 2Kp): one gather of 2Kp weights per stored entry gives the logits of W and of
  the direction S, the dense row pass `_row_hvp` turns them into r = p * (t - p.t), and the
  block's rows of r are scattered into the chunk's partial HS^T (d, Kp); `_merge_dWT` merges
  those partials too.
* The gathers are latency-bound (each stored entry reads a random row of an array larger than
  L2): every gather and scatter prefetches the whole row of the stored entry `PREFETCH_AHEAD`
  entries ahead (`llvm.prefetch`), so that its loads, and the read-modify-writes of the scatter,
  find it in cache. The bits do not change; the time did (see `PREFETCH_AHEAD`).
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
    _element_ptr,
    _jit,
    _n_blocks,
    _parallel_kernel,
    _row_hvp,
    _softmax_block_rows,
    _vector_fma,
    _xent_grad_block,
)

MERGE_BLOCK = 256  # features per prange iteration of the partials' merge, at most:
MERGE_BUFFER_BYTES = 2**16  # and their float64 sums (features x K) within this (`merge_block`)
TRANSPOSE_BLOCK = 256  # features per prange iteration of `_transpose_padded`
INDEX_BLOCK = 2**16  # stored entries per prange iteration of `_count_outside`
# Bytes in one vector of `_vec_fma4`, `_vec_fma`, `_vec_fma2` (ymm): the fused loss + gradient pads
# the classes to whole vectors. One thread, against 64 (zmm, whole cache lines) and 16 bytes:
# 200000 x 2^17 x 20 float32 0.67x the time of the previous kernel, against 0.77x and 0.73x
# (classes padded to 24, 32 and 20); 800000 x 47236 x 50 float64 0.81x against 0.84x (64).
VECTOR_BYTES = 32
# Stored entries between the one whose workspace row is prefetched and the one being used: the
# fused loss + gradient on one thread (CPU time, 200000 x 2^17 x 20 text-like float32) took 191 ms
# without prefetching, 145 ms at 64 entries ahead, 148 at 128, 155 at 256; at 800000 x 47236 x 50
# 1848 ms without, 1079, 1039 and 1038 ms (docs/design.md, "Sparse input"). With the cheaper
# prefetch of `_prefetch_rows`, 32, 64, 128 and 256 entries ahead were within 5% of each other.
PREFETCH_AHEAD = 128
_U1, _U2, _U3, _U4 = np.uint64(1), np.uint64(2), np.uint64(3), np.uint64(4)  # unsigned steps


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


def _vec_type(context, dtype):
    """The LLVM vector of VECTOR_BYTES of `dtype` (8 float32 or 4 float64: one ymm)."""
    return ir.VectorType(context.get_value_type(dtype), VECTOR_BYTES // (dtype.bitwidth // 8))


def _vec_ptr(context, builder, aryty, ary_val, row, col):
    """Pointer to the vector at [row, col] of the C-contiguous 2-D array ary_val."""
    ptr, _ = _element_ptr(context, builder, aryty, ary_val, row, col)
    return builder.bitcast(ptr, _vec_type(context, aryty.dtype).as_pointer())


def _vec_load(context, builder, aryty, ary_val, row, col):
    """The vector at [row, col] of ary_val (aligned to its element only), and its pointer."""
    ptr = _vec_ptr(context, builder, aryty, ary_val, row, col)
    return builder.load(ptr, align=aryty.dtype.bitwidth // 8), ptr


def _splat(context, builder, x, xty, dtype):
    """x (of numba type xty) cast to dtype, in every lane of a vector."""
    vecty = _vec_type(context, dtype)
    x = context.cast(builder, x, xty, dtype)
    undef = ir.Constant(vecty, ir.Undefined)
    v = builder.insert_element(undef, x, ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), vecty.count), [0] * vecty.count)
    return builder.shuffle_vector(v, undef, mask)


@intrinsic
def _vec_fma4(typingctx, A, r, WT, c0, c1, c2, c3, v0, v1, v2, v3, k):
    """A[r, k:k+n] := fma(v3, WT[c3, ..], fma(v2, WT[c2, ..], fma(v1, WT[c1, ..], fma(v0,
    WT[c0, ..], A[r, k:k+n])))) for the n = VECTOR_BYTES / itemsize columns from k (one vector
    each: the rows must hold whole vectors from k on). Lane by lane the four fmas of `_fma` in
    order; calls of llvm.fma, which carry no fast-math flags, so no module can reorder them."""
    sig = types.void(A, r, WT, c0, c1, c2, c3, v0, v1, v2, v3, k)

    def codegen(context, builder, signature, args):
        aty, wty, dt = signature.args[0], signature.args[2], signature.args[0].dtype
        acc, a_ptr = _vec_load(context, builder, aty, args[0], args[1], args[11])
        for q in range(4):
            w, _ = _vec_load(context, builder, wty, args[2], args[3 + q], args[11])
            v = _splat(context, builder, args[7 + q], signature.args[7 + q], dt)
            acc = _vector_fma(builder, v, w, acc)
        builder.store(acc, a_ptr, align=dt.bitwidth // 8)
        return context.get_dummy_value()

    return sig, codegen


def _fma_rows(context, builder, aty, A, rows, vs, vtys, x):
    """A[row, k:k+n] := fma(v, x, A[row, k:k+n]) for each (row, v), x one loaded vector; `rows`
    as (row, k) pairs of LLVM values."""
    dt = aty.dtype
    for (row, k), v, vty in zip(rows, vs, vtys, strict=True):
        acc, a_ptr = _vec_load(context, builder, aty, A, row, k)
        vv = _splat(context, builder, v, vty, dt)
        builder.store(_vector_fma(builder, vv, x, acc), a_ptr, align=dt.bitwidth // 8)


@intrinsic
def _vec_fma(typingctx, A, r, v, G, g, k):
    """A[r, k:k+n] := fma(v, G[g, k:k+n], A[r, k:k+n]), n = VECTOR_BYTES / itemsize (one vector)."""
    sig = types.void(A, r, v, G, g, k)

    def codegen(context, builder, signature, args):
        gv, _ = _vec_load(context, builder, signature.args[3], args[3], args[4], args[5])
        _fma_rows(context, builder, signature.args[0], args[0], [(args[1], args[5])], [args[2]],
                  [signature.args[2]], gv)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _vec_fma2(typingctx, A, r0, r1, v0, v1, G, g, k):
    """`_vec_fma` into rows r0 and r1 (different) with v0 and v1, from one load of G[g, k:k+n]."""
    sig = types.void(A, r0, r1, v0, v1, G, g, k)

    def codegen(context, builder, signature, args):
        gv, _ = _vec_load(context, builder, signature.args[5], args[5], args[6], args[7])
        _fma_rows(context, builder, signature.args[0], args[0],
                  [(args[1], args[7]), (args[2], args[7])], args[3:5], signature.args[3:5], gv)
        return context.get_dummy_value()

    return sig, codegen


if config.DISABLE_JIT:  # Python versions of the vector operations (same lanes, rounded twice)

    def _vec_fma4(A, r, WT, c0, c1, c2, c3, v0, v1, v2, v3, k):  # noqa: F811
        n = VECTOR_BYTES // A.itemsize
        for c, v in ((c0, v0), (c1, v1), (c2, v2), (c3, v3)):
            A[r, k:k + n] += v * WT[c, k:k + n]

    def _vec_fma(A, r, v, G, g, k):  # noqa: F811
        n = VECTOR_BYTES // A.itemsize
        A[r, k:k + n] += v * G[g, k:k + n]

    def _vec_fma2(A, r0, r1, v0, v1, G, g, k):  # noqa: F811
        _vec_fma(A, r0, v0, G, g, k)
        _vec_fma(A, r1, v1, G, g, k)


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
def _prefetch_rows(WT, indices, p, last, m):
    """Prefetch the whole rows of WT of stored entries p..p+m-1 (p unsigned, m a constant), with
    one bounds check for the m, and none when they are not all there (the last stored entries of
    X go without): a check and the row's byte count per entry made the gather 1.8x slower, and
    so did a fallback branch for the end (instructions, not memory: the same with every row in
    L1)."""
    if p + np.uint64(m - 1) < np.uint64(indices.shape[0]):
        nbytes = WT.shape[1] * WT.itemsize
        for q in range(m):
            _prefetch_lines(WT, _column(indices, p + np.uint64(q), last), nbytes)


@_jit(inline=True)
def _prefetch_lines(WT, j, nbytes):
    """Prefetch the lines of row j of WT: its first byte, every 64 bytes after, its last byte;
    with no loop for a row of at most 128 bytes (at most three lines): the loop's control cost
    more instructions than its prefetches."""
    _prefetch(WT, j, 0)
    if nbytes <= 128:
        _prefetch(WT, j, min(64, nbytes - 1))
    else:
        for off in range(64, nbytes, 64):
            _prefetch(WT, j, off)
    _prefetch(WT, j, nbytes - 1)


@_jit(inline=True)
def _csr_row_logits_vec(indptr, indices, data, WT, i, A, r):
    """A[r] := X[i] @ W over all Kp = A.shape[1] = WT.shape[1] columns of the padded W^T (Kp a
    whole number of vectors of VECTOR_BYTES), one vector per operation (`_vec_fma4`, `_vec_fma`).

    Per class a chain of four fmas, one per stored entry in order: what the scalar loops of the
    fused kernel it replaced computed once LLVM, given reassoc by their then non-strict helpers,
    had rewritten their five-term sum (so dW and db kept their float32 bits). The scalar loops
    ran mostly as scalar remainders, K being unknown when compiled (at 20 float32 classes all of
    it: LLVM's vector loop took 64 classes a pass). The loss, its Hessian-vector product and
    `linear_softmax` all gather here, so their logits are the same bits."""
    Kp = A.shape[1]
    n = VECTOR_BYTES // A.itemsize
    last = np.uint64(max(WT.shape[0] - 1, 0))  # d = 0: no stored entries
    for k in range(Kp):
        A[r, k] = 0
    # Unsigned positions: signed ones made every access to indices and data check for a negative
    # index (Numba's wraparound: a compare and a select each).
    p, hi, ahead = np.uint64(indptr[i]), np.uint64(indptr[i + 1]), np.uint64(PREFETCH_AHEAD)
    while p + _U3 < hi:
        _prefetch_rows(WT, indices, p + ahead, last, 4)
        c0, c1 = _column(indices, p, last), _column(indices, p + _U1, last)
        c2, c3 = _column(indices, p + _U2, last), _column(indices, p + _U3, last)
        v0, v1, v2, v3 = data[p], data[p + _U1], data[p + _U2], data[p + _U3]
        for k in range(0, Kp, n):
            _vec_fma4(A, r, WT, c0, c1, c2, c3, v0, v1, v2, v3, k)
        p += _U4
    while p < hi:
        _prefetch_rows(WT, indices, p + ahead, last, 1)
        c0 = _column(indices, p, last)
        for k in range(0, Kp, n):
            _vec_fma(A, r, data[p], WT, c0, k)
        p += _U1


@_jit(inline=True)
def _csr_row_scatter_vec(indptr, indices, data, G, r, i, dWT):
    """dW^T[j] += X[i, j] * G[r] for every stored entry (column j) of row i, over all Kp
    columns (whole vectors, as `_csr_row_logits_vec`), prefetching the partial's rows
    PREFETCH_AHEAD entries ahead (without, the call took 1.3x as long). Two entries per pass
    share each load of G[r] (1.6x faster in float32 than one entry a pass, with scalar loops:
    the loads of G could not be hoisted past the stores to dW^T, which might alias it; four
    entries a pass were no faster); a duplicate column makes its two updates in order. Per class
    one fma per stored entry, in order."""
    Kp = G.shape[1]
    n = VECTOR_BYTES // G.itemsize
    last = np.uint64(max(dWT.shape[0] - 1, 0))
    p, hi, ahead = np.uint64(indptr[i]), np.uint64(indptr[i + 1]), np.uint64(PREFETCH_AHEAD)
    while p + _U1 < hi:
        _prefetch_rows(dWT, indices, p + ahead, last, 2)
        c0, c1 = _column(indices, p, last), _column(indices, p + _U1, last)
        v0, v1 = data[p], data[p + _U1]
        if c0 != c1:
            for k in range(0, Kp, n):
                _vec_fma2(dWT, c0, c1, v0, v1, G, r, k)
        else:
            for k in range(0, Kp, n):
                _vec_fma(dWT, c0, v0, G, r, k)
                _vec_fma(dWT, c0, v1, G, r, k)
        p += _U2
    if p < hi:
        c0 = _column(indices, p, last)
        for k in range(0, Kp, n):
            _vec_fma(dWT, c0, data[p], G, r, k)


@_parallel_kernel
def _csr_linear_xent(indptr, indices, data, WT, b, y, sample_weight, smoothing, scale, loss_parts,
                     parts, db_parts, block, n_classes):
    """Fused loss and gradients of softmax(X W^T + b) for CSR X, chunked over rows; returns the
    number of bad rows.

    indptr        IN  (N + 1,) index dtype: CSR row pointers of X (n_features = WT.shape[0])
    indices       IN  (nnz,) index dtype: column of every stored entry, each in [0, d)
    data          IN  (nnz,) data dtype: value of every stored entry
    WT            IN  (d, Kp) data dtype, C-contiguous: W transposed, columns K..Kp-1 zero (Kp: K
                      rounded up to whole vectors of VECTOR_BYTES), shared by all chunks
    b             IN  (K,) data dtype; size 0: no bias
    y             IN  (N,) intp: labels in [0, K)
    sample_weight IN  (N,) float64; size 0: all ones
    smoothing     IN  float in [0, 1]: label smoothing
    scale         IN  float: factor of the gradients (1 / the reduction's denominator)
    loss_parts    OUT (C,) float64: chunk c's sum of weighted per-sample losses (not scaled)
    parts         OUT (C, d, Kp) data dtype: chunk c's partial dW^T in columns 0..K-1 (merge with
                      `_merge_dWT`; the other columns are scratch)
    db_parts      OUT (C, K) float64: chunk c's partial db; shape (C, 0): no bias gradient
    block         IN  int, a multiple of ROW_BLOCK: rows per block of a chunk (the bits do not
                      depend on it)
    n_classes     IN  int: K
    """
    N = indptr.shape[0] - 1
    n_chunks = parts.shape[0]
    bad = 0
    for c in prange(n_chunks):
        bad += _csr_xent_chunk(indptr, indices, data, WT, b, y, sample_weight, smoothing, scale,
                               c * N // n_chunks, (c + 1) * N // n_chunks, loss_parts[c:c + 1],
                               parts[c], db_parts[c], block, n_classes)
    return bad


@_jit()
def _csr_xent_chunk(indptr, indices, data, WT, b, y, sample_weight, smoothing, scale, lo, hi,
                    loss, dWT, db, block, K):
    """Rows lo..hi of `_csr_linear_xent` into this chunk's loss (1,), partial dW^T (d, Kp) and db
    (K,) or (0,) (one prange iteration, shared by both twins), `block` rows at a time, in two
    phases: (A) the block's logits from the shared W^T into Gp (block, Kp), then their gradient
    rows by the dense row pass (`_block_grad`); (B) the gradient rows scattered into dW^T. Each
    phase works on one (d, Kp) array (the fused row pass, with W^T and its partial side by side
    in one (d, 2K) workspace per chunk, had twice the working set and a copy of W^T per chunk)."""
    Kp = WT.shape[1]
    dWT[:] = 0
    db[:] = 0.0
    Gp = np.zeros((block, Kp), dtype=dWT.dtype)
    G = np.empty((block, K), dtype=dWT.dtype)
    bad = 0
    total = 0.0
    for blo in range(lo, hi, block):
        n = min(hi, blo + block) - blo
        for r in range(n):
            _csr_row_logits_vec(indptr, indices, data, WT, blo + r, Gp, r)
        block_bad, block_loss = _block_grad(Gp, G, b, y[blo:blo + n], sample_weight[blo:blo + n]
                                            if sample_weight.shape[0] > 0 else sample_weight,
                                            smoothing, scale, n, db)
        bad += block_bad
        total += block_loss
        for r in range(n):
            if sample_weight.shape[0] == 0 or sample_weight[blo + r] != 0.0:
                _csr_row_scatter_vec(indptr, indices, data, Gp, r, blo + r, dWT)
    loss[0] = total
    return bad


@_jit(inline=True)
def _block_grad(Gp, G, b, y, sample_weight, smoothing, scale, n, db):
    """Rows 0..n of Gp (logits, Kp columns) := their gradients (zeros from column K on), through
    G (first n rows, K columns): `_xent_grad_block`, ROW_BLOCK rows a call (a short row's exp,
    sums and log run across rows there); db += the column sums of the gradient rows. Returns the
    number of bad rows and the sum of the rows' weighted losses (ROW_BLOCK rows a tree, see
    `_kernels._block_loss_sum`, then added in order)."""
    K, Kp = G.shape[1], Gp.shape[1]
    for r in range(n):
        for k in range(K):
            G[r, k] = Gp[r, k]
    bad = 0
    total = 0.0
    for s in range(0, n, ROW_BLOCK):
        block_bad, block_loss = _xent_grad_block(G, G, b, False, y, sample_weight, smoothing,
                                                 scale, s, min(n, s + ROW_BLOCK), db)
        bad += block_bad
        total += block_loss
    for r in range(n):
        for k in range(K):
            Gp[r, k] = G[r, k]
        for k in range(K, Kp):
            Gp[r, k] = 0
    return bad, total


def merge_block(K: int) -> int:
    """Features per prange iteration of `_merge_dWT` for K classes: MERGE_BLOCK, fewer when their
    (features, K) float64 buffer would exceed MERGE_BUFFER_BYTES (at 10^5 classes a 256-feature
    buffer would be 205 MB per thread); at least one. The bits do not depend on it."""
    return max(1, min(MERGE_BLOCK, MERGE_BUFFER_BYTES // (8 * max(K, 1))))


@_parallel_kernel
def _merge_dWT(work, dW, block):
    """dW[k, j] := sum over chunks c, in chunk order, of the partial work[c, j, k], summed in
    float64; returns how many of the entries written are NaN or infinite (a float64 sum beyond
    float32's range becomes inf when stored), so that the caller needs no pass of its own.

    work  IN  (C, d, Kp) data dtype: the chunks' partials in columns 0..K-1 of each row:
              `_csr_linear_xent`'s and `_csr_linear_hvp`'s parts
    dW    OUT (K, d) data dtype, C-contiguous
    block IN  int >= 1: features per prange iteration (`merge_block`)
    """
    d = work.shape[1]
    bad = 0
    for blk in prange(_n_blocks(d, block)):
        lo = blk * block
        bad += _merge_block(work, dW, lo, min(d, lo + block))
    return bad


@_jit()
def _merge_block(work, dW, lo, hi):
    """Features lo..hi of `_merge_dWT` (one prange iteration, shared by both twins); returns the
    number of non-finite entries written. The block's sums are made in a (features, K) float64
    buffer (within MERGE_BUFFER_BYTES) from contiguous runs of the partials, then written out
    row by row of dW: written one feature at a time (K stores d apart per feature), the merge
    took 4.3 ms of a 43 ms call at 200000 x 2^17 x 20 float32. Unsigned indices, as in
    `_count_outside_block`."""
    C = np.uint64(work.shape[0])
    K = np.uint64(dW.shape[0])
    u_lo, n = np.uint64(lo), np.uint64(hi - lo)
    acc = np.zeros((n, K), dtype=np.float64)
    for c in range(C):
        for j in range(n):
            for k in range(K):
                acc[j, k] += work[c, u_lo + j, k]
    bad = 0
    for k in range(K):
        for j in range(n):
            dW[k, u_lo + j] = acc[j, k]
        for j in range(n):
            if not np.isfinite(dW[k, u_lo + j]):
                bad += 1
    return bad


@_parallel_kernel
def _transpose_padded(W, WT, off, width):
    """WT[j, off + k] := W[k, j] for k < K, and 0 for K <= k < width, for every feature j: W^T
    (or the direction's S^T) as the fused kernels gather it, in parallel over blocks of features
    (numpy's strided assignment ran on one thread: 2.4 ms of a 43 ms call at 200000 x 2^17 x 20
    float32).

    W     IN  (K, d) data dtype, C-contiguous
    WT    OUT (d, m) data dtype, C-contiguous: columns off..off+width-1 written (width >= K)
    off   IN  int: the first column written
    width IN  int: the columns written per row (K and the zero padding)
    """
    d = W.shape[1]
    for blk in prange(_n_blocks(d, TRANSPOSE_BLOCK)):
        lo = blk * TRANSPOSE_BLOCK
        _transpose_block(W, WT, off, width, lo, min(d, lo + TRANSPOSE_BLOCK))


@_jit()
def _transpose_block(W, WT, off, width, lo, hi):
    """Features lo..hi of `_transpose_padded` (one prange iteration, shared by both twins): a
    contiguous run of each of W's rows into one column of a block of WT that stays in L1."""
    K = np.uint64(W.shape[0])
    u_lo, u_hi, u_off = np.uint64(lo), np.uint64(hi), np.uint64(off)
    for k in range(K):  # unsigned, as in `_count_outside_block`
        for j in range(u_lo, u_hi):
            WT[j, u_off + k] = W[k, j]
    for j in range(u_lo, u_hi):
        for k in range(u_off + K, u_off + np.uint64(width)):
            WT[j, k] = 0


@_parallel_kernel
def _count_outside(indices, n):
    """How many of `indices` lie outside [0, n): the column-index check of a CSR X, in one
    parallel pass (numpy's min and max were two passes on one thread: 2.3 ms of a 43 ms call at
    200000 x 2^17 x 20, 13.6 of 404 at 800000 x 47236 x 50).

    indices IN (nnz,) index dtype
    n       IN int >= 0
    """
    m = indices.shape[0]
    bad = 0
    for blk in prange(_n_blocks(m, INDEX_BLOCK)):
        lo = blk * INDEX_BLOCK
        bad += _count_outside_block(indices, n, lo, min(m, lo + INDEX_BLOCK))
    return bad


@_jit()
def _count_outside_block(indices, n, lo, hi):
    """Entries lo..hi of `_count_outside` (one prange iteration, shared by both twins). Unsigned
    values: a negative index becomes a huge one, so one compare covers both ends; unsigned
    positions: with signed ones Numba's wraparound check kept the loop scalar (7x slower)."""
    bound = np.uint64(n)
    bad = 0
    for p in range(np.uint64(lo), np.uint64(hi)):
        if np.uint64(indices[p]) >= bound:
            bad += 1
    return bad


@_parallel_kernel
def _csr_linear_softmax(indptr, indices, data, WT, b, out):
    """out := softmax(X W^T + b) for CSR X; returns the number of bad rows.

    indptr  IN  (N + 1,) index dtype: CSR row pointers of X
    indices IN  (nnz,) index dtype: column of every stored entry, each in [0, d)
    data    IN  (nnz,) data dtype: value of every stored entry
    WT      IN  (d, Kp) data dtype, C-contiguous: W transposed and padded as `_csr_linear_xent`'s
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
    logits of the block by the loss's vector gather into a (rows, Kp) buffer, copied into out,
    then the dense softmax rows in place while the block is in cache."""
    K = out.shape[1]
    A = np.empty((hi - lo, WT.shape[1]), dtype=out.dtype)
    for r in range(hi - lo):
        _csr_row_logits_vec(indptr, indices, data, WT, lo + r, A, r)
        for k in range(K):
            out[lo + r, k] = A[r, k]
    return _softmax_block_rows(out, out, b, False, lo, hi)


@_parallel_kernel
def _csr_linear_hvp(indptr, indices, data, WST, b, s_b, sample_weight, scale, parts, hsb_parts,
                    block, n_classes):
    """Hessian-vector product of the linear layer's cross-entropy for CSR X, chunked over rows and
    in blocks of rows as `_csr_linear_xent`; returns the number of bad rows. Per row: p =
    softmax(x W^T + b) and t = x S^T + s_b from one gather of the 2Kp weights [W^T | S^T] per
    stored entry, r = p * (t - p.t) scaled by the row's weight (`_row_hvp` of _kernels); then the
    block's rows of r scattered into the chunk's partial HS^T.

    indptr        IN  (N + 1,) index dtype: CSR row pointers of X (n_features = WST.shape[0])
    indices       IN  (nnz,) index dtype: column of every stored entry, each in [0, d)
    data          IN  (nnz,) data dtype: value of every stored entry
    WST           IN  (d, 2Kp) data dtype, C-contiguous: [W^T | S^T], each padded with zeros to Kp
                      columns (K rounded up to whole vectors of VECTOR_BYTES), shared by all chunks
    b             IN  (K,) data dtype: intercept; size 0: none
    s_b           IN  (K,) data dtype: intercept of the direction; size 0: none
    sample_weight IN  (N,) float64; size 0: all ones
    scale         IN  float: 1 / the reduction's denominator
    parts         OUT (C, d, Kp) data dtype: chunk c's partial HS^T in columns 0..K-1 (merge with
                      `_merge_dWT`; the other columns are scratch)
    hsb_parts     OUT (C, K) float64: chunk c's partial sum of r; shape (C, 0): no intercept
    block         IN  int: rows per block of a chunk (the bits do not depend on it)
    n_classes     IN  int: K
    """
    N = indptr.shape[0] - 1
    n_chunks = parts.shape[0]
    bad = 0
    for c in prange(n_chunks):
        bad += _csr_hvp_chunk(indptr, indices, data, WST, b, s_b, sample_weight, scale,
                              c * N // n_chunks, (c + 1) * N // n_chunks, parts[c], hsb_parts[c],
                              block, n_classes)
    return bad


@_jit()
def _csr_hvp_chunk(indptr, indices, data, WST, b, s_b, sample_weight, scale, lo, hi, dWT, hsb,
                   block, K):
    """Rows lo..hi of `_csr_linear_hvp` into this chunk's partial HS^T (d, Kp) and hsb (K,) or
    (0,) (one prange iteration, shared by both twins), `block` rows at a time: the logits of W and
    S into ZT (block, 2Kp), the row pass into R (block, Kp), then R's rows scattered. Per class
    the arithmetic of the fused (d, 3K) workspace kernel it replaced, in the same order."""
    Kp = dWT.shape[1]
    dWT[:] = 0
    hsb[:] = 0.0
    ZT = np.empty((block, 2 * Kp), dtype=dWT.dtype)
    R = np.zeros((block, Kp), dtype=dWT.dtype)
    z = np.empty((1, K), dtype=dWT.dtype)
    t = np.empty((1, K), dtype=dWT.dtype)
    bad = 0
    for blo in range(lo, hi, block):
        n = min(hi, blo + block) - blo
        for r in range(n):
            _csr_row_logits_vec(indptr, indices, data, WST, blo + r, ZT, r)
        for r in range(n):
            for k in range(K):
                z[0, k] = ZT[r, k]
                t[0, k] = ZT[r, Kp + k]
            wi = sample_weight[blo + r] if sample_weight.shape[0] > 0 else 1.0
            bad += 1 if _row_hvp(z, t, 0, b, s_b, wi * scale) else 0
            if hsb.shape[0] > 0 and wi != 0.0:
                for k in range(K):
                    hsb[k] += t[0, k]
            for k in range(K):
                R[r, k] = t[0, k]
        for r in range(n):
            if sample_weight.shape[0] == 0 or sample_weight[blo + r] != 0.0:
                _csr_row_scatter_vec(indptr, indices, data, R, r, blo + r, dWT)
    return bad
