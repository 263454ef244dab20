"""Fuzzing the whole public API against the reference: random shapes (both linear paths), dtypes
(float32, float64, mixed, integers), memory layouts (C, Fortran, strided, read-only), sample weights
(with zeros), label smoothing, reductions, L2 penalty, bias or none, dX or not.

Values come from a drawn seed through NumPy (fast, reproducible); the structure comes from hypothesis.
"""

import numpy as np
from conftest import F64_ROUNDING, assert_close, assert_unchanged, frozen
from hypothesis import given, settings
from hypothesis import strategies as st

import fastsoftmax as fs
import reference as ref
from fastsoftmax.functional import SMALL_K_MAX

EXAMPLES = 300
LAYOUTS = ["C", "F", "strided", "read-only"]


def laid_out(a: np.ndarray, layout: str) -> np.ndarray:
    """The same values in another memory layout."""
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "strided":
        wide = np.repeat(a, 2, axis=0)
        return wide[::2]
    if layout == "read-only":
        a = a.copy()
        a.flags.writeable = False
    return a


def result_dtype(*arrays):
    present = [a for a in arrays if a is not None]
    return np.float32 if all(a.dtype == np.float32 for a in present) else np.float64


@st.composite
def options(draw, reductions):
    weighted = draw(st.booleans())
    return dict(
        weighted=weighted,
        zero_weights=weighted and draw(st.booleans()),
        label_smoothing=draw(st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0))),
        reduction=draw(st.sampled_from(reductions)),
    )


def draw_labels_and_weights(rng, n, k, opts):
    y = rng.integers(0, k, n)
    w = None
    if opts["weighted"]:
        w = rng.uniform(0, 3, n)
        if opts["zero_weights"]:
            w[rng.random(n) < 0.3] = 0.0
        w[0] = 1.0  # the mean stays defined
    return y, w


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 150),
    k=st.integers(1, 60),
    dtype=st.sampled_from([np.float32, np.float64, np.int32, np.float16]),
    layout=st.sampled_from(LAYOUTS),
    scale=st.sampled_from([0.1, 3.0, 50.0]),
    opts=options(["mean", "sum", "none"]),
    masked=st.booleans(),
)
def test_fuzz_functions_of_logits(seed, n, k, dtype, layout, scale, opts, masked):
    rng = np.random.default_rng(seed)
    Z = (rng.normal(size=(n, k)) * scale).astype(dtype)
    y, w = draw_labels_and_weights(rng, n, k, opts)
    # Masks are drawn without zero weights: the reference's 0 * inf (a zero-weight row whose smoothed
    # loss is infinite) is NaN where fastsoftmax rightly counts nothing.
    if masked and k > 1 and Z.dtype.kind == "f" and not opts["zero_weights"]:
        mask = rng.random((n, k)) < 0.3
        mask[np.arange(n), y] = False  # never mask the label: a finite loss without smoothing
        Z[mask] = -np.inf
    Z = laid_out(Z, layout)
    copies = frozen(Z, y, w)
    eps, reduction = opts["label_smoothing"], opts["reduction"]
    out_dtype = np.float32 if Z.dtype == np.float32 else np.float64

    for name in ("softmax", "log_softmax"):
        got = getattr(fs, name)(Z)
        assert got.dtype == out_dtype and got.shape == (n, k)
        assert_close(got, getattr(ref, name)(Z))

    kw = dict(sample_weight=w, label_smoothing=eps, reduction=reduction)
    with np.errstate(divide="ignore", invalid="ignore"):  # the reference's -inf * 0 with masks
        want = ref.cross_entropy(Z, y, **kw)
    got = fs.cross_entropy(Z, y, **kw)
    if reduction == "none":
        assert got.dtype == out_dtype and got.shape == (n,)
        assert_close(got, want, floor=F64_ROUNDING)
    else:
        assert isinstance(got, float)
        assert_close(got, want, out_dtype, floor=F64_ROUNDING)

    if reduction != "none":
        loss, dZ = fs.cross_entropy_grad(Z, y, **kw)
        assert_close(loss, got, np.float64, floor=F64_ROUNDING)  # the same float64 accumulation
        assert dZ.dtype == out_dtype and np.isfinite(dZ).all()
        with np.errstate(divide="ignore", invalid="ignore"):
            assert_close(dZ, ref.cross_entropy_grad(Z, y, **kw)[1], floor=F64_ROUNDING)
    assert_unchanged([Z, y, w], copies)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 300),
    d=st.integers(1, 24),
    k=st.one_of(st.integers(1, SMALL_K_MAX), st.integers(SMALL_K_MAX + 1, 80)),  # both paths
    dtypes=st.tuples(*[st.sampled_from([np.float32, np.float64])] * 3),
    layouts=st.tuples(*[st.sampled_from(LAYOUTS)] * 3),
    bias=st.booleans(),
    alpha=st.one_of(st.just(0.0), st.floats(0.0, 2.0)),
    return_dX=st.booleans(),
    opts=options(["mean", "sum"]),
)
def test_fuzz_linear_layer(seed, n, d, k, dtypes, layouts, bias, alpha, return_dX, opts):
    rng = np.random.default_rng(seed)
    X = laid_out(rng.normal(size=(n, d)).astype(dtypes[0]), layouts[0])
    W = laid_out((rng.normal(size=(k, d)) * 2 / np.sqrt(d)).astype(dtypes[1]), layouts[1])
    b = laid_out(rng.normal(size=k).astype(dtypes[2]), layouts[2]) if bias else None
    y, w = draw_labels_and_weights(rng, n, k, opts)
    copies = frozen(X, W, b, y, w)
    dtype = result_dtype(X, W, b)
    kw = dict(sample_weight=w, label_smoothing=opts["label_smoothing"], alpha=alpha,
              reduction=opts["reduction"], return_dX=return_dX)

    got = fs.linear_cross_entropy(X, W, b, y, **kw)
    want = ref.linear_cross_entropy(X, W, b, y, **kw)
    assert len(got) == len(want) == (4 if return_dX else 3)
    assert isinstance(got[0], float)
    assert_close(got[0], want[0], dtype)
    for a, e in zip(got[1:], want[1:], strict=True):
        if e is None:
            assert a is None
        else:
            assert a.dtype == dtype and a.shape == e.shape
            assert_close(a, e)

    P = fs.linear_softmax(X, W, b)
    assert P.dtype == dtype
    assert_close(P, ref.linear_softmax(X, W, b))
    assert_unchanged([X, W, b, y, w], copies)
