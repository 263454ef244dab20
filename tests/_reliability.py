"""Workloads and subprocess helpers shared by the reliability tests (not a test module).

The thread, fork, leak and cold-start checks run in fresh Python processes, started by ``run_python``
with a timeout that kills the whole process group, so that an abort or a hang fails one test instead of
killing or stalling the test run. Each check's process entry point lives here (``*_main``), so the
code that runs in the child is ordinary, importable, lint-checked Python.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"

PUBLIC = (
    "softmax",
    "log_softmax",
    "cross_entropy",
    "cross_entropy_grad",
    "linear_cross_entropy",
    "linear_softmax",
)


def blas_threads() -> list[tuple[str, str, int]]:
    """``(internal_api, filepath, num_threads)`` of every loaded BLAS library, sorted: the one probe
    of BLAS thread counts, in test processes and in the children started here."""
    from threadpoolctl import threadpool_info

    return sorted((lib["internal_api"], lib["filepath"], lib["num_threads"])
                  for lib in threadpool_info() if lib["user_api"] == "blas")


# ---------------------------------------------------------------------------------------------------
# A workload that calls every public function, on every code path
# ---------------------------------------------------------------------------------------------------


def workload(impl, dtype, n: int = 700, seed: int = 0) -> list[tuple[str, Callable[[], object]]]:
    """Named zero-argument calls covering every public function of `impl` and every kernel path:
    row kernels, the small-K (<= SMALL_K_MAX classes) and tiled (BLAS) linear paths, with and
    without bias, weights, label smoothing, the three reductions, ``return_dX`` and ``out=``.

    n = 700 rows span several row blocks (64 rows) and several small-K chunks (512 rows), so the
    parallel kernels really split work.
    """
    from fastsoftmax.functional import SMALL_K_MAX  # the callers have imported fastsoftmax already

    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    k_small, k_tiled, d = 7, SMALL_K_MAX + 8, 12
    Z = (rng.normal(size=(n, k_small)) * 4).astype(dtype)
    y = rng.integers(0, k_small, n)
    w = rng.uniform(0, 2, n)
    X = rng.normal(size=(n, d)).astype(dtype)
    Ws = (rng.normal(size=(k_small, d)) / 2).astype(dtype)
    bs = rng.normal(size=k_small).astype(dtype)
    Wt = (rng.normal(size=(k_tiled, d)) / 2).astype(dtype)
    bt = rng.normal(size=k_tiled).astype(dtype)
    yt = rng.integers(0, k_tiled, n)
    f = impl
    return [
        ("softmax", lambda: f.softmax(Z)),
        ("softmax out=", lambda: f.softmax(Z, out=np.empty_like(Z))),
        ("log_softmax", lambda: f.log_softmax(Z)),
        ("cross_entropy mean", lambda: f.cross_entropy(Z, y)),
        ("cross_entropy weighted smoothed sum",
         lambda: f.cross_entropy(Z, y, sample_weight=w, label_smoothing=0.1, reduction="sum")),
        ("cross_entropy none", lambda: f.cross_entropy(Z, y, reduction="none")),
        ("cross_entropy_grad",
         lambda: f.cross_entropy_grad(Z, y, sample_weight=w, label_smoothing=0.05)),
        ("linear_cross_entropy small-K",
         lambda: f.linear_cross_entropy(X, Ws, bs, y, sample_weight=w, alpha=0.1, return_dX=True)),
        ("linear_cross_entropy tiled",
         lambda: f.linear_cross_entropy(X, Wt, None, yt, label_smoothing=0.1, reduction="sum")),
        ("linear_cross_entropy tiled bias dX",
         lambda: f.linear_cross_entropy(X, Wt, bt, yt, return_dX=True)),
        ("linear_softmax small-K", lambda: f.linear_softmax(X, Ws, bs)),
        ("linear_softmax tiled", lambda: f.linear_softmax(X, Wt, bt)),
    ]


def snapshot(result) -> list:
    """A result (array, float, or tuple of them and None) as a list of private array copies."""
    items = result if isinstance(result, tuple) else (result,)
    return [None if a is None else np.array(a, copy=True) for a in items]


def identical(a: list, b: list) -> bool:
    """Bitwise equality of two snapshots (same dtypes, shapes and bytes)."""
    if len(a) != len(b):
        return False
    for u, v in zip(a, b, strict=True):
        if (u is None) != (v is None):
            return False
        if u is not None and (u.dtype != v.dtype or u.shape != v.shape
                              or u.tobytes() != v.tobytes()):
            return False
    return True


def digest(result) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in snapshot(result):
        h.update(b"None" if a is None else a.dtype.str.encode() + repr(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def vm_kib(key: str) -> int:
    """A line of /proc/self/status (VmRSS, VmHWM, ...) in KiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


# ---------------------------------------------------------------------------------------------------
# Running a check in a fresh process
# ---------------------------------------------------------------------------------------------------


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str, seconds: float):
        self.returncode, self.stdout, self.stderr, self.seconds = returncode, stdout, stderr, seconds

    def json(self) -> dict:
        """The last stdout line, which every *_main prints as JSON."""
        lines = self.stdout.strip().splitlines()
        assert self.returncode == 0 and lines, self.explain()
        return json.loads(lines[-1])

    def explain(self) -> str:
        return (f"exit status {self.returncode} after {self.seconds:.1f} s\n"
                f"--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}")


# Children still running (their process groups), and whether the session is ending: at its end
# `stop_children` kills those that background jobs (conftest's `early_job`) left behind, and no new
# one starts.
_LIVE: set[subprocess.Popen] = set()
_LIVE_LOCK = threading.Lock()
_STOPPING = threading.Event()


def stop_children() -> None:
    """Kill the process groups of all running children; later `run_python` calls fail at once."""
    _STOPPING.set()
    with _LIVE_LOCK:
        for proc in _LIVE:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run_python(code: str, *, env: dict | None = None, timeout: float = 300.0) -> Result:
    """Run `code` in a fresh interpreter (repository root and tests/ importable). On timeout the
    whole process group (forked grandchildren included) is killed and the caller's test fails."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(TESTS)] + ([full_env["PYTHONPATH"]] if full_env.get("PYTHONPATH") else [])
    )
    full_env.update(env or {})
    start = time.perf_counter()
    with _LIVE_LOCK:
        if _STOPPING.is_set():
            raise RuntimeError("the test session is ending: no new child process")
        proc = subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT, env=full_env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        _LIVE.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(
            f"timed out after {timeout:.0f} s (hang?)\n"
            + Result(proc.returncode, out, err, time.perf_counter() - start).explain()
        ) from None
    finally:
        with _LIVE_LOCK:
            _LIVE.discard(proc)
    return Result(proc.returncode, out, err, time.perf_counter() - start)


def _count_dispatch() -> dict:
    """Wrap fastsoftmax._parallel.run to count which twin each call really ran."""
    from fastsoftmax import _parallel

    counts = {"parallel": 0, "serial": 0}
    lock = threading.Lock()
    original = _parallel.run

    def counted(name, kernel):
        def call(*args):
            with lock:
                counts[name] += 1
            return kernel(*args)
        return call

    def run(parallel_kernel, serial_kernel, n_tasks, *args):
        return original(counted("parallel", parallel_kernel), counted("serial", serial_kernel),
                        n_tasks, *args)

    _parallel.run = run
    return counts


# ---------------------------------------------------------------------------------------------------
# Entry points of the checks that run in a fresh process; each prints one JSON line
# ---------------------------------------------------------------------------------------------------


def threads_main(n_threads: int = 8, repeats: int = 4) -> None:
    """n_threads Python threads call every workload entry at once, `repeats` times each in its own
    order; every result must be bitwise identical to a single-threaded call's.

    The concurrent phase comes first, in a process where no kernel has run yet: the compilation or
    cache loading, the threading layer's start and the dispatch in _parallel.run (which learns the
    layer on the first launch) all race too. The single-threaded results are computed afterwards.
    """
    import numba

    import fastsoftmax as fs
    from fastsoftmax import _parallel

    counts = _count_dispatch()
    calls = workload(fs, np.float64) + workload(fs, np.float32, seed=1)
    barrier = threading.Barrier(n_threads)
    results: list[tuple[int, int, str]] = []
    errors: list[str] = []

    def worker(t: int) -> None:
        order = np.random.default_rng(t).permutation(len(calls) * repeats) % len(calls)
        try:
            barrier.wait()
            for j in order:
                results.append((t, int(j), digest(calls[j][1]())))
        except BaseException as exc:  # noqa: B036 - report anything; the test asserts
            errors.append(f"thread {t}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    concurrent_counts = dict(counts)
    expected = [digest(call()) for _, call in calls]
    mismatches = sorted({f"{calls[j][0]} ({'f64' if j < len(calls) // 2 else 'f32'})"
                         for t, j, h in results if h != expected[j]})
    # The serial twins (used by forked children and under a busy workqueue layer) must give the
    # same bits as the parallel kernels.
    parallel_run = _parallel.run
    _parallel.run = lambda par, ser, n_tasks, *args: ser(*args)
    serial = [digest(call()) for _, call in calls]
    _parallel.run = parallel_run
    print(json.dumps({
        "layer": numba.threading_layer(),
        "num_threads": numba.get_num_threads(),
        "calls": len(results),
        "mismatches": mismatches,
        "twin_mismatches": [calls[j][0] for j in range(len(calls)) if serial[j] != expected[j]],
        "errors": errors,
        "counts": concurrent_counts,
    }))


def fork_main(parent_first: bool = True, timeout: float = 120.0) -> None:
    """Use every kernel in this process (which starts the threading layer's pool), then run the same
    workload in a child started with multiprocessing's 'fork' context; compare result digests.
    With parent_first=False the parent forks before any parallel region has run."""
    import multiprocessing as mp

    import numba

    import fastsoftmax as fs
    from fastsoftmax import _parallel

    def layer():
        try:
            return numba.threading_layer()
        except ValueError:  # no parallel region has run in this process
            return None

    calls = workload(fs, np.float64) + workload(fs, np.float32, seed=1)
    parent = [digest(call()) for _, call in calls] if parent_first else None
    parent_layer = layer()
    ctx = mp.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)

    def child() -> None:
        digests = [digest(call()) for _, call in calls]
        sender.send({"digests": digests, "serial_only": _parallel._serial_only, "layer": layer()})

    proc = ctx.Process(target=child)
    proc.start()
    got = receiver.recv() if receiver.poll(timeout) else None
    proc.join(timeout=10)
    hung = proc.is_alive()
    if hung:
        proc.kill()
        proc.join()
    if parent is None:
        parent = [digest(call()) for _, call in calls]
    print(json.dumps({
        "parent_layer_at_fork": parent_layer,
        "child": None if got is None else {
            "layer": got["layer"], "serial_only": got["serial_only"],
            "mismatches": [calls[i][0] for i in range(len(calls))
                           if parent[i] != got["digests"][i]],
        },
        "exitcode": proc.exitcode,
        "hung": hung,
    }))


def leaks_main(n_calls: int = 1000, warmup: int = 30) -> None:
    """For every public function: warm up, then `n_calls` calls cycling through its workload entries
    (both dtypes, every option); report the growth of resident memory (VmRSS), of memory held by
    Numba's runtime (NRT allocations minus frees; needs NUMBA_NRT_STATS=1) and of Python-level
    allocations (tracemalloc, to which numpy reports its array buffers)."""
    import gc
    import tracemalloc

    from numba.core.runtime import rtsys

    import fastsoftmax as fs

    def nrt_live() -> int:
        s = rtsys.get_allocation_stats()
        return (s.alloc - s.free) + (s.mi_alloc - s.mi_free)

    def nrt_allocs() -> int:
        s = rtsys.get_allocation_stats()
        return s.alloc + s.mi_alloc

    calls = workload(fs, np.float64) + workload(fs, np.float32, seed=1)
    for _, call in calls:  # compile or load every kernel first: under tracemalloc, slowly
        call()
    report = {}
    tracemalloc.start()
    for public in PUBLIC:
        group = [call for name, call in calls if name.split()[0] == public]
        for _ in range(warmup):
            for call in group:
                call()
        gc.collect()
        rss0, nrt0, py0 = vm_kib("VmRSS"), nrt_live(), tracemalloc.get_traced_memory()[0]
        allocs0 = nrt_allocs()
        start = time.perf_counter()
        for i in range(n_calls):
            group[i % len(group)]()
        seconds = time.perf_counter() - start
        gc.collect()
        report[public] = {
            "rss_kib": vm_kib("VmRSS") - rss0,
            "nrt_live": nrt_live() - nrt0,
            "nrt_allocs": nrt_allocs() - allocs0,
            "python_bytes": tracemalloc.get_traced_memory()[0] - py0,
            "ms_per_call": 1e3 * seconds / n_calls,
        }
    print(json.dumps({"n_calls": n_calls, "rss_kib_final": vm_kib("VmRSS"), "by_function": report}))


# Run with ``python -c COLDSTART_CODE``: it times `import fastsoftmax` (numpy, numba and scipy
# included) and the first call of every public function on each path, so it imports nothing before
# the clock starts; then it computes `cold_warm_digests`. The JSON line reports the timings, the
# digests, and, per kernel dispatcher (dense and sparse), the signatures it holds and its cache hits
# and misses (a miss is a compilation).
COLDSTART_CODE = '''
import time
t0 = time.perf_counter()
import fastsoftmax as fs
t_import = time.perf_counter() - t0
import json, sys
import numpy as np
import numba
from fastsoftmax import _kernels
from fastsoftmax._parallel import KernelPair
first = {}
for dtype in sys.argv[1].split(","):
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(300, 5)).astype(dtype)
    y = rng.integers(0, 5, 300)
    X = rng.normal(size=(300, 4)).astype(dtype)
    W = rng.normal(size=(5, 4)).astype(dtype)
    W40 = rng.normal(size=(40, 4)).astype(dtype)
    y40 = rng.integers(0, 40, 300)
    for name, call in [
        ("softmax", lambda: fs.softmax(Z)),
        ("log_softmax", lambda: fs.log_softmax(Z)),
        ("cross_entropy", lambda: fs.cross_entropy(Z, y)),
        ("cross_entropy_grad", lambda: fs.cross_entropy_grad(Z, y)),
        ("linear_cross_entropy small-K", lambda: fs.linear_cross_entropy(X, W, W[:, 0], y)),
        ("linear_cross_entropy tiled", lambda: fs.linear_cross_entropy(X, W40, None, y40)),
        ("linear_softmax small-K", lambda: fs.linear_softmax(X, W, W[:, 0])),
        ("linear_softmax tiled", lambda: fs.linear_softmax(X, W40, None)),
    ]:
        t = time.perf_counter()
        call()
        first[f"{name} {dtype}"] = time.perf_counter() - t
total = time.perf_counter() - t0
import _reliability
bits = _reliability.cold_warm_digests()
from fastsoftmax import _kernels_sparse
kernels = {}
for name, obj in [(n, getattr(m, n)) for m in (_kernels, _kernels_sparse) for n in dir(m)]:
    if isinstance(obj, KernelPair):  # both twins, as `name` and `name_serial`
        pairs = [(name, obj.parallel), (name + "_serial", obj.serial)]
    else:
        pairs = [(name, obj)]
    for name, obj in pairs:
        if not (isinstance(obj, numba.core.registry.CPUDispatcher) and obj.signatures):
            continue
        st = obj.stats
        kernels[name] = {"signatures": [str(s) for s in obj.signatures],
                         "hits": sum(st.cache_hits.values()),
                         "misses": sum(st.cache_misses.values())}
print(json.dumps({"import": t_import, "first_calls": first, "total": total,
                  "kernels": kernels, "bits": bits}))
'''


# COLDSTART_CODE for both dtypes, as run by the cache test and the session's cache warmer.
COLDSTART_BOTH_DTYPES = COLDSTART_CODE.replace("sys.argv[1]", "'float64,float32'")


def cold_warm_digests() -> dict:
    """{case: digest} of the small-K and sparse loss and gradients (sample weights, label
    smoothing; float32 and float64), the row gradient, dX and the Hessian-vector product: the calls
    whose bits once depended on whether their kernels were compiled in the process or loaded from
    the cache. Per case: dtype, K and d (with smoothing the float64 gradients divide by K)."""
    import hashlib

    import scipy.sparse as sp

    import fastsoftmax as fs

    def digest(result):
        return hashlib.sha256(b"".join(np.asarray(a).tobytes() for a in result)).hexdigest()[:16]

    bits = {}
    for dtype, K, d in [("float32", 7, 3), ("float64", 7, 3), ("float64", 10, 17),
                        ("float64", 40, 6)]:
        rng = np.random.default_rng(K * 1000 + d)
        X = rng.normal(size=(200, d)).astype(dtype)
        W, b = (rng.normal(size=(K, d)) / 2).astype(dtype), rng.normal(size=K).astype(dtype)
        y, w = rng.integers(0, K, 200), rng.uniform(0, 2, 200)
        Z = (4 * rng.normal(size=(200, K))).astype(dtype)
        kw = dict(sample_weight=w, label_smoothing=0.1)
        results = {
            "cross_entropy_grad": fs.cross_entropy_grad(Z, y, **kw),
            "sparse linear_cross_entropy":
                fs.linear_cross_entropy(sp.csr_matrix(X), W, b, y, alpha=0.1, **kw),
        }
        if K <= fs.functional.SMALL_K_MAX:
            results["linear_cross_entropy"] = fs.linear_cross_entropy(
                X, W, b, y, alpha=0.1, return_dX=True, **kw)
            results["linear_cross_entropy_hvp"] = fs.linear_cross_entropy_hvp(
                X, W, b, y, W[::-1].copy(), b[::-1].copy(), sample_weight=w)
        for name, result in results.items():
            bits[f"{name} {dtype} K={K} d={d}"] = digest(result)
    return bits


def huge_problem(N: int, d: int, K: int, period: int):
    """float32 X (N, d), W (K, d), b (K,) and labels y whose rows repeat with `period` (prime, so no
    power-of-two index error maps a row onto an equal one): the float64 reference then needs only
    `period` distinct rows, while the kernels still process all N."""
    rng = np.random.default_rng(2**31)
    Xu = rng.normal(size=(period, d)).astype(np.float32)
    yu = rng.integers(0, K, period)
    reps = -(-N // period)
    X = np.ascontiguousarray(np.tile(Xu, (reps, 1))[:N])
    y = np.tile(yu, reps)[:N]
    W = (rng.normal(size=(K, d)) / 2).astype(np.float32)
    b = rng.normal(size=K).astype(np.float32)
    return X, W, b, y


def estimators_main(n_threads: int = 8) -> None:
    """n_threads Python threads each fit SoftmaxRegression models at once (as GridSearchCV with a
    threading backend, or a web service, does): every solver, both dtypes, both linear paths, n_jobs
    None / 1 / 2. Fitted coefficients, iteration counts and predicted probabilities must be bitwise
    those of the same fits run one at a time, and the process-wide BLAS thread count must be what
    it was before."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from fastsoftmax import SoftmaxRegression

    warnings.simplefilter("ignore", ConvergenceWarning)  # short fits; catch_warnings is not
    # thread-safe, so the filter is set once for the process

    rng = np.random.default_rng(3)
    data = {}
    for k in (5, 40):
        X = rng.normal(size=(600, 16))
        y = np.argmax(X @ rng.normal(size=(16, k)) + rng.normal(size=(600, k)), axis=1)
        data[k] = (X, y)
    configs = []
    for k in (5, 40):
        for dtype in (np.float64, np.float32):
            for solver, extra in (("lbfgs", {"max_iter": 30}),
                                  ("sgd", {"max_iter": 3, "random_state": 0, "batch_size": 64}),
                                  ("gd", {"max_iter": 10})):
                configs.append((k, dtype, dict(solver=solver, n_jobs=[None, 1, 2][len(configs) % 3],
                                               **extra)))

    def fit(c: int) -> str:
        k, dtype, params = configs[c]
        X, y = data[k]
        model = SoftmaxRegression(alpha=1e-3, **params).fit(X.astype(dtype), y)
        return digest((model.coef_, model.intercept_, np.array(model.n_iter_),
                       model.predict_proba(X.astype(dtype))))

    blas_before = blas_threads()
    results: list[tuple[int, str]] = []
    errors: list[str] = []
    barrier = threading.Barrier(n_threads)

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for c in np.random.default_rng(t).permutation(len(configs)):
                results.append((int(c), fit(int(c))))
        except BaseException as exc:  # noqa: B036 - report anything; the test asserts
            errors.append(f"thread {t}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    blas_after = blas_threads()
    expected = [fit(c) for c in range(len(configs))]
    mismatches = sorted({f"K={configs[c][0]} {np.dtype(configs[c][1]).name} {configs[c][2]}"
                         for c, h in results if h != expected[c]})
    print(json.dumps({
        "fits": len(results),
        "configs": len(configs),
        "mismatches": mismatches,
        "errors": errors,
        "blas_threads_before": blas_before,
        "blas_threads_after": blas_after,
    }))
