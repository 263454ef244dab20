"""fastsoftmax.torch.linear_cross_entropy beside PyTorch's chunked op and plain linear + cross_entropy.

Forward + backward (gradients of input, linear_weight and linear_bias) in float32, one group per
shape (`torch lce+dX n=...-d=...-k=...-float32`), and the textbook training step (256 x 784 x 10:
loss, backward of W and b, SGD update). Small shapes by default (a smoke test under
`--benchmark-disable`); FASTSOFTMAX_BENCH_FULL=1 for the shapes docs/torch.md reports. When timed
(and FASTSOFTMAX_BENCH_MEMORY is not 0), each case's peak extra memory is measured in a fresh process:
`python bench/test_bench_torch.py IMPL N D K` prints it.

Self-contained on purpose (no _common / _impls): a few lines of setup repeat theirs.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fastsoftmax.torch as ft

FULL = os.environ.get("FASTSOFTMAX_BENCH_FULL", "") not in ("", "0")
MEASURE_MEMORY = os.environ.get("FASTSOFTMAX_BENCH_MEMORY", "1") not in ("", "0")
SHAPES = ([(20000, 512, 1000), (4096, 1024, 32000), (100000, 256, 100)] if FULL
          else [(600, 32, 50), (300, 16, 10)])
STEP = (256, 784, 10) if FULL else (64, 32, 10)
IMPLS = ("fastsoftmax", "torch-chunked", "torch-plain")


def shape_id(shape) -> str:
    n, d, k = shape
    return f"n={n}-d={d}-k={k}"


def make_problem(shape, seed=0):
    """float32 input (N, d), linear_weight (K, d), linear_bias (K,) and int64 targets (N,)."""
    n, d, k = shape
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    W = torch.randn(k, d, generator=g) / d**0.5
    b = 0.1 * torch.randn(k, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    return X, W, b, y


def loss_fn(impl: str):
    if impl == "fastsoftmax":
        return lambda X, W, y, b: ft.linear_cross_entropy(X, W, y, linear_bias=b)
    if impl == "torch-chunked":
        options = torch.nn.LinearCrossEntropyOptions()
        return lambda X, W, y, b: F.linear_cross_entropy(X, W, y, linear_bias=b, options=options)
    return lambda X, W, y, b: F.cross_entropy(F.linear(X, W, b), y)


def forward_backward(impl: str, shape):
    """A callable computing the loss and the gradients of X, W and b; returns the loss."""
    X, W, b, y = (t.requires_grad_(t.is_floating_point()) for t in make_problem(shape))
    f = loss_fn(impl)

    def step():
        X.grad = W.grad = b.grad = None
        loss = f(X, W, y, b)
        loss.backward()
        return loss.item()

    return step


def train_step(impl: str, shape, lr=0.1):
    """The textbook step: loss, gradients of W and b (not of the data), SGD update."""
    X, W, b, y = make_problem(shape)
    W.requires_grad_()
    b.requires_grad_()
    f = loss_fn(impl)

    def step():
        W.grad = b.grad = None
        loss = f(X, W, y, b)
        loss.backward()
        with torch.no_grad():
            W.sub_(lr * W.grad)
            b.sub_(lr * b.grad)
        return loss

    return step


def _record(benchmark, group: str, impl: str, shape) -> None:
    n, d, k = shape
    benchmark.group = f"{group} {shape_id(shape)}-float32"
    benchmark.extra_info.update(op=group, impl=impl, n=n, d=d, k=k, dtype="float32",
                                torch_threads=torch.get_num_threads())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_forward_backward(benchmark, shape, impl):
    """Loss and the gradients of input, linear_weight, linear_bias: the output layer of a network."""
    _record(benchmark, "torch lce+dX", impl, shape)
    fn = forward_backward(impl, shape)
    expected = forward_backward("torch-plain", shape)() if impl != "torch-plain" else None
    loss = fn()  # warm-up: JIT compilation, thread pools, first touch of the outputs
    if expected is not None:
        assert loss == pytest.approx(expected, rel=1e-4), (impl, loss, expected)
    gc.collect()
    benchmark(fn)
    if MEASURE_MEMORY and not benchmark.disabled:
        benchmark.extra_info["peak_extra_bytes"] = peak_extra_in_subprocess(impl, shape)


@pytest.mark.parametrize("impl", IMPLS)
def test_train_step(benchmark, impl):
    """256 x 784 x 10 minibatch step of softmax regression: small, so overheads show."""
    _record(benchmark, "torch train_step", impl, STEP)
    fn = train_step(impl, STEP)
    for _ in range(3):
        fn()
    benchmark(fn)


# ------------------------------------------------------------------------------------------------
# Peak extra memory of one forward + backward, in a fresh process (VmHWM after a reset)
# ------------------------------------------------------------------------------------------------


def peak_extra_in_subprocess(impl: str, shape) -> int | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), impl, *map(str, shape)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_extra_bytes"]


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _main(impl: str, n: str, d: str, k: str) -> None:
    """Peak resident memory of one call beyond what the data and a warm-up of the same K hold:
    outputs (the gradients) included. Reset through /proc/self/clear_refs (Linux >= 4.0)."""
    shape = (int(n), int(d), int(k))
    forward_backward(impl, (64, shape[1], shape[2]))()  # JIT, thread pools, BLAS buffers
    fn = forward_backward(impl, shape)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kib("VmRSS")
    fn()
    print(json.dumps({"peak_extra_bytes": (_status_kib("VmHWM") - base) * 1024}))


if __name__ == "__main__":
    _main(*sys.argv[1:])
