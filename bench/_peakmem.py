"""Peak extra memory of one call in a fresh process: `python bench/_peakmem.py OP IMPL N D K DTYPE`

Numba's allocations (and OpenBLAS's and torch's) are invisible to tracemalloc, so this reads the
kernel's view: the resident-set high-water mark (VmHWM in /proc/self/status). After the data exist
and a tiny problem of the same K and dtype has warmed everything up (JIT compilation or cache load,
thread pools, BLAS buffers), the high-water mark is reset to the current resident size by writing
"5" to /proc/self/clear_refs (Linux >= 4.0); one call later, VmHWM minus that size is the peak extra
memory of the call, outputs included. Prints one JSON line.
"""

from __future__ import annotations

import gc
import json
import sys
import time


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_high_water_mark() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main(argv: list[str]) -> dict:
    import _cases
    import _impls
    import numpy as np

    op, impl, n, d, k, dtype_name = argv
    shape, dtype = (int(n), int(d), int(k)), np.dtype(dtype_name).type
    if _impls.unsupported(op, impl):
        raise SystemExit(_impls.unsupported(op, impl))
    data = _cases.make_data(op, shape, dtype)
    warm = _cases.make_data(op, (64, min(int(d), 16), int(k)), dtype, seed=1)
    fn, _ = _impls.build(op, impl, warm)
    fn()
    fn()
    fn, _ = _impls.build(op, impl, data)  # setup (preallocated floor outputs) is not measured
    del warm
    gc.collect()
    _reset_high_water_mark()
    base = _status_kib("VmRSS")
    if _status_kib("VmHWM") > base + 1024:
        raise RuntimeError("could not reset the resident-set high-water mark")
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    del result
    return {
        "op": op,
        "impl": impl,
        "shape": list(shape),
        "dtype": dtype_name,
        "rss_base_bytes": base * 1024,
        "peak_extra_bytes": max(peak - base, 0) * 1024,
        "seconds": seconds,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
