"""Kernel building blocks that the functional tests cannot pin down precisely: the polynomial exp."""

import numpy as np
import pytest
from numba import njit

from fastsoftmax import _kernels as k


@njit(cache=False)
def _apply_exp(x, out):
    for i in range(x.shape[0]):
        out[i] = k._exp_nonpos(x[i])


def exp_ulp_error(x):
    """Error of _exp_nonpos in units of the last place of the correctly rounded result."""
    got = np.empty_like(x)
    _apply_exp(x, got)
    exact = np.exp(x.astype(np.longdouble))
    want = exact.astype(x.dtype)
    tiny = np.finfo(x.dtype).tiny
    normal = want >= tiny
    ulps = np.abs(got[normal].astype(np.longdouble) - exact[normal]) / np.spacing(want[normal])
    subnormal_err = np.abs(got[~normal].astype(np.longdouble) - exact[~normal])
    return float(ulps.max()), float(subnormal_err.max(initial=0.0)), got


@pytest.mark.parametrize("dtype,low", [(np.float64, -746.0), (np.float32, -104.0)])
def test_exp_accuracy_in_ulps(rng, dtype, low):
    x = np.concatenate([
        np.linspace(low, 0.0, 1_000_001),
        -rng.exponential(3.0, size=200_000),
        -rng.uniform(0, 1e-6, size=1000),
    ]).astype(dtype)
    max_ulp, subnormal_err, _ = exp_ulp_error(x)
    assert max_ulp <= 1.5  # measured: 1.0 (float64 and float32)
    # subnormal results are exact to the subnormal spacing
    assert subnormal_err <= np.finfo(dtype).smallest_subnormal


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_exp_special_values(dtype):
    x = np.array([0.0, -0.0, -np.inf, np.nan, -1e30, np.finfo(dtype).min], dtype=dtype)
    got = np.empty_like(x)
    _apply_exp(x, got)
    assert got[0] == 1.0 and got[1] == 1.0
    assert got[2] == 0.0 and np.isnan(got[3])
    assert got[4] == 0.0 and got[5] == 0.0
