"""The timing harness: how every case is timed, skipped, measured for memory and written to JSON.

Every timed case goes through `run_case`, which gives it one benchmark group per operation and
shape (`"<op> n=...-d=...-k=...-<dtype>"`), warms it up, checks that the peers compute the same
loss, times it, and records in `extra_info` what the report needs (operation, implementation,
shape, dtype, nominal flops and bytes, peak extra memory). The cases and their data come from
`_cases.py`, the callables from `_impls.py`, so the timed run and the memory probe (`_peakmem.py`,
run in a fresh subprocess) build exactly the same callables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import _impls
import numpy as np
import pytest
from _cases import (
    ELEMENTWISE_OPS,
    LINEAR_OPS,
    data_bytes,
    import_torch,
    nominal_cost,
    shape_id,
)

# Peak memory of every case is measured in a fresh subprocess when the benchmark is timed (not under
# --benchmark-disable). FASTSOFTMAX_BENCH_MEMORY=0 turns it off to save time.
MEASURE_MEMORY = os.environ.get("FASTSOFTMAX_BENCH_MEMORY", "1") not in ("", "0")

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

# Peak extra memory, outputs included, in N x K float64 arrays, as the probe measured it at
# n=20000, d=256, k=1000 float64 (see bench/_peakmem.py), rounded up. Used only to skip, with the
# reason, the cases that would not fit in this machine's memory. The floor counts its preallocated
# outputs; fastsoftmax's linear layer holds at most a 64 MB tile of logits.
_NK_ARRAYS = {
    "floor": dict(linear_cross_entropy=1, linear_softmax=1, softmax=1, cross_entropy_grad=1),
    "fastsoftmax": dict(linear_softmax=1.5, softmax=1, cross_entropy_grad=1),
    "reference": dict(linear_cross_entropy=6, linear_softmax=4, softmax=3, cross_entropy_grad=5),
    "scikit-learn": dict(linear_cross_entropy=3, linear_softmax=3, softmax=2, cross_entropy_grad=2),
    "torch": dict(linear_cross_entropy=4, linear_softmax=3, softmax=2, cross_entropy_grad=4),
    "torch-chunked": dict(linear_cross_entropy=1),
}


def estimated_peak_bytes(op: str, impl: str, shape, dtype) -> int:
    n, d, k = shape
    base_op = "linear_cross_entropy" if op == "linear_cross_entropy+dX" else op
    need = _NK_ARRAYS[impl].get(base_op, 0) * n * k * 8 + 2 * k * d * 8
    if op == "linear_cross_entropy+dX":
        need += n * d * 8
    if impl == "fastsoftmax" and op in LINEAR_OPS:
        need += 128 * 2**20
    return int(need)


def memory_budget_bytes() -> int:
    """What a case may use: FASTSOFTMAX_BENCH_MEM_GB, else 70% of what the OS reports available."""
    if os.environ.get("FASTSOFTMAX_BENCH_MEM_GB"):
        return int(float(os.environ["FASTSOFTMAX_BENCH_MEM_GB"]) * 2**30)
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(0.7 * int(line.split()[1]) * 1024)
    return 2**62  # unknown: never skip


# Cases skipped by run_case, with the reason; `_JsonExtras` below adds them to the JSON so that the
# report shows why a cell is empty.
SKIPPED: list[dict] = []


def _skip(op: str, impl: str, shape, dtype, reason: str):
    n, d, k = shape
    SKIPPED.append(
        {
            "op": op,
            "impl": impl,
            "n": n,
            "d": None if op in ELEMENTWISE_OPS else d,
            "k": k,
            "dtype": np.dtype(dtype).name,
            "reason": reason,
        }
    )
    pytest.skip(reason)


def skip_if_too_big(op: str, impl: str, shape, dtype) -> None:
    # The probe subprocess holds its own copy of the data while it measures.
    need = estimated_peak_bytes(op, impl, shape, dtype) + data_bytes(op, shape, dtype)
    budget = memory_budget_bytes()
    if need > budget:
        _skip(
            op,
            impl,
            shape,
            dtype,
            f"{impl} {op} at {shape_id(shape, dtype, op)} needs about {need / 2**30:.1f} GiB, "
            f"more than the {budget / 2**30:.1f} GiB budget (FASTSOFTMAX_BENCH_MEM_GB)",
        )


# --------------------------------------------------------------------------------------------------
# Peak extra memory, measured for real in a fresh process
# --------------------------------------------------------------------------------------------------


def probe_env() -> dict:
    env = dict(os.environ)
    paths = [str(ROOT), str(BENCH_DIR)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def measure_peak_extra(op: str, impl: str, shape, dtype, timeout: float = 1800) -> dict:
    """Run `_peakmem.py` for one case in a fresh interpreter and return its JSON answer.

    Numba's (and OpenBLAS's, and torch's) allocations are invisible to tracemalloc; the probe reads
    the kernel's resident-set high-water mark instead (see `_peakmem.py`).
    """
    n, d, k = shape
    cmd = [
        sys.executable,
        str(BENCH_DIR / "_peakmem.py"),
        op,
        impl,
        str(n),
        str(d),
        str(k),
        np.dtype(dtype).name,
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=probe_env(), cwd=ROOT, timeout=timeout
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"error": tail[0][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# The one way a case is timed
# --------------------------------------------------------------------------------------------------


def run_case(benchmark, op: str, impl: str, shape, dtype, data: dict, expected_loss=None):
    """Time `impl` on `op`, after one warm-up call, and record what the report needs."""
    reason = _impls.unsupported(op, impl)
    if reason:
        _skip(op, impl, shape, dtype, reason)
    skip_if_too_big(op, impl, shape, dtype)
    n, d, k = shape
    benchmark.group = f"{op} {shape_id(shape, dtype, op)}"
    benchmark.extra_info.update(
        op=op,
        impl=impl,
        n=n,
        d=None if op in ELEMENTWISE_OPS else d,
        k=k,
        dtype=np.dtype(dtype).name,
        **nominal_cost(op, shape, dtype),
    )
    if impl.startswith("torch"):
        benchmark.extra_info["torch_threads"] = import_torch().get_num_threads()
    fn, loss_of = _impls.build(op, impl, data)
    loss = loss_of(fn())  # warm-up: JIT compilation, thread pools, first touch of the outputs
    if expected_loss is not None and loss is not None:
        # The peers must compute the same quantity, or the comparison means nothing. Deliberately
        # looser than the tests' RTOL (tests/conftest.py): peers other than reference/ sum the loss
        # in their own order and precision (float32 in PyTorch and scikit-learn for float32 data)
        # over up to 10**6 rows; a different quantity (a wrong mean, a missing bias) is off by far
        # more.
        rel = 1e-3 if np.dtype(dtype) == np.float32 else 1e-8
        assert loss == pytest.approx(expected_loss, rel=rel), (impl, loss, expected_loss)
    benchmark(fn)
    if MEASURE_MEMORY and not benchmark.disabled:
        mem = measure_peak_extra(op, impl, shape, dtype)
        benchmark.extra_info["peak_extra_bytes"] = mem.get("peak_extra_bytes")
        if "error" in mem:
            benchmark.extra_info["peak_extra_error"] = mem["error"]


# --------------------------------------------------------------------------------------------------
# What the report needs beyond pytest-benchmark's JSON: the machine and the skipped cases
# --------------------------------------------------------------------------------------------------
# No bench/conftest.py: tests/ imports its conftest by name (`from conftest import assert_close`),
# and `pytest tests bench` would then find bench's. Test modules import the autouse fixture below.

# Environment variables that change what the BLAS libraries and thread pools do.
_ENV = (
    "OPENBLAS_CORETYPE",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "NUMBA_THREADING_LAYER",
    "OMP_WAIT_POLICY",
    "FASTSOFTMAX_BENCH_FULL",
)


def machine_description() -> dict:
    """Cores, BLAS libraries and their threads, thread counts, environment, versions."""
    import numba
    import scipy
    import sklearn
    from threadpoolctl import threadpool_info

    info = {
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "env": {k: os.environ[k] for k in _ENV if k in os.environ},
        "versions": {
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "numba": numba.__version__,
            "scikit-learn": sklearn.__version__,
        },
        "numba_threads": numba.get_num_threads(),
        "scikit_learn_n_threads": 1,
    }
    try:
        info["numba_threading_layer"] = numba.threading_layer()
    except ValueError:  # no parallel region ran in this process
        info["numba_threading_layer"] = None
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["versions"]["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    keys = ("internal_api", "version", "num_threads", "threading_layer", "architecture", "filepath")
    info["blas"] = [{k: lib.get(k) for k in keys} for lib in threadpool_info()]
    return info


class _JsonExtras:
    """A pytest plugin: adds the machine description and the skipped cases to the JSON."""

    @staticmethod
    def pytest_benchmark_update_json(config, benchmarks, output_json):
        output_json["fastsoftmax_machine"] = machine_description()
        output_json["fastsoftmax_skipped"] = list(SKIPPED)


@pytest.fixture(autouse=True, scope="session")
def json_extras(pytestconfig):
    """Import into every bench module (autouse): registers `_JsonExtras` once per session."""
    if not pytestconfig.pluginmanager.has_plugin("fastsoftmax-bench-json"):
        pytestconfig.pluginmanager.register(_JsonExtras(), "fastsoftmax-bench-json")
