"""A busy neighbour: the linear loss with and without another process spinning on one core.

Machines are shared (other jobs, Dask workers running several tasks), so how a call degrades when a
core is taken matters as much as its quiet time. One group per shape (`busy neighbour
n=...-d=...-k=...-float32`) times fastsoftmax, PyTorch's plain linear + cross_entropy and its
chunked op, each quiet and beside a `python -c "while True: pass"` process, pinned to the last
core or left to the scheduler; the report gives each load's time as a ratio to the quiet one.
Small shape by default (a smoke test under --benchmark-disable); FASTSOFTMAX_BENCH_FULL=1 adds
100000 x 256 x 100, the shape the design notes report.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from _cases import FULL, import_torch, make_problem
from _harness import json_extras  # noqa: F401 (autouse fixture)
from _impls import build

SHAPES = [(4000, 64, 100)] + ([(100000, 256, 100)] if FULL else [])
IMPLS = ("fastsoftmax", "torch", "torch-chunked")
LOADS = ("quiet", "busy pinned", "busy")


def _spinner(pinned: bool) -> subprocess.Popen:
    """A process that keeps one core busy, pinned to the last allowed core when `pinned`."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    if pinned and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(proc.pid, {max(os.sched_getaffinity(0))})
    time.sleep(0.2)  # let it start spinning
    return proc


@pytest.fixture
def load(request):
    """Run the test under the named load; the spinning process is killed afterwards."""
    name = request.param
    proc = None if name == "quiet" else _spinner(pinned=name == "busy pinned")
    try:
        yield name
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


@pytest.fixture(params=SHAPES, ids=[f"n={n}-d={d}-k={k}" for n, d, k in SHAPES], scope="module")
def problem(request):
    X, W, b, y = make_problem(request.param, np.float32)
    return request.param, {"X": X, "W": W, "b": b, "y": y}


@pytest.mark.parametrize("load", LOADS, indirect=True)
@pytest.mark.parametrize("impl", IMPLS)
def test_busy_neighbour(benchmark, problem, impl, load):
    """loss, dW, db of linear + cross-entropy, float32."""
    if impl.startswith("torch"):
        import_torch()
    (n, d, k), data = problem
    benchmark.group = f"busy neighbour n={n}-d={d}-k={k}-float32"
    benchmark.extra_info.update(op="busy neighbour", impl=impl, load=load, n=n, d=d, k=k,
                                dtype="float32")
    fn, _ = build("linear_cross_entropy", impl, data)
    fn()  # warm-up: JIT compilation, thread pools
    benchmark(fn)
