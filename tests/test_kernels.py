"""Kernel building blocks that the functional tests cannot pin down precisely (the polynomial exp
and log), and the kernels run as plain Python (NUMBA_DISABLE_JIT)."""

import re

import numpy as np
import pytest
from _reliability import run_python
from numba import njit

import fastsoftmax as fs
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


@njit(cache=False)
def _apply_log(x, out):
    """_log_pos over x, in a loop that vectorizes as the kernels' do; float32 rounds once."""
    for i in range(x.shape[0]):
        out[i] = out.dtype.type(k._log_pos(x[i]))


def _log_inputs(rng, dtype):
    """The whole positive range: random bit patterns (subnormals included), around 1, and the
    edges (smallest subnormal, largest subnormal and smallest normal, the largest float)."""
    info = np.finfo(dtype)
    itype = np.int64 if dtype == np.float64 else np.int32
    top = int(np.array(np.inf, dtype).view(itype))
    bits = rng.integers(1, top, size=1_000_000, dtype=itype).view(dtype)
    edges = [info.smallest_subnormal, info.tiny - info.smallest_subnormal, info.tiny, info.max,
             np.nextafter(dtype(1), dtype(2)), np.nextafter(dtype(1), dtype(0)), 2.0, 0.5]
    return np.concatenate([bits, 1 + rng.uniform(-1e-3, 1e-3, 100_000), rng.uniform(1, 1000, 100_000),
                           edges]).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_log_accuracy_in_ulps(rng, dtype):
    """_log_pos against log in long double, over the whole positive range."""
    x = _log_inputs(rng, dtype)
    got = np.empty_like(x)
    _apply_log(x, got)
    exact = np.log(x.astype(np.longdouble))
    want = exact.astype(dtype)
    nonzero = want != 0
    err = np.abs(got[nonzero].astype(np.longdouble) - exact[nonzero])
    ulps = err / np.spacing(np.abs(want[nonzero]))
    assert ulps.max() <= 1.0  # measured: 0.71 (float64), 0.5 (float32, rounded once)
    assert got[x == 1].tolist() == [0.0] * int((x == 1).sum())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_log_special_values(dtype):
    x = np.array([0.0, -0.0, np.inf, np.nan, -1.0, -np.inf, 1.0], dtype=dtype)
    got = np.empty_like(x)
    _apply_log(x, got)
    assert got[0] == -np.inf and got[1] == -np.inf and got[2] == np.inf
    assert np.isnan(got[3]) and np.isnan(got[4]) and np.isnan(got[5])
    assert got[6] == 0.0


@njit(cache=False)
def _kernel_math(e, g, inv, u, s):
    """e := exp(e); g := fma(g, inv[row], -u); s := log(s), with the kernels' own functions."""
    for i in range(e.shape[0]):
        for j in range(e.shape[1]):
            e[i, j] = k._exp_nonpos(e[i, j])
    for i in range(g.shape[0]):
        for j in range(g.shape[1]):
            g[i, j] = k._fma(g[i, j], inv[i], -u)
        s[i] = k._log_pos(s[i])


def lane_sum_model(e64):
    """float64 row sums in `_row_sum`'s order: eight lanes (lane j adds the entries j mod 8),
    combined pairwise, then the rest in order."""
    N, K = e64.shape
    lanes = np.zeros((8, N))
    for j in range(K - K % 8):
        lanes[j % 8] = lanes[j % 8] + e64[:, j]
    s = (((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
         + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7])))
    for j in range(K - K % 8, K):
        s = s + e64[:, j]
    return s


def flat_grad_model(Z, y, w, smoothing, scale):
    """The arithmetic the flat gradient block promises, in NumPy: exp(z - max) in the data
    dtype, the float64 sum in `_row_sum`'s order (eight lanes, pairwise, then the rest),
    (e * (1 / s) - smoothing / K) * w * scale with one FMA, the label's entry in float64; the
    unsmoothed loss w * (log s - (z_y - max))."""
    N, K = Z.shape
    dtype = Z.dtype.type
    m = Z.max(axis=1)
    e = Z - m[:, None]
    _kernel_math(e, np.zeros_like(e), np.zeros(N, Z.dtype), dtype(0), np.ones(N))
    e64 = e.astype(np.float64)
    s = lane_sum_model(e64)
    grad, log_s = e.copy(), s.copy()
    _kernel_math(np.zeros((0, 0), Z.dtype), grad, (1.0 / s).astype(Z.dtype),
                 dtype(smoothing / K), log_s)
    grad *= (w * scale).astype(Z.dtype)[:, None]
    rows = np.arange(N)
    grad[rows, y] = (e64[rows, y] / s - smoothing / K - (1.0 - smoothing)) * (w * scale)
    return grad, w * (log_s - (Z[rows, y].astype(np.float64) - m))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("K", [2, 3, 8, 10, 17, 32])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_flat_gradient_block_follows_the_documented_arithmetic(rng, dtype, K, smoothing):
    """Bitwise: the float64 sums of exponentials in `_row_sum`'s order (compiled with reassoc,
    LLVM re-ordered them and float64 results moved by an ulp of the sum), the FMA of the scaling,
    the label's entry. 150 rows: two full blocks and a short one."""
    N = 150
    Z = (rng.standard_normal((N, K)) * 3).astype(dtype)
    y = rng.integers(0, K, N)
    w = rng.uniform(0.5, 2.0, N)
    scale = 1.0 / w.sum()
    blocks = k.n_blocks(N, k.ROW_BLOCK)
    out, losses = np.empty_like(Z), np.empty(blocks)
    bad = k._xent_grad_rows_flat.serial(Z, out, np.empty(0, dtype), True, y, w, smoothing, scale,
                                        losses, np.empty((blocks, 0)))
    want, want_losses = flat_grad_model(Z, y, w, smoothing, scale)
    assert bad == 0
    np.testing.assert_array_equal(out, want)
    if smoothing == 0.0:
        np.testing.assert_array_equal(losses, block_loss_model(want_losses))


def block_loss_model(losses):
    """Per-block sums of per-sample losses as the gradient kernels return them: ROW_BLOCK rows a
    block (zeros past the end), halves added entry by entry down to one."""
    blocks = k.n_blocks(len(losses), k.ROW_BLOCK)
    S = np.zeros((blocks, k.ROW_BLOCK))
    S.ravel()[: len(losses)] = losses
    h = k.ROW_BLOCK // 2
    while h:
        S[:, :h] = S[:, :h] + S[:, h: 2 * h]
        h //= 2
    return S[:, 0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("K", [3, 10, 40, 100])
def test_gradient_block_losses_are_summed_as_a_fixed_tree(rng, dtype, K):
    """Both gradient kernels (flat up to FLAT_K_MAX classes, row by row above) return each block's
    loss as `block_loss_model` sums the per-sample losses that `_xent_rows` computes, bitwise: the
    order is fixed by ROW_BLOCK alone. 150 rows: two full blocks and a short one. Without label
    smoothing: with it the per-sample losses of the two kernels may differ in the last bit."""
    N = 150
    Z = (rng.standard_normal((N, K)) * 3).astype(dtype)
    y = rng.integers(0, K, N)
    blocks = k.n_blocks(N, k.ROW_BLOCK)
    per_sample, losses = np.empty(N), np.empty(blocks)
    smoothing = 0.0
    for w in (np.empty(0), rng.uniform(0.5, 2.0, N)):
        kernel = k._xent_rows_flat if K <= k.FLAT_K_MAX else k._xent_rows
        assert kernel.serial(Z, y, w, smoothing, per_sample) == 0
        grad = k._xent_grad_rows_flat if K <= k.FLAT_K_MAX else k._xent_grad_rows
        assert grad.serial(Z, np.empty_like(Z), np.empty(0, dtype), True, y, w, smoothing,
                           1.0 / N, losses, np.empty((blocks, 0))) == 0
        np.testing.assert_array_equal(losses, block_loss_model(per_sample))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("K", [33, 40, 100, 257])
def test_row_softmax_follows_the_documented_arithmetic(rng, dtype, K):
    """Bitwise: the row-by-row softmax (more than FLAT_K_MAX classes, a block compiled with
    reassoc) sums in `_row_sum`'s order and scales by 1 / s rounded to the data dtype. Its strict
    adds had taken reassoc from the block, and LLVM vectorized the eight lanes in an order of its
    own (float64 rows 1 ulp of the sum apart at 40 classes and more)."""
    Z = (rng.standard_normal((150, K)) * 3).astype(dtype)
    e = Z - Z.max(axis=1)[:, None]
    _kernel_math(e, np.zeros((0, 0), dtype), np.zeros(0, dtype), dtype(0), np.ones(0))
    want = e * (1.0 / lane_sum_model(e.astype(np.float64))).astype(dtype)[:, None]
    np.testing.assert_array_equal(fs.softmax(Z), want)


def test_strict_intrinsics_take_no_flags_from_their_caller():
    """`_add`, `_mul` and `_fma` inlined into a function compiled with `FASTMATH` carry no reassoc
    and no contract in its LLVM IR: Numba's fast-math pass gives the function's flags to every
    flagless floating-point instruction and to every call returning a scalar float."""
    @njit(fastmath=k.FASTMATH, cache=False)
    def strict(a, b, out):
        for j in range(a.shape[0]):
            out[j] = k._add(out[j], k._fma(a[j], b[j], k._mul(a[j], a[j])))

    a = np.linspace(0.0, 1.0, 32)
    strict(a, a, np.zeros(32))
    ir = strict.inspect_llvm(strict.signatures[0])
    ops = [line for line in ir.splitlines()
           if re.search(r"= (fadd|fmul) |call .*@llvm\.fma", line)]
    assert len(ops) >= 3
    assert not [line for line in ops if "reassoc" in line or "contract" in line or " fast " in line]


# Run by a fresh interpreter with NUMBA_DISABLE_JIT=1: every public function on both paths (small K
# and tiled) and the linear ones on CSR X, both dtypes, against reference/. 70 rows make two row
# blocks, so the pairs' parallel branch runs too (as plain Python).
DISABLED_JIT_CODE = """
import numba
import numpy as np
import scipy.sparse
from conftest import F64_ROUNDING, assert_close

import fastsoftmax as fs
import reference as ref

assert numba.config.DISABLE_JIT
rng = np.random.default_rng(0)
checked = 0
for dtype in (np.float64, np.float32):
    for K in (3, 40):
        n, d = 70, 4
        Z = (rng.normal(size=(n, K)) * 3).astype(dtype)
        y = rng.integers(0, K, n)
        w = rng.uniform(0.5, 2.0, n)
        X = rng.normal(size=(n, d)).astype(dtype)
        Xs = scipy.sparse.csr_matrix(np.where(X > 0, X, 0))  # the CSR kernels, as Python
        W = (rng.normal(size=(K, d)) / 2).astype(dtype)
        b = rng.normal(size=K).astype(dtype)
        smooth = dict(sample_weight=w, label_smoothing=0.1)
        calls = [
            ("softmax", (Z,), {}),
            ("log_softmax", (Z,), {}),
            ("cross_entropy", (Z, y), smooth),
            ("cross_entropy", (Z, y), dict(reduction="none")),
            ("cross_entropy_grad", (Z, y), dict(smooth, reduction="sum")),
            ("linear_cross_entropy", (X, W, b, y), dict(smooth, alpha=0.1, return_dX=True)),
            ("linear_cross_entropy", (X, W, None, y), {}),
            ("linear_softmax", (X, W, b), {}),
            ("linear_cross_entropy", (Xs, W, b, y), dict(smooth, alpha=0.1)),
            ("linear_softmax", (Xs, W, b), {}),
        ]
        for name, args, kwargs in calls:
            got = getattr(fs, name)(*args, **kwargs)
            want = getattr(ref, name)(*args, **kwargs)
            got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
            for g, v in zip(got, want, strict=True):
                if v is None:
                    assert g is None, name
                else:
                    assert_close(g, v, dtype, floor=F64_ROUNDING)
            checked += 1
print(checked)
"""


def test_package_works_with_the_jit_disabled():
    """NUMBA_DISABLE_JIT=1 (for pdb or coverage) runs the kernels as Python: the package imports
    and every public function gives the reference's results."""
    result = run_python(DISABLED_JIT_CODE, env={"NUMBA_DISABLE_JIT": "1"}, timeout=300)
    assert result.returncode == 0, result.explain()
    assert result.stdout.split()[-1] == str(2 * 2 * 10)
