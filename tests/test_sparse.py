"""Sparse X (scipy.sparse) through linear_cross_entropy and linear_softmax: against the dense call on
X.toarray() and against reference/ on the same sparse input, every option, every sparse format and
oddity, determinism across threads and twins, gradients, bad input."""

import numba
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import F64_ROUNDING, FD_RTOL, FD_STEP, assert_close, assert_unchanged, frozen
from hypothesis import given, settings
from hypothesis import strategies as st

import fastsoftmax as fs
import reference as ref
from fastsoftmax import _kernels as _k
from fastsoftmax import _kernels_sparse as _ks
from fastsoftmax import _sparse, solvers
from fastsoftmax._parallel import KernelPair
from fastsoftmax._validation import check_sparse_linear

DTYPES = [np.float64, np.float32]


def make_sparse(rng, n, d, k, dtype, density=0.2, bias=True):
    """CSR X with random pattern and values of order one, W, b (or None), y."""
    X = sp.random(n, d, density=density, format="csr", dtype=np.float64, random_state=rng,
                  data_rvs=lambda size: rng.normal(size=size)).astype(dtype)
    W = rng.normal(size=(k, d)).astype(dtype)
    b = rng.normal(size=k).astype(dtype) if bias else None
    y = rng.integers(0, k, size=n)
    return X, W, b, y


def assert_results_close(got, want, dtype):
    assert isinstance(got[0], float)
    assert_close(got[0], want[0], dtype, floor=F64_ROUNDING)
    for g, v in zip(got[1:], want[1:], strict=True):
        if v is None:
            assert g is None
        else:
            assert g.dtype == dtype and g.shape == v.shape
            assert_close(g, v, dtype, floor=F64_ROUNDING)


def snapshot(X):
    """A copy of a sparse matrix, its arrays included, to prove it was not modified."""
    return X.copy()


def assert_sparse_unchanged(X, copy):
    assert X.format == copy.format and X.shape == copy.shape
    for name in ("data", "indices", "indptr", "row", "col"):
        if hasattr(X, name) and X.format in ("csr", "csc", "coo"):
            np.testing.assert_array_equal(getattr(X, name), getattr(copy, name))
    np.testing.assert_array_equal(X.toarray(), copy.toarray())


SHAPES = [(1, 3, 1), (67, 5, 2), (600, 40, 10), (301, 30, 33), (130, 12, 200)]
OPTIONS = [{}, {"label_smoothing": 0.1, "alpha": 0.3}, {"reduction": "sum", "alpha": 1e-2}]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,k", SHAPES, ids=[f"n={n}-d={d}-k={k}" for n, d, k in SHAPES])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "smooth+alpha", "sum"])
def test_matches_dense_and_reference(rng, threads, options, weighted, bias, n, d, k, dtype):
    X, W, b, y = make_sparse(rng, n, d, k, dtype, bias=bias)
    w = rng.uniform(0.1, 2.0, size=n) if weighted else None
    snap, copies = snapshot(X), frozen(W, b, y, w)
    got = fs.linear_cross_entropy(X, W, b, y, sample_weight=w, **options)
    assert_results_close(got, ref.linear_cross_entropy(X, W, b, y, sample_weight=w, **options),
                         dtype)
    assert_results_close(got, fs.linear_cross_entropy(X.toarray(), W, b, y, sample_weight=w,
                                                      **options), dtype)
    assert_sparse_unchanged(X, snap)
    assert_unchanged([W, b, y, w], copies)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,k", SHAPES, ids=[f"n={n}-d={d}-k={k}" for n, d, k in SHAPES])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_linear_softmax_matches_dense_and_reference(rng, threads, bias, n, d, k, dtype):
    X, W, b, _ = make_sparse(rng, n, d, k, dtype, bias=bias)
    snap = snapshot(X)
    P = fs.linear_softmax(X, W, b)
    assert P.dtype == dtype and P.shape == (n, k)
    assert_close(P, ref.linear_softmax(X, W, b))
    assert_close(P, fs.linear_softmax(X.toarray(), W, b))
    assert_sparse_unchanged(X, snap)


def _unsorted(X):
    """The same matrix with the stored entries of every row in reverse order."""
    Y = X.copy()
    for i in range(Y.shape[0]):
        lo, hi = Y.indptr[i], Y.indptr[i + 1]
        Y.indices[lo:hi] = Y.indices[lo:hi][::-1].copy()
        Y.data[lo:hi] = Y.data[lo:hi][::-1].copy()
    Y.has_sorted_indices = False
    return Y


def _duplicated(X):
    """The same matrix with every stored entry split into two duplicates (halves), not summed."""
    return sp.csr_matrix((np.repeat(X.data / 2, 2), np.repeat(X.indices, 2), X.indptr * 2),
                         shape=X.shape)


def _explicit_zeros(X):
    """The same matrix with a stored zero appended to every row (columns unsorted)."""
    n = X.shape[0]
    counts = np.diff(X.indptr)
    data = np.insert(X.data, X.indptr[1:], 0.0)
    indices = np.insert(X.indices, X.indptr[1:], np.arange(n) % X.shape[1])
    indptr = np.concatenate([[0], np.cumsum(counts + 1)])
    return sp.csr_matrix((data, indices, indptr), shape=X.shape)


def _int64(X):
    Y = X.copy()
    Y.indices, Y.indptr = Y.indices.astype(np.int64), Y.indptr.astype(np.int64)
    return Y


VARIANTS = {
    "csr": lambda X: X,
    "csc": lambda X: X.tocsc(),
    "coo": lambda X: X.tocoo(),
    "lil": lambda X: X.tolil(),
    "csr_array": sp.csr_array,
    "coo_array": lambda X: sp.coo_array(X),
    "int64-indices": _int64,
    "unsorted": _unsorted,
    "duplicates": _duplicated,
    "explicit-zeros": _explicit_zeros,
    "int-data": lambda X: (X * 4).astype(np.int32),
    "read-only": lambda X: _read_only(X.copy()),
}


def _read_only(X):
    for a in (X.data, X.indices, X.indptr):
        a.flags.writeable = False
    return X


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_formats_and_oddities(rng, variant, dtype):
    X, W, b, y = make_sparse(rng, 300, 25, 7, dtype, density=0.3)
    X.data[X.indptr[5]:X.indptr[6]] = 0  # an empty row
    X.data[X.indices == 3] = 0  # an empty column
    X.eliminate_zeros()
    assert X.nnz
    Xv = VARIANTS[variant](X)
    dense = Xv.toarray()
    out_dtype = np.float64 if variant == "int-data" else dtype
    W, b = W.astype(out_dtype), b.astype(out_dtype)
    snap = snapshot(Xv)
    got = fs.linear_cross_entropy(Xv, W, b, y, label_smoothing=0.05)
    assert_results_close(got, fs.linear_cross_entropy(dense, W, b, y, label_smoothing=0.05),
                         out_dtype)
    assert_close(fs.linear_softmax(Xv, W, b), fs.linear_softmax(dense, W, b), out_dtype)
    assert_sparse_unchanged(Xv, snap)


def test_mixed_dtypes_promote_to_float64(rng):
    X, W, b, y = make_sparse(rng, 40, 6, 3, np.float32)
    loss, dW, db = fs.linear_cross_entropy(X, W.astype(np.float64), b, y)
    assert dW.dtype == db.dtype == np.float64
    assert fs.linear_softmax(X.astype(np.float64), W, b).dtype == np.float64


@pytest.mark.parametrize("shape", [(0, 4), (5, 0), (0, 0)])
def test_empty_shapes(rng, shape):
    X = sp.csr_matrix(shape)
    W, b = rng.normal(size=(3, shape[1])), rng.normal(size=3)
    y = rng.integers(0, 3, size=shape[0])
    P = fs.linear_softmax(X, W, b)
    assert_close(P, fs.linear_softmax(X.toarray(), W, b))
    got = fs.linear_cross_entropy(X, W, b, y, reduction="sum")
    assert_results_close(got, fs.linear_cross_entropy(X.toarray(), W, b, y, reduction="sum"),
                         np.float64)


# ------------------------------------------------------------------------------------------------
# Determinism: chunks fixed by the problem size, partials merged in chunk order
# ------------------------------------------------------------------------------------------------


def _kernel_args(rng, dtype):
    X, W, b, y = make_sparse(rng, 3000, 40, 9, dtype, density=0.2)
    Xc, W, b, _ = check_sparse_linear(X, W, b)
    C = _sparse.sparse_chunks(3000, Xc.data.shape[0], 9, 40, W.dtype.itemsize)
    assert C >= 4  # several chunks, so that the merge order matters
    w = rng.uniform(0.5, 2.0, size=3000)
    WT = _sparse.padded_transpose(W)
    return (Xc.indptr, Xc.indices, Xc.data, WT, b, y.astype(np.intp), w, 0.1, 1.0 / 3000,
            np.empty(C), _sparse.aligned_workspace((C, 40, WT.shape[1]), dtype), np.empty((C, 9)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_parallel_and_serial_twins_are_bitwise_equal(rng, dtype):
    args = _kernel_args(rng, dtype)
    results = []
    for twin in (_ks._csr_linear_xent.parallel, _ks._csr_linear_xent.serial):
        outs = [a.copy() for a in args[-3:]]
        assert twin(*args[:-3], *outs, 128, 9) == 0
        dW = np.empty((9, 40), dtype)
        _ks._merge_dWT.serial(outs[1], dW, _ks.merge_block(9))
        results.append([outs[0], dW, outs[2]])
    for a, c in zip(*results, strict=True):
        np.testing.assert_array_equal(a, c)


def test_every_sparse_parallel_kernel_is_a_pair():
    pairs = {n: o for n, o in vars(_ks).items() if isinstance(o, KernelPair)}
    assert set(pairs) == {"_csr_linear_xent", "_merge_dWT", "_csr_linear_softmax",
                          "_csr_linear_hvp", "_transpose_padded", "_count_outside"}
    for name, obj in vars(_ks).items():
        if hasattr(obj, "targetoptions") and name not in vars(_k):
            assert not obj.targetoptions.get("parallel"), f"{name}: a parallel kernel without twin"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_calls_with_and_without_bias_share_one_specialization(rng, dtype):
    """The kernels receive the bias read-only whoever calls (the public functions, internal callers
    with writable arrays) and an absent one too, or each kind of call compiles (seconds,
    cold) a specialization of its own."""
    X = sp.random(40, 12, density=0.3, format="csr", random_state=1, dtype=dtype)
    y = rng.integers(0, 3, 40)
    W, b = rng.normal(size=(3, 12)).astype(dtype), rng.normal(size=3).astype(dtype)
    for bias in (b, None):
        fs.linear_cross_entropy(X, W, bias, y)
        fs.linear_softmax(X, W, bias)
    solvers.feature_curvature(X, W, b, np.empty(0), 40.0)  # an internal caller, b writable
    for pair in (_ks._csr_linear_xent, _ks._csr_linear_softmax):
        biases = {sig[4] for twin in (pair.parallel, pair.serial) for sig in twin.signatures
                  if getattr(sig[4], "dtype", None) == numba.from_dtype(dtype)}
        assert biases and all(not t.mutable for t in biases), (pair, biases)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_and_merge_twins_are_bitwise_equal(rng, dtype):
    X, W, b, _ = make_sparse(rng, 700, 600, 9, dtype, density=0.05)
    Xc, W, b, _ = check_sparse_linear(X, W, b)
    WT = _sparse.padded_transpose(W)
    outs = []
    for twin in (_ks._csr_linear_softmax.parallel, _ks._csr_linear_softmax.serial):
        out = np.empty((700, 9), dtype)
        assert twin(Xc.indptr, Xc.indices, Xc.data, WT, b, out) == 0
        outs.append(out)
    np.testing.assert_array_equal(*outs)
    parts = rng.normal(size=(5, 600, 12)).astype(dtype)  # 9 classes padded to 12 columns
    merged = []
    for twin in (_ks._merge_dWT.parallel, _ks._merge_dWT.serial):
        for block in (_ks.merge_block(9), 1, 7):  # the bits do not depend on the block
            dW = np.empty((9, 600), dtype)
            assert twin(parts, dW, block) == 0
            merged.append(dW)
    for other in merged[1:]:
        np.testing.assert_array_equal(merged[0], other)
    np.testing.assert_allclose(merged[0], parts[:, :, :9].astype(np.float64).sum(axis=0).T,
                               rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_identical_with_one_and_two_threads(rng, dtype):
    X, W, b, y = make_sparse(rng, 3000, 40, 9, dtype, density=0.2)
    w = rng.uniform(0.5, 2.0, size=3000)
    results = []
    previous = numba.get_num_threads()
    try:
        for n in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(n)
            loss, dW, db = fs.linear_cross_entropy(X, W, b, y, sample_weight=w, label_smoothing=0.1)
            results.append((np.array(loss), dW, db, fs.linear_softmax(X, W, b)))
    finally:
        numba.set_num_threads(previous)
    for a, c in zip(*results, strict=True):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_index_count_twins_count_both_ends(rng, index_dtype):
    n = 1000
    indices = rng.integers(-3, n + 3, size=200_003).astype(index_dtype)
    expected = int(((indices < 0) | (indices >= n)).sum())
    assert expected > 0
    for twin in (_ks._count_outside.parallel, _ks._count_outside.serial):
        assert twin(indices, n) == expected
        assert twin(indices[(indices >= 0) & (indices < n)], n) == 0
        assert twin(indices[:0], n) == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K, off, width", [(9, 0, 12), (9, 12, 12), (1, 3, 8), (8, 0, 8)])
def test_transpose_twins_write_their_columns_only(rng, dtype, K, off, width):
    W = rng.normal(size=(K, 700)).astype(dtype)
    expected = np.full((700, 30), np.nan, dtype)
    expected[:, off:off + K] = W.T
    expected[:, off + K:off + width] = 0
    for twin in (_ks._transpose_padded.parallel, _ks._transpose_padded.serial):
        WT = np.full((700, 30), np.nan, dtype)
        twin(W, WT, off, width)
        np.testing.assert_array_equal(WT, expected)


def test_padded_transpose_of_a_pair_is_both_blocks(rng):
    W, S = rng.normal(size=(2, 5, 33))
    WST = _sparse.padded_transpose(W, S)
    assert WST.shape == (33, 16) and WST.ctypes.data % 64 == 0
    np.testing.assert_array_equal(WST[:, :5], W.T)
    np.testing.assert_array_equal(WST[:, 8:13], S.T)
    assert not WST[:, 5:8].any() and not WST[:, 13:].any()


def test_gradient_beyond_float32_is_reported():
    """Finite logits, a weight gradient beyond float32's range: found by the merge's count of
    non-finite entries, a ValueError rather than an inf in dW."""
    X = sp.csr_matrix(np.full((4, 2), 3e38, dtype=np.float32))
    W = np.full((3, 2), 1e-38, dtype=np.float32)
    with pytest.raises(ValueError, match="overflow"):
        fs.linear_cross_entropy(X, W, None, np.zeros(4, dtype=int), reduction="sum")
    loss, dW, _ = fs.linear_cross_entropy(X[:1], W, None, np.zeros(1, dtype=int), reduction="sum")
    assert np.isfinite(dW).all() and np.isfinite(loss)


def test_partials_finite_in_float32_whose_sum_is_not_are_reported():
    """Two chunks, each partial finite in float32 (-2.56e38), their float64 sum (-5.12e38) beyond
    float32: inf only once stored into dW, which the merge's count finds."""
    n = 512
    assert _sparse.sparse_chunks(n, n, 8, 1, 4) == 2
    X = sp.csr_matrix(np.full((n, 1), 2e36, dtype=np.float32))
    W = np.zeros((2, 1), dtype=np.float32)
    with pytest.raises(ValueError, match="overflow"):
        fs.linear_cross_entropy(X, W, None, np.zeros(n, dtype=int), reduction="sum")
    loss, dW, _ = fs.linear_cross_entropy(X[: n // 2], W, None, np.zeros(n // 2, dtype=int),
                                          reduction="sum")
    assert np.isfinite(loss) and dW[0, 0] == pytest.approx(-2.56e38, rel=1e-5)


def test_merge_buffer_is_bounded_for_many_classes():
    assert _ks.merge_block(20) == _ks.MERGE_BLOCK
    for K in (1000, 10**5, 10**7):
        block = _ks.merge_block(K)
        assert block >= 1 and (block == 1 or block * K * 8 <= _ks.MERGE_BUFFER_BYTES)


def test_chunks_depend_on_size_only_and_bound_memory():
    for N, nnz, K, d, itemsize in [(10, 30, 3, 5, 8), (10**6, 5 * 10**7, 20, 2**17, 8),
                                   (800000, 6 * 10**7, 50, 47236, 4), (3000, 24000, 9, 40, 8)]:
        C = _sparse.sparse_chunks(N, nnz, K, d, itemsize)
        assert C & (C - 1) == 0 and 1 <= C <= _sparse.SPARSE_CHUNKS
        assert C == 1 or C * 2 * K * d * itemsize <= _sparse.SPARSE_WORK_BYTES
    # Two chunks whenever rows and memory allow, however few stored entries per feature; more
    # only with SPARSE_ENTRIES_PER_FEATURE entries per feature and chunk.
    assert _sparse.sparse_chunks(30000, 1_440_000, 20, 65536, 8) == 2
    assert _sparse.sparse_chunks(200000, 10**7, 24, 2**17, 4) == 2
    assert _sparse.sparse_chunks(800000, 6 * 10**7, 56, 47236, 4) == 4
    assert _sparse.sparse_chunks(256, 10**6, 20, 100, 8) == 1  # one chunk's rows


@pytest.mark.parametrize("dtype", DTYPES)
def test_loss_partials_count_the_padded_classes(rng, monkeypatch, dtype):
    """The loss + gradient's partials are n_features x Kp, n_classes padded to whole vectors (8
    float32, 4 float64): the chunk count must count Kp against the memory bound, not n_classes."""
    X, W, b, y = make_sparse(rng, 4000, 300, 1, dtype, density=0.3)
    itemsize = np.dtype(dtype).itemsize
    monkeypatch.setattr(_sparse, "SPARSE_WORK_BYTES", 2 * 4 * 300 * itemsize)  # 4 unpadded
    shapes, real = [], _sparse.aligned_workspace
    monkeypatch.setattr(_sparse, "aligned_workspace",
                        lambda shape, dt: shapes.append(shape) or real(shape, dt))
    fs.linear_cross_entropy(X, W, b, y)
    (C, d, Kp), = [s for s in shapes if len(s) == 3]
    assert Kp == _ks.VECTOR_BYTES // itemsize
    assert C == 1 or C * d * Kp * itemsize <= _sparse.SPARSE_WORK_BYTES // 2


# ------------------------------------------------------------------------------------------------
# Random sparsity patterns, gradients
# ------------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 80), d=st.integers(1, 30), k=st.integers(1, 12),
       density=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from(DTYPES), bias=st.booleans(), smoothing=st.sampled_from([0.0, 0.2]))
def test_random_patterns_match_reference(n, d, k, density, seed, dtype, bias, smoothing):
    rng = np.random.default_rng(seed)
    X, W, b, y = make_sparse(rng, n, d, k, dtype, density=density, bias=bias)
    got = fs.linear_cross_entropy(X, W, b, y, label_smoothing=smoothing)
    assert_results_close(got, ref.linear_cross_entropy(X, W, b, y, label_smoothing=smoothing),
                         dtype)
    assert_close(fs.linear_softmax(X, W, b), ref.linear_softmax(X, W, b), dtype)


def central_difference(f, A, idx):
    A1, A2 = A.copy(), A.copy()
    A1[idx] += FD_STEP
    A2[idx] -= FD_STEP
    return (f(A1) - f(A2)) / (2 * FD_STEP)


def test_finite_differences(rng):
    X, W, b, y = make_sparse(rng, 30, 6, 4, np.float64, density=0.4)
    kw = dict(sample_weight=rng.uniform(0.5, 2, size=30), label_smoothing=0.1, alpha=0.2)
    _, dW, db = fs.linear_cross_entropy(X, W, b, y, **kw)
    for idx in [(0, 0), (3, 5), (2, 1)]:
        fd = central_difference(lambda A: fs.linear_cross_entropy(X, A, b, y, **kw)[0], W, idx)
        assert dW[idx] == pytest.approx(fd, rel=FD_RTOL, abs=FD_RTOL)
    for idx in [0, 3]:
        fd = central_difference(lambda A: fs.linear_cross_entropy(X, W, A, y, **kw)[0], b, idx)
        assert db[idx] == pytest.approx(fd, rel=FD_RTOL, abs=FD_RTOL)


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def with_data(X, value):
    Y = X.copy()
    Y.data[1] = value
    return Y


def bad_index(X, value=None):
    Y = X.copy()
    Y.indices[0] = X.shape[1] + 3 if value is None else value
    return Y


def short_data(X):
    """X whose data lost its last stored entries (scipy checks nothing when .data is assigned)."""
    Y = X.copy()
    Y.data = Y.data[:-3].copy()
    return Y


def data_2d(X):
    Y = X.copy()
    Y.data = Y.data.reshape(-1, 1)
    return Y


BAD = [
    ("return_dX", lambda X, W, b, y: dict(X=X, return_dX=True), ValueError, "return_dX"),
    ("nan", lambda X, W, b, y: dict(X=with_data(X, np.nan)), ValueError, "X contains NaN"),
    ("inf", lambda X, W, b, y: dict(X=with_data(X, -np.inf)), ValueError, "X contains NaN"),
    ("sparse-y", lambda X, W, b, y: dict(y=sp.csr_matrix(y)), TypeError, "y must be a dense"),
    ("sparse-W", lambda X, W, b, y: dict(W=sp.csr_matrix(W)), TypeError, "W must be a dense"),
    ("sparse-W-dense-X", lambda X, W, b, y: dict(X=X.toarray(), W=sp.csr_matrix(W)), TypeError,
     "W must be a dense"),
    ("sparse-b", lambda X, W, b, y: dict(b=sp.csr_matrix(b)), TypeError, "b must be a dense"),
    ("sparse-weights", lambda X, W, b, y: dict(sample_weight=sp.csr_matrix(np.ones(len(y)))),
     TypeError, "sample_weight must be a dense"),
    ("1-D", lambda X, W, b, y: dict(X=sp.coo_array(np.ones(5))), ValueError, "X must be 2-D"),
    ("complex", lambda X, W, b, y: dict(X=X.astype(np.complex128)), TypeError, "X must hold real"),
    ("features", lambda X, W, b, y: dict(W=W[:, :-1]), ValueError, "features per class"),
    ("bad-index", lambda X, W, b, y: dict(X=bad_index(X)), ValueError, "column index"),
    ("negative-index", lambda X, W, b, y: dict(X=bad_index(X, -1)), ValueError, "column index"),
    ("index-at-d", lambda X, W, b, y: dict(X=bad_index(X, X.shape[1])), ValueError,
     "column index"),
    ("nan-W", lambda X, W, b, y: dict(W=np.where(W > 1, np.nan, W)), ValueError,
     "W contains NaN"),
    ("labels", lambda X, W, b, y: dict(y=y + 10), ValueError, "y holds label"),
    ("short-data", lambda X, W, b, y: dict(X=short_data(X)), ValueError,
     "indptr ends at .* its data holds"),
    ("2-D-data", lambda X, W, b, y: dict(X=data_2d(X)), ValueError,
     "indptr ends at .* its data holds"),
]


@pytest.mark.parametrize("case,change,exc,match", BAD, ids=[c[0] for c in BAD])
def test_bad_input(rng, case, change, exc, match):
    X, W, b, y = make_sparse(rng, 20, 6, 3, np.float64, density=0.5)
    kw = dict(X=X, W=W, b=b, y=y)
    kw.update(change(X, W, b, y))
    args = [kw.pop(name) for name in ("X", "W", "b", "y")]
    with pytest.raises(exc, match=match):
        fs.linear_cross_entropy(*args, **kw)
    if case in ("nan", "inf", "sparse-W", "sparse-b", "1-D", "complex", "features", "bad-index",
                "negative-index", "index-at-d", "short-data", "2-D-data"):
        with pytest.raises(exc, match=match):
            fs.linear_softmax(*args[:3])


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "cross_entropy", "cross_entropy_grad"])
def test_sparse_logits_are_refused_by_name(rng, name):
    Z = sp.random(5, 3, density=0.5, format="csr", random_state=rng)
    args = (Z,) if "softmax" in name else (Z, np.zeros(5, dtype=int))
    with pytest.raises(TypeError, match="Z must be a dense array, got a scipy.sparse"):
        getattr(fs, name)(*args)
