"""linear_cross_entropy_hvp: against the reference, finite differences of the gradient and
scikit-learn's Hessian-vector product; bitwise across threads and twins; inputs untouched; bad input."""

import contextlib

import numba
import numpy as np
import pytest
from conftest import FD_RTOL, FD_STEP, assert_close, assert_unchanged, frozen

import fastsoftmax as fs
import reference as ref
from fastsoftmax import _parallel
from fastsoftmax import functional as F

DTYPES = [np.float64, np.float32]
# Small K (the no-BLAS kernel, 1 and 2 included) and large K (BLAS tiles around the row pass).
KS = [1, 2, 7, F.SMALL_K_MAX, F.SMALL_K_MAX + 5]


@contextlib.contextmanager
def numba_threads(n):
    previous = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def make_problem(rng, n, d, k, dtype, bias=True, weighted=False):
    X = rng.normal(size=(n, d)).astype(dtype)
    W = (rng.normal(size=(k, d)) * 0.5).astype(dtype)
    S = rng.normal(size=(k, d)).astype(dtype)
    b = rng.normal(size=k).astype(dtype) if bias else None
    s_b = rng.normal(size=k).astype(dtype) if bias else None
    y = rng.integers(0, k, size=n)
    w = rng.uniform(0.0, 2.0, size=n) if weighted else None
    return X, W, b, y, S, s_b, w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("n", [1, 300])
def test_matches_reference(rng, dtype, k, bias, weighted, reduction, n):
    X, W, b, y, S, s_b, w = make_problem(rng, n, 11, k, dtype, bias, weighted)
    kwargs = dict(sample_weight=w, alpha=0.3, reduction=reduction, label_smoothing=0.1)
    HS, Hs_b = fs.linear_cross_entropy_hvp(X, W, b, y, S, s_b, **kwargs)
    HS_ref, Hs_b_ref = ref.linear_cross_entropy_hvp(X, W, b, y, S, s_b, **kwargs)
    assert HS.dtype == dtype and HS.shape == W.shape
    assert_close(HS, HS_ref, dtype)
    if bias:
        assert Hs_b.dtype == dtype
        assert_close(Hs_b, Hs_b_ref, dtype, scale=max(1.0, float(np.abs(HS_ref).max())))
    else:
        assert Hs_b is None and Hs_b_ref is None


@pytest.mark.parametrize("k", [3, F.SMALL_K_MAX + 5])
def test_no_samples_with_sum_is_the_penalty(rng, k):
    X, W, b, y, S, s_b, _ = make_problem(rng, 0, 4, k, np.float64)
    HS, Hs_b = fs.linear_cross_entropy_hvp(X, W, b, y, S, s_b, alpha=0.5, reduction="sum")
    np.testing.assert_array_equal(HS, 0.5 * S)
    np.testing.assert_array_equal(Hs_b, np.zeros(k))


@pytest.mark.parametrize("k", [3, F.SMALL_K_MAX + 5])
def test_label_smoothing_and_labels_do_not_change_it(rng, k):
    X, W, b, y, S, s_b, _ = make_problem(rng, 50, 5, k, np.float64)
    base = fs.linear_cross_entropy_hvp(X, W, b, y, S, s_b)
    other = fs.linear_cross_entropy_hvp(X, W, b, (y + 1) % k, S, s_b, label_smoothing=0.7)
    np.testing.assert_array_equal(base[0], other[0])
    np.testing.assert_array_equal(base[1], other[1])


@pytest.mark.parametrize("k", [2, 5, F.SMALL_K_MAX + 3])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_finite_differences_of_the_gradient(rng, k, bias):
    """HS is the directional derivative of (dW, db) along (S, s_b): central differences."""
    X, W, b, y, S, s_b, w = make_problem(rng, 120, 6, k, np.float64, bias, weighted=True)
    kwargs = dict(sample_weight=w, alpha=0.2, label_smoothing=0.05)
    HS, Hs_b = fs.linear_cross_entropy_hvp(X, W, b, y, S, s_b, **kwargs)
    h = FD_STEP

    def grad(sign):
        return fs.linear_cross_entropy(
            X, W + sign * h * S, None if b is None else b + sign * h * s_b, y, **kwargs)[1:]

    (dW_p, db_p), (dW_m, db_m) = grad(1), grad(-1)
    scale = float(np.abs(HS).max())
    np.testing.assert_allclose(HS, (dW_p - dW_m) / (2 * h), rtol=FD_RTOL, atol=FD_RTOL * scale)
    if bias:
        np.testing.assert_allclose(Hs_b, (db_p - db_m) / (2 * h), rtol=FD_RTOL,
                                   atol=FD_RTOL * scale)


@pytest.mark.parametrize("k", [3, F.SMALL_K_MAX + 3])
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_matches_scikit_learn(rng, k, fit_intercept, weighted):
    """scikit-learn's LinearModelLoss: coef and direction as (K, d + 1) with the intercept last,
    the loss normalized by sum(sample_weight), l2_reg_strength our alpha."""
    from sklearn._loss.loss import HalfMultinomialLoss
    from sklearn.linear_model._linear_loss import LinearModelLoss

    X, W, b, y, S, s_b, w = make_problem(rng, 200, 8, k, np.float64, fit_intercept, weighted)
    lml = LinearModelLoss(HalfMultinomialLoss(n_classes=k), fit_intercept=fit_intercept)
    coef = np.column_stack([W, b]) if fit_intercept else W.copy()
    direction = np.column_stack([S, s_b]) if fit_intercept else S.copy()
    _, hessp = lml.gradient_hessian_product(coef, X, y.astype(np.float64), sample_weight=w,
                                            l2_reg_strength=0.3)
    expected = hessp(direction)
    HS, Hs_b = fs.linear_cross_entropy_hvp(X, W, b, y, S, s_b, sample_weight=w, alpha=0.3)
    assert_close(HS, expected[:, :8], np.float64)
    if fit_intercept:
        assert_close(Hs_b, expected[:, 8], np.float64, scale=float(np.abs(expected).max()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k, slot_bytes", [(5, None), (F.SMALL_K_MAX + 5, None), (600, None),
                                           (F.SMALL_K_MAX + 5, 0), (600, 0)])
def test_same_bits_across_threads_and_twins(rng, monkeypatch, dtype, k, slot_bytes):
    """Same bits with 1 or 2 threads and on the serial twins; on the BLAS path with HS in slots
    and (slot_bytes=0) in blocks."""
    if slot_bytes is not None:
        monkeypatch.setattr(F, "SLOT_BYTES", slot_bytes)
    X, W, b, y, S, s_b, w = make_problem(rng, 700, 9, k, dtype, weighted=True)
    results = []
    for n_threads in (1, 2):
        with numba_threads(n_threads):
            results.append(fs.linear_cross_entropy_hvp(X, W, b, y, S, s_b, sample_weight=w))
    monkeypatch.setattr(_parallel, "_serial_only", True)
    results.append(fs.linear_cross_entropy_hvp(X, W, b, y, S, s_b, sample_weight=w))
    for HS, Hs_b in results[1:]:
        np.testing.assert_array_equal(HS, results[0][0])
        np.testing.assert_array_equal(Hs_b, results[0][1])


def test_kernel_twins_same_bits(rng):
    """The pairs' parallel and serial twins directly, on enough rows for several tasks."""
    from fastsoftmax import _kernels as K

    for dtype in DTYPES:
        X, W, b, _, S, s_b, w = make_problem(rng, 500, 7, 6, dtype, weighted=True)
        outs = []
        for twin in (K._linear_hvp_small.parallel, K._linear_hvp_small.serial):
            HS_parts = np.empty((4, 6, 7), dtype)
            hsb_parts = np.empty((4, 6))
            twin(X, np.concatenate([W, S]), b, s_b, w, 0.01, HS_parts, hsb_parts)
            outs.append((HS_parts, hsb_parts))
        for a, c in zip(outs[0], outs[1], strict=True):
            np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("k", [4, F.SMALL_K_MAX + 2])
def test_inputs_not_modified_and_layouts(rng, k):
    X, W, b, y, S, s_b, w = make_problem(rng, 90, 5, k, np.float64, weighted=True)
    Xf, Sf = np.asfortranarray(X), np.asfortranarray(S)
    for a in (Xf, W, b, S, s_b, w):
        a.flags.writeable = False
    copies = frozen(Xf, W, b, y, Sf, s_b, w)
    HS, Hs_b = fs.linear_cross_entropy_hvp(Xf, W, b, y, Sf, s_b, sample_weight=w)
    assert_unchanged([Xf, W, b, y, Sf, s_b, w], copies)
    HS_c, Hs_b_c = fs.linear_cross_entropy_hvp(X, W, b, y, S, s_b, sample_weight=w)
    np.testing.assert_array_equal(HS, HS_c)
    np.testing.assert_array_equal(Hs_b, Hs_b_c)


def test_mixed_dtypes_give_float64(rng):
    X, W, b, y, S, s_b, _ = make_problem(rng, 20, 3, 4, np.float32)
    HS, Hs_b = fs.linear_cross_entropy_hvp(X, W, b, y, S.astype(np.float64), s_b)
    assert HS.dtype == np.float64 and Hs_b.dtype == np.float64


_X, _W, _b = np.ones((3, 4)), np.zeros((2, 4)), np.zeros(2)
_y, _S, _sb = np.array([0, 1, 1]), np.ones((2, 4)), np.ones(2)


def _nan(a):
    a = a.astype(np.float64)
    a.flat[0] = np.nan
    return a


BAD = [
    ("S shape", dict(S=np.ones((3, 4))), ValueError, "S must have W's shape"),
    ("S 1-D", dict(S=np.ones(8)), ValueError, "S must be 2-D"),
    ("S strings", dict(S=np.array([["a"] * 4] * 2)), TypeError, "S must hold real"),
    ("S NaN", dict(S=_nan(_S)), ValueError, "S contains NaN"),
    ("s_b NaN", dict(s_b=_nan(_sb)), ValueError, "s_b contains NaN"),
    ("s_b shape", dict(s_b=np.ones(3)), ValueError, "s_b must have b's shape"),
    ("s_b missing", dict(s_b=None), ValueError, "s_b must be given"),
    ("s_b without b", dict(b=None), ValueError, "s_b must be None"),
    ("W NaN", dict(W=_nan(_W)), ValueError, "W contains NaN"),
    ("X NaN", dict(X=_nan(_X)), ValueError, "X contains NaN"),
    ("y out of range", dict(y=np.array([0, 2, 1])), ValueError, "y holds label 2"),
    ("alpha negative", dict(alpha=-1.0), ValueError, "alpha"),
    ("smoothing", dict(label_smoothing=2.0), ValueError, "label_smoothing"),
    ("reduction none", dict(reduction="none"), ValueError, "reduction"),
    ("weights negative", dict(sample_weight=np.array([1.0, -1.0, 1.0])), ValueError,
     "sample_weight"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input(case):
    _, changes, error, fragment = case
    args = dict(X=_X, W=_W, b=_b, y=_y, S=_S, s_b=_sb)
    args.update(changes)
    kwargs = {n: args.pop(n) for n in ("alpha", "label_smoothing", "reduction", "sample_weight")
              if n in args}
    copies = frozen(*args.values())
    with pytest.raises(error, match=fragment):
        fs.linear_cross_entropy_hvp(*args.values(), **kwargs)
    assert_unchanged(list(args.values()), copies)


@pytest.mark.parametrize("name", ["X", "W", "b"])
def test_nonfinite_point_named_on_the_blas_path(rng, name):
    args = dict(zip("X W b y S s_b".split(),
                    make_problem(rng, 10, 3, F.SMALL_K_MAX + 1, np.float64)[:6], strict=True))
    args[name] = _nan(args[name])
    with pytest.raises(ValueError, match=f"{name} contains NaN"):
        fs.linear_cross_entropy_hvp(*args.values())


def test_overflowing_product_is_reported():
    X = np.full((4, 2), 1e200)
    with pytest.raises(ValueError, match="overflowed"):
        fs.linear_cross_entropy_hvp(X, np.zeros((3, 2)), None, [0, 1, 2, 0], np.full((3, 2), 1e200),
                                    None)


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_pass_counts_bad_rows(dtype):
    """The dense row pass flags a row of logits holding NaN (which the max skips), +inf, or only
    -inf, and no finite row, with or without intercepts: its NaN test rides the exp loop."""
    from fastsoftmax import _kernels as K

    k = 5
    rows = np.array([[1, 2, np.nan, 0, -1], [0, np.inf, 1, 2, 3], [-np.inf] * k,
                     [-np.inf, 0, 1e30, -1e30, 2], [np.nan] * k, [0, 1, 2, 3, 4]], dtype)
    for bias in (np.empty(0, dtype), np.zeros(k, dtype)):
        A = np.hstack([rows, np.ones_like(rows)])
        hsb = np.zeros(bias.size)
        bad = K._hvp_block(A, k, bias, bias, np.empty(0), 1.0, 0, len(rows), 0, hsb)
        assert bad == 4
        np.testing.assert_allclose(A[5, k:].sum(), 0.0, atol=1e-6)  # p.(t - p.t) = 0 for t = 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_class_gives_exact_zero(rng, dtype):
    """With one class p = 1 and r = t - p.t is exactly 0, with the direction's intercept too (it
    came out 1.6e-16 in float64 when t = T + s_b was recomputed where r is made: reassociated)."""
    X, W, b, y, S, s_b, w = make_problem(rng, 7, 3, 1, dtype, weighted=True)
    HS, Hs_b = fs.linear_cross_entropy_hvp(X, W, b, y, S, s_b, sample_weight=w)
    assert not HS.any() and not Hs_b.any()
