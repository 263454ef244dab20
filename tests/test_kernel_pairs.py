"""Every parallel kernel and its serial twin give the same bits, for every number of classes.

Small inputs, forked children of an OpenMP process and threads that lose the workqueue launch lock
run the serial twins (fastsoftmax/_parallel.py), so a result must not depend on which twin ran.
Class counts span the kernel paths: the small-K linear kernels (K <= 32), the tiled BLAS path above
it (dW in per-sub-tile slots, or in blocks of classes or features when the slots would not fit),
and the widths at which the vectorized row loops change shape (16 and 32 doubles per iteration).
"""

from pathlib import Path

import numpy as np
import pytest
from _reliability import run_python
from conftest import early_job

import fastsoftmax as fs
from fastsoftmax import _kernels as k
from fastsoftmax import _kernels_sparse as ks
from fastsoftmax import _parallel
from fastsoftmax import functional as F
from fastsoftmax._parallel import KernelPair

DTYPES = [np.float64, np.float32]
CLASSES = [1, 2, 7, 31, 32, 33, 40, 100, 600]
N = 200  # four row blocks, two small-K chunks: the parallel twins really split the work
N_PREFIX = 64  # one row block: the public functions run the serial twins
D = 6


def _readonly(a):
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def _problem(K, dtype, seed=0):
    rng = np.random.default_rng(seed + K)
    Z = _readonly((rng.normal(size=(N, K)) * 3).astype(dtype))
    y = _readonly(rng.integers(0, K, N).astype(np.intp))
    w = _readonly(rng.uniform(0, 2, N))
    X = _readonly(rng.normal(size=(N, D)).astype(dtype))
    W = _readonly((rng.normal(size=(K, D)) / 2).astype(dtype))
    b = _readonly(rng.normal(size=K).astype(dtype))
    return Z, y, w, X, W, b


def _run_both(pair, n_outputs, make_args):
    """Call pair.parallel and pair.serial on fresh, identical arguments; return both results, each
    as [return value, output arrays...] (the last `n_outputs` arguments are the outputs)."""
    results = []
    for twin in (pair.parallel, pair.serial):
        args = make_args()
        value = twin(*args)
        results.append([np.asarray(value)] + [np.array(a) for a in args[len(args) - n_outputs:]])
    return results


def _assert_bitwise(a, b, what):
    for u, v in zip(a, b, strict=True):
        assert u.dtype == v.dtype and u.shape == v.shape, what
        assert u.tobytes() == v.tobytes(), what


@pytest.mark.parametrize("module, expected", [
    (k, {"_softmax_rows", "_softmax_rows_flat", "_log_softmax_rows", "_log_softmax_rows_flat",
         "_xent_rows", "_xent_rows_flat", "_xent_grad_rows", "_xent_grad_rows_flat",
         "_linear_xent_small",
         "_linear_softmax_small", "_linear_hvp_small", "_linear_xent_tiled", "_copy_labels",
         "_linear_softmax_tiled", "_linear_hvp_tiled", "_feature_curvature_small"}),
    (ks, {"_csr_linear_xent", "_merge_dWT", "_csr_linear_softmax", "_csr_linear_hvp",
          "_transpose_padded", "_count_outside"}),
], ids=["dense", "sparse"])
def test_every_parallel_kernel_is_a_pair(module, expected):
    """No kernel compiled with parallel=True exists outside a KernelPair, and each pair holds two
    different compiled functions (the twin under its own name, so the cache cannot mix them)."""
    pairs = {n: o for n, o in vars(module).items() if isinstance(o, KernelPair)}
    assert set(pairs) == expected
    for name, pair in pairs.items():
        assert pair.parallel.targetoptions["parallel"], name
        assert not pair.serial.targetoptions.get("parallel"), name
        assert pair.serial.py_func.__qualname__ == name + "_serial"
    for name, obj in vars(module).items():
        if hasattr(obj, "targetoptions"):
            assert not obj.targetoptions.get("parallel"), f"{name}: a parallel kernel without twin"


# Each row kernel in its two variants: exps over a block's rows as one flat array (which functional
# runs up to FLAT_K_MAX classes), and row by row (above; its blocks pass shorter rows to the flat
# ones). Both compute every K: the twins of each are compared at every K.
ROW_KERNELS = {"softmax": (k._softmax_rows, k._softmax_rows_flat),
               "log_softmax": (k._log_softmax_rows, k._log_softmax_rows_flat),
               "xent": (k._xent_rows, k._xent_rows_flat),
               "xent_grad": (k._xent_grad_rows, k._xent_grad_rows_flat)}


def _run_variants(name, n_outputs, make_args, what):
    """Both twins of both variants of a row kernel agree."""
    for pair in ROW_KERNELS[name]:
        _assert_bitwise(*_run_both(pair, n_outputs, make_args), f"{what} {pair.__name__}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", CLASSES)
def test_row_kernel_twins_are_bitwise_equal(K, dtype):
    Z, y, w, _, _, b = _problem(K, dtype)
    # Argument types as functional passes them (an empty writable bias, read-only weights): the
    # twins compiled for the public functions (or loaded from the cache), not more of them.
    no_b, b = np.empty(0, dtype), b.copy()
    for bias in (no_b, b):
        for name in ("softmax", "log_softmax"):
            _run_variants(name, 1, lambda bias=bias: (Z, np.empty_like(Z), bias, True),
                          f"{name} bias={bias.size}")
    for weights in (_readonly(np.empty(0)), w):
        for smoothing in (0.0, 0.1, 1.0):
            what = f"weights={weights.size} smoothing={smoothing}"
            _run_variants("xent", 1, lambda weights=weights, smoothing=smoothing:
                          (Z, y, weights, smoothing, np.empty(N)), "xent_rows " + what)
            _run_variants("xent_grad", 3, lambda weights=weights, smoothing=smoothing: (
                Z, np.empty_like(Z), b, True, y, weights, smoothing, 1 / N,
                np.empty(k.n_blocks(N, k.ROW_BLOCK)), np.zeros((k.n_blocks(N, k.ROW_BLOCK), K))),
                "xent_grad_rows " + what)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [K for K in CLASSES if K <= F.SMALL_K_MAX])
def test_small_k_linear_twins_are_bitwise_equal(K, dtype):
    _, y, w, X, W, b = _problem(K, dtype)
    # One set of argument types (writable) for every case: one specialization per twin and dtype,
    # not one per combination of empty and given arrays (each compiles for seconds). Not those of
    # the public functions (read-only): both twins are compiled here, never loaded from the cache.
    rows = np.random.default_rng(K).permutation(N)[:150].astype(np.intp)
    X, W, b, y, w = (a.copy() for a in (X, W, b, y, w))
    C = 3
    for bias in (np.empty(0, dtype), b):
        for sub in (np.empty(0, np.intp), rows):
            n = sub.size or N

            def args(bias=bias, sub=sub, n=n):
                return (X, sub, W, bias, y[:n], w[:n], 0.1, 1 / n, np.empty(n),
                        np.empty((C, K, D), dtype), np.empty((C, bias.size)),
                        np.empty((n, D), dtype))

            got = _run_both(k._linear_xent_small, 4, args)
            _assert_bitwise(*got, f"linear_xent_small bias={bias.size} rows={sub.size}")
        got = _run_both(k._linear_softmax_small, 1,
                        lambda bias=bias: (X, W, bias, np.empty((N, K), dtype)))
        _assert_bitwise(*got, f"linear_softmax_small bias={bias.size}")


def _public_calls(K, dtype):
    """Every public function and option on one problem, as named zero-argument calls."""
    Z, y, w, X, W, b = _problem(K, dtype, seed=1)
    return {
        "softmax": lambda: fs.softmax(Z),
        "log_softmax": lambda: fs.log_softmax(Z),
        "cross_entropy mean": lambda: fs.cross_entropy(Z, y),
        "cross_entropy sum weighted smoothed": lambda: fs.cross_entropy(
            Z, y, sample_weight=w, label_smoothing=0.1, reduction="sum"),
        "cross_entropy none": lambda: fs.cross_entropy(Z, y, reduction="none"),
        "cross_entropy_grad": lambda: fs.cross_entropy_grad(Z, y),
        "cross_entropy_grad sum weighted smoothed": lambda: fs.cross_entropy_grad(
            Z, y, sample_weight=w, label_smoothing=0.1, reduction="sum"),
        "linear_cross_entropy": lambda: fs.linear_cross_entropy(X, W, None, y),
        "linear_cross_entropy bias weights smoothing dX": lambda: fs.linear_cross_entropy(
            X, W, b, y, sample_weight=w, label_smoothing=0.1, alpha=0.1, return_dX=True),
        "linear_softmax": lambda: fs.linear_softmax(X, W, None),
        "linear_softmax bias": lambda: fs.linear_softmax(X, W, b),
    }


def _as_arrays(result):
    items = result if isinstance(result, tuple) else (result,)
    return [np.asarray(np.nan if a is None else a) for a in items]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K, dW_by", [(K, "slots") for K in CLASSES]
                         + [(K, "blocks") for K in CLASSES if K > F.SMALL_K_MAX])
def test_public_functions_same_bits_on_the_serial_path(monkeypatch, K, dtype, dW_by):
    """Every public function gives the same bits when every kernel runs its serial twin (as in a
    forked child of an OpenMP process) as when the parallel kernels run, on both ways of the BLAS
    path to accumulate dW (per-sub-tile slots, or blocks when the slots would not fit)."""
    if dW_by == "blocks":
        monkeypatch.setattr(F, "SLOT_BYTES", 0)
    calls = _public_calls(K, dtype)
    parallel = {name: _as_arrays(call()) for name, call in calls.items()}
    monkeypatch.setattr(_parallel, "_serial_only", True)
    for name, call in calls.items():
        _assert_bitwise(parallel[name], _as_arrays(call()), name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", CLASSES)
def test_first_rows_do_not_depend_on_the_rest(K, dtype):
    """Row results for the first rows of a big input (parallel kernels) equal those of the small
    input made of these rows alone (one block: the serial twins)."""
    Z, y, w, X, W, b = _problem(K, dtype, seed=2)
    n = N_PREFIX
    pairs = [
        (fs.softmax(Z), fs.softmax(Z[:n])),
        (fs.log_softmax(Z), fs.log_softmax(Z[:n])),
        (fs.cross_entropy(Z, y, sample_weight=w, label_smoothing=0.1, reduction="none"),
         fs.cross_entropy(Z[:n], y[:n], sample_weight=w[:n], label_smoothing=0.1,
                          reduction="none")),
        # "sum": the gradient rows do not depend on the number of rows
        (fs.cross_entropy_grad(Z, y, sample_weight=w, reduction="sum")[1],
         fs.cross_entropy_grad(Z[:n], y[:n], sample_weight=w[:n], reduction="sum")[1]),
        (fs.linear_softmax(X, W, b), fs.linear_softmax(X[:n], W, b)),
    ]
    if K <= F.SMALL_K_MAX:
        # Above, dX = G W is a BLAS product, and OpenBLAS's sgemm rounds row i differently for
        # 64 and 200 rows (K = 600, float32): a BLAS property, not the kernels'.
        pairs.append(
            (fs.linear_cross_entropy(X, W, b, y, reduction="sum", return_dX=True)[3],
             fs.linear_cross_entropy(X[:n], W, b, y[:n], reduction="sum", return_dX=True)[3]))
    for i, (big, small) in enumerate(pairs):
        _assert_bitwise([big[:n]], [small], f"call {i}")


# Both scripts let 200 rows run the small-K kernel's parallel twin (below its work threshold a
# call runs the serial twin, and the comparison was serial against serial).
_WARM_PARALLEL = """
import numpy as np
import fastsoftmax as fs
fs.functional.SMALL_K_PARALLEL_MIN_WORK = 0
rng = np.random.default_rng(1)
for K in (7, 40):
    X = rng.normal(size=(200, 6)); W = rng.normal(size=(K, 6)) / 2
    b, y = rng.normal(size=K), rng.integers(0, K, 200)
    fs.linear_cross_entropy(X, W, b, y)
    fs.linear_cross_entropy_hvp(X, W, b, y, rng.normal(size=(K, 6)), rng.normal(size=K))
"""
_COMPARE_TWINS = """
import numpy as np
import fastsoftmax as fs
from fastsoftmax import _parallel
fs.functional.SMALL_K_PARALLEL_MIN_WORK = 0
rng = np.random.default_rng(1)
for K in (7, 40):
    X = rng.normal(size=(200, 6)); W = rng.normal(size=(K, 6)) / 2
    b, y = rng.normal(size=K), rng.integers(0, K, 200)
    direction = (rng.normal(size=(K, 6)), rng.normal(size=K))
    for call in (lambda: fs.linear_cross_entropy(X, W, b, y),
                 lambda: fs.linear_cross_entropy_hvp(X, W, b, y, *direction)):
        _parallel._serial_only = False
        parallel = call()  # its twin is loaded from the cache
        _parallel._serial_only = True
        serial = call()  # compiled here, now
        same = all(np.asarray(a).tobytes() == np.asarray(c).tobytes()
                   for a, c in zip(parallel, serial))
        print(K, same)
"""


def _parallel_cached_then_serial(directory: Path):
    """The runs of _WARM_PARALLEL on an empty cache and of _COMPARE_TWINS after it."""
    env = {"NUMBA_CACHE_DIR": str(directory)}
    return run_python(_WARM_PARALLEL, env=env), run_python(_COMPARE_TWINS, env=env)


@early_job(_parallel_cached_then_serial)
def test_twins_agree_whatever_the_cache_holds(early):
    """One process compiles (and caches) only the parallel twins of the loss and the Hessian-vector
    product; the next loads them from the cache and compiles the serial twins itself. The two must
    still give the same bits. (Before, a block function inlined into a cached twin and
    re-optimized there differed in the last bits from the same function compiled in the process:
    float64 dW at 40 classes, 2.8e-17.) In the background: `early_job`."""
    warm, compared = early
    assert warm.returncode == 0, warm.explain()
    assert compared.returncode == 0, compared.explain()
    assert compared.stdout.split() == ["7", "True"] * 2 + ["40", "True"] * 2, compared.explain()


_HVP_BITS = """
import hashlib
import numpy as np
import scipy.sparse as sp
import fastsoftmax as fs
rng = np.random.default_rng(1)
K = 8
X = sp.random(300, 20, density=0.3, format="csr", random_state=1)
W, b, y = rng.normal(size=(K, 20)) / 2, rng.normal(size=K), rng.integers(0, K, 300)
HS, hsb = fs.linear_cross_entropy_hvp(X, W, b, y, rng.normal(size=(K, 20)), rng.normal(size=K))
print(hashlib.sha1(HS.tobytes() + hsb.tobytes()).hexdigest())
"""


def _hvp_cold_then_warm(directory: Path):
    """The runs of _HVP_BITS on an empty cache and on the cache it left."""
    env = {"NUMBA_CACHE_DIR": str(directory)}
    return run_python(_HVP_BITS, env=env), run_python(_HVP_BITS, env=env)


@early_job(_hvp_cold_then_warm)
def test_hessian_product_same_bits_from_a_cold_and_a_warm_cache(early):
    """The sparse Hessian-vector product compiled in the process (empty cache) and loaded from the
    cache gives the same bits. (Before, p.t / s was rewritten as p.t * (1 / s) under arcp in one
    module and not in the other: 1e-17 apart, enough to move a newton-cg fit.) In the background:
    `early_job`."""
    cold, warm = early
    assert cold.returncode == 0 and warm.returncode == 0, cold.explain() + warm.explain()
    assert cold.stdout.strip() == warm.stdout.strip(), cold.explain() + warm.explain()
