"""Thread counts for a block of work: Numba's pool and the BLAS libraries, restored afterwards.

``n_jobs`` follows the joblib convention: ``None`` leaves every thread count as it is, a positive
integer asks for that many threads, ``-1`` for all of them, ``-2`` for all but one, and so on. The
count is capped at Numba's pool size (``numba.config.NUMBA_NUM_THREADS``), which cannot grow after
start-up. Numba's setting is thread-local and is restored in a ``finally`` block. BLAS limits are
process-wide: blocks that overlap in time (concurrent fits from several threads) share one limit,
set by the first block to enter and restored by the last one to leave, under a lock and a count per
library, so overlapping blocks can never leave BLAS limited for good; changes bypass threadpoolctl
3.8's one-controlling-thread policy (see ``_set_threads``), so they take effect from any thread and
the caller's own ``threadpool_limits`` keep working, inside our blocks and after them.
"""

from __future__ import annotations

import operator
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numba
from threadpoolctl import ThreadpoolController

__all__ = [
    "blas_limits", "effective_n_jobs", "numba_threads", "single_threaded_blas", "thread_limits",
]


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
# Process-wide BLAS pools (pthreads OpenBLAS): library file -> [open blocks, thread count to restore]
_open_limits: dict = {}
# Kernels calling BLAS from their own threads (`single_threaded_blas`) running now, and the thread
# count each process-wide library gets back when the last of them ends (library file -> count).
_kernel_holds = 0
_after_kernels: dict = {}


def _blas_libraries(library: str | None) -> list:
    """threadpoolctl controllers of the BLAS libraries to limit. Inspecting the process costs
    milliseconds (more than a small predict), so the controller is built once; fastsoftmax imports
    both numpy's and scipy's BLAS before any limit is set."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    blas = _controller.select(user_api="blas").lib_controllers
    return [lib for lib in blas if library is None or library in lib.filepath]


def _get_threads(lib) -> int:
    """A library's thread count as blocks see it: while kernels hold BLAS at one thread, the
    count it gets back after them."""
    return _after_kernels.get(lib.filepath) or lib.get_num_threads()


def _set_threads(lib, n_threads: int) -> None:
    """Set a library's thread count from this thread, whichever thread it is.

    threadpoolctl 3.8's ``set_num_threads`` lets only one live thread change a process-wide
    OpenBLAS pool and silently drops the others' changes: with blocks from two threads, the last
    one out could not restore the limit the first one set, and BLAS stayed single-threaded for the
    rest of the process (tests/test_reliability.py). Our blocks are already serialized by
    ``_limits_lock`` and counted, so they use the raw setter behind that policy where it exists,
    and leave threadpoolctl's record of who controls OpenBLAS (the caller's own limits) untouched.
    While kernels hold a process-wide library at one thread, the change waits for them to end.
    """
    if lib.filepath in _after_kernels:
        _after_kernels[lib.filepath] = n_threads
        return
    getattr(lib, "_real_set_num_threads", lib.set_num_threads)(n_threads)


def _process_wide(lib) -> bool:
    """Whether the library has one thread count for the whole process. OpenMP-based BLAS keeps
    it per thread (``omp_set_num_threads``): each block sets and restores its own thread's."""
    return getattr(lib, "threading_layer", None) != "openmp"


def _after_fork_in_child() -> None:
    global _limits_lock, _kernel_holds
    _limits_lock = threading.Lock()  # another thread may have held it at the fork
    # Kernels running at the fork ran in threads the child does not have: end their holds.
    _kernel_holds = 0
    restore = dict(_after_kernels)
    _after_kernels.clear()
    for lib in _blas_libraries(None) if restore else []:
        if lib.filepath in restore:
            _set_threads(lib, restore[lib.filepath])
    # The blocks open at the fork belong to threads the child does not have: undo their limits.
    for lib in _blas_libraries(None) if _open_limits else []:
        entry = _open_limits.get(lib.filepath)
        if entry is not None:
            _set_threads(lib, entry[1])
    _open_limits.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def blas_limits(n_threads: int | None, *, library: str | None = None) -> Iterator[None]:
    """Limit BLAS libraries to ``n_threads`` for the block (no change when None).

    ``library`` selects the BLAS copies whose file path contains that string (numpy and scipy
    each bundle their own OpenBLAS; ``"scipy.libs"`` picks scipy's, which L-BFGS-B uses);
    None selects every BLAS library loaded. For a process-wide pool, counts are kept per library
    file, so blocks from any threads, selecting any libraries, may overlap in any order: while any
    block holds a library the first one's limit stays, and the last one out restores the count the
    first one found. A per-thread (OpenMP) pool is set and restored by each block for its thread.
    """
    if n_threads is None:
        yield
        return
    shared, own = [], []  # own: (library, count to restore) of per-thread pools
    with _limits_lock:
        libraries = _blas_libraries(library)
        try:
            for lib in libraries:
                if not _process_wide(lib):
                    own.append((lib, _get_threads(lib)))
                    _set_threads(lib, n_threads)
                    continue
                entry = _open_limits.get(lib.filepath)
                first = entry is None
                if first:
                    entry = _open_limits[lib.filepath] = [0, _get_threads(lib)]
                entry[0] += 1  # counted before the change: an interruption still restores
                shared.append(lib)
                if first:
                    _set_threads(lib, n_threads)
        except BaseException:
            _release(shared, own)
            raise
    try:
        yield
    finally:
        with _limits_lock:
            _release(shared, own)


def _release(shared: list, own: list) -> None:
    """Leave a block (with ``_limits_lock`` held): the last one out of a shared library restores
    it; per-thread pools are restored in reverse order of setting."""
    for lib in shared:
        entry = _open_limits.get(lib.filepath)
        if entry is None:  # cleared in a forked child
            continue
        entry[0] -= 1
        if entry[0] == 0:
            del _open_limits[lib.filepath]
            _set_threads(lib, entry[1])
    for lib, previous in reversed(own):
        _set_threads(lib, previous)


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Hold every process-wide BLAS pool at one thread while a kernel calls BLAS from its own
    threads (docs/design.md, "Threading and determinism").

    Inside the block, Numba's pool owns the cores: each of its threads calls GEMM on its own tile,
    so BLAS must not start threads of its own (two pools would spin against each other, and a
    GEMM's bits could depend on BLAS's thread count). Blocks from several threads share one hold;
    `blas_limits` changes made meanwhile take effect when the last block ends. Per-thread (OpenMP)
    BLAS pools run single-threaded inside a parallel region already and are left alone.
    """
    global _kernel_holds
    with _limits_lock:
        if _kernel_holds == 0:
            for lib in _blas_libraries(None):
                if _process_wide(lib):
                    _after_kernels[lib.filepath] = lib.get_num_threads()
                    getattr(lib, "_real_set_num_threads", lib.set_num_threads)(1)
        _kernel_holds += 1
    try:
        yield
    finally:
        with _limits_lock:
            _kernel_holds -= 1
            if _kernel_holds == 0:
                restore = dict(_after_kernels)
                _after_kernels.clear()
                for lib in _blas_libraries(None):
                    if lib.filepath in restore:
                        _set_threads(lib, restore[lib.filepath])


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
