"""Thread counts for a block of work: Numba's pool and the BLAS libraries, restored afterwards.

``n_jobs`` follows the joblib convention: ``None`` leaves every thread count as it is, a positive
integer asks for that many threads, ``-1`` for all of them, ``-2`` for all but one, and so on. The
count is capped at Numba's pool size (``numba.config.NUMBA_NUM_THREADS``), which cannot grow after
start-up. Numba's setting is thread-local and is restored in a ``finally`` block. BLAS limits are
process-wide: blocks that overlap in time (concurrent fits from several threads) share one limit,
set by the first block to enter and restored by the last one to leave, under a lock and a count per
selection of libraries, so overlapping blocks can never leave BLAS limited for good.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numba
from threadpoolctl import ThreadpoolController

__all__ = ["blas_limits", "effective_n_jobs", "numba_threads", "thread_limits"]


def effective_n_jobs(n_jobs: int | None) -> int | None:
    """The thread count that ``n_jobs`` asks for, or None to leave thread counts alone.

    Raises
    ------
    ValueError
        If ``n_jobs`` is 0.
    TypeError
        If ``n_jobs`` is not an integer or None.
    """
    if n_jobs is None:
        return None
    if isinstance(n_jobs, bool):
        raise TypeError(f"n_jobs must be an integer or None, got {n_jobs!r}")
    n_jobs = operator.index(n_jobs)
    if n_jobs == 0:
        raise ValueError("n_jobs == 0 has no meaning; use None, a positive integer or -1")
    available = numba.config.NUMBA_NUM_THREADS
    n_threads = n_jobs if n_jobs > 0 else available + 1 + n_jobs
    return int(min(max(n_threads, 1), available))


@contextmanager
def thread_limits(n_jobs: int | None) -> Iterator[int | None]:
    """Run the block with ``n_jobs`` Numba threads and at most ``n_jobs`` BLAS threads.

    Yields the thread count in force (None when ``n_jobs`` is None and nothing was changed).
    """
    n_threads = effective_n_jobs(n_jobs)
    if n_threads is None:
        yield None
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(n_threads)
    try:
        with blas_limits(n_threads):
            yield n_threads
    finally:
        numba.set_num_threads(previous)


_controller: ThreadpoolController | None = None
_limits_lock = threading.Lock()
_open_limits: dict = {}  # library filter -> [number of open blocks, threadpoolctl limiter]


def _blas_controller(library: str | None):
    """The BLAS libraries to limit. Inspecting the process costs milliseconds (more than a small
    predict), so the controller is built once; fastsoftmax imports both numpy's and scipy's BLAS."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    blas = _controller.select(user_api="blas")
    if library is None:
        return blas
    return _controller.select(
        filepath=[lib.filepath for lib in blas.lib_controllers if library in lib.filepath]
    )


@contextmanager
def blas_limits(n_threads: int | None, *, library: str | None = None) -> Iterator[None]:
    """Limit BLAS libraries to ``n_threads`` for the block (no change when None).

    ``library`` selects the BLAS copies whose file path contains that string (numpy and scipy
    each bundle their own OpenBLAS; ``"scipy.libs"`` picks scipy's, which L-BFGS-B uses);
    None selects every BLAS library loaded. Overlapping blocks share the first one's limit.
    """
    if n_threads is None:
        yield
        return
    with _limits_lock:
        entry = _open_limits.get(library)
        if entry is None:
            entry = _open_limits[library] = [0, _blas_controller(library).limit(limits=n_threads)]
        entry[0] += 1
    try:
        yield
    finally:
        with _limits_lock:
            entry[0] -= 1
            if entry[0] == 0:
                entry[1].restore_original_limits()
                del _open_limits[library]


@contextmanager
def numba_threads(n_threads: int | None) -> Iterator[None]:
    """Run the block with at most ``n_threads`` Numba threads (no change when None)."""
    if n_threads is None:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(n_threads, previous)))
    try:
        yield
    finally:
        numba.set_num_threads(previous)
