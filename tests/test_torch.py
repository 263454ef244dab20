"""fastsoftmax.torch against PyTorch's own torch.nn.functional.linear_cross_entropy."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import F64_ROUNDING, assert_close, spy_twins

import fastsoftmax.torch as ft

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _problem(rng, N=40, d=6, C=5, dtype=torch.float64, bias=True, ignore=-100, out=()):
    """input, linear_weight, target, linear_bias (leaf tensors requiring grad); every fifth target
    is `ignore` (None: no ignored targets)."""
    X = torch.tensor(rng.standard_normal((N, d)), dtype=dtype, requires_grad=True)
    W = torch.tensor(rng.standard_normal((C, *out, d)), dtype=dtype, requires_grad=True)
    b = torch.tensor(rng.standard_normal((C, *out)), dtype=dtype, requires_grad=True) if bias else None
    y = torch.tensor(rng.integers(0, C, (N, *out)))
    if ignore is not None:
        y[::5] = ignore
    return X, W, y, b


def _loss_and_grads(fn, X, W, y, b, grad_output, **kwargs):
    loss = fn(X, W, y, linear_bias=b, **kwargs)
    wrt = [t for t in (X, W, b) if t is not None]
    return [loss, *torch.autograd.grad(loss, wrt, grad_output)]


def _assert_same(ours, theirs, dtype):
    for a, e in zip(ours, theirs, strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape
        assert_close(a.detach().numpy(), e.detach().numpy(), dtype=np.dtype(str(dtype)[6:]),
                     floor=F64_ROUNDING)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
@pytest.mark.parametrize("ignore_index", [None, 3], ids=["ignore=None", "ignore=3"])
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_pytorch(rng, reduction, weighted, ignore_index, label_smoothing, bias, dtype):
    """Loss and gradients equal PyTorch's for every combination of options."""
    dtype = DTYPES[dtype]
    X, W, y, b = _problem(rng, dtype=dtype, bias=bias, ignore=-100 if ignore_index is None else 3)
    weight = torch.tensor(rng.uniform(0.2, 2.0, W.shape[0]), dtype=dtype) if weighted else None
    # A random incoming gradient: backward must scale (and, for "none", weigh rows) correctly.
    grad = torch.tensor(rng.standard_normal(len(y) if reduction == "none" else ()), dtype=dtype)
    kwargs = dict(weight=weight, reduction=reduction, ignore_index=ignore_index,
                  label_smoothing=label_smoothing)
    ours = _loss_and_grads(ft.linear_cross_entropy, X, W, y, b, grad, **kwargs)
    theirs = _loss_and_grads(F.linear_cross_entropy, X, W, y, b, grad, **kwargs)
    _assert_same(ours, theirs, dtype)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_signed_class_weights(rng, reduction, label_smoothing):
    """Negative class weights (allowed by PyTorch) are not sample weights the public API accepts."""
    X, W, y, b = _problem(rng)
    weight = torch.tensor(rng.uniform(-1.0, 2.0, W.shape[0]))
    weight[0] = -0.5
    grad = torch.ones(len(y) if reduction == "none" else ())
    kwargs = dict(weight=weight, reduction=reduction, label_smoothing=label_smoothing)
    _assert_same(_loss_and_grads(ft.linear_cross_entropy, X, W, y, b, grad.double(), **kwargs),
                 _loss_and_grads(F.linear_cross_entropy, X, W, y, b, grad.double(), **kwargs),
                 torch.float64)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", [{}, {"weight": True, "label_smoothing": 0.2}],
                         ids=["plain", "weight+smoothing"])
def test_k_dimensional_loss(rng, reduction, options):
    """linear_weight (C, d_1, d_2, in_features): PyTorch's K-dimensional loss."""
    X, W, y, b = _problem(rng, N=12, out=(2, 3))
    if options.get("weight"):
        options = dict(options, weight=torch.tensor(rng.uniform(0.5, 2, W.shape[0])))
    grad = torch.tensor(rng.standard_normal(y.shape if reduction == "none" else ()))
    kwargs = dict(options, reduction=reduction)
    _assert_same(_loss_and_grads(ft.linear_cross_entropy, X, W, y, b, grad, **kwargs),
                 _loss_and_grads(F.linear_cross_entropy, X, W, y, b, grad, **kwargs),
                 torch.float64)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_leading_batch_dimensions(rng, reduction):
    """input (2, 3, d) with target (2, 3) is the flattened problem; PyTorch 2.13 takes one batch
    dimension only, so compare with it on the flattened tensors."""
    X, W, y, b = _problem(rng, N=6)
    X3, y3 = X.detach().reshape(2, 3, -1).requires_grad_(), y.reshape(2, 3)
    ours = ft.linear_cross_entropy(X3, W, y3, linear_bias=b, reduction=reduction)
    theirs = F.linear_cross_entropy(X, W, y, linear_bias=b, reduction=reduction)
    assert ours.shape == ((2, 3) if reduction == "none" else ())
    assert_close(ours.detach().numpy(), theirs.detach().reshape(ours.shape).numpy())
    ours.sum().backward()
    theirs.sum().backward()
    assert_close(X3.grad.reshape(6, -1).numpy(), X.grad.numpy(), floor=F64_ROUNDING)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_unbatched_input(rng, reduction):
    X, W, y, b = _problem(rng, N=1, ignore=None)
    ours = ft.linear_cross_entropy(X[0], W, y[0], linear_bias=b, reduction=reduction)
    theirs = F.linear_cross_entropy(X[0], W, y[0], linear_bias=b, reduction=reduction)
    assert ours.shape == theirs.shape == ()
    assert_close(ours.detach().numpy(), theirs.detach().numpy())


def test_options_accepted_and_ignored(rng):
    """Code written for PyTorch's chunked path runs unchanged."""
    X, W, y, b = _problem(rng)
    options = torch.nn.LinearCrossEntropyOptions()
    assert_close(ft.linear_cross_entropy(X, W, y, linear_bias=b, options=options).detach().numpy(),
                 ft.linear_cross_entropy(X, W, y, linear_bias=b).detach().numpy())
    assert ft.LinearCrossEntropyLoss(6, 5, options=options).options is None


def test_all_targets_ignored(rng):
    """"mean" over no target: NaN, with zero gradients, as PyTorch gives."""
    X, W, y, b = _problem(rng, N=4)
    y[:] = -100
    loss = ft.linear_cross_entropy(X, W, y, linear_bias=b)
    loss.backward()
    assert torch.isnan(loss)
    assert not X.grad.any() and not W.grad.any() and not b.grad.any()


def test_empty_batch(rng):
    X, W, y, b = _problem(rng, N=0)
    assert ft.linear_cross_entropy(X, W, y, reduction="sum").item() == 0.0
    assert torch.isnan(ft.linear_cross_entropy(X, W, y))
    assert ft.linear_cross_entropy(X, W, y, reduction="none").shape == (0,)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck(rng, reduction):
    X, W, y, b = _problem(rng, N=5, d=3, C=4, ignore=1)
    weight = torch.tensor(rng.uniform(0.5, 2.0, 4))

    def fn(X, W, b):
        return ft.linear_cross_entropy(X, W, y, linear_bias=b, weight=weight, reduction=reduction,
                                       label_smoothing=0.1, ignore_index=1)

    assert torch.autograd.gradcheck(fn, (X, W, b))


def test_torch_compile_fullgraph(rng):
    """No graph break (fullgraph=True), and the compiled gradients are the eager ones."""
    X, W, y, b = _problem(rng, N=30, dtype=torch.float32)
    grad = torch.tensor(rng.standard_normal(len(y)), dtype=torch.float32)

    def fn(X, W, y, b):
        mean = ft.linear_cross_entropy(X, W, y, linear_bias=b, label_smoothing=0.1)
        rows = ft.linear_cross_entropy(X, W, y, linear_bias=b, reduction="none")
        return mean + (rows * grad).sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    results = []
    for f in (fn, compiled):
        loss = f(X, W, y, b)
        results.append([loss, *torch.autograd.grad(loss, (X, W, b))])
    _assert_same(results[1], results[0], torch.float32)


def test_no_grad_does_no_gradient_work(rng, monkeypatch):
    X, W, y, b = _problem(rng, C=40)  # 40 classes: the GEMM tiles of the loss-only path
    expected = F.linear_cross_entropy(X, W, y, linear_bias=b).detach()

    def forbidden(*args, **kwargs):
        raise AssertionError("gradient work without gradients")

    monkeypatch.setattr(ft, "_sum_and_grads", forbidden)
    with torch.no_grad():
        loss = ft.linear_cross_entropy(X, W, y, linear_bias=b)
    assert not loss.requires_grad
    assert_close(loss.numpy(), expected.numpy())
    leaves = [t.detach() for t in (X, W, b)]  # no input requires grad: the same loss-only path
    assert_close(ft.linear_cross_entropy(leaves[0], leaves[1], y, linear_bias=leaves[2]).numpy(),
                 expected.numpy())


@pytest.mark.parametrize("which", ["input", "linear_weight"])
def test_only_some_inputs_require_grad(rng, which):
    X, W, y, b = _problem(rng, bias=False)
    X.requires_grad_(which == "input")
    W.requires_grad_(which == "linear_weight")
    leaf = X if which == "input" else W
    grads = [torch.autograd.grad(f(X, W, y), leaf)[0]
             for f in (ft.linear_cross_entropy, F.linear_cross_entropy)]
    assert_close(grads[0].numpy(), grads[1].numpy(), floor=F64_ROUNDING)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_computed_in_float32(rng, dtype):
    X, W, y, b = _problem(rng, dtype=dtype)
    loss = ft.linear_cross_entropy(X, W, y, linear_bias=b)
    loss.backward()
    assert loss.dtype == dtype and X.grad.dtype == W.grad.dtype == b.grad.dtype == dtype
    up = [t.detach().float().requires_grad_() for t in (X, W, b)]
    ref = F.linear_cross_entropy(up[0], up[1], y, linear_bias=up[2])
    ref.backward()
    assert loss.item() == ref.to(dtype).item()
    for ours, theirs in zip((X, W, b), up, strict=True):
        # one rounding to the half type: half an ulp of the largest entry
        atol = float(torch.finfo(dtype).eps) * float(theirs.grad.abs().max())
        torch.testing.assert_close(ours.grad.float(), theirs.grad.to(dtype).float(), rtol=0,
                                   atol=atol)


def test_non_cpu_tensor_is_refused():
    X, W = torch.empty(4, 3, device="meta"), torch.empty(5, 3, device="meta")
    with pytest.raises(ValueError, match="input is on device meta"):
        ft.linear_cross_entropy(X, W, torch.zeros(4, dtype=torch.long, device="meta"))


def _f64(*shape):
    return torch.zeros(shape, dtype=torch.float64)


BAD = [
    (dict(input=np.zeros((4, 3))), TypeError, "input must be a torch.Tensor"),
    (dict(input=torch.zeros(4, 3, dtype=torch.long)), TypeError, "input must be a floating"),
    (dict(linear_weight=torch.zeros(5, 3, dtype=torch.float32)), TypeError, "linear_weight has dtype"),
    (dict(linear_weight=_f64(5, 2)), ValueError, "linear_weight has 2 in_features"),
    (dict(linear_weight=_f64(5)), ValueError, "linear_weight must be at least 2-D"),
    (dict(linear_weight=_f64(0, 3)), ValueError, "linear_weight must have at least one"),
    (dict(linear_bias=_f64(4)), ValueError, "linear_bias must have shape"),
    (dict(weight=torch.ones(4)), ValueError, "weight must have shape"),
    (dict(weight=torch.ones(5, dtype=torch.long)), TypeError, "weight must be a floating"),
    (dict(target=torch.zeros(3, dtype=torch.long)), ValueError, "target must have shape"),
    (dict(target=torch.full((4,), 5)), ValueError, "target holds class index 5"),
    (dict(target=torch.full((4,), -1)), ValueError, "target holds class index -1"),
    (dict(target=torch.zeros(4)), TypeError, "target must hold integer class indices"),
    (dict(target=torch.full((4, 5), 0.2)), ValueError, "target holds class probabilities"),
    (dict(reduction="batchmean"), ValueError, "reduction must be one of"),
    (dict(label_smoothing=1.5), ValueError, "label_smoothing must be in"),
    (dict(label_smoothing="0.1"), TypeError, "label_smoothing must be a real"),
    (dict(ignore_index=1.0), TypeError, "ignore_index must be an integer"),
]


@pytest.mark.parametrize(("change", "error", "match"), BAD, ids=[m for _, _, m in BAD])
def test_bad_input_names_the_argument(change, error, match):
    args = dict(input=_f64(4, 3), linear_weight=_f64(5, 3),
                target=torch.zeros(4, dtype=torch.long), linear_bias=None, weight=None)
    args.update(change)
    with pytest.raises(error, match=match):
        ft.linear_cross_entropy(**args)


def test_module_is_pytorchs_module(rng):
    """Same parameters and state dict as torch.nn.LinearCrossEntropyLoss, same loss."""
    weight = torch.tensor(rng.uniform(0.5, 2.0, 5))
    kwargs = dict(bias=True, weight=weight, label_smoothing=0.1, dtype=torch.float64)
    ours = ft.LinearCrossEntropyLoss(6, 5, **kwargs)
    theirs = torch.nn.LinearCrossEntropyLoss(6, 5, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    X, _, y, _ = _problem(rng)
    losses = [m(X, y) for m in (ours, theirs)]
    assert_close(losses[0].detach().numpy(), losses[1].detach().numpy())
    assert isinstance(ours, torch.nn.LinearCrossEntropyLoss)


def _train(loss_fn, X, y, epochs=3, batch=256, lr=0.1):
    """The textbook softmax-regression recipe: minibatch SGD from zero weights."""
    torch.manual_seed(0)
    W = torch.zeros(10, X.shape[1], requires_grad=True)
    b = torch.zeros(10, requires_grad=True)
    opt = torch.optim.SGD([W, b], lr=lr)
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(batch):
            opt.zero_grad()
            loss_fn(X[idx], W, y[idx], b).backward()
            opt.step()
    with torch.no_grad():
        return ((X @ W.T + b).argmax(1) == y).float().mean().item()


def test_training_loop_matches_pytorch(rng):
    """Fashion-MNIST-shaped synthetic data (2000 x 784, 10 classes): the same accuracy."""
    centers = rng.standard_normal((10, 784)) * 0.3
    labels = rng.integers(0, 10, 2000)
    X = torch.tensor(centers[labels] + rng.standard_normal((2000, 784)), dtype=torch.float32)
    y = torch.tensor(labels)
    ours = _train(lambda X, W, y, b: ft.linear_cross_entropy(X, W, y, linear_bias=b), X, y)
    plain = _train(lambda X, W, y, b: F.cross_entropy(F.linear(X, W, b), y), X, y)
    assert ours > 0.5  # the data is learnable: the comparison means something
    assert abs(ours - plain) <= 0.002


def test_import_fastsoftmax_does_not_import_torch():
    code = "import sys, fastsoftmax; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("ignore", [None, -100], ids=["every-row", "ignored-rows"])
@pytest.mark.parametrize(("work", "expected"), [(0, 1), (ft.SERIAL_MAX_WORK, None)],
                         ids=["small", "large"])
def test_numba_threads_follow_pytorch(rng, monkeypatch, work, expected, ignore):
    """Small problems run on one Numba thread (its pool stays asleep), larger ones on as many as
    PyTorch's intra-op pool; the caller's setting is restored. With every row counted (the
    unweighted route), a small problem asks for the small-class kernel's serial twin instead of
    setting the thread count; with ignored rows (the weighted route) the count is set."""
    import numba

    seen = []
    real_checked, real_public = ft._linear_cross_entropy_checked, ft._fs.linear_cross_entropy

    def checked(*args, serial=False, **kwargs):
        seen.append(1 if serial else numba.get_num_threads())
        return real_checked(*args, serial=serial, **kwargs)

    def public(*args, **kwargs):
        seen.append(numba.get_num_threads())
        return real_public(*args, **kwargs)

    monkeypatch.setattr(ft, "_linear_cross_entropy_checked", checked)
    monkeypatch.setattr(ft._fs, "linear_cross_entropy", public)
    monkeypatch.setattr(ft, "SERIAL_MAX_WORK", ft.SERIAL_MAX_WORK - work)
    before = numba.get_num_threads()
    X, W, y, b = _problem(rng, ignore=ignore)
    ft.linear_cross_entropy(X, W, y, linear_bias=b).backward()
    pytorch = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    assert seen == [expected or pytorch]
    assert numba.get_num_threads() == before


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("need_dX", [False, True], ids=["W,b", "X,W,b"])
def test_training_step_is_the_public_function_bitwise(rng, monkeypatch, dtype, bias, need_dX):
    """The textbook step's route (every target counted, 10 classes, 256 x 784: two row chunks,
    past the size where the functional layer picks the parallel kernel) runs the serial kernel
    and gives the public function's bits: loss, dW, db and dX."""
    import fastsoftmax as fs
    from fastsoftmax import _kernels

    X, W, y, b = _problem(rng, N=256, d=784, C=10, dtype=DTYPES[dtype], bias=bias, ignore=None)
    X.requires_grad_(need_dX)
    want = fs.linear_cross_entropy(X.detach().numpy(), W.detach().numpy(),
                                   None if b is None else b.detach().numpy(), y.numpy(),
                                   return_dX=need_dX)
    twins = spy_twins(monkeypatch, _kernels._linear_xent_small)
    loss = ft.linear_cross_entropy(X, W, y, linear_bias=b)
    loss.backward()
    assert twins == ["serial"]
    assert loss.item() == np.asarray(want[0], dtype=W.detach().numpy().dtype).item()
    got = [W.grad, None if b is None else b.grad] + ([X.grad] if need_dX else [])
    for g, v in zip(got, want[1:], strict=True):
        if v is None:
            assert g is None
        else:
            np.testing.assert_array_equal(g.numpy(), v)


@pytest.mark.parametrize(("targets", "ignore_index", "match"), [
    ([0, 1, 3, 4, 1], 2, None),  # ignore_index within the targets' range, absent
    ([0, 1, 2, 4, 2], 2, None),  # present
    ([0, 7, 1, 7, 3], 7, None),  # outside [0, C) but ignore_index: ignored
    ([0, -1, 4, 2, 1], -1, None),
    ([0, 5, 1, 2, 1], -100, "target holds class index 5"),
    ([0, -3, 9, 2, 1], 9, "target holds class index -3, outside"),  # 9 ignored, -3 still named
    ([0, 9, 6, 2, 1], 9, "target holds class index 6, outside"),
])
def test_targets_and_ignore_index(rng, targets, ignore_index, match):
    """Targets are checked against [0, C) after ignore_index is set aside, wherever it lies
    (the check skips building a mask when ignore_index is outside the targets' range)."""
    X, W, _, b = _problem(rng, N=5, C=5)
    y = torch.tensor(targets)
    if match is not None:
        with pytest.raises(ValueError, match=match):
            ft.linear_cross_entropy(X, W, y, linear_bias=b, ignore_index=ignore_index)
        return
    kwargs = dict(ignore_index=ignore_index)
    ours = _loss_and_grads(ft.linear_cross_entropy, X, W, y, b, torch.tensor(1.0), **kwargs)
    theirs = _loss_and_grads(F.linear_cross_entropy, X, W, y, b, torch.tensor(1.0), **kwargs)
    _assert_same(ours, theirs, torch.float64)


@pytest.mark.parametrize(("where", "value", "match"), [
    ("input", float("nan"), "X contains NaN or infinity: 1 NaN entry"),
    ("linear_weight", float("inf"), "W contains NaN or infinity: 1 infinite entry"),
    ("linear_bias", float("inf"), "b contains NaN or infinity"),
])
def test_nonfinite_input_named_on_the_training_step(rng, where, value, match):
    """The training step's route (no re-validation of X, W, b) still names a NaN or infinite
    argument, from the kernel's count of bad rows."""
    args = dict(zip(("input", "linear_weight", "target", "linear_bias"),
                    _problem(rng, N=256, d=20, C=10, dtype=torch.float32, ignore=None),
                    strict=True))
    with torch.no_grad():
        args[where].view(-1)[3] = value
    with pytest.raises(ValueError, match=match):
        ft.linear_cross_entropy(**args)


def test_overflow_caught_on_the_training_step():
    """Finite inputs whose logits or gradients overflow float32 raise ValueError on the training
    step's route: the logits; dW within one row chunk; dW only when the two chunks' partials
    are added (after NumPy's overflow warning)."""
    y = torch.zeros(256, dtype=torch.long)
    huge = torch.full((256, 4), 1e30)
    with pytest.raises(ValueError, match="X W\\^T \\+ b overflowed to infinity in float32"):
        ft.linear_cross_entropy(huge, torch.full((10, 4), 1e30, requires_grad=True), y)
    W = torch.zeros(10, 4, requires_grad=True)
    with pytest.raises(ValueError, match="the gradient dW = G\\^T X overflowed float32"):
        ft.linear_cross_entropy(torch.full((256, 4), 1e38), W, y, reduction="sum")
    # Each 128-row chunk sums to -0.9 * 128 * 2.5e36 = -2.9e38, finite; both together overflow.
    with (pytest.warns(RuntimeWarning, match="overflow"),
          pytest.raises(ValueError, match="the gradient dW = G\\^T X overflowed float32")):
        ft.linear_cross_entropy(torch.full((256, 4), 2.5e36), W, y, reduction="sum")
