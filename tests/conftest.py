"""Shared fixtures and helpers, and the one place where numerical tolerances live."""

import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import numba
import numpy as np
import pytest
from _reliability import COLDSTART_BOTH_DTYPES, run_python, stop_children

from fastsoftmax._threads import numba_threads

# docs/design.md ("Numerics"): float64 agrees with reference/ to about 1e-10 relative, float32 to
# about 1e-5.
RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}
# Finite differences of the float64 loss: central differences with step FD_STEP are accurate to
# about FD_STEP**2 * (third derivative) + eps / FD_STEP; 1e-6 relative is comfortably above both.
FD_STEP = 1e-5
FD_RTOL = 1e-6
# A quantity of order one computed in float64 carries an absolute rounding error of a few ulps of 1
# in any implementation, the reference included: log(s) for a sum of exponentials s near 1 (a
# confident row's loss), p - 1 for a probability near 1. Where such a quantity is small (a loss of
# 3e-12), compare it with at least this absolute tolerance (assert_close's `floor`).
F64_ROUNDING = 16 * np.finfo(np.float64).eps


def rtol_for(dtype) -> float:
    return RTOL[np.dtype(dtype)]


def assert_close(actual, desired, dtype=None, scale=None, floor=0.0):
    """Assert agreement to the dtype's tolerance, relative to the largest magnitude of `desired`.

    Entries much smaller than the largest one carry absolute error of the size of the large ones'
    rounding, so the absolute tolerance is rtol * max|desired| (or rtol * scale when given), and
    at least `floor` (F64_ROUNDING for losses and gradients, which are of order one by nature).
    """
    actual = np.asarray(actual)
    desired = np.asarray(desired)
    if dtype is None:
        dtype = actual.dtype if actual.dtype.kind == "f" else np.float64
    rtol = rtol_for(dtype)
    finite = desired[np.isfinite(desired)]
    if scale is None:
        scale = float(np.abs(finite).max()) if finite.size else 0.0
        scale = scale or 1.0  # an all-zero expectation: judge on the scale of O(1) quantities
    atol = np.maximum(rtol * max(scale, 1e-300), floor)
    if atol.ndim == 0:
        np.testing.assert_allclose(actual, desired, rtol=rtol, atol=float(atol))
        return
    # a tolerance per entry (`probability_floor`): numpy's assert_allclose takes a scalar atol
    assert actual.shape == desired.shape, (actual.shape, desired.shape)
    with np.errstate(invalid="ignore"):  # inf - inf: equal infinities are handled below
        excess = np.abs(actual - desired) - (atol + rtol * np.abs(desired))
    # equal infinities and NaN against NaN agree, as in numpy's assert_allclose
    bad = ~((excess <= 0) | (actual == desired) | (np.isnan(actual) & np.isnan(desired)))
    assert not bad.any(), (f"{np.count_nonzero(bad)} of {bad.size} entries beyond tolerance; the "
                           f"first at {np.argwhere(bad)[0].tolist()}: {actual[bad][0]!r} (actual) "
                           f"{desired[bad][0]!r} (desired), excess {excess[bad][0]:.3g}")


def logit_rounding(X, W, b=None) -> np.ndarray:
    """Per row of X, a bound on the rounding error of its logits ``X @ W.T + b`` in X's dtype,
    whatever order the products are summed in (BLAS or our kernels, with or without FMA, any
    vector width): ``(d + 2) eps max_k (sum_j |x_ij w_kj| + |b_k|)``, infinite biases left out."""
    eps = float(np.finfo(X.dtype).eps)
    A = np.abs(X.astype(np.float64)) @ np.abs(W.astype(np.float64)).T
    if b is not None:
        A += np.where(np.isfinite(b), np.abs(b.astype(np.float64)), 0.0)
    return (X.shape[1] + 2) * eps * A.max(axis=1)


def probability_floor(P, X, W, b=None) -> np.ndarray:
    """Per entry, the absolute error softmax probabilities ``P`` inherit from their logits'
    rounding (`logit_rounding`, delta per row): to first order ``|dP_k| <= 2 delta min(P_k,
    1 - P_k)``, doubled for the second order and the reference's own rounding. Logits of 1e4 in
    float32 carry about 1e-3 each, so two classes a few hundredths apart can differ by 1e-4 between
    two correct implementations; entries at exactly 0 or 1 keep the dtype's tolerance."""
    delta = logit_rounding(X, W, b)[:, None]
    return 4 * delta * np.minimum(P, 1 - P)


def frozen(*arrays):
    """Copies to compare with afterwards, to prove inputs are not modified."""
    return [None if a is None else np.array(a, copy=True) for a in arrays]


def assert_unchanged(arrays, copies):
    for a, c in zip(arrays, copies, strict=True):
        if a is not None:
            np.testing.assert_array_equal(a, c)


# IDX element type codes and their big-endian dtypes (http://yann.lecun.com/exdb/mnist/).
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An IDX file written byte by byte: 0, 0, type code, ndim, big-endian uint32 dims, data.

    Written independently of the loader under test; the default type code is unsigned bytes (MNIST).
    """
    header = bytes([0, 0, type_code, array.ndim])
    for size in array.shape:
        header += int(size).to_bytes(4, "big")
    return header + array.astype(IDX_DTYPES[type_code]).tobytes()


@pytest.fixture
def rng():
    """All test randomness comes from here, seeded, so every failure reproduces."""
    return np.random.default_rng(20261124)


@pytest.fixture(params=[1, 2], ids=["threads=1", "threads=2"])
def threads(request):
    """The test body runs on 1 and on 2 Numba threads (fewer if the machine has fewer)."""
    with numba_threads(min(request.param, numba.config.NUMBA_NUM_THREADS)):
        yield request.param


def spy_twins(monkeypatch, pair) -> list:
    """The names of the twins of kernel pair ``pair`` ("parallel", "serial") in call order."""
    twins = []

    def spy(name):
        real = getattr(pair, name)
        return lambda *args: twins.append(name) or real(*args)

    for name in ("parallel", "serial"):
        monkeypatch.setattr(pair, name, spy(name))
    return twins


# ---------------------------------------------------------------------------------------------------
# Early jobs. A few tests spend nearly all their time in subprocesses compiling every kernel on an
# empty Numba cache (minutes on 2 cores), while the rest of the suite is mostly compilation too,
# which runs on one thread. Those subprocesses start when collection ends, one job at a time, so
# that they run on the other core; the test then takes its job's result (fixture `early`) and
# asserts on it. A job is ordinary code: only when it runs changes.
# ---------------------------------------------------------------------------------------------------

_EARLY_JOBS: dict[str, tuple[Future, Path]] = {}
# Sessions of at least this many tests (the whole suite: about 3500) start with a cache warmer.
_WARM_FROM_ITEMS = 1000


def early_job(job):
    """Decorator of a test: ``job(directory, **params)`` (a fresh directory; the test's
    parametrization) runs in the background from the end of collection; the test receives its
    return value as the fixture ``early``."""
    def mark(test):
        test.early_job = job
        return test
    return mark


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    items = [item for item in session.items
             if hasattr(getattr(item, "function", None), "early_job")]
    if not items:
        return
    pool = ThreadPoolExecutor(1, thread_name_prefix="early-job")
    if len(session.items) >= _WARM_FROM_ITEMS:
        # First, a process compiles every kernel into the session's own cache (its
        # NUMBA_CACHE_DIR or Numba's default), so that the tests after the first few load them
        # instead of compiling them on this process's one thread. Its outcome is not a test:
        # the tests check the cache.
        pool.submit(run_python, COLDSTART_BOTH_DTYPES, timeout=900)
    for item in items:
        directory = Path(tempfile.mkdtemp(prefix="fastsoftmax-early-"))
        params = item.callspec.params if hasattr(item, "callspec") else {}
        _EARLY_JOBS[item.nodeid] = (pool.submit(item.function.early_job, directory, **params),
                                    directory)
    pool.shutdown(wait=False)


def pytest_sessionfinish(session):
    """Jobs whose tests did not run (a run stopped by -x or ^C) are cancelled or killed."""
    for future, _ in _EARLY_JOBS.values():
        future.cancel()
    stop_children()
    wait([future for future, _ in _EARLY_JOBS.values()], timeout=60)
    for _, directory in _EARLY_JOBS.values():
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def early(request):
    """The return value of the test's `early_job` (its exception, if it raised)."""
    future, directory = _EARLY_JOBS[request.node.nodeid]
    try:
        yield future.result()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
