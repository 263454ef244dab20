"""Bitwise identical results whatever the thread counts of Numba, OpenMP and BLAS (docs/design.md,
"Threading and determinism").

The thread counts are read from the environment when the libraries load, so the check runs in fresh
processes, one per value v in {1, 2, 3} of NUMBA_NUM_THREADS, OMP_NUM_THREADS and
OPENBLAS_NUM_THREADS together. The process started with 3 also walks, in process, all 27
combinations of Numba's thread count (``numba.set_num_threads``) and of the OpenMP and BLAS limits
(threadpoolctl); the others run their own combination. Every run returns a digest (SHA-256 of the
result bytes) per case; the parent asserts that every case has one digest across all runs.

Cases: every public function, dense X on the small-K kernel (K <= 32) and on the BLAS path (K > 32,
several tiles of rows), sparse X (CSR), and full estimator fits (lbfgs, newton-cg, sgd).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from _reliability import run_python

THREADS = (1, 2, 3)
ENV_VARS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# Small K: one kernel without BLAS. Large K: 20000 rows make several tiles of logits, so dW is
# accumulated over tiles by GEMMs large enough for OpenBLAS to use its threads.
SHAPES = {"small-K": (3000, 24, 10), "BLAS": (20000, 16, 40)}


def _digest(result) -> str:
    """SHA-256 of a result: arrays (dtype, shape, bytes), floats (their hex), tuples in order."""
    h = hashlib.sha256()
    items = result if isinstance(result, tuple) else (result,)
    for item in items:
        if item is None:
            h.update(b"None")
        elif isinstance(item, float):
            h.update(item.hex().encode())
        else:
            a = np.ascontiguousarray(item)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _problems():
    """(name, X, W, b, y, w, S, s_b, Z) per shape and dtype, dense and CSR."""
    import scipy.sparse as sp

    from fastsoftmax.datasets import make_synthetic

    for (label, (n, d, k)), dtype in itertools.product(SHAPES.items(), (np.float32, np.float64)):
        X, y, W, b = make_synthetic(n, d, k, seed=3, dtype=dtype, coef=True)
        rng = np.random.default_rng(4)
        w = rng.uniform(0.5, 2.0, n)
        S = rng.standard_normal(W.shape).astype(dtype)
        s_b = rng.standard_normal(k).astype(dtype)
        # Not X @ W.T: numpy's own float32 GEMM changes bits with its thread count.
        Z = (3 * rng.standard_normal((n, k))).astype(dtype)
        Xs = X.copy()
        Xs[rng.random(X.shape) < 0.8] = 0
        name = f"{label} {np.dtype(dtype).name}"
        yield name, X, W, b, y, w, S, s_b, Z
        yield f"{name} CSR", sp.csr_matrix(Xs), W, b, y, w, S, s_b, None


def _calls():
    """Named zero-argument calls: every public function on every problem (dX and the Hessian-vector
    product take dense X only), and estimator fits."""
    import fastsoftmax as fs

    calls = {}
    for name, X, W, b, y, w, S, s_b, Z in _problems():
        kw = dict(sample_weight=w, label_smoothing=0.1)
        if Z is not None:
            calls |= {
                f"softmax {name}": lambda Z=Z: fs.softmax(Z),
                f"log_softmax {name}": lambda Z=Z: fs.log_softmax(Z),
                f"cross_entropy {name}": lambda Z=Z, y=y, kw=kw: fs.cross_entropy(Z, y, **kw),
                f"cross_entropy_grad {name}":
                    lambda Z=Z, y=y, kw=kw: fs.cross_entropy_grad(Z, y, **kw),
                f"linear_cross_entropy dX {name}": lambda X=X, W=W, b=b, y=y, kw=kw:
                    fs.linear_cross_entropy(X, W, b, y, alpha=0.01, return_dX=True, **kw),
                f"linear_cross_entropy_hvp {name}": lambda X=X, W=W, b=b, y=y, S=S, s_b=s_b, w=w:
                    fs.linear_cross_entropy_hvp(X, W, b, y, S, s_b, sample_weight=w, alpha=0.01),
            }
        calls |= {
            f"linear_cross_entropy {name}": lambda X=X, W=W, b=b, y=y, kw=kw:
                fs.linear_cross_entropy(X, W, b, y, alpha=0.01, **kw),
            f"linear_softmax {name}": lambda X=X, W=W, b=b: fs.linear_softmax(X, W, b),
        }
    return calls | _fits()


def _fits():
    """Estimator fits on the BLAS path (40 classes, two tiles of rows), one per solver."""
    from fastsoftmax import SoftmaxRegression
    from fastsoftmax.datasets import make_synthetic

    X, y = make_synthetic(9000, 16, 40, seed=5, dtype=np.float64)
    options = {"lbfgs": dict(max_iter=15, tol=1e-12), "newton-cg": dict(max_iter=3, tol=1e-12),
               "sgd": dict(max_iter=2, tol=None, batch_size=3000, random_state=0)}

    def fit(solver):
        model = SoftmaxRegression(solver=solver, **options[solver]).fit(X, y)
        return model.coef_, model.intercept_

    return {f"fit {solver}": lambda solver=solver: fit(solver) for solver in options}


def digests_main() -> None:
    """Child entry point: {combination: {case: digest}} as one JSON line on stdout."""
    import warnings

    import numba
    from threadpoolctl import threadpool_limits

    warnings.simplefilter("ignore")  # convergence warnings of the short fits
    start = int(os.environ["NUMBA_NUM_THREADS"])
    combos = itertools.product(THREADS, repeat=3) if start == 3 else [(start,) * 3]
    calls = _calls()
    out = {}
    t0 = time.perf_counter()
    for n_numba, n_omp, n_blas in combos:
        numba.set_num_threads(n_numba)
        with threadpool_limits(n_omp, user_api="openmp"), threadpool_limits(n_blas, "blas"):
            out[f"env={start} numba={n_numba} omp={n_omp} blas={n_blas}"] = {
                name: _digest(call()) for name, call in calls.items()}
    print(f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(json.dumps(out))


def _run(n: int) -> dict:
    env = {var: str(n) for var in ENV_VARS}
    code = "import test_determinism; test_determinism.digests_main()"
    return run_python(code, env=env, timeout=600).json()


def _fill_the_cache() -> None:
    """Run every case once here, so that the children load every kernel from the session's Numba
    cache. Started on a cache without them, the three children compiled the same kernels at once
    (most of this test's time), and a child could load a kernel another had just cached while it
    compiled others: results must not depend on that, but the contract checked here is the
    thread counts."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of the short fits
        for call in _calls().values():
            call()


def test_same_bits_for_every_thread_count():
    _fill_the_cache()
    with ThreadPoolExecutor(len(THREADS)) as pool:
        runs = {}
        for result in pool.map(_run, THREADS):
            runs |= result
    assert len(runs) == 27 + 2
    cases = next(iter(runs.values())).keys()
    differ = {}
    for case in cases:
        by_digest = {}
        for combo, digests in runs.items():
            by_digest.setdefault(digests[case], []).append(combo)
        if len(by_digest) > 1:
            differ[case] = sorted(by_digest.values(), key=len)[0]
    assert not differ, "results depend on the thread counts:\n" + "\n".join(
        f"  {case}: differs in {len(combos)} of {len(runs)} runs, e.g. {combos[:3]}"
        for case, combos in differ.items())


def test_small_problems_run_the_serial_twin(monkeypatch):
    """The small-K kernel of a small problem runs its serial twin (so a small job never compiles
    the parallel one, the slower to compile) on the same chunks, hence the same bits as the
    parallel twin; a large problem still runs in parallel."""
    import fastsoftmax as fs
    from fastsoftmax import _kernels, _parallel
    from fastsoftmax.datasets import make_synthetic

    tasks = []
    original = _parallel.run

    def recording_run(parallel_kernel, serial_kernel, n_tasks, *args):
        if parallel_kernel is _kernels._linear_xent_small.parallel:
            tasks.append(n_tasks)
        return original(parallel_kernel, serial_kernel, n_tasks, *args)

    monkeypatch.setattr(_parallel, "run", recording_run)
    X, y, W, b = make_synthetic(1437, 64, 10, seed=6, coef=True)  # the command line's default job
    small = fs.linear_cross_entropy(X, W, b, y)
    X_big, y_big, W_big, b_big = make_synthetic(8000, 64, 10, seed=6, coef=True)
    fs.linear_cross_entropy(X_big, W_big, b_big, y_big)
    assert tasks[0] == 1 and tasks[1] > 1
    monkeypatch.setattr(_parallel, "run", original)
    forced = _kernels._linear_xent_small.parallel
    monkeypatch.setattr(_kernels._linear_xent_small, "serial", forced)  # both twins: parallel
    assert _digest(fs.linear_cross_entropy(X, W, b, y)) == _digest(small)
