"""Parallel kernels as pairs (a ``prange`` kernel and its serial twin), and the choice between the two
that makes every call safe.

Two of Numba's threading layers are unsafe in ways users hit:

* GNU OpenMP ("omp", the layer on this machine) is not fork-safe: a child forked from a process whose
  OpenMP pool is running aborts on its first parallel region ("fork() called from a process already
  using GNU OpenMP, this is unsafe"). Forked children of such a process run the serial twins.
* "workqueue" (Numba's fallback where neither TBB nor OpenMP is available) aborts when two Python
  threads launch parallel regions at once. Under it, a parallel launch takes a lock; a thread that
  finds the lock taken runs the serial twin instead of waiting.

TBB and OpenMP are thread-safe; TBB is also fork-safe.

Both twins of a pair must give the same bits (``docs/design.md``, "Threading and determinism"): the
kernels module keeps all arithmetic in helpers compiled once and called by both twins, so that the
twins differ only in how the blocks are handed out.
"""

from __future__ import annotations

import os
import threading
import types
from collections.abc import Callable

import numba

_serial_only = False
_launch_lock = threading.Lock()
_layer: str | None = None  # known once this process has launched the pool


def _after_fork_in_child() -> None:
    global _serial_only, _launch_lock
    _launch_lock = threading.Lock()  # a lock held by another thread at fork time stays held
    try:
        layer = numba.threading_layer()
    except ValueError:  # the parent never launched the pool: the child may start its own
        return
    if layer == "omp":
        _serial_only = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def run(parallel_kernel, serial_kernel, n_tasks: int, *args):
    """Call the parallel kernel when that is safe in this process and thread and there are at least
    two parallel tasks (prange iterations) to share; else the serial one, which also saves the
    launch of a parallel region (tens of microseconds, more on a busy machine)."""
    global _layer
    if _serial_only or n_tasks < 2:
        return serial_kernel(*args)
    if _layer is not None and _layer != "workqueue":
        return parallel_kernel(*args)
    if not _launch_lock.acquire(blocking=False):
        return serial_kernel(*args)
    try:
        result = parallel_kernel(*args)
        try:
            _layer = numba.threading_layer()
        except ValueError:  # no pool was launched: NUMBA_DISABLE_JIT runs kernels as Python
            pass
    finally:
        _launch_lock.release()
    return result


class KernelPair:
    """A kernel compiled twice from one Python function: ``parallel`` (``prange`` shared among
    Numba's threads) and ``serial`` (``prange`` runs as ``range``), always together.

    Calling the pair, ``pair(n_tasks, *args)``, runs the twin that `run` picks. The serial twin is
    compiled from a copy of the function under its own qualified name (``<name>_serial``): Numba's
    cache is keyed by qualified name, so jitting the same function again would load the parallel
    machine code from the cache.
    """

    def __init__(self, py_func: types.FunctionType, jit: Callable):
        twin = types.FunctionType(py_func.__code__, py_func.__globals__,
                                  py_func.__name__ + "_serial", py_func.__defaults__,
                                  py_func.__closure__)
        twin.__qualname__ = py_func.__qualname__ + "_serial"
        twin.__doc__ = py_func.__doc__
        self.py_func = py_func
        self.__name__, self.__qualname__ = py_func.__name__, py_func.__qualname__
        self.__doc__ = py_func.__doc__
        self.parallel = jit(parallel=True)(py_func)
        self.serial = jit()(twin)

    def __call__(self, n_tasks: int, *args):
        return run(self.parallel, self.serial, n_tasks, *args)

    def __repr__(self) -> str:
        return f"<KernelPair {self.__qualname__}>"


def parallel_kernel(jit: Callable) -> Callable[[types.FunctionType], KernelPair]:
    """Decorator factory: ``parallel_kernel(jit)(f)`` is ``KernelPair(f, jit)``, where
    ``jit(parallel=...)`` returns a jit decorator (the kernels module passes its ``_jit``, the one
    place where Numba options are set)."""
    return lambda py_func: KernelPair(py_func, jit)
