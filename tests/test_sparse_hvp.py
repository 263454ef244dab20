"""linear_cross_entropy_hvp on scipy.sparse X: against reference/ on the same sparse input (scipy's
products), against the dense product on X.toarray(), against finite differences of the sparse
gradient; every format and oddity; bitwise across threads and twins; inputs untouched; bad input."""

import numba
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import FD_RTOL, FD_STEP, assert_close, assert_unchanged, frozen
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sparse import (
    VARIANTS,
    assert_sparse_unchanged,
    bad_index,
    make_sparse,
    snapshot,
    with_data,
)

import fastsoftmax as fs
import reference as ref
from fastsoftmax import _kernels as _k
from fastsoftmax import _kernels_sparse as _ks
from fastsoftmax import _parallel, _sparse
from fastsoftmax import functional as F
from fastsoftmax._validation import check_sparse_linear

DTYPES = [np.float64, np.float32]


def make_hvp(rng, n, d, k, dtype, density=0.2, bias=True):
    """CSR X, the point (W, b), labels y and a direction (S, s_b), s_b None when b is."""
    X, W, b, y = make_sparse(rng, n, d, k, dtype, density=density, bias=bias)
    W = (W * 0.5).astype(dtype)
    S = rng.normal(size=(k, d)).astype(dtype)
    s_b = rng.normal(size=k).astype(dtype) if bias else None
    return X, W, b, y, S, s_b


def assert_hvp_close(got, want, dtype):
    HS, Hs_b = got
    assert HS.dtype == dtype and HS.shape == want[0].shape
    assert_close(HS, want[0], dtype)
    if want[1] is None:
        assert Hs_b is None
    else:
        assert Hs_b.dtype == dtype
        assert_close(Hs_b, want[1], dtype, scale=max(1.0, float(np.abs(want[0]).max(initial=0.0))))


# K = 1, 2, small, the dense path's BLAS threshold and above (sparse X has one kernel for all K).
SHAPES = [(1, 3, 1), (67, 5, 2), (600, 40, 10), (301, 30, F.SMALL_K_MAX + 1), (130, 12, 200)]
OPTIONS = [{}, {"label_smoothing": 0.1, "alpha": 0.3}, {"reduction": "sum", "alpha": 1e-2}]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,k", SHAPES, ids=[f"n={n}-d={d}-k={k}" for n, d, k in SHAPES])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "smooth+alpha", "sum"])
def test_matches_dense_and_reference(rng, threads, options, weighted, bias, n, d, k, dtype):
    X, W, b, y, S, s_b = make_hvp(rng, n, d, k, dtype, bias=bias)
    w = rng.uniform(0.1, 2.0, size=n) if weighted else None
    snap, copies = snapshot(X), frozen(W, b, y, S, s_b, w)
    got = fs.linear_cross_entropy_hvp(X, W, b, y, S, s_b, sample_weight=w, **options)
    assert_hvp_close(got, ref.linear_cross_entropy_hvp(X, W, b, y, S, s_b, sample_weight=w,
                                                       **options), dtype)
    assert_hvp_close(got, fs.linear_cross_entropy_hvp(X.toarray(), W, b, y, S, s_b,
                                                      sample_weight=w, **options), dtype)
    assert_sparse_unchanged(X, snap)
    assert_unchanged([W, b, y, S, s_b, w], copies)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 80), d=st.integers(1, 30), k=st.integers(1, 40),
       density=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from(DTYPES), bias=st.booleans(), weighted=st.booleans())
def test_random_patterns_match_reference(n, d, k, density, seed, dtype, bias, weighted):
    rng = np.random.default_rng(seed)
    X, W, b, y, S, s_b = make_hvp(rng, n, d, k, dtype, density=density, bias=bias)
    w = rng.uniform(0.0, 2.0, size=n) if weighted else None
    if w is not None and not w.sum() > 0:
        w[0] = 1.0
    got = fs.linear_cross_entropy_hvp(X, W, b, y, S, s_b, sample_weight=w, alpha=0.1)
    assert_hvp_close(got, ref.linear_cross_entropy_hvp(X, W, b, y, S, s_b, sample_weight=w,
                                                       alpha=0.1), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_formats_and_oddities(rng, variant, dtype):
    X, W, b, y, S, s_b = make_hvp(rng, 300, 25, 7, dtype, density=0.3)
    X.data[X.indptr[5]:X.indptr[6]] = 0  # an empty row
    X.data[X.indices == 3] = 0  # an empty column
    X.eliminate_zeros()
    Xv = VARIANTS[variant](X)
    out_dtype = np.float64 if variant == "int-data" else dtype
    W, b, S, s_b = (a.astype(out_dtype) for a in (W, b, S, s_b))
    snap = snapshot(Xv)
    got = fs.linear_cross_entropy_hvp(Xv, W, b, y, S, s_b)
    assert_hvp_close(got, fs.linear_cross_entropy_hvp(Xv.toarray(), W, b, y, S, s_b), out_dtype)
    assert_sparse_unchanged(Xv, snap)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("k", [2, 5, F.SMALL_K_MAX + 3])
def test_finite_differences_of_the_sparse_gradient(rng, k, bias):
    """HS is the directional derivative of the sparse (dW, db) along (S, s_b)."""
    X, W, b, y, S, s_b = make_hvp(rng, 150, 20, k, np.float64, density=0.3, bias=bias)
    kw = dict(sample_weight=rng.uniform(0.0, 2.0, size=150), alpha=0.2, label_smoothing=0.05)
    HS, Hs_b = fs.linear_cross_entropy_hvp(X, W, b, y, S, s_b, **kw)

    def grad(sign):
        shifted_b = None if b is None else b + sign * FD_STEP * s_b
        return fs.linear_cross_entropy(X, W + sign * FD_STEP * S, shifted_b, y, **kw)[1:]

    (dW_p, db_p), (dW_m, db_m) = grad(1), grad(-1)
    scale = float(np.abs(HS).max())
    np.testing.assert_allclose(HS, (dW_p - dW_m) / (2 * FD_STEP), rtol=FD_RTOL,
                               atol=FD_RTOL * scale)
    if bias:
        np.testing.assert_allclose(Hs_b, (db_p - db_m) / (2 * FD_STEP), rtol=FD_RTOL,
                                   atol=FD_RTOL * scale)


@pytest.mark.parametrize("shape", [(0, 4), (5, 0), (0, 0)])
def test_empty_shapes(rng, shape):
    X = sp.csr_matrix(shape)
    W, b = rng.normal(size=(3, shape[1])), rng.normal(size=3)
    S, s_b = rng.normal(size=(3, shape[1])), rng.normal(size=3)
    y = rng.integers(0, 3, size=shape[0])
    got = fs.linear_cross_entropy_hvp(X, W, b, y, S, s_b, reduction="sum", alpha=0.5)
    assert_hvp_close(got, fs.linear_cross_entropy_hvp(X.toarray(), W, b, y, S, s_b,
                                                      reduction="sum", alpha=0.5), np.float64)


def test_mixed_dtypes_give_float64(rng):
    X, W, b, y, S, s_b = make_hvp(rng, 40, 6, 3, np.float32)
    HS, Hs_b = fs.linear_cross_entropy_hvp(X, W, b, y, S.astype(np.float64), s_b)
    assert HS.dtype == Hs_b.dtype == np.float64
    want = ref.linear_cross_entropy_hvp(X, W, b, y, S.astype(np.float64), s_b)
    assert_hvp_close((HS, Hs_b), want, np.float64)


def test_labels_and_smoothing_do_not_change_it(rng):
    X, W, b, y, S, s_b = make_hvp(rng, 200, 15, 4, np.float64)
    base = fs.linear_cross_entropy_hvp(X, W, b, y, S, s_b)
    other = fs.linear_cross_entropy_hvp(X, W, b, (y + 1) % 4, S, s_b, label_smoothing=0.7)
    for a, c in zip(base, other, strict=True):
        np.testing.assert_array_equal(a, c)


# ------------------------------------------------------------------------------------------------
# Determinism: chunks fixed by the problem size, partials merged in chunk order
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_twins_are_bitwise_equal(rng, dtype):
    X, W, b, _, S, s_b = make_hvp(rng, 3000, 40, 9, dtype)
    Xc, W, b, _ = check_sparse_linear(X, W, b)
    C = _sparse.sparse_chunks(3000, Xc.data.shape[0], 9, 40, W.dtype.itemsize, width=3)
    assert C >= 4  # several chunks, so that the merge order matters
    w = rng.uniform(0.5, 2.0, size=3000)
    WT, ST = _sparse.padded_transpose(W), _sparse.padded_transpose(S)
    WST = np.ascontiguousarray(np.hstack([WT, ST]))
    results = []
    for twin in (_ks._csr_linear_hvp.parallel, _ks._csr_linear_hvp.serial):
        parts, hsb = np.empty((C, 40, WT.shape[1]), dtype), np.empty((C, 9))
        assert twin(Xc.indptr, Xc.indices, Xc.data, WST, b, s_b, w, 1 / 3000, parts, hsb, 128,
                    9) == 0
        HS = np.empty((9, 40), dtype)
        _ks._merge_dWT.serial(parts, HS, _ks.merge_block(HS.shape[0]))
        results.append((HS, hsb))
    for a, c in zip(*results, strict=True):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_identical_with_one_and_two_threads_and_serial(rng, monkeypatch, dtype):
    X, W, b, y, S, s_b = make_hvp(rng, 3000, 40, 9, dtype)
    w = rng.uniform(0.5, 2.0, size=3000)
    results = []
    previous = numba.get_num_threads()
    try:
        for n in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(n)
            results.append(fs.linear_cross_entropy_hvp(X, W, b, y, S, s_b, sample_weight=w))
    finally:
        numba.set_num_threads(previous)
    monkeypatch.setattr(_parallel, "_serial_only", True)
    results.append(fs.linear_cross_entropy_hvp(X, W, b, y, S, s_b, sample_weight=w))
    for HS, Hs_b in results[1:]:
        np.testing.assert_array_equal(HS, results[0][0])
        np.testing.assert_array_equal(Hs_b, results[0][1])


def test_chunks_bound_the_wider_workspace():
    for N, nnz, K, d, itemsize in [(10**6, 5 * 10**7, 20, 2**17, 8),
                                   (800000, 6 * 10**7, 50, 47236, 4), (3000, 24000, 9, 40, 8)]:
        C = _sparse.sparse_chunks(N, nnz, K, d, itemsize, width=3)
        assert C & (C - 1) == 0 and 1 <= C <= _sparse.SPARSE_CHUNKS
        assert C == 1 or C * 3 * K * d * itemsize <= _sparse.SPARSE_WORK_BYTES


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def _nan_first(a):
    a = a.copy()
    a.flat[0] = np.nan
    return a


BAD = [
    ("nan", dict(X=lambda X: with_data(X, np.nan)), ValueError, "X contains NaN"),
    ("inf", dict(X=lambda X: with_data(X, np.inf)), ValueError, "X contains NaN"),
    ("bad-index", dict(X=bad_index), ValueError, "column index"),
    ("1-D", dict(X=lambda X: sp.coo_array(np.ones(5))), ValueError, "X must be 2-D"),
    ("sparse-S", dict(S=sp.csr_matrix), TypeError, "S must be a dense"),
    ("sparse-W", dict(W=sp.csr_matrix), TypeError, "W must be a dense"),
    ("sparse-y", dict(y=sp.csr_matrix), TypeError, "y must be a dense"),
    ("S-shape", dict(S=lambda S: S[:, :-1]), ValueError, "S must have W's shape"),
    ("S-nan", dict(S=_nan_first), ValueError, "S contains NaN"),
    ("s_b-nan", dict(s_b=_nan_first), ValueError, "s_b contains NaN"),
    ("s_b-missing", dict(s_b=lambda s_b: None), ValueError, "s_b must be given"),
    ("W-nan", dict(W=_nan_first), ValueError, "W contains NaN"),
    ("b-nan", dict(b=_nan_first), ValueError, "b contains NaN"),
    ("features", dict(W=lambda W: W[:, :-1]), ValueError, "features per class"),
    ("labels", dict(y=lambda y: y + 10), ValueError, "y holds label"),
    ("reduction", dict(reduction=lambda r: "none"), ValueError, "reduction"),
]


@pytest.mark.parametrize("case,changes,exc,match", BAD, ids=[c[0] for c in BAD])
def test_bad_input(rng, case, changes, exc, match):
    X, W, b, y, S, s_b = make_hvp(rng, 20, 6, 3, np.float64, density=0.5)
    args = dict(X=X, W=W, b=b, y=y, S=S, s_b=s_b, reduction="mean")
    for name, change in changes.items():
        args[name] = change(args[name])
    snap, copies = snapshot(X), frozen(W, b, y, S, s_b)
    positional = [args.pop(n) for n in ("X", "W", "b", "y", "S", "s_b")]
    with pytest.raises(exc, match=match):
        fs.linear_cross_entropy_hvp(*positional, **args)
    assert_sparse_unchanged(X, snap)
    assert_unchanged([W, b, y, S, s_b], copies)


def test_overflowing_product_is_reported():
    X = sp.csr_matrix(np.full((4, 2), 1e200))
    with pytest.raises(ValueError, match="overflowed"):
        fs.linear_cross_entropy_hvp(X, np.zeros((3, 2)), None, [0, 1, 2, 0],
                                    np.full((3, 2), 1e200), None)


def test_the_kernel_module_declares_the_product_pair():
    assert isinstance(_ks._csr_linear_hvp, _parallel.KernelPair)
    assert _ks._row_hvp is _k._row_hvp  # the dense row pass, shared
