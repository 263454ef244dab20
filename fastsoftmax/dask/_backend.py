"""A function of every chunk, run where the chunk lives, and a fixed-order sum of the results.

Two backends share one interface: :class:`DistributedBackend` (an active ``distributed.Client``:
chunks persisted on the workers, one task per worker task slot over the chunks that worker
holds, futures submitted directly, the shared argument broadcast once per call) and
:class:`LocalBackend` (dask's local scheduler: chunks computed once into this process, one small
graph per call run by the configured local scheduler). Both sum per-chunk
float64 vectors with the same tree (:func:`tree_sum`): groups of ``FAN_IN`` consecutive chunks,
level by level, so the bits of a sum depend on the chunks only, never on the workers or threads
that computed them (docs/scaling.md, "Determinism").
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError
from contextlib import contextmanager

import numpy as np

from fastsoftmax._threads import thread_limits

__all__ = ["FAN_IN", "DistributedBackend", "LocalBackend", "sum_group", "task_threads", "tree_sum"]

#: Partial results summed per task of the reduction tree; with at most this many chunks the
#: client sums them itself (one gather, no extra task round trip).
FAN_IN = 16
#: Times an evaluation is resubmitted after the cluster lost something it needed (a worker died
#: holding the scattered parameters): the results are deterministic, so a retry is exact.
RETRIES = 3


def sum_group(*parts: np.ndarray) -> np.ndarray:
    """The sum of float64 vectors, left to right (the one addition order every backend uses)."""
    total = np.array(parts[0], dtype=np.float64, copy=True)
    for part in parts[1:]:
        total += part
    return total


def tree_levels(n: int) -> list[int]:
    """Sizes of the levels of the reduction tree above ``n`` leaves, while a level exceeds
    ``FAN_IN`` (each node sums up to ``FAN_IN`` consecutive nodes of the level below)."""
    sizes = []
    while n > FAN_IN:
        n = -(-n // FAN_IN)
        sizes.append(n)
    return sizes


def tree_sum(parts: Sequence[np.ndarray]) -> np.ndarray:
    """The sum of ``parts`` through the reduction tree, computed here (the reference order)."""
    level = list(parts)
    for _ in tree_levels(len(level)):
        level = [sum_group(*level[i:i + FAN_IN]) for i in range(0, len(level), FAN_IN)]
    return sum_group(*level)


def effective_task_threads(n_jobs: int | None) -> int:
    """Kernel threads inside one worker task: 1 unless ``n_jobs`` asks for more.

    Dask runs one task per slot and counts a slot as a core (its nanny starts workers with
    ``OMP_NUM_THREADS=1``); a task that also started full-width kernel threads would put
    slots x cores threads on the cores. ``n_jobs`` is for workers with one slot and several
    cores of their own (docs/scaling.md, "Threads inside tasks").
    """
    return 1 if n_jobs is None else max(1, int(n_jobs))


@contextmanager
def task_threads(n_jobs: int | None):
    """Numba and BLAS threads of the kernels inside a task (see `effective_task_threads`).

    BLAS is limited as well as Numba: above 32 classes dW comes from an OpenBLAS GEMM whose last
    bits depend on its thread count, so a fixed count keeps the fit's bits independent of where
    a chunk ran."""
    with thread_limits(effective_task_threads(n_jobs)) as n:
        yield n


def probe_task_threads(n_jobs: int | None = None) -> tuple[int, list[int]]:
    """What a task sees inside `task_threads`: (Numba threads, BLAS threads per library)."""
    import numba
    from threadpoolctl import threadpool_info

    with task_threads(n_jobs):
        blas = [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]
        return numba.get_num_threads(), blas


class LocalBackend:
    """Chunks held in this process; each call is one flat graph for dask's local scheduler."""

    def __init__(self, get: Callable | None = None):
        if get is None:
            import dask.base
            import dask.threaded

            get = dask.base.get_scheduler() or dask.threaded.get
        self._get = get

    def persist(self, arrays: Sequence) -> list[list]:
        """Compute every chunk of the row-chunked dask arrays (None stays None) once."""
        import dask

        delayed = [None if a is None else list(a.to_delayed().ravel()) for a in arrays]
        todo = [d for d in delayed if d is not None]
        (computed,) = dask.compute(todo, scheduler=self._get)
        done = iter(computed)
        return [None if d is None else list(next(done)) for d in delayed]

    def release(self, chunks) -> None:
        """Nothing to release: the chunks go with the last reference."""

    def map(self, fn: Callable, columns: Sequence, shared=None, *, reduce: bool = False):
        """``fn(i, *column_i, shared=shared)`` for every chunk i; their tree sum if ``reduce``."""
        task = functools.partial(fn, shared=shared)
        n = _n_chunks(columns)
        name = f"fastsoftmax-{uuid.uuid4().hex}"
        graph = {(name, i): (task, i, *(_at(c, i) for c in columns)) for i in range(n)}
        results = self._get(graph, [(name, i) for i in range(n)])
        return tree_sum(results) if reduce else list(results)


    def apply(self, fn: Callable, columns: Sequence, shared=None) -> list:
        """A new column: ``fn(i, *column_i, shared)`` for every chunk i."""
        return self.map(fn, columns, shared)


class DistributedBackend:
    """Chunks persisted on the workers of a ``distributed.Client``; futures submitted directly."""

    def __init__(self, client):
        self.client = client

    def persist(self, arrays: Sequence) -> list[list]:
        """Persist the row-chunked dask arrays together and return their chunk futures in row
        order. They keep their graph: a chunk lost with a worker is recomputed from its source."""
        from dask.core import flatten
        from distributed import futures_of, wait

        # Under fresh names: the same dask keys persisted by an earlier fit and just released
        # would come back cancelled (the scheduler is still forgetting them). The renaming task
        # returns its chunk itself: no copy, and the lineage to the source stays.
        fresh = uuid.uuid4().hex
        present = [a.map_blocks(_same, dtype=a.dtype, name=f"fastsoftmax-{j}-{fresh}")
                   for j, a in enumerate(arrays) if a is not None]
        persisted = iter(self.client.persist(present))
        out = []
        for a in arrays:
            if a is None:
                out.append(None)
                continue
            p = next(persisted)
            by_key = {f.key: f for f in futures_of(p)}
            out.append([by_key[k] for k in flatten(p.__dask_keys__())])
        # Waited for: each evaluation places its tasks where the chunks are (`_placement`).
        # (distributed.wait would use the default client, not necessarily this one.)
        with self.client.as_current():
            wait([f for column in out if column is not None for f in column])
        return out

    def release(self, chunks) -> None:
        """Drop the references to persisted chunks (the workers free them)."""
        for column in chunks:
            if column is not None:
                for future in column:
                    future.release()

    def map(self, fn: Callable, columns: Sequence, shared=None, *, reduce: bool = False):
        """``fn(i, *column_i, shared=shared)`` for every chunk i, run where the chunks live;
        gathered in chunk order, or summed through the tree (inner levels on the workers)."""
        for attempt in range(RETRIES + 1):
            try:
                return self._map_once(fn, columns, shared, reduce)
            except (CancelledError, *_lost_errors()) as exc:
                if attempt == RETRIES:
                    raise RuntimeError(
                        f"the cluster lost data of this evaluation {RETRIES + 1} times in a row "
                        f"({type(exc).__name__}: {exc}); are workers being killed?"
                    ) from exc
        raise AssertionError("unreachable")

    def apply(self, fn: Callable, columns: Sequence, shared=None) -> list:
        """A new column of futures kept on the workers: ``fn(i, *column_i, shared)`` for every
        chunk i. ``shared`` goes inside each task (not scattered), so that a result lost with a
        worker can be recomputed from the tasks alone; keep it small."""
        n = _n_chunks(columns)
        cols = [c if c is not None else [None] * n for c in columns]
        return self.client.map(fn, range(n), *cols, shared=shared, pure=False)

    def _map_once(self, fn, columns, shared, reduce):
        client = self.client
        n = _n_chunks(columns)
        cols = [c if c is not None else [None] * n for c in columns]
        placed = self._placement(cols)
        slots = client.nthreads()
        # Chunks held nowhere yet (being recomputed) get a task each, for the scheduler to place.
        plans = [task for worker, plan in _worker_plans(placed, n, reduce).items()
                 for task in (_split(plan, slots.get(worker, 1)) if worker is not None
                              else [[entry] for entry in plan])]
        # hash=False: a fresh key every call, so an unchanged value never meets a key the
        # scheduler is still releasing from the previous call. Broadcast to the workers that
        # hold chunks: each has it before its task starts, with no fetch from a peer.
        shared_future = None if shared is None else client.scatter(
            shared, hash=False, broadcast=True, workers=[w for w in placed if w is not None] or None)
        size = _first_level(n, reduce)
        refs = {}  # plan entry (its first chunk) -> (future of its task, position in the result)
        whole = set()  # first chunks of the entries that are whole first-level nodes
        for plan in plans:
            cells = [c[i] for entry in plan for i in entry for c in cols]
            future = client.submit(run_plan, fn, plan, len(cols), shared_future, *cells,
                                   key=f"{getattr(fn, '__name__', 'chunk')}-{uuid.uuid4().hex}")
            refs.update({entry[0]: (future, position) for position, entry in enumerate(plan)})
            whole.update(entry[0] for entry in plan if len(entry) > 1)
        # The tree's first level: entries that are whole nodes, or a task summing a node's chunks.
        level = [refs[lo] if size == 1 or lo in whole
                 else _submit_sum(client, [refs[i] for i in range(lo, min(n, lo + size))])
                 for lo in range(0, n, size)]
        for _ in tree_levels(n)[1:] if reduce else ():
            level = [_submit_sum(client, level[i:i + FAN_IN]) for i in range(0, len(level), FAN_IN)]
        results = _resolve(client.gather(_distinct(level)), level)
        return sum_group(*results) if reduce else results

    def _placement(self, cols) -> dict:
        """Chunk indices grouped by a worker holding the chunk's first held cell (X comes first:
        the largest to move), in chunk order; ``None``: held nowhere yet. A cell held by several
        workers (a replica) goes to the one with the fewest chunks so far."""
        futures = [f for c in cols for f in c if hasattr(f, "key")]
        who = self.client.who_has(futures) if futures else {}
        placed: dict = {}
        for i in range(len(cols[0])):
            holders = [who.get(c[i].key, ()) for c in cols if hasattr(c[i], "key")]
            held = next((h for h in holders if h), ())
            worker = min(sorted(held), key=lambda w: len(placed.get(w, ()))) if held else None
            placed.setdefault(worker, []).append(i)
        return placed


def _first_level(n: int, reduce: bool) -> int:
    """Chunks per node of the tree's first level: FAN_IN above FAN_IN chunks, else 1 (the
    client sums the chunks' own results)."""
    return FAN_IN if reduce and n > FAN_IN else 1


def _worker_plans(placed: dict, n: int, reduce: bool) -> dict:
    """One plan per worker: entries of chunk indices, each summed into one result. A first
    node of the tree whose chunks all live on one worker is one entry there (summed in place:
    the same additions in the same order); the chunks of a node spread over workers are entries
    of one chunk each, summed by a task of their own (`_submit_sum`)."""
    size = _first_level(n, reduce)
    owner = {i: w for w, chunks in placed.items() for i in chunks}
    plans: dict = {w: [] for w in placed}
    for lo in range(0, n, size):
        members = list(range(lo, min(n, lo + size)))
        homes = {owner[i] for i in members}
        if len(homes) == 1:
            plans[homes.pop()].append(members)
        else:
            for i in members:
                plans[owner[i]].append([i])
    return {w: plan for w, plan in plans.items() if plan}


def _split(plan: list[list[int]], slots: int) -> list[list[list[int]]]:
    """A worker's plan cut into at most ``slots`` tasks (its task slots: each task runs its
    kernels on one thread) of consecutive entries with about equal numbers of chunks."""
    total = sum(len(entry) for entry in plan)
    tasks, done = [[]], 0
    for entry in plan:
        if tasks[-1] and done * slots >= len(tasks) * total:
            tasks.append([])
        tasks[-1].append(entry)
        done += len(entry)
    return tasks


def run_plan(fn: Callable, plan, n_columns: int, shared, *cells) -> list:
    """One worker task: ``fn(i, *cells of chunk i, shared=shared)`` for the chunks of every plan
    entry in order; an entry of several chunks gives the `sum_group` of their results."""
    results, at = [], 0
    for entry in plan:
        parts = []
        for i in entry:
            parts.append(fn(i, *cells[at:at + n_columns], shared=shared))
            at += n_columns
        results.append(parts[0] if len(parts) == 1 else sum_group(*parts))
    return results


def sum_refs(refs, *sources) -> np.ndarray:
    """`sum_group` of the values ``refs`` name in ``sources`` (a task of the tree's levels)."""
    return sum_group(*_pick(sources, refs))


def _pick(sources: Sequence, refs) -> list:
    """The values ``refs`` name: (source index, position in its list, or None for the whole)."""
    return [sources[s] if p is None else sources[s][p] for s, p in refs]


def _distinct(nodes) -> list:
    """The distinct futures of (future, position) nodes, in first-seen order."""
    return list({id(f): f for f, _ in nodes}.values())


def _submit_sum(client, nodes) -> tuple:
    """A tree node: the task summing ``nodes`` (future, position) in order, as a node itself."""
    futures = _distinct(nodes)
    index = {id(f): j for j, f in enumerate(futures)}
    refs = [(index[id(f)], p) for f, p in nodes]
    return client.submit(sum_refs, refs, *futures, key=f"sum-{uuid.uuid4().hex}"), None


def _resolve(values: Sequence, nodes) -> list:
    """The nodes' values, from the gathered values of their `_distinct` futures."""
    index = {id(f): j for j, f in enumerate(_distinct(nodes))}
    return _pick(values, [(index[id(f)], p) for f, p in nodes])


def _same(block):
    return block


def _n_chunks(columns) -> int:
    return next(len(c) for c in columns if c is not None)


def _at(column, i):
    return None if column is None else column[i]


@functools.cache
def _lost_errors() -> tuple[type[BaseException], ...]:
    """distributed's exceptions for work lost with a worker (recomputing is the remedy)."""
    from distributed import KilledWorker
    from distributed.comm import CommClosedError

    # FutureCancelledError (scattered data lost with its worker) is a CancelledError.
    return (KilledWorker, CommClosedError)
