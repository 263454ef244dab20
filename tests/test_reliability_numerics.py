"""Numerical robustness: N * K beyond 2**31, extreme and non-finite values, K = 1, d = 1, very wide d.

Contract (docs/design.md, "Numerics"): finite, correct results wherever the true value is
finite; a ValueError naming the argument where the input itself is non-finite (NaN, +inf, or a row
of logits that is all -inf); -inf logits are masked classes, not errors.
"""

import numpy as np
import pytest
from _reliability import run_python
from conftest import F64_ROUNDING, assert_close, probability_floor

import fastsoftmax as fs
import reference as ref

DTYPES = [np.float64, np.float32]
ROW_FUNCTIONS = ["softmax", "log_softmax"]


def reference(name, *args, **kwargs):
    """The reference in plain NumPy may overflow on the way (Z - max for float32 near its limits) and
    say so with a RuntimeWarning, which this suite turns into errors; its result is still the one to
    compare with."""
    with np.errstate(all="ignore"):
        return getattr(ref, name)(*args, **kwargs)


def check_logit_functions(Z, y, smoothing=0.0, weights=None):
    """Every function of given logits against the reference: same finiteness, same values."""
    dtype = Z.dtype
    for name in ROW_FUNCTIONS:
        got = getattr(fs, name)(Z)
        want = reference(name, Z)
        assert got.dtype == dtype
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
        assert_close(got, want)
    kw = dict(sample_weight=weights, label_smoothing=smoothing)
    loss = fs.cross_entropy(Z, y, **kw)
    want_loss = reference("cross_entropy", Z, y, **kw)
    assert np.isfinite(loss) == np.isfinite(want_loss)
    assert_close(loss, want_loss, dtype)
    loss_g, dZ = fs.cross_entropy_grad(Z, y, **kw)
    assert_close(loss_g, loss, np.float64)  # both accumulate in float64
    assert np.isfinite(dZ).all()
    assert_close(dZ, reference("cross_entropy_grad", Z, y, **kw)[1])


# ---------------------------------------------------------------------------------------------------
# Huge arrays: N * K > 2**31
# ---------------------------------------------------------------------------------------------------

HUGE = dict(N=70000, d=16, K=32768, period=997)
HUGE_SPOT_ROWS = [0, 1, 65535, 65536, 65537, 69999]  # i * K crosses 2**31 at row 65536

HUGE_CODE = """
import json, time, numpy as np, fastsoftmax as fs, _reliability as r
X, W, b, y = r.huge_problem(**{kw})
fs.linear_cross_entropy(X[:64], W[:40], b[:40], y[:64] % 40)  # load kernels outside the measure
r.reset_peak_rss()
rss0 = r.vm_kib("VmRSS")
start = time.perf_counter()
loss, dW, db, dX = fs.linear_cross_entropy(X, W, b, y, return_dX=True)
seconds = time.perf_counter() - start
peak_kib = r.vm_kib("VmHWM") - rss0
np.savez({path!r}, loss=loss, dW=dW, db=db, dX=dX[{rows}])
print(json.dumps({{"seconds": seconds, "peak_extra_kib": peak_kib}}))
"""


def huge_reference(X, W, b, y, period, rows):
    """float64 loss, dW, db and dX[rows] of the periodic problem from its `period` distinct rows:
    row i of X and label i equal row and label i % period, so sample j < period stands for
    count[j] samples. Chunks keep the float64 logits at 64 MB."""
    N, K = X.shape[0], W.shape[0]
    count = np.bincount(np.arange(N) % period, minlength=period).astype(np.float64)
    Xu, yu = X[:period].astype(np.float64), y[:period]
    W64, b64 = W.astype(np.float64), b.astype(np.float64)
    G = np.empty((period, K))
    loss = 0.0
    for lo in range(0, period, 256):
        Zc = Xu[lo:lo + 256] @ W64.T + b64
        m = Zc.max(axis=1, keepdims=True)
        E = np.exp(Zc - m)
        s = E.sum(axis=1, keepdims=True)
        r = np.arange(Zc.shape[0])
        yc = yu[lo:lo + 256]
        loss += float((count[lo:lo + 256] * (np.log(s[:, 0]) + m[:, 0] - Zc[r, yc])).sum())
        P = E / s
        P[r, yc] -= 1.0
        G[lo:lo + 256] = P / N
    Gw = G * count[:, None]
    return loss / N, Gw.T @ Xu, Gw.sum(axis=0), G[np.asarray(rows) % period] @ W64


@pytest.mark.slow
def test_linear_cross_entropy_beyond_2_31_elements(tmp_path):
    """N * K = 2.29e9 > 2**31 logits (float32: 9.2 GB if held) without ever holding them: loss, dW,
    db and rows of dX on both sides of row 65536 (where i * K crosses 2**31) match a float64
    computation, and the peak extra memory is a small fraction of one N x K array."""
    N, K = HUGE["N"], HUGE["K"]
    assert N * K > 2**31
    path = tmp_path / "huge.npz"
    code = HUGE_CODE.format(kw=HUGE, path=str(path), rows=HUGE_SPOT_ROWS)
    report = run_python(code, timeout=420).json()
    got = np.load(path)
    X, W, b, y = _huge_inputs()
    loss, dW, db, dX = huge_reference(X, W, b, y, HUGE["period"], HUGE_SPOT_ROWS)
    print(f"N*K = {N * K:.3g}: {report['seconds']:.1f} s, "
          f"peak extra {report['peak_extra_kib'] / 1024:.0f} MiB")
    assert_close(got["loss"], loss, np.float32)
    assert_close(got["dW"], dW, np.float32)
    assert_close(got["db"], db, np.float32)
    assert_close(got["dX"], dX, np.float32)
    one_nk_array_kib = N * K * 4 / 1024
    assert report["peak_extra_kib"] < one_nk_array_kib / 32, report


def _huge_inputs():
    from _reliability import huge_problem

    return huge_problem(**HUGE)


# ---------------------------------------------------------------------------------------------------
# Extreme logits
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1e4, 1e30])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_huge_magnitude_logits(rng, dtype, scale, smoothing):
    """Logits of magnitude 1e4 and 1e30: the softmax is (nearly) one-hot, the loss is of the size of
    the logits, and everything matches the reference."""
    Z = (rng.normal(size=(300, 9)) * scale).astype(dtype)
    y = rng.integers(0, 9, 300)
    check_logit_functions(Z, y, smoothing, weights=rng.uniform(0, 2, 300))


@pytest.mark.parametrize("dtype", DTYPES)
def test_float32_near_overflow(rng, dtype):
    """Values up to the largest float32 (so Z - max overflows to -inf in float32 arithmetic): finite
    probabilities and gradients, a loss that is finite in the float64 it is accumulated in."""
    big = np.finfo(np.float32).max
    Z = rng.uniform(-1, 1, size=(200, 6)) * big
    Z[:, 0] = big
    Z[::3, 1] = -big
    Z = Z.astype(dtype)
    y = rng.integers(0, 6, 200)
    for smoothing in (0.0, 0.3):
        check_logit_functions(Z, y, smoothing)
        assert np.isfinite(fs.cross_entropy(Z, y, label_smoothing=smoothing))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 2, 17, 300])
def test_rows_masked_except_the_label(dtype, k):
    """Every logit -inf but the label's: probability exactly one-hot, loss and gradient exactly 0; with
    label smoothing the true loss is +inf (mass on a class of probability 0) and the gradient stays
    finite."""
    n = 130
    y = np.arange(n) % k
    Z = np.full((n, k), -np.inf, dtype=dtype)
    Z[np.arange(n), y] = np.linspace(-1e4, 1e4, n)
    P = fs.softmax(Z)
    np.testing.assert_array_equal(P, np.eye(k, dtype=dtype)[y])
    L = fs.log_softmax(Z)
    np.testing.assert_array_equal(L, np.where(P == 1, 0, -np.inf).astype(dtype))
    assert fs.cross_entropy(Z, y) == 0.0
    loss, dZ = fs.cross_entropy_grad(Z, y)
    assert loss == 0.0 and not dZ.any()
    loss, dZ = fs.cross_entropy_grad(Z, y, label_smoothing=0.1)
    assert loss == (np.inf if k > 1 else 0.0)
    assert np.isfinite(dZ).all()
    assert_close(dZ, reference("cross_entropy_grad", Z, y, label_smoothing=0.1)[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", [0.0, -7.5, 1e4, -1e4, 1e30, -1e30, 3e38, -3e38, -np.inf])
def test_all_equal_rows(dtype, value):
    """A row of equal logits is uniform: p = 1/K, loss = log K; all -inf is the one undefined row."""
    k = 7
    Z = np.full((70, k), value, dtype=dtype)
    y = np.arange(70) % k
    if value == -np.inf:
        for call in (lambda: fs.softmax(Z), lambda: fs.log_softmax(Z),
                     lambda: fs.cross_entropy(Z, y), lambda: fs.cross_entropy_grad(Z, y)):
            with pytest.raises(ValueError, match="every entry -inf"):
                call()
        return
    assert_close(fs.softmax(Z), np.full(Z.shape, 1 / k))
    assert_close(fs.log_softmax(Z), np.full(Z.shape, -np.log(k)))
    assert_close(fs.cross_entropy(Z, y, label_smoothing=0.2), np.log(k), dtype)
    check_logit_functions(Z, y, 0.2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_subnormals(dtype):
    """Subnormal logits behave like zeros (uniform rows), and probabilities that underflow into the
    subnormal range are not flushed to zero (no flush-to-zero / denormals-are-zero mode)."""
    tiny = np.finfo(dtype).smallest_subnormal
    Z = (np.arange(60).reshape(12, 5) % 4 * tiny).astype(dtype)
    y = np.arange(12) % 5
    check_logit_functions(Z, y, 0.1)
    # p = exp(-gap) / (1 + exp(-gap)): subnormal for this gap
    gap = {np.dtype(np.float64): 740.0, np.dtype(np.float32): 95.0}[np.dtype(dtype)]
    Z = np.array([[0.0, -gap]] * 70, dtype=dtype)
    P = fs.softmax(Z)
    assert 0 < P[0, 1] < np.finfo(dtype).smallest_normal
    assert_close(P, reference("softmax", Z))
    loss, dZ = fs.cross_entropy_grad(Z, np.zeros(70, dtype=int))
    assert 0 < dZ[0, 1] < np.finfo(dtype).smallest_normal
    # subnormal data in the linear layer
    X = np.full((40, 3), tiny, dtype=dtype)
    W = np.ones((5, 3), dtype=dtype)
    loss, dW, db = fs.linear_cross_entropy(X, W, np.zeros(5, dtype), np.arange(40) % 5)
    assert_close(loss, np.log(5), dtype)
    assert np.isfinite(dW).all() and np.isfinite(db).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1 / 3, 0.7, 1.0])
def test_single_class_is_exactly_zero(rng, dtype, smoothing):
    """K = 1: probability 1, log-probability 0, loss exactly 0 and every gradient exactly 0, whatever
    the logits, weights or smoothing."""
    n, d = 150, 6
    Z = (rng.normal(size=(n, 1)) * 1e4).astype(dtype)
    y = np.zeros(n, dtype=int)
    w = rng.uniform(0, 3, n)
    assert (fs.softmax(Z) == 1).all()
    assert (fs.log_softmax(Z) == 0).all()
    for reduction in ("mean", "sum"):
        kw = dict(sample_weight=w, label_smoothing=smoothing, reduction=reduction)
        assert fs.cross_entropy(Z, y, **kw) == 0.0
        loss, dZ = fs.cross_entropy_grad(Z, y, **kw)
        assert loss == 0.0 and not dZ.any()
        X = rng.normal(size=(n, d)).astype(dtype)
        W = rng.normal(size=(1, d)).astype(dtype)
        loss, dW, db, dX = fs.linear_cross_entropy(X, W, W[:, 0], y, **kw, return_dX=True)
        assert loss == 0.0 and not dW.any() and not db.any() and not dX.any()
        assert (fs.linear_softmax(X, W, None) == 1).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [5, 40], ids=["small-K", "tiled"])
@pytest.mark.parametrize("d", [1, 100_000])
def test_extreme_widths(rng, dtype, k, d):
    """d = 1 and d = 100000 features on both linear paths match the reference."""
    n = 1000 if d == 1 else 37
    X = rng.normal(size=(n, d)).astype(dtype)
    W = (rng.normal(size=(k, d)) / np.sqrt(d)).astype(dtype)
    b = rng.normal(size=k).astype(dtype)
    y = rng.integers(0, k, n)
    kw = dict(sample_weight=rng.uniform(0, 1, n), label_smoothing=0.1, alpha=0.01)
    got = fs.linear_cross_entropy(X, W, b, y, **kw, return_dX=True)
    want = ref.linear_cross_entropy(X, W, b, y, **kw, return_dX=True)
    assert_close(got[0], want[0], dtype)
    for a, e in zip(got[1:], want[1:], strict=True):
        assert a.dtype == dtype
        assert_close(a, e)
    assert_close(fs.linear_softmax(X, W, b), ref.linear_softmax(X, W, b))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [5, 40], ids=["small-K", "tiled"])
def test_linear_layer_extremes(rng, dtype, k):
    """The linear layer with logits of magnitude 1e4 (large weights), a class masked by a -inf bias,
    and weights near the float32 limit whose logits are still finite."""
    n, d = 300, 4
    X = rng.normal(size=(n, d)).astype(dtype)
    W = (rng.normal(size=(k, d)) * 3e3).astype(dtype)
    b = rng.normal(size=k).astype(dtype)
    b[1] = -np.inf  # class 1 can never be predicted
    y = rng.integers(0, k, n)
    y[y == 1] = 0
    for bias in (b, None):
        got = fs.linear_cross_entropy(X, W, bias, y, label_smoothing=0.0)
        want = reference("linear_cross_entropy", X, W, bias, y)
        assert np.isfinite(got[0]) and all(np.isfinite(a).all() for a in got[1:] if a is not None)
        assert_close(got[0], want[0], dtype)
        for a, e in zip(got[1:], want[1:], strict=True):
            if a is not None:
                assert_close(a, e)
        P, want_P = fs.linear_softmax(X, W, bias), reference("linear_softmax", X, W, bias)
        assert_close(P, want_P, floor=probability_floor(want_P, X, W, bias))
    # |logits| up to about 1e38: the largest finite float32 products
    X = rng.choice([-1.0, 1.0], size=(n, 1)).astype(dtype) * 1e19
    W = rng.uniform(-10, 10, size=(k, 1)).astype(dtype) * 1e18
    got = fs.linear_cross_entropy(X, W, None, y)
    want = reference("linear_cross_entropy", X, W, None, y)
    assert np.isfinite(got[0]) and np.isfinite(got[1]).all()
    assert_close(got[0], want[0], dtype)
    assert_close(got[1], want[1])
    assert_close(fs.linear_softmax(X, W, None), reference("linear_softmax", X, W, None))


@pytest.mark.parametrize("smoothing", [0.1, 1.0])
def test_float64_near_overflow_with_label_smoothing(smoothing):
    """The smoothing term mean_k(-log p_k) of float64 logits near the float64 limit: the raw row sum
    would overflow (and its mean minus the max cancel catastrophically for any large logits)."""
    Z = np.array([[1e308, 1e308, 1e308], [1e308, 1e308, 0.0], [-1e308, -1e308, -1e308]])
    y = np.array([0, 2, 1])
    check_logit_functions(Z, y, smoothing)
    losses = fs.cross_entropy(Z, y, label_smoothing=smoothing, reduction="none")
    assert_close(losses[[0, 2]], [np.log(3), np.log(3)])


# ---------------------------------------------------------------------------------------------------
# Non-finite input: a clear ValueError naming the argument
# ---------------------------------------------------------------------------------------------------


def _logits_case(value, where):
    Z = np.zeros((130, 4))
    if where == "row":
        Z[70, :] = value
    else:
        Z[70, 2] = value
    return Z


NONFINITE_LOGITS = [
    ("NaN", lambda: _logits_case(np.nan, "entry"), "NaN or \\+inf"),
    ("+inf", lambda: _logits_case(np.inf, "entry"), "NaN or \\+inf"),
    ("all -inf", lambda: _logits_case(-np.inf, "row"), "every entry -inf"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", NONFINITE_LOGITS, ids=[c[0] for c in NONFINITE_LOGITS])
@pytest.mark.parametrize("name", ["softmax", "log_softmax", "cross_entropy", "cross_entropy_grad"])
def test_nonfinite_logits_raise(name, case, dtype):
    Z = case[1]().astype(dtype)
    args = (Z,) if name in ROW_FUNCTIONS else (Z, np.zeros(len(Z), dtype=int))
    with pytest.raises(ValueError, match=f"Z has 1 row\\(s\\) with .*{case[2]}"):
        getattr(fs, name)(*args)


NONFINITE_LINEAR = [
    ("X", np.nan), ("X", np.inf), ("X", -np.inf),
    ("W", np.nan), ("W", np.inf), ("W", -np.inf),
    ("b", np.nan), ("b", np.inf),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [5, 40], ids=["small-K", "tiled"])
@pytest.mark.parametrize("arg,value", NONFINITE_LINEAR,
                         ids=[f"{a}={v}" for a, v in NONFINITE_LINEAR])
def test_nonfinite_linear_inputs_raise(rng, arg, value, k, dtype):
    n, d = 130, 3
    inputs = {"X": rng.normal(size=(n, d)).astype(dtype),
              "W": rng.normal(size=(k, d)).astype(dtype),
              "b": rng.normal(size=k).astype(dtype)}
    inputs[arg].flat[inputs[arg].size // 2] = value
    y = rng.integers(0, k, n)
    X, W, b = inputs["X"], inputs["W"], inputs["b"]
    message = f"{arg} contains NaN or infinity"
    with pytest.raises(ValueError, match=message):
        fs.linear_cross_entropy(X, W, b, y)
    with pytest.raises(ValueError, match=message):
        fs.linear_cross_entropy(X, W, b, y, return_dX=True, alpha=1.0)
    with pytest.raises(ValueError, match=message):
        fs.linear_softmax(X, W, b)


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("name", ["cross_entropy", "cross_entropy_grad", "linear_cross_entropy"])
def test_nonfinite_sample_weight_raises(name, value):
    w = np.ones(10)
    w[3] = value
    args = (np.zeros((10, 3)), np.zeros(10, int))
    if name == "linear_cross_entropy":
        args = (np.zeros((10, 2)), np.zeros((3, 2)), None, np.zeros(10, int))
    with pytest.raises(ValueError, match="sample_weight must be finite"):
        getattr(fs, name)(*args, sample_weight=w)


# ---------------------------------------------------------------------------------------------------
# Extreme sample weights (issue 10): the mean is scale invariant, the sum overflows with a message
# ---------------------------------------------------------------------------------------------------

EXTREME_WEIGHTS = {
    "all 5e-324": lambda w: np.full_like(w, 5e-324),
    "all 1e308": lambda w: np.full_like(w, 1e308),
    "mixed huge": lambda w: np.where(np.arange(len(w)) % 2, 1e308, w),
    "2**-1000 w": lambda w: np.ldexp(w, -1000),
    "2**1000 w": lambda w: np.ldexp(w, 1000),
}


def _mean_calls(dtype, k, rng):
    n, d = 150, 5
    Z = (rng.normal(size=(n, k)) * 3).astype(dtype)
    X = rng.normal(size=(n, d)).astype(dtype)
    W = rng.normal(size=(k, d)).astype(dtype)
    b = rng.normal(size=k).astype(dtype)
    y = rng.integers(0, k, n)
    kw = dict(label_smoothing=0.1)
    return rng.uniform(0.5, 2, n), {
        "cross_entropy": lambda impl, w: impl.cross_entropy(Z, y, sample_weight=w, **kw),
        "cross_entropy_grad": lambda impl, w: impl.cross_entropy_grad(Z, y, sample_weight=w, **kw),
        "linear_cross_entropy": lambda impl, w: impl.linear_cross_entropy(
            X, W, b, y, sample_weight=w, alpha=0.1, return_dX=True, **kw),
    }


def _flat(result):
    return [np.asarray(r) for r in (result if isinstance(result, tuple) else (result,))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [5, 40], ids=["small-K", "tiled"])
@pytest.mark.parametrize("case", list(EXTREME_WEIGHTS))
def test_extreme_weights_mean_is_scale_invariant(rng, case, k, dtype):
    """Legal weights of any scale: the mean loss and gradients are finite, match the reference and
    the same weights rescaled to order one, bitwise so where the rescaling is a power of two (exact).
    Before the fix: infinite gradients (5e-324), or a NaN loss and a zero gradient (1e308)."""
    w, calls = _mean_calls(dtype, k, rng)
    extreme = EXTREME_WEIGHTS[case](w)
    exact = {"2**-1000 w": w, "2**1000 w": w, "all 5e-324": np.ones_like(w)}.get(case)
    for name, call in calls.items():
        got = _flat(call(fs, extreme))
        want = _flat(call(ref, extreme))
        rescaled = _flat(call(fs, extreme / extreme.max()))
        for g, v, r in zip(got, want, rescaled, strict=True):
            assert np.isfinite(g).all(), name
            assert_close(g, v, dtype, floor=F64_ROUNDING)
            assert_close(g, r, dtype, floor=F64_ROUNDING)
        if exact is not None:
            for g, e in zip(got, _flat(call(fs, exact)), strict=True):
                np.testing.assert_array_equal(g, e, err_msg=name)


def test_sum_of_subnormal_weights_is_rounded_once(rng):
    """reduction="sum" with all weights 5e-324 (2**-1074): the loss is the unweighted sum times
    2**-1074 rounded once, not a sum of per-sample products each rounded to a multiple of 5e-324."""
    Z = rng.normal(size=(50, 4))
    y = rng.integers(0, 4, 50)
    w = np.full(50, 5e-324)
    plain = fs.cross_entropy(Z, y, reduction="sum")
    assert fs.cross_entropy(Z, y, sample_weight=w, reduction="sum") == np.ldexp(plain, -1074)
    loss, dZ = fs.cross_entropy_grad(Z, y, sample_weight=w, reduction="sum")
    assert loss == np.ldexp(fs.cross_entropy_grad(Z, y, reduction="sum")[0], -1074)
    assert np.isfinite(dZ).all()


def _sum_calls(Z, X, W, y, w, dtype=np.float64):
    Z, X, W = Z.astype(dtype), X.astype(dtype), W.astype(dtype)
    return {
        "cross_entropy": lambda: fs.cross_entropy(Z, y, sample_weight=w, reduction="sum"),
        "cross_entropy none": lambda: fs.cross_entropy(Z, y, sample_weight=w, reduction="none"),
        "cross_entropy_grad": lambda: fs.cross_entropy_grad(Z, y, sample_weight=w,
                                                            reduction="sum"),
        "linear_cross_entropy": lambda: fs.linear_cross_entropy(X, W, None, y, sample_weight=w,
                                                                reduction="sum"),
    }


@pytest.mark.parametrize("dtype", DTYPES)
def test_weighted_sum_beyond_range_names_sample_weight(rng, dtype):
    """Weights of 1e308 with reduction="sum" (or "none"): the true sum exceeds the float64 range
    (and float32 gradients cannot hold 1e308): a ValueError naming sample_weight, never a silent
    inf or NaN. Before the fix the loss was inf or NaN."""
    Z = rng.normal(size=(50, 4)) + 3.0 * (np.arange(4) == 1)
    y = np.zeros(50, dtype=int)  # every loss > 2: 1e308 * loss overflows
    X, W = rng.normal(size=(50, 3)), rng.normal(size=(4, 3))
    for name, call in _sum_calls(Z, X, W, y, np.full(50, 1e308), dtype).items():
        with pytest.raises(ValueError, match="sample_weight") as info:
            call()
        assert "reduction='mean'" in str(info.value), name


def test_weighted_sum_within_range_is_exact():
    """1e308 weights whose weighted sum is representable give it; an infinite per-sample loss (a
    masked label) with such a weight is a true infinity, returned as such."""
    Z = np.zeros((3, 2))
    y = np.array([0, 1, 0])
    w = np.array([1e308, 0.0, 1e300])
    want = (1e308 + 1e300) * np.log(2)
    for name, call in _sum_calls(Z, np.zeros((3, 1)), np.zeros((2, 1)), y, w).items():
        result = call()
        loss = result[0] if isinstance(result, tuple) else result
        assert_close(np.sum(loss), want, np.float64)
        if name == "cross_entropy_grad":
            assert_close(result[1], [[-0.5e308, 0.5e308], [0.0, 0.0], [-0.5e300, 0.5e300]])
    Z[0, 0] = -np.inf
    assert fs.cross_entropy(Z, y, sample_weight=w, reduction="sum") == np.inf
    assert fs.cross_entropy(Z, y, sample_weight=w, reduction="none")[0] == np.inf
