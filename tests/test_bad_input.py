"""Every bad input raises ValueError or TypeError naming the argument, and never modifies inputs."""

import numpy as np
import pytest
import scipy.sparse as sp
from _reliability import run_python

import fastsoftmax as fs
from fastsoftmax import _validation as V

Z = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
Y = np.array([0, 2])
X = np.ones((2, 4))
W = np.ones((3, 4))
B = np.zeros(3)


def nan_at(a, idx):
    a = a.copy()
    a[idx] = np.nan
    return a


def inf_at(a, idx, value=np.inf):
    a = a.copy()
    a[idx] = value
    return a


def _grad_into_buffer(other):
    """cross_entropy_grad with `out` and `other` (y or sample_weight) views of one buffer: the
    kernel would read the weights (or labels) while writing the gradient over them."""
    buf = np.zeros(Z.size + 1)
    out = buf[: Z.size].reshape(Z.shape)
    if other == "y":
        return fs.cross_entropy_grad(Z, buf[Z.size - 2: Z.size].view(np.int64), out=out)
    weights = buf[Z.size - 1: Z.size + 1]
    weights[:] = 1.0
    return fs.cross_entropy_grad(Z, Y, sample_weight=weights, out=out)


CASES = [
    # (call, error type, message fragment)
    ("softmax 1-D", lambda: fs.softmax(np.ones(3)), ValueError, "Z must be 2-D"),
    ("softmax 3-D", lambda: fs.softmax(np.ones((2, 2, 2))), ValueError, "Z must be 2-D"),
    ("softmax no classes", lambda: fs.softmax(np.ones((2, 0))), ValueError, "at least one column"),
    ("softmax strings", lambda: fs.softmax(np.array([["a", "b"]])), TypeError, "Z must hold real"),
    ("softmax complex", lambda: fs.softmax(np.ones((2, 2), complex)), TypeError, "Z must hold real"),
    ("softmax ragged", lambda: fs.softmax([[1.0, 2.0], [1.0]]), TypeError, "Z must be array-like"),
    ("softmax NaN", lambda: fs.softmax(nan_at(Z, (1, 1))), ValueError, "NaN or +inf"),
    ("softmax +inf", lambda: fs.softmax(inf_at(Z, (0, 0))), ValueError, "NaN or +inf"),
    ("softmax all -inf", lambda: fs.softmax(np.full((1, 3), -np.inf)), ValueError, "every entry -inf"),
    ("log_softmax NaN", lambda: fs.log_softmax(nan_at(Z, (0, 2))), ValueError, "NaN or +inf"),
    ("out wrong shape", lambda: fs.softmax(Z, out=np.empty((3, 3))), ValueError, "out must have shape"),
    ("out wrong dtype", lambda: fs.softmax(Z, out=np.empty((2, 3), np.float32)), TypeError,
     "out must have dtype"),
    ("out list", lambda: fs.softmax(Z, out=[[0.0] * 3] * 2), TypeError, "out must be a numpy"),
    ("out overlapping", lambda: (lambda a: fs.softmax(a[:2], out=a[1:3]))(np.ones((4, 3))),
     ValueError, "out overlaps"),
    ("out overlaps sample_weight", lambda: _grad_into_buffer("sample_weight"), ValueError,
     "out overlaps sample_weight"),
    ("out overlaps y", lambda: _grad_into_buffer("y"), ValueError, "out overlaps y"),
    ("y float", lambda: fs.cross_entropy(Z, Y.astype(float)), TypeError, "y must hold integer"),
    ("y 2-D", lambda: fs.cross_entropy(Z, Y[:, None]), ValueError, "y must be 1-D"),
    ("y length", lambda: fs.cross_entropy(Z, np.array([0])), ValueError, "y has 1 labels"),
    ("y too large", lambda: fs.cross_entropy(Z, np.array([0, 3])), ValueError,
     "outside [0, n_classes=3)"),
    ("y negative", lambda: fs.cross_entropy_grad(Z, np.array([-1, 0])), ValueError, "label -1"),
    ("weights negative", lambda: fs.cross_entropy(Z, Y, sample_weight=[1.0, -1.0]), ValueError,
     "sample_weight must be non-negative"),
    ("weights NaN", lambda: fs.cross_entropy(Z, Y, sample_weight=[1.0, np.nan]), ValueError,
     "sample_weight must be finite"),
    ("weights zero", lambda: fs.cross_entropy(Z, Y, sample_weight=[0.0, 0.0]), ValueError,
     "sums to zero"),
    ("weights length", lambda: fs.cross_entropy(Z, Y, sample_weight=[1.0]), ValueError,
     "sample_weight has 1 entries"),
    ("weights 2-D", lambda: fs.cross_entropy(Z, Y, sample_weight=np.ones((2, 1))), ValueError,
     "sample_weight must be 1-D"),
    ("mean of nothing", lambda: fs.cross_entropy(np.empty((0, 3)), np.empty(0, int)), ValueError,
     "no samples"),
    ("smoothing > 1", lambda: fs.cross_entropy(Z, Y, label_smoothing=1.5), ValueError,
     "label_smoothing must be finite and in"),
    ("smoothing str", lambda: fs.cross_entropy(Z, Y, label_smoothing="0.1"), TypeError,
     "label_smoothing must be a real number"),
    ("reduction", lambda: fs.cross_entropy(Z, Y, reduction="avg"), ValueError, "reduction must be"),
    ("grad reduction none", lambda: fs.cross_entropy_grad(Z, Y, reduction="none"), ValueError,
     "reduction must be"),
    ("ce NaN", lambda: fs.cross_entropy(nan_at(Z, (0, 1)), Y), ValueError, "NaN or +inf"),
    ("grad NaN", lambda: fs.cross_entropy_grad(nan_at(Z, (1, 0)), Y), ValueError, "NaN or +inf"),
    ("X 1-D", lambda: fs.linear_cross_entropy(np.ones(4), W, B, Y), ValueError, "X must be 2-D"),
    ("W 1-D", lambda: fs.linear_cross_entropy(X, np.ones(4), B, Y), ValueError, "W must be 2-D"),
    ("W features", lambda: fs.linear_cross_entropy(X, np.ones((3, 5)), B, Y), ValueError,
     "W has 5 features"),
    ("W no classes", lambda: fs.linear_softmax(X, np.ones((0, 4)), None), ValueError,
     "W must have at least one row"),
    ("b length", lambda: fs.linear_cross_entropy(X, W, np.zeros(2), Y), ValueError,
     "b has 2 entries"),
    ("b 2-D", lambda: fs.linear_softmax(X, W, np.zeros((3, 1))), ValueError, "b must be 1-D"),
    ("X strings", lambda: fs.linear_softmax(np.array([["a"] * 4] * 2), W, B), TypeError,
     "X must hold real"),
    ("alpha negative", lambda: fs.linear_cross_entropy(X, W, B, Y, alpha=-1.0), ValueError,
     "alpha must be finite and in"),
    ("alpha NaN", lambda: fs.linear_cross_entropy(X, W, B, Y, alpha=np.nan), ValueError,
     "alpha must be finite and in"),
    ("alpha inf", lambda: fs.linear_cross_entropy(X, W, B, Y, alpha=np.inf), ValueError,
     "alpha must be finite"),
    ("alpha None", lambda: fs.linear_cross_entropy(X, W, B, Y, alpha=None), TypeError,
     "alpha must be a real number"),
    ("linear y range", lambda: fs.linear_cross_entropy(X, W, B, np.array([0, 5])), ValueError,
     "outside [0, n_classes=3)"),
    ("X NaN small K", lambda: fs.linear_cross_entropy(nan_at(X, (1, 2)), W, B, Y), ValueError,
     "X contains NaN or infinity: 1 NaN entry, first at (1, 2)"),
    ("W NaN and inf", lambda: fs.linear_softmax(X, inf_at(nan_at(W, (2, 3)), (0, 1)), B),
     ValueError, "W contains NaN or infinity: 1 NaN and 1 infinite entries, first at (0, 1)"),
    ("X inf small K", lambda: fs.linear_cross_entropy(inf_at(X, (0, 0)), W, B, Y), ValueError,
     "X contains NaN or infinity"),
    ("X -inf small K", lambda: fs.linear_cross_entropy(inf_at(X, (0, 0), -np.inf), W, B, Y),
     ValueError, "X contains NaN or infinity"),
    ("W NaN tiled", lambda: fs.linear_cross_entropy(X, nan_at(np.ones((40, 4)), (3, 1)), None, Y),
     ValueError, "W contains NaN"),
    ("b inf", lambda: fs.linear_cross_entropy(X, W, inf_at(B, 1), Y), ValueError,
     "b contains NaN or infinity"),
    ("linear_softmax X NaN", lambda: fs.linear_softmax(nan_at(X, (0, 1)), W, B), ValueError,
     "X contains NaN"),
    ("linear_softmax X NaN tiled", lambda: fs.linear_softmax(nan_at(X, (0, 1)), np.ones((40, 4)),
                                                             None), ValueError, "X contains NaN"),
    ("overflowing logits", lambda: fs.linear_cross_entropy(np.full((2, 4), 1e300),
                                                           np.full((3, 4), 1e300), None, Y),
     ValueError, "overflowed"),
    ("overflowing logits magnitudes",
     lambda: fs.linear_cross_entropy(np.full((2, 4), 1e300), np.full((3, 4), -1e300), B, Y),
     ValueError, "X W^T + b overflowed to infinity in float64 (max |X| = 1e+300, "
     "max |W| = 1e+300, max |b| = 0)"),
    ("overflowing logits tiled", lambda: fs.linear_softmax(np.full((2, 4), 1e30, np.float32),
                                                           np.full((40, 4), 1e30, np.float32),
                                                           None),
     ValueError, "in float32 (max |X| = 1e+30, max |W| = 1e+30): the logits are not representable;"
     " scale the data, or, if W was being fitted, lower the learning rate"),
]


@pytest.mark.parametrize("call,error,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(call, error, fragment):
    with pytest.raises(error) as info:
        call()
    assert fragment in str(info.value)


def test_bad_input_never_modifies_arguments():
    Zbad = nan_at(Z, (0, 1))
    copy = Zbad.copy()
    with pytest.raises(ValueError):
        fs.cross_entropy_grad(Zbad, Y)
    np.testing.assert_array_equal(Zbad, copy)
    Xbad = nan_at(X, (0, 0))
    copies = Xbad.copy(), W.copy(), B.copy()
    with pytest.raises(ValueError):
        fs.linear_cross_entropy(Xbad, W, B, Y, alpha=1.0)
    for a, c in zip((Xbad, W, B), copies, strict=False):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("in_place", [True, False], ids=["out=Z", "out"])
def test_overflowing_weighted_sum_leaves_out_unwritten(rng, in_place):
    """cross_entropy_grad(..., reduction="sum", out=...) whose weighted loss overflows (weights
    1e308, every loss > 2) raises before writing: Z (out=Z) and out keep their contents. Before
    the fix the error came after the gradient pass, with Z already overwritten by dZ."""
    Zw = rng.normal(size=(50, 4)) + 3.0 * (np.arange(4) == 1)
    y = np.zeros(50, dtype=int)
    copy = Zw.copy()
    out = Zw if in_place else np.full_like(Zw, 7.0)
    out_copy = out.copy()
    with pytest.raises(ValueError, match="sample_weight"):
        fs.cross_entropy_grad(Zw, y, sample_weight=np.full(50, 1e308), reduction="sum", out=out)
    np.testing.assert_array_equal(Zw, copy)
    np.testing.assert_array_equal(out, out_copy)


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "cross_entropy_grad"])
def test_bad_rows_raise_after_the_good_rows_are_written_to_out(rng, name):
    """As documented for ``out``: a C-contiguous one is checked in the pass that writes it, so an
    error for a NaN row comes with the other rows of ``out`` written, each as a call without the
    bad row writes it (the same for Z itself with out=Z)."""
    Z = rng.normal(size=(300, 5))
    Z[123, 2] = np.nan
    y = rng.integers(0, 5, 300)
    good = np.arange(300) != 123
    f = getattr(fs, name)
    args = (y,) if name == "cross_entropy_grad" else ()
    if name == "cross_entropy_grad":  # the mean's denominator counts the bad row too
        expected = fs.cross_entropy_grad(Z[good], y[good], reduction="sum")[1] / 300
    else:
        expected = f(Z[good])
    out = np.full_like(Z, 7.0)
    with pytest.raises(ValueError, match="1 row"):
        f(Z, *args, out=out)
    np.testing.assert_allclose(out[good], expected, rtol=1e-12, atol=1e-15)
    Z_in_place = Z.copy()
    with pytest.raises(ValueError, match="1 row"):
        f(Z_in_place, *args, out=Z_in_place)
    np.testing.assert_allclose(Z_in_place[good], expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("k", [3, 40], ids=["small-K", "tiled"])
def test_l2_term_beyond_the_dtype_is_an_error(sparse, k):
    """Finite unpenalized results, but alpha * W (or alpha * S) beyond float32: a ValueError
    naming the L2 term. The finite checks ran before the term was added: dW came back with
    infinities, silently."""
    X = np.full((4, 2), 1e-30, np.float32)
    X = sp.csr_matrix(X) if sparse else X
    W = np.full((k, 2), 1e30, np.float32)
    y = np.zeros(4, dtype=int)
    with pytest.raises(ValueError, match=r"L2 term alpha \* W overflowed float32"):
        fs.linear_cross_entropy(X, W, None, y, alpha=1e10)
    with pytest.raises(ValueError, match=r"L2 term alpha \* S overflowed float32"):
        fs.linear_cross_entropy_hvp(X, W, None, y, W, None, alpha=1e10)
    loss, dW, _ = fs.linear_cross_entropy(X, W, None, y, alpha=1e-10)
    assert np.isfinite(loss) and np.isfinite(dW).all()


def test_validated_labels_are_a_copy():
    """The kernels index with the validated labels: they are never the caller's memory, even when
    the caller's array is already intp and contiguous (issue 10)."""
    y = np.array([0, 2, 1], dtype=np.intp)
    labels = V.check_labels(y, 3, 3)
    assert not np.shares_memory(labels, y)
    assert labels.dtype == np.intp and labels.flags.c_contiguous and not labels.flags.writeable
    w, _ = V.check_weights(np.ones(3), 3, "mean")
    assert not np.shares_memory(w, y)


@pytest.mark.parametrize("layout", ["intp", "int32", "strided"])
@pytest.mark.parametrize("bad", [None, -1, -(2**31), 7, 2**31 - 1])
def test_many_labels_checked_as_few(layout, bad):
    """From LABEL_KERNEL_MIN labels on, intp labels are copied and checked by a parallel kernel:
    the same copy, the same refusal naming the label, wherever it sits, as numpy's path (int32
    and strided labels still take it)."""
    n = V.LABEL_KERNEL_MIN + 1001
    rng = np.random.default_rng(7)
    base = rng.integers(0, 7, 2 * n).astype(np.int32 if layout == "int32" else np.intp)
    y = base[::2] if layout == "strided" else base[:n].copy()
    if bad is not None:
        y[n - 1 if bad > 0 else 12345] = bad
    before = y.copy()
    if bad is None:
        labels = V.check_labels(y, n, 7)
        assert labels.dtype == np.intp and not np.shares_memory(labels, y)
        assert np.array_equal(labels, y) and not labels.flags.writeable
    else:
        with pytest.raises(ValueError, match=rf"y holds label {bad}, outside \[0, n_classes=7\)"):
            V.check_labels(y, n, 7)
    assert np.array_equal(y, before)


def test_labels_beyond_intp_are_refused():
    with pytest.raises(ValueError, match=f"label {2**64 - 1}, outside"):
        fs.cross_entropy(Z, np.array([0, 2**64 - 1], dtype=np.uint64))


# The end of both race scripts: every call once, then each call in a loop for 0.7 s while `flip`
# writes into the input from another thread; a ValueError must say EXPECTED.
RACE_LOOP = """
for call in calls:
    call()
writer = threading.Thread(target=flip)
writer.start()
try:
    for call in calls:
        end = time.perf_counter() + 0.7
        while time.perf_counter() < end:
            try:
                call()
            except ValueError as exc:
                assert EXPECTED in str(exc), exc
finally:
    stop.set()
    writer.join()
print("ok")
"""

RACE_CODE = """
import threading, time
import numpy as np
import fastsoftmax as fs

N, K = 200_000, 8
rng = np.random.default_rng(0)
Z = rng.normal(size=(N, K))
X = rng.normal(size=(N, 4))
W = rng.normal(size=(K, 4))
y = rng.integers(0, K, N).astype(np.intp)
valid = y.copy()
spots = rng.integers(0, N, 64)
stop = threading.Event()

def flip():  # numpy holds the GIL here, the kernels (nogil) run meanwhile
    while not stop.is_set():
        y[spots] = 1 << 40
        y[spots] = valid[spots]

calls = [lambda: fs.cross_entropy_grad(Z, y), lambda: fs.cross_entropy(Z, y),
         lambda: fs.linear_cross_entropy(X, W, None, y)]
EXPECTED = "y holds label"  # the copy caught a flipped label: the right answer
"""


def test_concurrent_writes_to_y_cannot_crash():
    """A caller's thread writing huge values into y while the functions run: the labels are
    copied before their range check, so the kernels never index with an unchecked label. Before
    the fix the child died of SIGSEGV (issue 10); in a subprocess because that kills pytest."""
    result = run_python(RACE_CODE + RACE_LOOP, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.explain()


SPARSE_RACE_CODE = """
import threading, time
import numpy as np
import scipy.sparse as sp
import fastsoftmax as fs

N, d, K = 100_000, 1000, 8
rng = np.random.default_rng(0)
X = sp.random(N, d, density=0.01, format="csr", random_state=0, dtype=np.float64)
W = rng.normal(size=(K, d))
y = rng.integers(0, K, N)
valid_indices, valid_indptr = X.indices.copy(), X.indptr.copy()
spots = rng.integers(0, X.nnz, 64)
rows = rng.integers(1, N, 64)
stop = threading.Event()

def flip():  # numpy holds the GIL here, the kernels (nogil) run meanwhile
    while not stop.is_set():
        X.indices[spots] = 2**31 - 1
        X.indptr[rows] = X.nnz
        X.indices[spots] = valid_indices[spots]
        X.indptr[rows] = valid_indptr[rows]

calls = [lambda: fs.linear_cross_entropy(X, W, None, y), lambda: fs.linear_softmax(X, W, None)]
EXPECTED = "not a valid CSR matrix"  # a check caught a flipped index: the right answer
"""


def test_concurrent_writes_to_sparse_indices_cannot_crash():
    """The same for a sparse X: indptr is copied before its check and column indices are bounded
    inside the kernels, so a caller writing into X.indices or X.indptr during a call gets a wrong
    result or an error, never a crash (in a subprocess because a crash kills pytest)."""
    result = run_python(SPARSE_RACE_CODE + RACE_LOOP, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.explain()
