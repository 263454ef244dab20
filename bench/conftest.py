"""Hooks of the benchmark suite (shared helpers live in `_common.py`, not here: tests/ has its own
conftest.py and `pytest tests bench` loads both)."""

from __future__ import annotations

import os

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


def pytest_benchmark_update_machine_info(config, machine_info):
    """Describe what the figures depend on: cores, BLAS libraries and their threads, versions."""
    import numba
    import numpy as np
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
    try:
        import torch

        info["versions"]["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    info["blas"] = [
        {
            k: lib.get(k)
            for k in (
                "internal_api",
                "version",
                "num_threads",
                "threading_layer",
                "architecture",
                "filepath",
            )
        }
        for lib in threadpool_info()
    ]
    machine_info["fastsoftmax"] = info


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Keep the cases skipped by the suite (and why) in the JSON, for the report's empty cells."""
    import _common

    output_json["fastsoftmax_skipped"] = list(_common.SKIPPED)
