"""Hypothesis properties of the functional API, and bitwise determinism across thread counts."""

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import F64_ROUNDING, assert_close, rtol_for
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastsoftmax as fs
import reference as ref

dtypes = st.sampled_from([np.float32, np.float64])


@st.composite
def logits_and_labels(draw, max_abs=30.0):
    dtype = draw(dtypes)
    n = draw(st.integers(1, 40))
    k = draw(st.integers(1, 60))
    Z = draw(hnp.arrays(dtype, (n, k), elements=st.floats(-max_abs, max_abs, width=32)))
    y = draw(hnp.arrays(np.int64, n, elements=st.integers(0, k - 1)))
    return Z, y


@settings(max_examples=200, deadline=None)
@given(logits_and_labels())
def test_softmax_rows_sum_to_one_and_match_reference(data):
    Z, _ = data
    P = fs.softmax(Z)
    assert np.all(P >= 0)
    np.testing.assert_allclose(P.sum(axis=1, dtype=np.float64), 1.0, rtol=10 * rtol_for(Z.dtype))
    assert_close(P, ref.softmax(Z))
    assert_close(np.exp(fs.log_softmax(Z).astype(np.float64)), P.astype(np.float64), Z.dtype)


@settings(max_examples=200, deadline=None)
@given(logits_and_labels(max_abs=20.0), st.floats(-50, 50))
def test_shift_invariance(data, c):
    Z, y = data
    shifted = (Z.astype(np.float64) + c).astype(Z.dtype)
    # the shift is exact in float64 only: compare with tolerance scaled by the shift's rounding
    tol = rtol_for(Z.dtype) * (1 + abs(c))
    np.testing.assert_allclose(fs.softmax(shifted), fs.softmax(Z), atol=tol)
    assert fs.cross_entropy(shifted, y) == pytest.approx(fs.cross_entropy(Z, y), abs=tol * 10)


def _confident_row(top, k, dtype):
    Z = np.zeros((1, k), dtype=dtype)
    Z[0, 0] = top
    return Z, np.array([0])


# Found by CI runs: p_y - 1 cancelled in float32 ([[8, 0]]), and a loss of 3e-12 ([[29.5, 0 x 19]]).
@settings(max_examples=200, deadline=None)
@given(logits_and_labels(), st.sampled_from([0.0, 0.05, 0.5]), st.sampled_from(["mean", "sum"]),
       st.booleans())
@example(_confident_row(8.0, 2, np.float32), 0.0, "mean", False)
@example(_confident_row(29.5, 20, np.float32), 0.0, "mean", False)
@example(_confident_row(16.0, 2, np.float64), 0.0, "sum", False)
def test_grad_equals_separate_loss_and_reference(data, smoothing, reduction, weighted):
    Z, y = data
    w = np.linspace(0.5, 1.5, len(y)) if weighted else None
    kw = dict(sample_weight=w, label_smoothing=smoothing, reduction=reduction)
    loss, dZ = fs.cross_entropy_grad(Z, y, **kw)
    # equal up to float64 rounding: both accumulate in float64 (reassociated differently)
    assert_close(fs.cross_entropy(Z, y, **kw), loss, np.float64, floor=F64_ROUNDING)
    want_loss, want = ref.cross_entropy_grad(Z, y, **kw)
    # Z = [[29.5, 0 x 19]]: the loss log(1 + 19 exp(-29.5)) is 2.931341e-12; fastsoftmax gives
    # 2.931433e-12 and the reference 2.931655e-12, both within float64 rounding of log(s), s ~ 1.
    assert_close(loss, want_loss, Z.dtype, floor=F64_ROUNDING)
    assert_close(dZ, want, floor=F64_ROUNDING)
    # rows of the gradient sum to zero (probabilities and targets both sum to one)
    np.testing.assert_allclose(dZ.sum(axis=1, dtype=np.float64), 0.0,
                               atol=100 * rtol_for(Z.dtype) * (1 if w is None else 1.5))


@st.composite
def extreme_logits(draw):
    """Logits of magnitude up to 1e4 with masked (-inf) classes, never a fully masked row."""
    dtype = draw(dtypes)
    n = draw(st.integers(1, 20))
    k = draw(st.integers(2, 30))
    Z = draw(hnp.arrays(dtype, (n, k), elements=st.floats(-1e4, 1e4, width=32)))
    mask = draw(hnp.arrays(np.bool_, (n, k)))
    keep = draw(hnp.arrays(np.int64, n, elements=st.integers(0, k - 1)))
    mask[np.arange(n), keep] = False
    Z[mask] = -np.inf
    return Z, keep


@settings(max_examples=200, deadline=None)
@given(extreme_logits(), st.sampled_from([0.0, 0.1]))
def test_extreme_and_masked_logits_are_finite(data, smoothing):
    Z, y = data  # y labels an unmasked class, so the true loss is finite without smoothing
    loss, dZ = fs.cross_entropy_grad(Z, y, label_smoothing=smoothing)
    assert np.isfinite(dZ).all()
    assert np.isfinite(fs.softmax(Z)).all()
    if smoothing == 0.0 or not np.isinf(Z).any():
        assert np.isfinite(loss)
        assert_close(loss, ref.cross_entropy(Z, y, label_smoothing=smoothing), Z.dtype,
                     scale=max(1.0, abs(loss)))
    else:
        assert loss == np.inf  # smoothing puts mass on a masked class: -log 0
    assert_close(dZ, ref.cross_entropy_grad(Z, y, label_smoothing=smoothing)[1])


DETERMINISM_SCRIPT = textwrap.dedent(
    """
    import hashlib, numpy as np, fastsoftmax as fs, numba
    assert numba.get_num_threads() == {threads}
    rng = np.random.default_rng(7)
    h = hashlib.sha256()
    for dtype in (np.float32, np.float64):
        Z = rng.normal(size=(3001, 37)).astype(dtype) * 4
        y = rng.integers(0, 37, 3001)
        w = rng.uniform(0, 2, 3001)
        loss, dZ = fs.cross_entropy_grad(Z, y, sample_weight=w, label_smoothing=0.1)
        h.update(np.float64(loss).tobytes()); h.update(dZ.tobytes())
        h.update(fs.softmax(Z).tobytes()); h.update(fs.log_softmax(Z).tobytes())
        h.update(np.float64(fs.cross_entropy(Z, y)).tobytes())
        for k in (10, 150):
            X = rng.normal(size=(5003, 24)).astype(dtype)
            W = rng.normal(size=(k, 24)).astype(dtype) / 5
            b = rng.normal(size=k).astype(dtype)
            yy = rng.integers(0, k, 5003)
            out = fs.linear_cross_entropy(X, W, b, yy, sample_weight=w[:1] .repeat(5003),
                                          alpha=0.1, return_dX=True)
            h.update(np.float64(out[0]).tobytes())
            for a in out[1:]:
                h.update(a.tobytes())
            h.update(fs.linear_softmax(X, W, b).tobytes())
    print(h.hexdigest())
    """
)


def test_bitwise_identical_with_one_and_two_threads(tmp_path):
    digests = []
    for threads in (1, 2):
        env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
        result = subprocess.run(
            [sys.executable, "-c", DETERMINISM_SCRIPT.format(threads=threads)],
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )
        assert result.returncode == 0, result.stderr
        digests.append(result.stdout.strip())
    assert len(digests[0]) == len(hashlib.sha256().hexdigest())
    assert digests[0] == digests[1]
