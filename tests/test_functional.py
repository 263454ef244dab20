"""fastsoftmax's functional API against the NumPy reference, and its gradients against finite
differences."""


import numpy as np
import pytest
from conftest import (
    FD_RTOL,
    FD_STEP,
    assert_close,
    assert_unchanged,
    frozen,
    rtol_for,
    spy_twins,
)

import fastsoftmax as fs
import reference as ref
from fastsoftmax import _kernels as _k
from fastsoftmax import _validation as V
from fastsoftmax import functional as F
from fastsoftmax.datasets import make_synthetic

DTYPES = [np.float64, np.float32]


def make_logits(rng, n, k, dtype, order="C", scale=3.0):
    Z = (rng.normal(size=(n, k)) * scale).astype(dtype)
    return np.asfortranarray(Z) if order == "F" else Z


def make_linear(rng, n, d, k, dtype, bias=True):
    """X, W, b (None without bias), y of the project's one problem generator, drawn from `rng`;
    separation 1 keeps the logits of order one, as a linear layer at initialization gives."""
    X, y, W, b = make_synthetic(n, d, k, seed=rng, dtype=dtype, separation=1.0, coef=True)
    return X, W, b if bias else None, y


# ------------------------------------------------------------------------------------------------
# softmax / log_softmax
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (37, 1), (37, 2), (200, 10), (70, 1000)])
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_row_functions_match_reference(rng, threads, name, shape, order, dtype):
    Z = make_logits(rng, *shape, dtype, order)
    (Z0,) = frozen(Z)
    got = getattr(fs, name)(Z)
    want = getattr(ref, name)(Z)
    assert got.dtype == dtype and got.shape == shape
    assert_close(got, want)
    assert_unchanged([Z], [Z0])


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_row_functions_out_is_written_and_returned(rng, name):
    Z = make_logits(rng, 50, 7, np.float64)
    out = np.full_like(Z, np.nan)
    result = getattr(fs, name)(Z, out=out)
    assert result is out
    assert_close(out, getattr(ref, name)(Z))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_row_functions_in_place(rng, name):
    Z = make_logits(rng, 50, 7, np.float32)
    want = getattr(ref, name)(Z)
    result = getattr(fs, name)(Z, out=Z)
    assert result is Z
    assert_close(Z, want)


@pytest.mark.parametrize("K", [10, 40])
@pytest.mark.parametrize("dtype, level", [(np.float32, 1e4), (np.float64, 1e30)])
def test_log_softmax_of_equal_large_logits_is_minus_log_k(K, dtype, level):
    """(z - max) - log s in this order: folding max + log s first, rounded to the data dtype,
    loses log s against a large max (float32 logits 1e4 gave an error of 4e-4, float64 logits
    1e30 an error of log K)."""
    Z = np.full((3, K), level, dtype=dtype)
    np.testing.assert_array_equal(fs.log_softmax(Z), np.full((3, K), -np.log(K), dtype=dtype))


def test_softmax_non_contiguous_out_and_input(rng):
    big = make_logits(rng, 40, 12, np.float64)
    Z = big[::2, ::3]  # strided view
    out_big = np.zeros((20, 8))
    out = out_big[:, ::2]
    result = fs.softmax(Z, out=out)
    assert result is out
    assert_close(out, ref.softmax(Z))
    assert np.all(out_big[:, 1::2] == 0)  # nothing written outside the view


def test_softmax_read_only_input(rng):
    Z = make_logits(rng, 30, 4, np.float64)
    Z.flags.writeable = False
    assert_close(fs.softmax(Z), ref.softmax(Z))


def test_integer_and_list_inputs_become_float64():
    P = fs.softmax([[1, 2, 3], [0, 0, 0]])
    assert P.dtype == np.float64
    assert_close(P, ref.softmax(np.array([[1.0, 2, 3], [0, 0, 0]])))


def test_empty_batch():
    assert fs.softmax(np.empty((0, 3))).shape == (0, 3)
    assert fs.cross_entropy(np.empty((0, 3)), np.empty(0, int), reduction="sum") == 0.0
    assert fs.cross_entropy(np.empty((0, 3)), np.empty(0, int), reduction="none").shape == (0,)
    X, W = np.empty((0, 4)), np.ones((3, 4))
    loss, dW, db = fs.linear_cross_entropy(X, W, np.zeros(3), np.empty(0, int), reduction="sum",
                                           alpha=0.5)
    assert loss == pytest.approx(0.25 * 12)
    assert_close(dW, 0.5 * W)
    assert_close(db, np.zeros(3))
    assert fs.linear_softmax(X, W, None).shape == (0, 3)


# ------------------------------------------------------------------------------------------------
# cross_entropy / cross_entropy_grad
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("k", [1, 2, 10, 1000])
@pytest.mark.parametrize("n", [1, 129])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_grad_matches_reference(
    rng, threads, reduction, smoothing, weighted, n, k, order, dtype
):
    Z = make_logits(rng, n, k, dtype, order)
    y = rng.integers(0, k, size=n)
    w = rng.uniform(0.1, 2.0, size=n) if weighted else None
    kw = dict(sample_weight=w, label_smoothing=smoothing, reduction=reduction)
    copies = frozen(Z, y, w)
    loss, dZ = fs.cross_entropy_grad(Z, y, **kw)
    want_loss, want_dZ = ref.cross_entropy_grad(Z, y, **kw)
    assert isinstance(loss, float)
    assert dZ.dtype == dtype
    assert_close(loss, want_loss, dtype)
    assert_close(dZ, want_dZ)
    # loss-and-gradient equals the separate loss
    assert_close(fs.cross_entropy(Z, y, **kw), loss, dtype)
    assert_unchanged([Z, y, w], copies)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_none_reduction(rng, smoothing, dtype):
    Z = make_logits(rng, 64, 9, dtype)
    y = rng.integers(0, 9, size=64)
    w = rng.uniform(0, 2, size=64)
    got = fs.cross_entropy(Z, y, sample_weight=w, label_smoothing=smoothing, reduction="none")
    want = ref.cross_entropy(Z, y, sample_weight=w, label_smoothing=smoothing, reduction="none")
    assert got.dtype == dtype and got.shape == (64,)
    assert_close(got, want)


def test_cross_entropy_grad_out_and_in_place(rng):
    Z = make_logits(rng, 40, 6, np.float64)
    y = rng.integers(0, 6, size=40)
    want_loss, want = ref.cross_entropy_grad(Z, y)
    out = np.empty_like(Z)
    loss, dZ = fs.cross_entropy_grad(Z, y, out=out)
    assert dZ is out
    assert_close(out, want)
    loss2, dZ2 = fs.cross_entropy_grad(Z, y, out=Z)
    assert dZ2 is Z
    assert_close(Z, want)
    assert loss == loss2 == pytest.approx(want_loss, rel=rtol_for(np.float64))


def test_label_smoothing_one_is_uniform_target(rng):
    Z = make_logits(rng, 20, 5, np.float64)
    y = rng.integers(0, 5, size=20)
    loss, dZ = fs.cross_entropy_grad(Z, y, label_smoothing=1.0)
    want_loss, want = ref.cross_entropy_grad(Z, y, label_smoothing=1.0)
    assert_close(loss, want_loss)
    assert_close(dZ, want)


def test_masked_classes_and_huge_logits():
    Z = np.array([[0.0, -np.inf, 1.0, -np.inf], [1e4, -1e4, 0.0, 3e3], [-1e4, -1e4, -1e4, -1e4]])
    y = np.array([2, 0, 3])
    for dtype in DTYPES:
        Zd = Z.astype(dtype)
        loss, dZ = fs.cross_entropy_grad(Zd, y)
        want_loss, want = ref.cross_entropy_grad(Zd, y)
        assert np.isfinite(loss) and np.isfinite(dZ).all()
        assert_close(loss, want_loss, dtype)
        assert_close(dZ, want)
        assert dZ[0, 1] == 0 and dZ[0, 3] == 0
        P = fs.softmax(Zd)
        assert np.isfinite(P).all() and P[0, 1] == 0
        L = fs.log_softmax(Zd)
        assert L[0, 1] == -np.inf and np.isfinite(L[1]).all()


def test_label_on_masked_class_gives_infinite_loss_finite_grad():
    Z = np.array([[0.0, -np.inf, 1.0]])
    loss, dZ = fs.cross_entropy_grad(Z, [1])
    assert loss == np.inf
    assert np.isfinite(dZ).all()
    assert_close(dZ, ref.cross_entropy_grad(Z, [1])[1])


def test_zero_weight_rows_contribute_nothing(rng):
    Z = make_logits(rng, 10, 3, np.float64)
    Z[0, 1] = -np.inf
    y = np.array([1] + [0] * 9)  # row 0: label masked, infinite loss, but zero weight
    w = np.array([0.0] + [1.0] * 9)
    loss, dZ = fs.cross_entropy_grad(Z, y, sample_weight=w)
    want_loss, want = ref.cross_entropy_grad(Z[1:], y[1:])
    assert_close(loss, want_loss)
    assert np.all(dZ[0] == 0)
    assert_close(dZ[1:], want)


# ------------------------------------------------------------------------------------------------
# linear_cross_entropy / linear_softmax
# ------------------------------------------------------------------------------------------------

LINEAR_SHAPES = [(1, 3, 1), (1, 5, 2), (67, 5, 2), (300, 20, 10), (301, 8, 33), (130, 12, 1000)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,k", LINEAR_SHAPES, ids=[f"n={n}-d={d}-k={k}" for n, d, k in LINEAR_SHAPES])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1, "alpha": 0.3},
                                     {"reduction": "sum", "alpha": 1e-2}],
                         ids=["plain", "smooth+alpha", "sum"])
def test_linear_cross_entropy_matches_reference(rng, threads, options, weighted, bias, n, d, k,
                                                dtype):
    X, W, b, y = make_linear(rng, n, d, k, dtype, bias)
    w = rng.uniform(0.1, 2.0, size=n) if weighted else None
    copies = frozen(X, W, b, y, w)
    got = fs.linear_cross_entropy(X, W, b, y, sample_weight=w, return_dX=True, **options)
    want = ref.linear_cross_entropy(X, W, b, y, sample_weight=w, return_dX=True, **options)
    assert isinstance(got[0], float)
    assert_close(got[0], want[0], dtype)
    for g, v in zip(got[1:], want[1:], strict=True):
        if v is None:
            assert g is None
        else:
            assert g.dtype == dtype and g.shape == v.shape
            assert_close(g, v)
    without_dX = fs.linear_cross_entropy(X, W, b, y, sample_weight=w, **options)
    assert len(without_dX) == 3
    for g, v in zip(without_dX, got[:3], strict=True):
        assert_close(g, v, dtype) if v is not None else None
    assert_unchanged([X, W, b, y, w], copies)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,k", LINEAR_SHAPES, ids=[f"n={n}-d={d}-k={k}" for n, d, k in LINEAR_SHAPES])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_linear_softmax_matches_reference(rng, threads, bias, n, d, k, dtype):
    X, W, b, _ = make_linear(rng, n, d, k, dtype, bias)
    P = fs.linear_softmax(X, W, b)
    assert P.dtype == dtype
    assert_close(P, ref.linear_softmax(X, W, b))


@pytest.mark.parametrize("k", [5, 100])
def test_linear_layouts_and_mixed_dtypes(rng, k):
    X, W, b, y = make_linear(rng, 90, 7, k, np.float64)
    want = ref.linear_cross_entropy(X, W, b, y)
    for Xv, Wv in [(np.asfortranarray(X), W), (X, np.asfortranarray(W)),
                   (np.repeat(X, 2, axis=1)[:, ::2], W)]:
        got = fs.linear_cross_entropy(Xv, Wv, b, y)
        for g, v in zip(got, want, strict=True):
            assert_close(g, v, np.float64)
    # float32 data with float64 weights computes in float64
    got = fs.linear_cross_entropy(X.astype(np.float32), W, b, y)
    assert got[1].dtype == np.float64


@pytest.mark.parametrize("k", [3, 40], ids=["small-k", "tiled"])
def test_linear_without_features(rng, k):
    """d = 0: the logits are the bias alone (BLAS rejects empty operands; the tiled path skips it)."""
    X, W = np.empty((9, 0)), np.empty((k, 0))
    b, y = rng.normal(size=k), rng.integers(0, k, size=9)
    got = fs.linear_cross_entropy(X, W, b, y, return_dX=True, alpha=0.5)
    want = ref.linear_cross_entropy(X, W, b, y, return_dX=True, alpha=0.5)
    for g, v in zip(got, want, strict=True):
        assert_close(g, v, np.float64)
    assert_close(fs.linear_softmax(X, W, b), ref.linear_softmax(X, W, b))


@pytest.mark.parametrize("k", [3, 40], ids=["small-k", "tiled"])
def test_linear_many_tiles_and_chunks(rng, monkeypatch, k):
    """Force many small tiles / chunks so tile and chunk boundaries are exercised."""
    monkeypatch.setattr(F, "TILE_BYTES", 1)
    monkeypatch.setattr(F, "TILE_ROWS_MIN", 64)
    monkeypatch.setattr(F, "SMALL_K_CHUNK_ROWS", 7)
    X, W, b, y = make_linear(rng, 1000, 6, k, np.float64)
    w = rng.uniform(0, 1, size=1000)
    got = fs.linear_cross_entropy(X, W, b, y, sample_weight=w, return_dX=True)
    want = ref.linear_cross_entropy(X, W, b, y, sample_weight=w, return_dX=True)
    for g, v in zip(got, want, strict=True):
        assert_close(g, v, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 3, 10, F.SMALL_K_MAX, F.SMALL_K_MAX + 8])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_linear_rows_are_the_gathered_batch(rng, threads, weighted, bias, k, dtype):
    """The solvers' entry point on rows of X (read in place up to SMALL_K_MAX classes, gathered
    above) is bitwise the public function on the gathered batch X[rows], dX included."""
    X, W, b, y = make_linear(rng, 600, 37, k, dtype)
    b = b if bias else None
    w = rng.uniform(0, 2, size=600) if weighted else None
    rows = rng.permutation(600)[:301]  # three chunks of the small-K kernel: the parallel one
    want = fs.linear_cross_entropy(X[rows], W, b, y[rows], label_smoothing=0.1, alpha=0.3,
                                   sample_weight=None if w is None else w[rows], return_dX=True)
    X_in = V.as_float("X", X, X.dtype)
    y_in = V.readonly(y[rows].astype(np.intp))
    w_in = V.readonly(np.empty(0) if w is None else w[rows])
    denom = float(len(rows)) if w is None else float(w_in.sum())
    copies = frozen(X, W, b)
    got = F._linear_cross_entropy_checked(
        X_in, V.readonly(W), None if b is None else V.readonly(b), y_in, w_in, 0.1, 0.3, denom,
        return_dX=True, rows=V.readonly(rows.astype(np.intp)),
    )
    assert got[0] == want[0]
    for g, v in zip(got[1:], want[1:], strict=True):
        if v is None:
            assert g is None
        else:
            np.testing.assert_array_equal(g, v)
    assert_unchanged([X, W, b], copies)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_serial_twin_on_request(rng, monkeypatch, dtype):
    """``serial=True`` (fastsoftmax.torch's small problems) runs the small-K kernel's serial twin
    where the problem size picks the parallel one (256 x 784 x 10: two row chunks), with the same
    bits as the public function."""
    X, W, b, y = make_linear(rng, 256, 784, 10, dtype)
    want = fs.linear_cross_entropy(X, W, b, y, return_dX=True)
    twins = spy_twins(monkeypatch, _k._linear_xent_small)
    got = F._linear_cross_entropy_checked(
        V.as_float("X", X, X.dtype), V.readonly(W), V.readonly(b), V.readonly(y.astype(np.intp)),
        V.readonly(np.empty(0)), 0.0, 0.0, 256.0, return_dX=True, serial=True,
    )
    assert twins == ["serial"]
    assert got[0] == want[0]
    for g, v in zip(got[1:], want[1:], strict=True):
        np.testing.assert_array_equal(g, v)


def test_two_float32_partials_sum_as_through_float64(rng):
    """The small-K path adds two float32 partials of dW in float32: the same bits as their sum in
    float64 rounded to float32 (53 >= 2 * 24 + 2 bits make the double rounding innocuous), over
    every exponent, subnormals and overflow to infinity included."""
    bits = rng.integers(0, 2**32, size=(2, 2_000_000), dtype=np.uint64).astype(np.uint32)
    a, b = bits.view(np.float32)
    a = a[np.isfinite(a)]
    with np.errstate(over="ignore"):  # cancellation, and exponents equal or one apart
        close = (a * rng.uniform(-2, 2, a.size)).astype(np.float32)
    for other in (b[: a.size], close):
        keep = np.isfinite(other)
        with np.errstate(over="ignore"):
            direct = np.add(a[keep], other[keep])
            wide = np.add.reduce(np.stack([a[keep], other[keep]]), axis=0,
                                 dtype=np.float64).astype(np.float32)
        np.testing.assert_array_equal(direct.view(np.uint32), wide.view(np.uint32))


# ------------------------------------------------------------------------------------------------
# Finite differences (float64)
# ------------------------------------------------------------------------------------------------


def central_difference(f, A, index):
    A_plus, A_minus = A.copy(), A.copy()
    A_plus[index] += FD_STEP
    A_minus[index] -= FD_STEP
    return (f(A_plus) - f(A_minus)) / (2 * FD_STEP)


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_dZ_finite_differences(rng, smoothing, reduction):
    Z = make_logits(rng, 6, 5, np.float64, scale=1.0)
    y = rng.integers(0, 5, size=6)
    w = rng.uniform(0.5, 2, size=6)
    kw = dict(sample_weight=w, label_smoothing=smoothing, reduction=reduction)
    _, dZ = fs.cross_entropy_grad(Z, y, **kw)
    for k in range(5):  # one class column at a time (shifting a whole row changes nothing)
        for i in range(6):
            fd = central_difference(lambda A: fs.cross_entropy(A, y, **kw), Z, (i, k))
            assert dZ[i, k] == pytest.approx(fd, rel=FD_RTOL, abs=FD_RTOL)


@pytest.mark.parametrize("k", [4, 40], ids=["small-k", "tiled"])
def test_linear_finite_differences(rng, k):
    X, W, b, y = make_linear(rng, 12, 3, k, np.float64)
    w = rng.uniform(0.5, 2, size=12)
    kw = dict(sample_weight=w, label_smoothing=0.1, alpha=0.2)
    _, dW, db, dX = fs.linear_cross_entropy(X, W, b, y, return_dX=True, **kw)

    def loss(X_=X, W_=W, b_=b):
        return fs.linear_cross_entropy(X_, W_, b_, y, **kw)[0]

    for idx in [(0, 0), (k - 1, 2), (k // 2, 1)]:
        assert dW[idx] == pytest.approx(
            central_difference(lambda A: loss(W_=A), W, idx), rel=FD_RTOL, abs=FD_RTOL)
    for idx in [0, k - 1]:
        assert db[idx] == pytest.approx(
            central_difference(lambda A: loss(b_=A), b, idx), rel=FD_RTOL, abs=FD_RTOL)
    for idx in [(0, 0), (11, 2), (5, 1)]:
        assert dX[idx] == pytest.approx(
            central_difference(lambda A: loss(X_=A), X, idx), rel=FD_RTOL, abs=FD_RTOL)
