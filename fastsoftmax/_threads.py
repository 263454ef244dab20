"""Thread counts for a block of work: Numba's pool and the BLAS libraries, restored afterwards.

``n_jobs`` follows the joblib convention: ``None`` leaves every thread count as it is, a positive
integer asks for that many threads, ``-1`` for all of them, ``-2`` for all but one, and so on. The
count is capped at Numba's pool size (``numba.config.NUMBA_NUM_THREADS``), which cannot grow after
start-up. Numba's setting is thread-local and is restored in a ``finally`` block. BLAS limits are
process-wide: blocks that overlap in time (concurrent fits from several threads) share one limit,
set by the first block to enter and restored by the last one to leave, under a lock and a count per
library. Every change is made from one owner thread (threadpoolctl ignores OpenBLAS changes from a
second thread while another holds a limit), so overlapping blocks can never leave BLAS limited for
good, and the caller's own ``threadpool_limits`` still work afterwards.
"""

from __future__ import annotations

import functools
import operator
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from typing import TypeVar

import numba
from threadpoolctl import ThreadpoolController

T = TypeVar("T")

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
_open_limits: dict = {}  # BLAS library file -> [number of open blocks, ExitStack restoring it]
_owner: tuple[int, queue.SimpleQueue] | None = None  # (pid, request queue) of the owner thread


def _blas_files(library: str | None) -> list[str]:
    """File paths of the BLAS libraries to limit. Inspecting the process costs milliseconds (more
    than a small predict), so the controller is built once; fastsoftmax imports both numpy's and
    scipy's BLAS before any limit is set."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    blas = _controller.select(user_api="blas").lib_controllers
    return [lib.filepath for lib in blas if library is None or library in lib.filepath]


def _serve(requests: queue.SimpleQueue) -> None:
    while True:
        call, done = requests.get()
        try:
            done.set_result(call())
        except BaseException as exc:  # handed to the caller, which re-raises it
            done.set_exception(exc)


def _on_owner_thread(call: Callable[[], T]) -> T:
    """Run ``call`` on the one thread that makes every BLAS thread-count change (call with
    ``_limits_lock`` held).

    OpenBLAS's pthreads pool is process-wide, so threadpoolctl 3.8 lets only one live thread change
    it and silently ignores the others until that thread's limits are closed: with blocks from
    several threads, the last one out could not restore a limit the first one set, and BLAS stayed
    single-threaded for the rest of the process (tests/test_reliability.py). One owner thread makes
    every change. A forked child starts its own owner.
    """
    global _owner
    if _owner is None or _owner[0] != os.getpid():
        requests: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=_serve, args=(requests,), name="fastsoftmax-blas-limits",
                         daemon=True).start()
        _owner = (os.getpid(), requests)
    done: Future = Future()
    _owner[1].put((call, done))
    return done.result()


def _limit(paths: list[str], n_threads: int) -> list[ExitStack]:
    """Limit each library (on the owner thread); closing its stack restores it. Entered as
    context managers, so threadpoolctl (3.8+) hands OpenBLAS control back when they are closed
    instead of leaving the owner thread as the only one whose changes count."""
    stacks = []
    for path in paths:
        stack = ExitStack()
        stack.enter_context(_controller.select(filepath=[path]).limit(limits=n_threads))
        stacks.append(stack)
    return stacks


def _close(stacks: list[ExitStack]) -> None:
    for stack in stacks:
        stack.close()


def _reset_after_fork() -> None:
    global _limits_lock
    _limits_lock = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_reset_after_fork)


@contextmanager
def blas_limits(n_threads: int | None, *, library: str | None = None) -> Iterator[None]:
    """Limit BLAS libraries to ``n_threads`` for the block (no change when None).

    ``library`` selects the BLAS copies whose file path contains that string (numpy and scipy
    each bundle their own OpenBLAS; ``"scipy.libs"`` picks scipy's, which L-BFGS-B uses);
    None selects every BLAS library loaded. Counts are kept per library file, so blocks that
    select different sets of libraries may overlap in any order: while any block holds a library,
    the first one's limit stays; the last one out restores the library's own thread count. Every
    change is made on one owner thread (see ``_on_owner_thread``).
    """
    if n_threads is None:
        yield
        return
    with _limits_lock:
        files = _blas_files(library)
        new = [path for path in files if path not in _open_limits]
        if new:  # one round trip to the owner thread (about 0.1 ms each)
            stacks = _on_owner_thread(functools.partial(_limit, new, n_threads))
            for path, stack in zip(new, stacks, strict=True):
                _open_limits[path] = [0, stack]
        for path in files:
            _open_limits[path][0] += 1
    try:
        yield
    finally:
        with _limits_lock:
            done = []
            for path in files:
                entry = _open_limits.get(path)
                if entry is None:  # opened in the parent of this forked child
                    continue
                entry[0] -= 1
                if entry[0] == 0:
                    done.append(entry[1])
                    del _open_limits[path]
            if done:
                _on_owner_thread(functools.partial(_close, done))


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
