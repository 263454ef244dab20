"""Cold start: a fresh interpreter that imports the library and makes its first call.

fastsoftmax compiles its kernels on first use; with a warm Numba cache (`cache=True`, the
default location or NUMBA_CACHE_DIR) a new process loads them instead. Both are timed, beside the
peers' import plus first call and a bare `import numpy`, in one group per (K, dtype): `cold start
linear_cross_entropy k=10-float32`. Each round is a new process; the cold rounds each get an empty
NUMBA_CACHE_DIR.

The README's main job, `fastsoftmax train` with its defaults (scikit-learn's digits, lbfgs, the model
and the plot written), is timed the same way end to end, cold and warm, in the group `cold start
fastsoftmax train` (with FASTSOFTMAX_BENCH_FULL=1 only: a cold run compiles for seconds).
"""

import subprocess
import sys
import tempfile

import pytest
from _cases import FULL
from _harness import json_extras, probe_env  # noqa: F401 (autouse fixture)

CASES = (
    [(k, dt) for k in (10, 1000) for dt in ("float32", "float64")] if FULL else [(10, "float32")]
)
ROUNDS = 3 if FULL else 1

_DATA = """
import numpy as np
rng = np.random.default_rng(0)
X = rng.standard_normal((1000, 64), dtype=np.{dtype})
W = rng.standard_normal(({k}, 64), dtype=np.{dtype})
b = np.zeros({k}, np.{dtype})
y = rng.integers(0, {k}, 1000)
"""
_FASTSOFTMAX = "import fastsoftmax as fs\n{data}\nfs.linear_cross_entropy(X, W, b, y)"
PROGRAMS = {
    "python + numpy": "import numpy",
    "fastsoftmax (cold cache)": _FASTSOFTMAX,
    "fastsoftmax (warm cache)": _FASTSOFTMAX,
    "reference": "import reference\n{data}\nreference.linear_cross_entropy(X, W, b, y)",
    "scikit-learn": (
        "from sklearn._loss.loss import HalfMultinomialLoss\n"
        "from sklearn.linear_model._linear_loss import LinearModelLoss\n{data}\n"
        "LinearModelLoss(HalfMultinomialLoss(n_classes={k}), fit_intercept=True).loss_gradient("
        "np.hstack([W, b[:, None]]), X, y.astype(X.dtype), l2_reg_strength=0.0, n_threads=1)"
    ),
    "torch": (
        "import torch\n{data}\nWt = torch.from_numpy(W).requires_grad_()\n"
        "torch.nn.functional.cross_entropy(torch.nn.functional.linear(torch.from_numpy(X), Wt, "
        "torch.from_numpy(b)), torch.from_numpy(y)).backward()"
    ),
}


def _program(impl, k, dtype):
    return PROGRAMS[impl].format(data=_DATA.format(k=k, dtype=dtype), k=k)


def _run(code, env):
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)


@pytest.fixture(scope="module")
def warm_cache_dir():
    """A Numba cache directory filled by one earlier process per case, shared by the warm rounds."""
    with tempfile.TemporaryDirectory(prefix="fastsoftmax-numba-warm-") as path:
        env = probe_env() | {"NUMBA_CACHE_DIR": path}
        for k, dtype in CASES:
            _run(_program("fastsoftmax (cold cache)", k, dtype), env)
        yield path


@pytest.mark.parametrize("impl", list(PROGRAMS))
@pytest.mark.parametrize(("k", "dtype"), CASES, ids=[f"k={k}-{dt}" for k, dt in CASES])
def test_cold_start(benchmark, warm_cache_dir, tmp_path, impl, k, dtype):
    if impl == "torch":
        pytest.importorskip("torch", reason="PyTorch CPU is optional: pip install '.[bench]'")
    benchmark.group = f"cold start linear_cross_entropy k={k}-{dtype}"
    benchmark.extra_info.update(op="cold start", impl=impl, n=1000, d=64, k=k, dtype=dtype)
    code = _program(impl, k, dtype)
    rounds = iter(range(10**6))

    def fresh_cache():
        if impl == "fastsoftmax (cold cache)":
            cache = tmp_path / f"cache-{next(rounds)}"  # empty: every kernel compiles
        else:
            cache = warm_cache_dir
        return (code, probe_env() | {"NUMBA_CACHE_DIR": str(cache)}), {}

    benchmark.pedantic(_run, setup=fresh_cache, rounds=ROUNDS, iterations=1)


CLI_IMPLS = ("fastsoftmax train (cold cache)", "fastsoftmax train (warm cache)")


def _run_cli(cwd, env):
    subprocess.run([sys.executable, "-m", "fastsoftmax", "train", "--quiet"], cwd=cwd, env=env,
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def cli_warm_cache_dir(tmp_path_factory):
    """A Numba cache directory filled by one earlier `fastsoftmax train`."""
    path = tmp_path_factory.mktemp("numba-cli-warm")
    _run_cli(tmp_path_factory.mktemp("cli-warm-run"), probe_env() | {"NUMBA_CACHE_DIR": str(path)})
    return path


@pytest.mark.skipif(not FULL, reason="compiles for seconds: FASTSOFTMAX_BENCH_FULL=1 only")
@pytest.mark.parametrize("impl", CLI_IMPLS)
def test_cold_start_cli(benchmark, cli_warm_cache_dir, tmp_path, impl):
    """`python -m fastsoftmax train --quiet` in an empty directory, every round a new process."""
    pytest.importorskip("sklearn", reason="the digits data comes from scikit-learn")
    benchmark.group = "cold start fastsoftmax train"
    benchmark.extra_info.update(op="cold start", impl=impl)
    rounds = iter(range(10**6))

    def fresh_dirs():
        i = next(rounds)
        cwd = tmp_path / f"run-{i}"
        cwd.mkdir()
        cold = impl.endswith("(cold cache)")
        cache = tmp_path / f"cache-{i}" if cold else cli_warm_cache_dir
        return (cwd, probe_env() | {"NUMBA_CACHE_DIR": str(cache)}), {}

    benchmark.pedantic(_run_cli, setup=fresh_dirs, rounds=ROUNDS, iterations=1)
