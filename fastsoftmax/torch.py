"""PyTorch drop-in for ``torch.nn.functional.linear_cross_entropy`` on CPU tensors.

``linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None,
reduction="mean", ignore_index=None, label_smoothing=0.0)`` has the signature and the semantics of
PyTorch 2.13's function (its ``options`` aside), and :class:`LinearCrossEntropyLoss` those of
``torch.nn.LinearCrossEntropyLoss``. The loss and the gradients with respect to ``input``,
``linear_weight`` and ``linear_bias`` come from fastsoftmax's fused kernels, which never hold the
``(N, C)`` logits; see ``docs/torch.md`` for the design and the measurements.

How the work is split:

* With gradients needed and ``reduction`` "mean" or "sum", one fused pass computes the loss and every
  gradient (as PyTorch's chunked op does); backward only scales them by the incoming gradient.
* Without gradients (``torch.no_grad`` or no input requiring grad), and for ``reduction="none"``'s
  forward, a loss-only pass: tiles of logits from one GEMM, per-row losses from
  :func:`fastsoftmax.cross_entropy` on the tile, no gradient work. ``"none"``'s backward weighs each
  row by its incoming gradient and runs the fused pass once.
* Class weights together with label smoothing (PyTorch smooths with the class-weighted mean of the
  log-probabilities, which is not a per-sample weight) run tile by tile in PyTorch ops, in bounded
  memory as well.

This module imports torch; ``import fastsoftmax`` never imports it.
"""

import math
import numbers

import numba
import numpy as np
import torch
from torch import Tensor

import fastsoftmax as _fs
from fastsoftmax.functional import SMALL_K_MAX as _SMALL_K_MAX
from fastsoftmax.functional import _linear_cross_entropy_checked  # see _unvalidated_call

__all__ = ["LinearCrossEntropyLoss", "linear_cross_entropy"]

# Bytes of logits per tile on the loss-only and PyTorch-tile routes: bounds their extra memory
# independently of the number of rows.
TILE_BYTES = 16 * 2**20
# Below this many multiply-adds per pass (N * d * C), fastsoftmax runs on one thread: its pool is
# never woken, and so never fights PyTorch's spinning OpenMP threads for the cores. A fight cost 8 ms
# per call in the measurements of docs/torch.md, more than a second core saves below about 15 ms of
# serial work (~256M multiply-adds on the small-class kernel; the 256 x 784 x 10 step is 2M).
SERIAL_MAX_WORK = 256 * 2**20
_REDUCTIONS = ("mean", "sum", "none")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The per-row weights of an unweighted call (read-only, as the functional layer's own), made once.
_NO_WEIGHTS = np.empty(0)
_NO_WEIGHTS.flags.writeable = False


# ------------------------------------------------------------------------------------------------
# Computation on validated CPU tensors (float32 or float64, 2-D input, 1-D target)
# ------------------------------------------------------------------------------------------------


class _threads:
    """Numba threads for one call (a context manager): as many as PyTorch's intra-op pool, one for
    small problems. ``numba.set_num_threads`` is thread-local and restored afterwards; not set when
    the count already matches (each call takes a process-wide lock)."""

    __slots__ = ("wanted", "previous")

    def __init__(self, work: int):
        wanted = 1 if work < SERIAL_MAX_WORK else torch.get_num_threads()
        self.wanted = max(1, min(wanted, numba.config.NUMBA_NUM_THREADS))

    def __enter__(self) -> None:
        self.previous = numba.get_num_threads()
        if self.wanted != self.previous:
            numba.set_num_threads(self.wanted)

    def __exit__(self, *exc) -> None:
        if self.wanted != self.previous:
            numba.set_num_threads(self.previous)


def _codes_and_weights(target: Tensor, weight: Tensor | None, ignore_index: int, n_classes: int):
    """Class codes (ignored rows mapped to 0), per-row weights float64 (None: all ones) and whether
    each row counts (None when ``weight`` is None and every row does), as NumPy arrays. Raises
    ValueError for a class index out of range."""
    y = target.numpy()
    lo, hi = (y.min(), y.max()) if y.size else (0, 0)
    valid, all_valid = None, True
    if weight is not None or lo <= ignore_index <= hi:  # else no row is ignored: no mask to build
        valid = y != ignore_index
        all_valid = bool(valid.all())
        if not all_valid:
            y = np.where(valid, y, 0)
            lo, hi = y.min(), y.max()
    if lo < 0 or hi >= n_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"target holds class index {bad}, outside [0, {n_classes}) and not ignore_index "
            f"({ignore_index})"
        )
    codes = np.ascontiguousarray(y, dtype=np.intp)
    if weight is None:
        rows = None if all_valid else valid.astype(np.float64)
    else:
        rows = weight.detach().to(torch.float64).numpy()[codes] * valid
    return codes, rows, valid


def _weighted_linear_xent(X, W, b, codes, rows, eps: float, need_dX: bool, mean: bool):
    """``sum_i rows_i * loss_i`` (divided by ``sum(rows)`` with ``mean``) and its gradients (dX,
    dW, db) through the public API; ``rows`` None means all ones.

    The public API takes non-negative sample weights only; signed ones (class weights below zero,
    or the incoming gradient of ``reduction="none"``) are split into their positive and negative
    parts, two calls, the second only when a weight is negative. The mean is left to the caller
    then (returned as a sum, with ``mean=False``).
    """
    if rows is None or not rows.size or rows.min() >= 0:
        if mean and len(codes) and (rows is None or rows.sum() > 0):  # the kernel scales
            return _public_call(X, W, b, codes, rows, eps, need_dX, "mean"), True
        return _public_call(X, W, b, codes, rows, eps, need_dX, "sum"), False
    pos = _public_call(X, W, b, codes, np.maximum(rows, 0.0), eps, need_dX, "sum")
    neg = _public_call(X, W, b, codes, np.maximum(-rows, 0.0), eps, need_dX, "sum")
    return tuple(None if p is None else p - n for p, n in zip(pos, neg, strict=True)), False


def _public_call(X, W, b, codes, rows, eps, need_dX, reduction):
    """(loss, dX or None, dW, db) of :func:`fastsoftmax.linear_cross_entropy`, on the threads
    :class:`_threads` gives."""
    work = X.shape[0] * X.shape[1] * W.shape[0]
    if rows is None and work < SERIAL_MAX_WORK and W.shape[0] <= _SMALL_K_MAX:
        # One thread without setting Numba's count (three calls, each through a process-wide
        # lock): the small-class kernel's serial twin, same bits.
        return _unvalidated_call(X, W, b, codes, eps, need_dX, reduction, serial=True)
    with _threads(work):
        if rows is None:
            return _unvalidated_call(X, W, b, codes, eps, need_dX, reduction)
        loss, dW, db, *dX = _fs.linear_cross_entropy(
            X, W, b, codes, sample_weight=rows, label_smoothing=eps, reduction=reduction,
            return_dX=need_dX,
        )
    return loss, (dX[0] if need_dX else None), dW, db


def _unvalidated_call(X, W, b, codes, eps, need_dX, reduction, serial=False):
    """The one use of fastsoftmax's internals in this module: without per-row weights (the common
    training step), the functional layer's entry point that skips re-validation, since this
    module has checked every argument (it saves about 8% of a 256 x 784 x 10 step). Arguments:
    read-only C-contiguous X, W, b of one dtype, intp codes in range, float64 weights (empty: all
    ones), the normalizer of the reduction; ``serial`` runs the small-class kernel's serial twin.
    Adapt here if that entry point changes."""
    denom = float(X.shape[0]) if reduction == "mean" else 1.0
    loss, dW, db, *dX = _linear_cross_entropy_checked(
        _frozen(X), _frozen(W), None if b is None else _frozen(b), _frozen(codes), _NO_WEIGHTS,
        eps, 0.0, denom, need_dX, serial=serial,
    )
    return loss, (dX[0] if need_dX else None), dW, db


def _frozen(a: np.ndarray) -> np.ndarray:
    """``a`` if read-only and C-contiguous, else such a view of it (of a C-contiguous copy if
    need be)."""
    if not a.flags.writeable and a.flags.c_contiguous:
        return a
    view = np.ascontiguousarray(a).view()
    view.flags.writeable = False
    return view


def _readonly_numpy(t: Tensor) -> np.ndarray:
    """A read-only NumPy array of ``t``'s data: ``.numpy()`` makes a new array object each call,
    so flagging it (cheaper than a view) changes nothing anyone else holds."""
    a = t.detach().numpy()
    a.flags.writeable = False
    return a


def _tile_rows(n_classes: int, itemsize: int) -> int:
    return max(64, TILE_BYTES // max(1, n_classes * itemsize))


def _losses_fastsoftmax(X: Tensor, W: Tensor, b, codes, rows, eps: float) -> Tensor:
    """Per-row (weighted) losses, loss only: a tile of logits from one GEMM at a time, then
    :func:`fastsoftmax.cross_entropy` on that tile."""
    N, C = X.shape[0], W.shape[0]
    T = _tile_rows(C, X.element_size())
    losses = np.empty(N, dtype=np.float64)
    Zbuf = torch.empty((min(T, N), C), dtype=X.dtype)
    for lo in range(0, N, T):
        hi = min(N, lo + T)
        Z = Zbuf[: hi - lo]
        if b is None:
            torch.mm(X[lo:hi], W.t(), out=Z)
        else:
            torch.addmm(b, X[lo:hi], W.t(), out=Z)
        losses[lo:hi] = _fs.cross_entropy(Z.numpy(), codes[lo:hi], label_smoothing=eps,
                                          reduction="none")
    if rows is not None:
        losses *= rows  # ignored rows (weight 0) have code 0, a finite loss
    return torch.from_numpy(losses)


@torch.no_grad()  # eager calls run it outside the autograd Function (_fused_eager)
def _class_smoothing_tiles(X, W, b, codes, valid, weight, eps, row_scale, grads, need_dX):
    """Class weights with label smoothing, tile by tile in PyTorch ops (PyTorch's formula):
    ``loss_i = (1 - eps) w[y_i] nll_i + eps / C * sum_c w_c (-log p_ic)`` for rows that count.

    Returns per-row losses (float64) and, with ``grads``, the gradients of ``sum_i row_scale_i *
    loss_i`` (row_scale None: all ones) as (dX or None, dW, db or None).
    """
    N, C = X.shape[0], W.shape[0]
    T = _tile_rows(C, X.element_size())
    cw = weight.to(X.dtype)
    y = torch.from_numpy(codes).to(torch.int64)
    keep = torch.from_numpy(valid).to(X.dtype)
    scale = keep if row_scale is None else keep * row_scale.to(X.dtype)
    losses = torch.empty(N, dtype=torch.float64)
    dW = torch.zeros_like(W) if grads else None
    db = torch.zeros_like(b) if grads and b is not None else None
    dX = torch.empty_like(X) if grads and need_dX else None
    for lo in range(0, N, T):
        sl = slice(lo, min(N, lo + T))
        Z = X[sl] @ W.t() if b is None else torch.addmm(b, X[sl], W.t())
        logp = torch.log_softmax(Z, dim=1)
        yt, wy = y[sl, None], cw[y[sl]]
        nll = -logp.gather(1, yt).squeeze(1)
        row = (1 - eps) * wy * nll - (eps / C) * (logp @ cw)
        losses[sl] = (keep[sl] * row).to(torch.float64)
        if not grads:
            continue
        r = scale[sl]
        # d loss_i / d z_ic = (1 - eps) w[y_i] (p_ic - [c = y_i]) + eps / C (sum(w) p_ic - w_c)
        G = logp.exp_().mul_((((1 - eps) * wy + (eps / C) * cw.sum()) * r)[:, None])
        G.sub_(((eps / C) * r)[:, None] * cw[None, :])
        G.scatter_add_(1, yt, (-(1 - eps) * wy * r)[:, None])
        dW.addmm_(G.t(), X[sl])
        if db is not None:
            db += G.sum(0)
        if dX is not None:
            torch.mm(G, W, out=dX[sl])
    return losses, (dX, dW, db)


def _sum_and_grads(X, W, b, target, weight, ignore_index, eps, need_dX, mean=False,
                   row_scale=None):
    """(loss, total weight of the counted rows, (dX, dW, db)) as floats and NumPy arrays or
    tensors: the loss is the sum of the weighted row losses, divided by the total with ``mean``
    (0/0: a NaN loss with zero gradients, as in PyTorch). ``row_scale`` (tensor (N,) or None)
    multiplies each row's weight."""
    codes, rows, valid = _codes_and_weights(target, weight, ignore_index, W.shape[0])
    total = float(X.shape[0]) if rows is None else float(rows.sum())
    if weight is not None and eps > 0:
        losses, grads = _class_smoothing_tiles(X, W, b, codes, valid, weight, eps, row_scale,
                                               True, need_dX)
        loss, scaled = float(losses.sum()), False
    else:
        if row_scale is not None:
            scale = row_scale.detach().to(torch.float64).numpy()
            rows = scale if rows is None else rows * scale
        Xn, Wn, bn = _readonly_numpy(X), _readonly_numpy(W), b if b is None else _readonly_numpy(b)
        (loss, *grads), scaled = _weighted_linear_xent(Xn, Wn, bn, codes, rows, eps, need_dX,
                                                       mean)
    if mean and not scaled:
        loss = loss / total if total else math.nan
        grads = [None if g is None else g * (1.0 / total if total else 0.0) for g in grads]
    return loss, total, grads


def _as_tensor(a, like: Tensor) -> Tensor:
    """NumPy array (or torch tensor) as a tensor of ``like``'s dtype; an empty one for None."""
    if a is None:
        return like.new_empty(0)
    t = torch.from_numpy(a) if isinstance(a, np.ndarray) else a
    return t if t.dtype == like.dtype else t.to(like.dtype)


def _scalar(value: float, dtype) -> Tensor:
    return torch.scalar_tensor(value, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# The operators (torch.library): opaque to torch.compile, differentiable through register_autograd
# ------------------------------------------------------------------------------------------------


def _fused_impl(X, W, y, b, weight, ignore_index: int, eps: float, need_dX: bool, mean: bool):
    """The loss (``X``'s dtype) and total weight (float64) of the counted rows, and the loss's
    gradients dX (empty unless ``need_dX``), dW, db (empty without bias). With ``mean`` the loss
    and the gradients are divided by the total weight (0/0: a NaN loss with zero gradients, as in
    PyTorch); else they are sums."""
    loss, total, grads = _sum_and_grads(X, W, b, y, weight, ignore_index, eps, need_dX, mean)
    return (_scalar(loss, X.dtype), _scalar(total, torch.float64),
            *(_as_tensor(g, X) for g in grads))


@torch.library.custom_op("fastsoftmax::linear_cross_entropy_fused", mutates_args=())
def _fused(
    input: Tensor, linear_weight: Tensor, target: Tensor, linear_bias: Tensor | None,
    weight: Tensor | None, ignore_index: int, label_smoothing: float, need_dX: bool, mean: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`_fused_impl` as an operator (the path under torch.compile)."""
    return _fused_impl(input, linear_weight, target, linear_bias, weight, ignore_index,
                       label_smoothing, need_dX, mean)


@_fused.register_fake
def _fused_fake(input, linear_weight, target, linear_bias, weight, ignore_index, label_smoothing,
                need_dX, mean):
    dX = input.new_empty(input.shape if need_dX else (0,))
    db = input.new_empty(linear_bias.shape if linear_bias is not None else (0,))
    return (input.new_empty(()), input.new_empty((), dtype=torch.float64), dX,
            input.new_empty(linear_weight.shape), db)


def _scaled_grads(grad_loss, dX, dW, db, need_dX: bool, has_bias: bool) -> tuple:
    """The saved gradients times the incoming one (the gradients were computed with the loss)."""
    if not torch.compiler.is_compiling() and grad_loss.item() == 1.0:
        return dX if need_dX else None, dW, db if has_bias else None  # loss.backward(): no copy
    g = grad_loss.to(dW.dtype)
    return g * dX if need_dX else None, g * dW, g * db if has_bias else None


def _fused_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*output[2:])
    ctx.need_dX = inputs[7]
    ctx.has_bias = inputs[3] is not None


def _fused_backward(ctx, grad_loss, *unused):
    dX, dW, db = _scaled_grads(grad_loss, *ctx.saved_tensors, ctx.need_dX, ctx.has_bias)
    return dX, dW, None, db, None, None, None, None, None


_fused.register_autograd(_fused_backward, setup_context=_fused_setup)


def _fused_eager(X, W, y, b, weight, ignore_index: int, eps: float, mean: bool):
    """(loss, total) of :func:`_fused_impl` in eager mode, without the operator dispatch (tens of
    microseconds, as much as the whole kernel on a 256 x 784 x 10 batch): the computation runs
    first, then :class:`_FusedFunction` only ties the loss to X, W and b."""
    need_dX = X.requires_grad
    loss, total, (dX, dW, db) = _sum_and_grads(X, W, b, y, weight, ignore_index, eps, need_dX,
                                               mean)
    grads = tuple(None if g is None else _as_tensor(g, X) for g in (dX, dW, db))
    loss = _FusedFunction.apply(X, W, b, (_scalar(loss, X.dtype), *grads))
    return loss, _scalar(total, torch.float64)


class _FusedFunction(torch.autograd.Function):
    """The loss, computed with its gradients beforehand (:func:`_fused_eager`), as a function of
    X, W and b. Few arguments and one output: each costs time at every call and its backward."""

    @staticmethod
    def forward(ctx, X, W, b, computed):
        loss, dX, dW, db = computed
        ctx.save_for_backward(dX, dW, db)
        ctx.need_dX, ctx.has_bias = dX is not None, db is not None
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        dX, dW, db = _scaled_grads(grad_loss, *ctx.saved_tensors, ctx.need_dX, ctx.has_bias)
        return dX, dW, db, None


def _rows_impl(X, W, y, b, weight, ignore_index: int, eps: float):
    """Per-row losses (float64, 0 for ignored rows) and the total weight: loss only."""
    codes, rows, valid = _codes_and_weights(y, weight, ignore_index, W.shape[0])
    total = float(X.shape[0]) if rows is None else float(rows.sum())
    if weight is not None and eps > 0:
        losses, _ = _class_smoothing_tiles(X, W, b, codes, valid, weight, eps, None, False, False)
    else:
        with _threads(X.shape[0] * X.shape[1] * W.shape[0]):
            losses = _losses_fastsoftmax(X, W, b, codes, rows, eps)
    return losses, _scalar(total, torch.float64)


@torch.library.custom_op("fastsoftmax::linear_cross_entropy_rows", mutates_args=())
def _rows(
    input: Tensor, linear_weight: Tensor, target: Tensor, linear_bias: Tensor | None,
    weight: Tensor | None, ignore_index: int, label_smoothing: float,
) -> tuple[Tensor, Tensor]:
    """:func:`_rows_impl` as an operator, differentiable (``reduction="none"``)."""
    return _rows_impl(input, linear_weight, target, linear_bias, weight, ignore_index,
                      label_smoothing)


@_rows.register_fake
def _rows_fake(input, linear_weight, target, linear_bias, weight, ignore_index, label_smoothing):
    return (input.new_empty(input.shape[:1], dtype=torch.float64),
            input.new_empty((), dtype=torch.float64))


@torch.library.custom_op("fastsoftmax::linear_cross_entropy_rows_backward", mutates_args=())
def _rows_backward_op(
    grad: Tensor, input: Tensor, linear_weight: Tensor, target: Tensor,
    linear_bias: Tensor | None, weight: Tensor | None, ignore_index: int,
    label_smoothing: float, need_dX: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``sum_i grad_i * loss_i``: dX (empty unless ``need_dX``), dW, db (empty
    without bias)."""
    _, _, grads = _sum_and_grads(input, linear_weight, linear_bias, target, weight, ignore_index,
                                 label_smoothing, need_dX, row_scale=grad)
    return tuple(_as_tensor(g, input) for g in grads)


@_rows_backward_op.register_fake
def _rows_backward_fake(grad, input, linear_weight, target, linear_bias, weight, ignore_index,
                        label_smoothing, need_dX):
    dX = input.new_empty(input.shape if need_dX else (0,))
    db = input.new_empty(linear_bias.shape if linear_bias is not None else (0,))
    return dX, input.new_empty(linear_weight.shape), db


def _rows_setup(ctx, inputs, output) -> None:
    input, linear_weight, target, linear_bias, weight, ignore_index, label_smoothing = inputs
    ctx.save_for_backward(input, linear_weight, target, linear_bias, weight)
    ctx.options = (ignore_index, label_smoothing)


def _rows_backward(ctx, grad_losses, unused):
    input, linear_weight, target, linear_bias, weight = ctx.saved_tensors
    need_dX = ctx.needs_input_grad[0]
    dX, dW, db = _rows_backward_op(grad_losses, input, linear_weight, target, linear_bias, weight,
                                   *ctx.options, need_dX)
    return (dX if need_dX else None, dW, None, db if linear_bias is not None else None,
            None, None, None)


_rows.register_autograd(_rows_backward, setup_context=_rows_setup)


# ------------------------------------------------------------------------------------------------
# The public functions
# ------------------------------------------------------------------------------------------------


def _check_tensors(input, linear_weight, target, linear_bias, weight):
    """Types, devices, dtypes and shapes, as PyTorch checks them but with named errors. Returns
    the batch shape of ``input`` and the out_features of ``linear_weight``."""
    named = (("input", input), ("linear_weight", linear_weight), ("target", target),
             ("linear_bias", linear_bias), ("weight", weight))
    for name, t in named:
        if t is None and name in ("linear_bias", "weight"):
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_cpu:
            raise ValueError(
                f"{name} is on device {t.device}: fastsoftmax computes on the CPU only; use "
                "torch.nn.functional.linear_cross_entropy for other devices"
            )
    for name, t in (("input", input), ("linear_weight", linear_weight), ("weight", weight)):
        if t is not None and t.dtype not in _FLOATS:
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    for name, t in (("linear_weight", linear_weight), ("linear_bias", linear_bias)):
        if t is not None and t.dtype != input.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but input has dtype {input.dtype}")
    if input.dim() < 1:
        raise ValueError("input must have at least 1 dimension (in_features)")
    if linear_weight.dim() < 2:
        raise ValueError(f"linear_weight must be at least 2-D, got shape {tuple(linear_weight.shape)}")
    if linear_weight.shape[-1] != input.shape[-1]:
        raise ValueError(f"linear_weight has {linear_weight.shape[-1]} in_features but input has "
                         f"{input.shape[-1]}")
    C, out = linear_weight.shape[0], tuple(linear_weight.shape[1:-1])
    if C == 0:
        raise ValueError("linear_weight must have at least one class (first dimension)")
    if linear_bias is not None and tuple(linear_bias.shape) != (C, *out):
        raise ValueError(f"linear_bias must have shape {(C, *out)}, got {tuple(linear_bias.shape)}")
    if weight is not None and tuple(weight.shape) != (C,):
        raise ValueError(f"weight must have shape {(C,)}, got {tuple(weight.shape)}")
    batch = tuple(input.shape[:-1])
    _check_target(target, batch, C, out)
    return batch, out


def _check_target(target: Tensor, batch: tuple, n_classes: int, out: tuple) -> None:
    if target.dtype.is_floating_point and tuple(target.shape) in ((*batch, n_classes, *out),):
        raise ValueError("target holds class probabilities, which fastsoftmax does not support: "
                         "give class indices (an integer tensor)")
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    if tuple(target.shape) != (*batch, *out):
        raise ValueError(f"target must have shape {(*batch, *out)} (input's batch dimensions"
                         f"{' and out_features' if out else ''}), got {tuple(target.shape)}")


def _check_options(reduction, ignore_index, label_smoothing) -> tuple[int, float]:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if ignore_index is None:
        ignore_index = -100  # PyTorch's default for class indices
    elif isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an integer or None, got {type(ignore_index).__name__}")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
        raise TypeError(f"label_smoothing must be a real number, got "
                        f"{type(label_smoothing).__name__}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    return int(ignore_index), float(label_smoothing)


def _one_problem(X, W, y, b, weight, reduction, ignore_index, eps, mean):
    """For 2-D X and 1-D y: per-row losses (float64) for "none", else (loss, total weight), the
    loss a mean when ``mean`` and a sum otherwise."""
    compiling = torch.compiler.is_compiling()  # eager calls skip the operator dispatch
    if reduction == "none":
        return _rows(X, W, y, b, weight, ignore_index, eps)[0]
    if torch.is_grad_enabled() and (
        X.requires_grad or W.requires_grad or (b is not None and b.requires_grad)
    ):
        if compiling:
            return _fused(X, W, y, b, weight, ignore_index, eps, X.requires_grad, mean)[:2]
        return _fused_eager(X, W, y, b, weight, ignore_index, eps, mean)
    losses, total = (_rows if compiling else _rows_impl)(X, W, y, b, weight, ignore_index, eps)
    return (losses.sum() / total if mean else losses.sum()), total


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    options=None,
) -> Tensor:
    """``cross_entropy(linear(input, linear_weight, linear_bias), target, ...)`` without the logits.

    Same arguments and results as ``torch.nn.functional.linear_cross_entropy`` in PyTorch 2.13;
    ``options`` (PyTorch's chunking settings) is accepted for compatibility and ignored: the
    computation is always chunked. Differentiable with respect to
    ``input``, ``linear_weight`` and ``linear_bias`` (first-order gradients).

    Parameters
    ----------
    input : Tensor of shape (in_features,) or (\\*batch, in_features)
        Float16, bfloat16 (both computed in float32), float32 or float64, on the CPU. Leading batch
        dimensions are flattened (PyTorch 2.13 accepts at most one).
    linear_weight : Tensor of shape (C, in_features) or (C, d_1, ..., d_K, in_features)
        Same dtype as ``input``; the second form is PyTorch's K-dimensional loss.
    target : integer Tensor of shape (\\*batch) or (\\*batch, d_1, ..., d_K)
        Class indices in [0, C) or ``ignore_index``. Class probabilities are not supported.
    linear_bias : Tensor of shape (C,) or (C, d_1, ..., d_K), optional
    weight : Tensor of shape (C,), optional
        Class weights; "mean" divides by the summed weights of the counted targets.
    reduction : {"mean", "sum", "none"}
    ignore_index : int, optional
        Target value that counts for nothing; None means -100.
    label_smoothing : float in [0, 1]

    Returns
    -------
    Tensor in ``input``'s dtype: a scalar, or the per-element losses of shape
    (\\*batch, d_1, ..., d_K) for ``reduction="none"``.
    """
    batch, out = _check_tensors(input, linear_weight, target, linear_bias, weight)
    ignore_index, eps = _check_options(reduction, ignore_index, label_smoothing)
    compute = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
    d, C, P = input.shape[-1], linear_weight.shape[0], math.prod(out)
    X, W, b = input, linear_weight, linear_bias
    if compute != input.dtype:  # a no-op .to() still costs a microsecond a call
        X, W, b = X.to(compute), W.to(compute), None if b is None else b.to(compute)
    X = X if X.dim() == 2 else X.reshape(-1, d)
    if P == 1 and not out:
        result = _one_problem(X, W, target if target.dim() == 1 else target.reshape(-1), b,
                              weight, reduction, ignore_index, eps, reduction == "mean")
        result = result.reshape(batch) if reduction == "none" else result[0]
        return result if result.dtype == input.dtype else result.to(input.dtype)
    # The K-dimensional loss is P problems, one per output position, sharing input.
    y, W = target.reshape(X.shape[0], P), W.reshape(C, P, d)
    b = None if b is None else b.reshape(C, P)
    parts = [_one_problem(X, W[:, j], y[:, j], None if b is None else b[:, j], weight, reduction,
                          ignore_index, eps, False) for j in range(P)]
    if reduction == "none":
        result = torch.stack(parts, dim=1).reshape(*batch, *out)
    else:
        result = sum(p[0] for p in parts)
        if reduction == "mean":
            total = sum(p[1] for p in parts)
            # 0/0 is NaN, as in PyTorch; its gradients are zero there, as PyTorch's are.
            nonzero = total != 0
            result = torch.where(nonzero, result / torch.where(nonzero, total, 1.0), math.nan)
    return result.to(input.dtype)


class LinearCrossEntropyLoss(torch.nn.LinearCrossEntropyLoss):
    """``torch.nn.LinearCrossEntropyLoss`` computed by :func:`linear_cross_entropy`.

    Same constructor (``options`` is ignored), parameters (``linear.weight``, ``linear.bias``) and
    state dict as PyTorch's module, so either loads the other's checkpoints.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        out_features: tuple[int, ...] = (),
        bias: bool = False,
        device=None,
        dtype=None,
        reduction: str = "mean",
        weight: Tensor | None = None,
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        options=None,
    ) -> None:
        # options (PyTorch's chunking settings) is accepted and ignored: always chunked here.
        super().__init__(in_features, num_classes, out_features=out_features, bias=bias,
                         device=device, dtype=dtype, reduction=reduction, weight=weight,
                         ignore_index=ignore_index, label_smoothing=label_smoothing, options=None)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        """The loss of ``input`` (\\*batch, in_features) against class indices ``target``."""
        linear_weight = self.linear.weight.reshape(
            (self.num_classes, *self.out_features, self.linear.in_features)
        )
        linear_bias = (None if self.linear.bias is None
                       else self.linear.bias.reshape((self.num_classes, *self.out_features)))
        return linear_cross_entropy(
            input, linear_weight, target, linear_bias=linear_bias, weight=self.weight,
            reduction=self.reduction, ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )
