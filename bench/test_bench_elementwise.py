"""Row-wise operations on given N x K logits: softmax, and cross-entropy with its gradient.

The floor is one read and one write of the N x K array (`np.copyto` into a preallocated output).
One benchmark group per operation and shape (`softmax n=...-k=...-float32`).
"""

import pytest
from _cases import CASES, IMPLEMENTATIONS, make_data, shape_id
from _harness import json_extras, run_case  # noqa: F401 (autouse fixture)

import fastsoftmax as fs


@pytest.fixture(params=CASES, ids=[shape_id(*c, op="softmax") for c in CASES], scope="module")
def logits(request):
    shape, dtype = request.param
    data = make_data("softmax", shape, dtype)
    expected = fs.cross_entropy_grad(data["Z"], data["y"])[0]
    return shape, dtype, data, expected


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_softmax(benchmark, logits, impl):
    shape, dtype, data, _ = logits
    run_case(benchmark, "softmax", impl, shape, dtype, data)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_cross_entropy_grad(benchmark, logits, impl):
    """Mean loss and its gradient with respect to the logits."""
    run_case(benchmark, "cross_entropy_grad", impl, *logits)


# --------------------------------------------------------------------------------------------------
# Ratios to the copy floor in one process: `python bench/test_bench_elementwise.py [cpu]`
# --------------------------------------------------------------------------------------------------

RATIO_SHAPES = ((1_000_000, 10), (100_000, 100), (20_000, 1000))


def _interleaved_medians(calls, reps, clock):
    """Median time of each call, the calls interleaved one by one (the first two rounds warm up)."""
    import numpy as np

    times = [[] for _ in calls]
    for _ in range(reps + 2):
        for call, spent in zip(calls, times, strict=True):
            start = clock()
            call()
            spent.append(clock() - start)
    return [float(np.median(t[2:])) for t in times]


def copy_floor_ratios(reps: int = 15, clock=None) -> list[tuple]:
    """Median time of `cross_entropy_grad(Z, y, out=out)` over that of `np.copyto` (one read and
    one write of Z), the two interleaved call by call so that a busy machine slows both alike;
    logits as `_cases.make_logits` (standard deviation 3). `clock=time.thread_time` measures CPU
    time (meaningful with NUMBA_NUM_THREADS=1: the kernel then runs in the calling thread)."""
    import time
    from functools import partial

    import numpy as np
    from _cases import make_logits

    rows = []
    for n, k in RATIO_SHAPES:
        for dtype in (np.float64, np.float32):
            Z, y = make_logits((n, 0, k), dtype)
            calls = (partial(np.copyto, np.empty_like(Z), Z),
                     partial(fs.cross_entropy_grad, Z, y, out=np.empty_like(Z)))
            floor_s, grad_s = _interleaved_medians(calls, reps, clock or time.perf_counter)
            rows.append((n, k, np.dtype(dtype).name, floor_s, grad_s / floor_s))
    return rows


if __name__ == "__main__":
    import os
    import sys
    import time

    cpu = sys.argv[1:] == ["cpu"]
    print(f"load {os.getloadavg()[0]:.2f}, NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS')}, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}, clock "
          f"{'thread_time' if cpu else 'perf_counter'}")
    for n, k, dtype, floor_s, ratio in copy_floor_ratios(clock=time.thread_time if cpu else None):
        print(f"cross_entropy_grad n={n} k={k} {dtype}: {ratio:.2f}x the copy floor "
              f"({floor_s * 1e3:.2f} ms)")
    print(f"load {os.getloadavg()[0]:.2f}")
