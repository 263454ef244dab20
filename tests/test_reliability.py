"""Reliability of fastsoftmax as people call it: from many threads at once, in forked children, for
hours (no leaks), and from a fresh process (no recompilation with a warm cache).

Each check runs in a fresh interpreter (tests/_reliability.py) with a timeout that kills its whole
process group, so an abort or a hang fails one test instead of the run. Numerical robustness (huge
arrays, extreme values) is in test_reliability_numerics.py, the fuzzing in test_reliability_fuzz.py.
"""

from pathlib import Path

import pytest
from _reliability import COLDSTART_BOTH_DTYPES, PUBLIC, run_python
from conftest import early_job

LAYERS = {
    "default": {},  # GNU OpenMP on this machine: thread-safe, not fork-safe
    "workqueue": {"NUMBA_THREADING_LAYER": "workqueue"},  # neither: _parallel.py must make it safe
}


# ---------------------------------------------------------------------------------------------------
# Concurrent Python threads
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", LAYERS)
def test_eight_threads_get_single_threaded_results(layer):
    """8 threads call every public function (both dtypes, every code path) at once, starting in a
    process where no kernel has run yet; every result is bitwise what a single-threaded call gives,
    and nothing aborts. Under workqueue both dispatch branches of _parallel.run are exercised: the
    thread holding the launch lock runs the parallel kernel, the others the serial twin."""
    report = run_python("import _reliability; _reliability.threads_main(8)",
                        env=LAYERS[layer], timeout=300).json()
    assert report["errors"] == []
    assert report["mismatches"] == []
    assert report["twin_mismatches"] == []  # serial twins give the parallel kernels' bits
    assert report["calls"] == 8 * 4 * 24
    if layer == "workqueue":
        assert report["layer"] == "workqueue"
        assert report["counts"]["parallel"] > 0 and report["counts"]["serial"] > 0, report


@pytest.mark.parametrize("layer", LAYERS)
def test_eight_threads_fit_estimators_concurrently(layer):
    """8 threads fit SoftmaxRegression at once (GridSearchCV with a threading backend, a web service):
    every solver, both dtypes, both linear paths, n_jobs None / 1 / 2. Every fit is bitwise the same
    as when run alone, and the process-wide BLAS thread count is restored afterwards."""
    report = run_python("import _reliability; _reliability.estimators_main(8)",
                        env=LAYERS[layer], timeout=300).json()
    assert report["errors"] == []
    assert report["fits"] == 8 * report["configs"]
    assert report["mismatches"] == []
    # Not asserted here (a race): see test_overlapping_blas_limits_restore_the_thread_count.
    print("BLAS threads before / after:", report["blas_threads_before"],
          report["blas_threads_after"])


BLAS_LIMITS_OVERLAP = """
import json, threading
from threadpoolctl import threadpool_info, threadpool_limits
from fastsoftmax._threads import blas_limits

def blas():
    return sorted((i["filepath"], i["num_threads"]) for i in threadpool_info()
                  if i["user_api"] == "blas")

before = blas()
a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

def a():
    with blas_limits(1):
        a_in.set()
        b_in.wait()
    a_out.set()

def b():
    a_in.wait()
    with blas_limits(1):
        b_in.set()
        a_out.wait()

threads = [threading.Thread(target=f) for f in (a, b)]
for t in threads:
    t.start()
for t in threads:
    t.join()
after = blas()
with threadpool_limits(1):  # the caller's own limits still take effect afterwards
    user = blas()
with threadpool_limits(2):  # and ours take effect inside the caller's
    with blas_limits(1):
        nested = blas()
    nested_after = blas()
print(json.dumps({"before": before, "after": after, "user": user, "nested": nested,
                  "nested_after": nested_after}))
"""


def test_overlapping_blas_limits_restore_the_thread_count():
    """Two threads whose BLAS-limit blocks overlap (A enters, B enters, A leaves, B leaves) leave
    every BLAS library with the thread count it had before; the caller's own threadpoolctl limits
    still take effect afterwards, and ours inside theirs (threadpoolctl 3.8 drops OpenBLAS changes
    from all but one thread while that thread holds a limit)."""
    report = run_python(BLAS_LIMITS_OVERLAP, timeout=120).json()
    if not any(n > 1 for _, n in report["before"]):
        pytest.skip("needs a multithreaded BLAS (more than one core)")
    assert report["after"] == report["before"]
    n_libraries = len(report["before"])
    assert [n for _, n in report["user"]] == [1] * n_libraries
    assert [n for _, n in report["nested"]] == [1] * n_libraries
    assert [n for _, n in report["nested_after"]] == [2] * n_libraries


# ---------------------------------------------------------------------------------------------------
# Forked processes
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("parent_first", [True, False], ids=["parent-used", "parent-unused"])
@pytest.mark.parametrize("layer", LAYERS)
def test_forked_child_works(layer, parent_first):
    """A child started with multiprocessing's 'fork' context gets the parent's results, whether or not
    the parent had started its threading layer's pool (GNU OpenMP's is not fork-safe: such a child
    must run the serial twins). A hang fails after the timeout instead of stalling CI."""
    report = run_python(f"import _reliability; _reliability.fork_main({parent_first}, 120.0)",
                        env=LAYERS[layer], timeout=300).json()
    assert not report["hung"] and report["exitcode"] == 0, report
    assert report["child"] is not None and report["child"]["mismatches"] == [], report
    if report["parent_layer_at_fork"] == "omp":
        assert report["child"]["serial_only"]


# ---------------------------------------------------------------------------------------------------
# Leaks
# ---------------------------------------------------------------------------------------------------

# Slack for resident memory over 1000 calls: allocator noise. A leaked output would be far above it
# (the smallest output of the workload is 700 x 7 float64 = 38 KiB, so 1000 of them are 37 MiB).
RSS_SLACK_KIB = 8 * 1024
# tracemalloc's own bookkeeping moves by a few hundred bytes; a leaked (700,) float64 array per call
# would be 5.5 MB.
PY_SLACK_BYTES = 64 * 1024


def test_thousand_calls_leave_memory_flat():
    """1000 calls of each public function (cycling through both dtypes and every option) leave
    resident memory flat, free every allocation of Numba's runtime, and keep no Python objects."""
    report = run_python("import _reliability; _reliability.leaks_main(1000)",
                        env={"NUMBA_NRT_STATS": "1"}, timeout=300).json()
    by_function = report["by_function"]
    assert set(by_function) == set(PUBLIC)
    for name, r in by_function.items():
        assert r["rss_kib"] < RSS_SLACK_KIB, (name, r)
        assert r["nrt_live"] == 0, (name, r)
        assert r["python_bytes"] < PY_SLACK_BYTES, (name, r)
    # the NRT counters are live (the small-K kernel allocates its row-group buffer in the runtime)
    assert by_function["linear_cross_entropy"]["nrt_allocs"] > 0


# ---------------------------------------------------------------------------------------------------
# Cold start and the compilation cache
# ---------------------------------------------------------------------------------------------------


def _cold_then_warm(directory: Path) -> tuple[dict, dict]:
    """The reports of COLDSTART_CODE in a process on an empty cache, then in a second one on it."""
    env = {"NUMBA_CACHE_DIR": str(directory / "numba-cache")}
    return (run_python(COLDSTART_BOTH_DTYPES, env=env, timeout=900).json(),
            run_python(COLDSTART_BOTH_DTYPES, env=env, timeout=300).json())


@pytest.mark.slow
@early_job(_cold_then_warm)
def test_second_process_loads_every_kernel_from_the_cache(early):
    """A fresh process with an empty NUMBA_CACHE_DIR compiles each kernel once per dtype; a second
    process with the same cache directory compiles nothing: every kernel it uses is a cache hit, with
    the same specializations, and gives the same bits (`cold_warm_digests`). Before, the float64
    gradients of the small-K and sparse kernels with label smoothing were 1 ulp apart: smoothing / K
    was a multiplication by 1 / K in the block function compiled in the process and a division in
    its copy inside the cached kernel (docs/design.md, "Threading and determinism"). One cold
    compilation serves both checks: it is most of this test's time, and runs in the background
    from the start of the session (`early_job`). (Timings are printed, never asserted: see
    docs/reliability.md.)"""
    cold, warm = early
    print(f"cold: import {cold['import']:.2f} s, total {cold['total']:.2f} s; "
          f"warm: import {warm['import']:.2f} s, total {warm['total']:.2f} s")
    assert sum(k["misses"] for k in cold["kernels"].values()) > 0
    assert warm["kernels"], "no kernel ran"
    for name, k in warm["kernels"].items():
        assert k["misses"] == 0, (name, k)
        assert k["hits"] == len(k["signatures"]), (name, k)
        assert k["signatures"] == cold["kernels"][name]["signatures"], name
    # the kernels hold one specialization per dtype (the dense ones called from Python hold both):
    # no layout or type variants
    for name, k in warm["kernels"].items():
        assert len({s.replace("float32", "float64") for s in k["signatures"]}) == 1, (name, k)
    for name in ("_softmax_rows_flat", "_linear_xent_tiled", "_csr_linear_xent_serial"):
        assert len(warm["kernels"][name]["signatures"]) == 2, name  # float32 and float64
    assert len(cold["bits"]) == 14 and cold["bits"].keys() == warm["bits"].keys()
    differ = sorted(case for case in cold["bits"] if cold["bits"][case] != warm["bits"][case])
    assert not differ, "cold and warm cache differ: " + ", ".join(differ)


ARGUMENT_VARIANTS = """
import json
import numpy as np
import numba
import fastsoftmax as fs
from fastsoftmax import _kernels
from fastsoftmax._parallel import KernelPair

def dispatchers():
    for name in dir(_kernels):
        obj = getattr(_kernels, name)
        if isinstance(obj, KernelPair):
            yield name, obj.parallel
            yield name + "_serial", obj.serial
        elif isinstance(obj, numba.core.registry.CPUDispatcher):
            yield name, obj

def signatures():
    return {name: set(map(str, obj.signatures)) for name, obj in dispatchers()}

def readonly(a):
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a

rng = np.random.default_rng(0)
def calls(Z, y, w, X, Ws, b, Wt):
    fs.softmax(Z); fs.log_softmax(Z); fs.cross_entropy(Z, y, sample_weight=w)
    fs.cross_entropy_grad(Z, y, sample_weight=w)
    fs.linear_cross_entropy(X, Ws, b, y, sample_weight=w, alpha=0.5, return_dX=True)
    fs.linear_cross_entropy(X, Wt, None, y, sample_weight=w, alpha=0.5)
    fs.linear_softmax(X, Ws, b); fs.linear_softmax(X, Wt, None)

for dtype in (np.float64, np.float32):
    Z = rng.normal(size=(100, 6)).astype(dtype); y = rng.integers(0, 6, 100)
    w = rng.uniform(0.5, 1, 100); X = rng.normal(size=(100, 5)).astype(dtype)
    Ws = rng.normal(size=(6, 5)).astype(dtype); b = rng.normal(size=6).astype(dtype)
    Wt = rng.normal(size=(40, 5)).astype(dtype)
    calls(Z, y, w, X, Ws, b, Wt)
    base = signatures()
    variants = {
        "read-only": [readonly(a) for a in (Z, y, w, X, Ws, b, Wt)],
        "Fortran order": [np.asfortranarray(Z), y, w, np.asfortranarray(X), np.asfortranarray(Ws),
                          b, np.asfortranarray(Wt)],
        "strided": [np.repeat(Z, 2, axis=0)[::2], np.repeat(y, 2)[::2], np.repeat(w, 2)[::2],
                    np.repeat(X, 2, axis=1)[:, ::2], Ws, np.repeat(b, 2)[::2], Wt],
        "int32 labels, float32 weights": [Z, y.astype(np.int32), w.astype(np.float32), X, Ws, b,
                                          Wt],
        "lists": [Z.tolist(), y.tolist(), w.tolist(), X.tolist(), Ws.tolist(), b.tolist(),
                  Wt.tolist()] if dtype == np.float64 else [Z, y, w, X, Ws, b, Wt],
    }
    new = {}
    for what, args in variants.items():
        calls(*args)
        added = {name: sorted(s - base[name]) for name, s in signatures().items() if s - base[name]}
        if added:
            new[what] = added
        base = signatures()
    print(json.dumps({"dtype": np.dtype(dtype).name, "new_specializations": new}))
"""


def test_argument_variants_reuse_the_same_specializations():
    """Read-only, Fortran-ordered, strided, list inputs and other label and weight dtypes all reach
    the kernels as the one specialization per dtype that plain arrays compiled, so none of them
    costs a compilation (seconds) in a process with a warm cache."""
    result = run_python(ARGUMENT_VARIANTS, timeout=300)
    assert result.returncode == 0, result.explain()
    for line in result.stdout.strip().splitlines():
        assert '"new_specializations": {}' in line, line


CACHE_CALL = """
import json, warnings
import numpy as np
from conftest import assert_close
import fastsoftmax as fs
import reference as ref
from fastsoftmax import _kernels

rng = np.random.default_rng(0)
Z = rng.normal(size=(100, 5))  # two row blocks: the parallel kernel
y = rng.integers(0, 5, 100)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    P = fs.softmax(Z)
    loss = fs.cross_entropy(Z[:10], y[:10])  # one block: a serial twin
assert_close(P, ref.softmax(Z))
assert_close(loss, ref.cross_entropy(Z[:10], y[:10]))
stats = [_kernels._softmax_rows_flat.parallel.stats,
         _kernels._xent_rows_flat.serial.stats]
print(json.dumps({"warnings": [str(w.message) for w in caught],
                  "misses": sum(sum(s.cache_misses.values()) for s in stats)}))
"""


def _corrupt(cache_dir, how: str) -> int:
    """Damage every cache file in cache_dir: cut index and data files in half ("truncate"), or
    overwrite bytes in the middle of each data file ("scramble": the pickle may still load, with
    damaged machine code in it). Returns the number of files damaged."""
    files = [p for p in cache_dir.rglob("*") if p.suffix in (".nbi", ".nbc")]
    for p in files:
        data = bytearray(p.read_bytes())
        if how == "truncate":
            data = data[: len(data) // 2]
        elif p.suffix == ".nbc":
            mid = len(data) // 2
            data[mid:mid + 64] = bytes(64)
        p.write_bytes(bytes(data))
    return len(files)


def _damage_and_heal(directory: Path, how: str) -> tuple[str, dict, int, dict, dict]:
    """The cache directory and CACHE_CALL's reports on it empty, after damaging it (`_corrupt`:
    the number of files damaged), and once more."""
    env = {"NUMBA_CACHE_DIR": str(directory)}
    first = run_python(CACHE_CALL, env=env, timeout=300).json()
    damaged_files = _corrupt(directory, how)
    damaged = run_python(CACHE_CALL, env=env, timeout=300).json()  # asserts exit status 0
    healed = run_python(CACHE_CALL, env=env, timeout=300).json()
    return str(directory), first, damaged_files, damaged, healed


@pytest.mark.parametrize("how", ["truncate", "scramble"])
@early_job(_damage_and_heal)
def test_corrupted_cache_files_are_recompiled(early, how):
    """A damaged cache file (disk full, a killed writer, a bad copy) costs one recompilation with a
    warning naming the cache directory, not an error on every call from then on; the rewritten
    entries then load cleanly. (In the background: `early_job`.)"""
    directory, first, damaged_files, damaged, healed = early
    assert first["warnings"] == [] and first["misses"] > 0
    assert damaged_files > 0
    assert damaged["warnings"], "a damaged entry was loaded without notice"
    assert all("recompiling" in w and directory in w for w in damaged["warnings"])
    assert healed == {"warnings": [], "misses": 0}
