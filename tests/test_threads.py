"""The thread-count context managers restore what they change, also on errors; the BLAS path's
results do not depend on any thread count."""

import threading

import numba
import numpy as np
import pytest
from _reliability import blas_threads
from conftest import assert_close
from threadpoolctl import threadpool_limits

import fastsoftmax as fs
from fastsoftmax import _kernels as _k
from fastsoftmax import functional as F
from fastsoftmax._threads import (
    blas_limits,
    effective_n_jobs,
    numba_threads,
    single_threaded_blas,
    thread_limits,
)

MAX = numba.config.NUMBA_NUM_THREADS


@pytest.mark.parametrize(
    ("n_jobs", "expected"),
    [(None, None), (1, 1), (MAX + 5, MAX), (-1, MAX), (-MAX - 3, 1)],
)
def test_effective_n_jobs(n_jobs, expected):
    assert effective_n_jobs(n_jobs) == expected


@pytest.mark.parametrize(
    ("n_jobs", "error"), [(0, ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_effective_n_jobs_rejects(n_jobs, error):
    with pytest.raises(error):
        effective_n_jobs(n_jobs)


def test_thread_limits_sets_and_restores_on_error():
    before = (numba.get_num_threads(), blas_threads())
    with pytest.raises(RuntimeError), thread_limits(1) as n_threads:
        assert n_threads == 1
        assert numba.get_num_threads() == 1
        assert {n_threads for *_, n_threads in blas_threads()} == {1}
        raise RuntimeError
    assert (numba.get_num_threads(), blas_threads()) == before


def test_numba_threads_never_raises_the_count():
    before = numba.get_num_threads()
    with numba_threads(MAX + 1):
        assert numba.get_num_threads() == before
    with numba_threads(1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before


def test_single_threaded_blas_holds_one_thread_and_defers_limits():
    """Kernels hold BLAS at one thread; a `blas_limits` block opened meanwhile takes effect only
    when the hold ends, and everything is restored afterwards, also on errors."""
    before = blas_threads()
    with pytest.raises(RuntimeError), single_threaded_blas():
        assert {n for *_, n in blas_threads()} == {1}
        with single_threaded_blas():  # nested holds share one
            assert {n for *_, n in blas_threads()} == {1}
        assert {n for *_, n in blas_threads()} == {1}
        with blas_limits(2):
            assert {n for *_, n in blas_threads()} == {1}
        raise RuntimeError
    assert blas_threads() == before
    with blas_limits(1):
        with single_threaded_blas():
            assert {n for *_, n in blas_threads()} == {1}
        assert {n for *_, n in blas_threads()} == {1}  # the outer block's limit is back
    assert blas_threads() == before


def test_single_threaded_blas_from_many_threads_restores():
    before = blas_threads()
    barrier = threading.Barrier(4)

    def hold():
        for _ in range(50):
            with single_threaded_blas():
                barrier.wait(timeout=30) if _ == 0 else None
                assert {n for *_, n in blas_threads()} == {1}

    threads = [threading.Thread(target=hold) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert blas_threads() == before


# Cuts of the BLAS path: (SLOT_BYTES, TILE_BYTES or None, N, d, K). "blocks-wide" has small tiles
# (several of them, the last one short) and dX cut into three blocks of features.
CUTS = {
    "slots": (None, None, 2 * F.TILE_ROWS_MAX + 11, 97, 133),
    "blocks": (0, None, 2 * F.TILE_ROWS_MAX + 11, 97, 133),
    "blocks-wide": (0, 256 * 133 * 4, 1011, 2 * _k.DX_COLS + 76, 133),
}


def _use_cut(monkeypatch, cut):
    """Patch the plan's constants for `CUTS[cut]`; returns (N, d, K)."""
    slot_bytes, tile_bytes, *shape = CUTS[cut]
    if slot_bytes is not None:
        monkeypatch.setattr(F, "SLOT_BYTES", slot_bytes)
    if tile_bytes is not None:
        monkeypatch.setattr(F, "TILE_BYTES", tile_bytes)
    return shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cut", list(CUTS))
def test_blas_path_same_bits_for_any_blas_and_numba_threads(monkeypatch, dtype, cut):
    """The BLAS path (K > SMALL_K_MAX) over several tiles gives the same bits whatever the BLAS
    and Numba thread counts: its GEMMs run single-threaded on a cut fixed by the problem size.
    (dW used to change in the last bits between OPENBLAS_NUM_THREADS=1 and 2.)"""
    rng = np.random.default_rng(0)
    N, d, K = _use_cut(monkeypatch, cut)
    X = rng.standard_normal((N, d)).astype(dtype)
    W = (rng.standard_normal((K, d)) / 4).astype(dtype)
    b, S = rng.standard_normal(K).astype(dtype), rng.standard_normal((K, d)).astype(dtype)
    y = rng.integers(0, K, N)

    def run():
        loss, dW, db, dX = fs.linear_cross_entropy(X, W, b, y, return_dX=True)
        HS, Hs_b = fs.linear_cross_entropy_hvp(X, W, b, y, S, b)
        return [np.float64(loss), dW, db, dX, fs.linear_softmax(X, W, b), HS, Hs_b]

    expected = run()
    for n_blas in (1, 2, 3):
        for n_numba in (1, MAX):
            with threadpool_limits(n_blas, user_api="blas"), numba_threads(n_numba):
                for got, want in zip(run(), expected, strict=True):
                    assert got.tobytes() == want.tobytes(), (n_blas, n_numba)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(20000, 512, 1000), (100000, 256, 100), (16395, 97, 133)],
                         ids=lambda s: "x".join(map(str, s)))
def test_blas_path_scratch_stays_below_the_mmap_threshold(dtype, shape):
    """The BLAS path's scratch arrays (logits per worker, the chains' partials of dW, for the loss
    and for the Hessian-vector product) each stay below glibc's largest mmap threshold (32 MB), so
    that a loop of calls reuses their pages: a 64 MB slot array and a 64 MB logit tile per call
    (float64, 20000 x 512 x 1000) cost 0.1-0.25x the two-GEMM floor in page faults. The chains
    come from the problem size, at least two of them so that two threads share the work."""
    N, d, K = shape
    itemsize = np.dtype(dtype).itemsize
    for n_logit_arrays in (1, 2):
        plan = F._tile_plan(N, K, d, itemsize, n_logit_arrays)
        assert plan.chains >= 2
        for workers in (1, 2, 4):
            for scratch in plan.scratch(K, d, dtype, workers, n_logit_arrays * K):
                assert scratch.nbytes < 32 * 2**20, (workers, scratch.shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cut", list(CUTS))
def test_blas_path_cuts_match_the_reference(rng, monkeypatch, dtype, cut):
    """Both cuts of the BLAS path give the reference's loss, dW, db and dX, and Hessian-vector
    product: chains of sub-tiles, and tiles whose logits (or [Z | T]) are computed by blocks of
    classes and dX by blocks of features (SLOT_BYTES = 0), over several tiles with a short last
    one."""
    import reference

    N, d, K = _use_cut(monkeypatch, cut)
    X = rng.standard_normal((N, d)).astype(dtype)
    W = (rng.standard_normal((K, d)) / 2).astype(dtype)
    b, y = rng.standard_normal(K).astype(dtype), rng.integers(0, K, N)
    w = rng.uniform(0.5, 2.0, N)
    got = fs.linear_cross_entropy(X, W, b, y, sample_weight=w, label_smoothing=0.1,
                                  return_dX=True)
    want = reference.linear_cross_entropy(X, W, b, y, sample_weight=w, label_smoothing=0.1,
                                          return_dX=True)
    for g, r in zip(got, want, strict=True):
        assert_close(g, r, dtype)
    S, s_b = rng.standard_normal((K, d)).astype(dtype), rng.standard_normal(K).astype(dtype)
    got = fs.linear_cross_entropy_hvp(X, W, b, y, S, s_b, sample_weight=w)
    want = reference.linear_cross_entropy_hvp(X, W, b, y, S, s_b, sample_weight=w)
    for g, r in zip(got, want, strict=True):
        assert_close(g, r, dtype)
