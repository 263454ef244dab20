"""Choosing between a kernel's parallel and serial twin, so that every call is safe.

Two of Numba's threading layers are unsafe in ways users hit:

* GNU OpenMP ("omp", the layer on this machine) is not fork-safe: a child forked from a process whose
  OpenMP pool is running aborts on its first parallel region ("fork() called from a process already
  using GNU OpenMP, this is unsafe"). Forked children of such a process run the serial twins.
* "workqueue" (Numba's fallback where neither TBB nor OpenMP is available) aborts when two Python
  threads launch parallel regions at once. Under it, a parallel launch takes a lock; a thread that
  finds the lock taken runs the serial twin instead of waiting.

TBB and OpenMP are thread-safe; TBB is also fork-safe.
"""

from __future__ import annotations

import os
import threading

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
        _layer = numba.threading_layer()
    finally:
        _launch_lock.release()
    return result
