"""Optimizers for the softmax-regression objective, built only on the functional API.

All three minimize the objective of :class:`fastsoftmax.SoftmaxRegression`,

    f(W, b) = sum_i w_i CE(x_i W^T + b, y_i) / sum_i w_i  +  alpha/2 ||W||_F^2,

which is ``F.linear_cross_entropy(..., reduction="mean")``: one fused call gives the loss and both
gradients without an N x K array.

- :func:`lbfgs`: scipy's L-BFGS-B, one fused call per function evaluation.
- :func:`sgd`: mini-batch stochastic gradient descent with a fixed learning rate, reshuffled every
  epoch (the Dive into Deep Learning recipe). Inputs are validated once per call, not per batch;
  up to 32 classes the kernel reads a batch's rows of X in place (no gathered copy), above that
  each batch is gathered (one batch x n_features copy). Beyond the epoch's permutation, nothing of
  size N is allocated.
- :func:`gd`: full-batch gradient descent with a fixed learning rate (the textbook algorithm).

Conventions: X ``(n_samples, n_features)`` float32 or float64, W ``(n_classes, n_features)`` and b
``(n_classes,)`` (or None: no intercept) of X's dtype, y integer codes ``0..n_classes-1`` of shape
``(n_samples,)``, sample_weight ``(n_samples,)`` float64 or None. The solvers update W and b in
place (lbfgs writes its result into them) and return a :class:`SolverResult`.

``callback(n_iter, W, b, loss_curve) -> bool`` is called after every iteration (lbfgs) or epoch
(sgd, gd) with the current solution; returning True stops the solver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.optimize

from fastsoftmax import functional as F
from fastsoftmax._threads import blas_limits
from fastsoftmax._validation import check_labels, check_linear, check_weights, readonly

__all__ = ["SolverResult", "gd", "lbfgs", "sgd"]

Callback = Callable[[int, np.ndarray, "np.ndarray | None", list], bool]


@dataclass
class SolverResult:
    """What a solver reports besides the solution it wrote into W and b.

    Attributes
    ----------
    n_iter : int
        Iterations (lbfgs), epochs (sgd) or gradient steps (gd) performed.
    loss_curve : list of float
        The objective per iteration or epoch (see each solver for the exact point).
    converged : bool
        The stopping criterion on ``tol`` was met.
    stopped : bool
        The callback asked to stop.
    message : str
        The optimizer's own account of why it stopped.
    """

    n_iter: int = 0
    loss_curve: list = field(default_factory=list)
    converged: bool = False
    stopped: bool = False
    message: str = ""


def _loss_grad(X, W, b, y, sample_weight, alpha, label_smoothing):
    return F.linear_cross_entropy(
        X,
        W,
        b,
        y,
        sample_weight=sample_weight,
        label_smoothing=label_smoothing,
        alpha=alpha,
        reduction="mean",
    )


class _StopRequested(Exception):
    """Raised from the L-BFGS-B callback to leave scipy's loop (works with every scipy version)."""


def lbfgs(
    X: np.ndarray,
    y: np.ndarray,
    sample_weight: np.ndarray | None,
    W: np.ndarray,
    b: np.ndarray | None,
    *,
    alpha: float,
    label_smoothing: float,
    max_iter: int,
    tol: float,
    callback: Callback | None = None,
    blas_threads: int | None = None,
) -> SolverResult:
    """Minimize with scipy's L-BFGS-B, stopping when the projected gradient's max-abs is <= tol.

    The parameters travel as one float64 vector ``[W.ravel(), b]`` (scipy works in float64); every
    evaluation converts it to X's dtype and makes one fused loss-and-gradient call. As in
    scikit-learn, ``ftol = 64 * eps`` (float64's: the loss is accumulated in float64 for both
    dtypes) also stops the run when the objective no longer decreases, and ``maxls = 50``.
    ``converged`` is False only when the iteration budget ran out. ``loss_curve[k]`` is the
    objective at the iterate after iteration k + 1. ``blas_threads`` limits scipy's own OpenBLAS
    (used by L-BFGS-B itself) during the run: its threads otherwise spin against the loss
    kernels' threads.
    """
    n_classes, n_features = W.shape
    n_coef = n_classes * n_features
    dtype = W.dtype
    x0 = np.concatenate([W.ravel(), b if b is not None else []]).astype(np.float64)
    last = {"x": None, "loss": np.nan}
    result = SolverResult()

    def unpack(x):
        W_x = x[:n_coef].reshape(n_classes, n_features).astype(dtype, copy=False)
        b_x = x[n_coef:].astype(dtype, copy=False) if b is not None else None
        return W_x, b_x

    def fun(x):
        W_x, b_x = unpack(x)
        loss, dW, db = _loss_grad(X, W_x, b_x, y, sample_weight, alpha, label_smoothing)
        grad = np.empty_like(x)
        grad[:n_coef] = dW.ravel()
        if b is not None:
            grad[n_coef:] = db
        last["x"] = x.copy()
        last["loss"] = loss
        return loss, grad

    def on_iteration(xk):
        # L-BFGS-B's last evaluation of an iteration is at the accepted point, so the cached
        # value is normally the one wanted; evaluate again only if it is not.
        if last["x"] is None or not np.array_equal(last["x"], xk):
            fun(xk)
        result.loss_curve.append(float(last["loss"]))
        result.n_iter += 1
        if callback is not None:
            W_k, b_k = unpack(xk)
            if callback(result.n_iter, W_k.copy(), None if b_k is None else b_k.copy(),
                        list(result.loss_curve)):
                last["stop_x"] = xk.copy()
                raise _StopRequested

    options = {
        "maxiter": max_iter,
        "maxfun": max(15000, 2 * max_iter),
        "maxls": 50,
        "gtol": tol,
        "ftol": 64 * float(np.finfo(np.float64).eps),
    }
    try:
        with blas_limits(blas_threads, library="scipy.libs"):
            opt = scipy.optimize.minimize(
                fun, x0, method="L-BFGS-B", jac=True, callback=on_iteration, options=options
            )
        x = opt.x
        # status 1: iteration or evaluation budget spent. status 2: the line search found no
        # decrease, i.e. the objective is flat to the precision of its evaluation (common in
        # float32 with a small tol); it is a stop at the attainable optimum, not a failure.
        result.converged = opt.status != 1
        result.message = str(opt.message)
        if opt.status == 1:
            result.message = f"reached max_iter={max_iter} ({opt.message})"
    except _StopRequested:
        x = last["stop_x"]
        result.stopped = True
        result.message = "stopped by the callback"
    W_x, b_x = unpack(x)
    W[...] = W_x
    if b is not None:
        b[...] = b_x
    return result


def _max_abs(*arrays) -> float:
    return max(float(np.max(np.abs(a))) for a in arrays if a is not None and a.size)


def gd(
    X: np.ndarray,
    y: np.ndarray,
    sample_weight: np.ndarray | None,
    W: np.ndarray,
    b: np.ndarray | None,
    *,
    alpha: float,
    label_smoothing: float,
    learning_rate: float,
    max_iter: int,
    tol: float | None,
    callback: Callback | None = None,
) -> SolverResult:
    """Full-batch gradient descent: ``W -= learning_rate * dW``, ``b -= learning_rate * db``.

    Runs ``max_iter`` steps, or stops before a step once the gradient's max-abs is <= ``tol``
    (never when tol is None). ``loss_curve[k]`` is the objective at the point step k + 1 started
    from, as the textbook loop records it.
    """
    result = SolverResult()
    for _ in range(max_iter):
        loss, dW, db = _loss_grad(X, W, b, y, sample_weight, alpha, label_smoothing)
        if tol is not None and _max_abs(dW, db) <= tol:
            result.converged = True
            result.message = f"gradient max-abs <= tol={tol}"
            break
        dW *= learning_rate
        W -= dW
        if b is not None:
            db *= learning_rate
            b -= db
        result.loss_curve.append(loss)
        result.n_iter += 1
        if callback is not None and callback(result.n_iter, W, b, list(result.loss_curve)):
            result.stopped = True
            result.message = "stopped by the callback"
            break
    else:
        result.message = f"reached max_iter={max_iter}"
    return result


def sgd(
    X: np.ndarray,
    y: np.ndarray,
    sample_weight: np.ndarray | None,
    W: np.ndarray,
    b: np.ndarray | None,
    *,
    alpha: float,
    label_smoothing: float,
    learning_rate: float,
    batch_size: int,
    max_iter: int,
    tol: float | None,
    n_iter_no_change: int,
    shuffle: bool,
    rng: np.random.RandomState,
    callback: Callback | None = None,
    n_iter_start: int = 0,
) -> SolverResult:
    """Mini-batch SGD: ``max_iter`` epochs of batches of ``batch_size``, reshuffled each epoch.

    Every batch takes one step on its own objective (the weighted mean over the batch plus the
    L2 term); batches whose weights are all zero are skipped. ``loss_curve[k]`` is the mean of
    the batch objectives of epoch k + 1, weighted by the batches' total sample weight, each taken
    before its step (the training loss a Dive into Deep Learning loop prints). With ``tol`` set,
    training stops once the epoch loss has not improved on the best one by at least ``tol`` for
    ``n_iter_no_change`` epochs in a row (scikit-learn's SGD rule). ``n_iter_start`` offsets the
    epoch numbers passed to the callback (for partial_fit).
    """
    batch_size = max(1, min(batch_size, X.shape[0]))
    return _sgd_epochs(
        X, y, sample_weight, W, b, alpha, label_smoothing, learning_rate, batch_size,
        max_iter, tol, n_iter_no_change, shuffle, rng, callback, n_iter_start,
    )


def _sgd_epochs(
    X, y, sample_weight, W, b, alpha, label_smoothing, learning_rate, batch_size,
    max_iter, tol, n_iter_no_change, shuffle, rng, callback, n_iter_start,
):
    # Validated once for all batches (read-only C-contiguous views, as the functional API makes
    # them; a copy only for non-C-contiguous X); each batch then skips validation, and for small K
    # its rows are read from X in place.
    n_samples = X.shape[0]
    # W_in, b_in: read-only views of W and b, which see the in-place updates.
    X, W_in, b_in, dtype = check_linear(X, W, b)
    for name, a in (("W", W), ("b", b)):
        if a is not None and not (a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable):
            raise ValueError(f"{name} must be a writable C-contiguous {dtype} array (updated in place)")
    y = check_labels(y, n_samples, W.shape[0])
    w, _ = check_weights(sample_weight, n_samples, "sum")
    y_buf = np.empty(batch_size, dtype=np.intp)
    w_buf = np.empty(batch_size if w.size else 0, dtype=np.float64)
    y_batch, w_batch = readonly(y_buf), readonly(w_buf)
    result = SolverResult()
    best_loss, n_bad_epochs = np.inf, 0
    for _ in range(max_iter):
        order = readonly(rng.permutation(n_samples).astype(np.intp, copy=False)) if shuffle else None
        loss_sum, weight_sum = 0.0, 0.0
        for start in range(0, n_samples, batch_size):
            stop = min(start + batch_size, n_samples)
            m = stop - start
            if order is None:
                X_b, rows = X[start:stop], F._ALL_ROWS
                y_b, w_b = y[start:stop], w[start:stop]
            else:
                X_b, rows = X, order[start:stop]
                np.take(y, rows, out=y_buf[:m])
                y_b = y_batch[:m]
                if w.size:
                    np.take(w, rows, out=w_buf[:m])
                w_b = w_batch[:m]
            batch_weight = float(m) if not w.size else float(w_b.sum())
            if batch_weight == 0.0:
                continue
            loss, dW, db = F._linear_cross_entropy_checked(
                X_b, W_in, b_in, y_b, w_b, label_smoothing, alpha, batch_weight, rows=rows
            )
            dW *= learning_rate
            W -= dW
            if b is not None:
                db *= learning_rate
                b -= db
            loss_sum += loss * batch_weight
            weight_sum += batch_weight
        epoch_loss = loss_sum / weight_sum if weight_sum > 0 else np.nan
        result.loss_curve.append(epoch_loss)
        result.n_iter += 1
        if callback is not None and callback(
            n_iter_start + result.n_iter, W, b, list(result.loss_curve)
        ):
            result.stopped = True
            result.message = "stopped by the callback"
            break
        if tol is not None:
            n_bad_epochs = n_bad_epochs + 1 if epoch_loss > best_loss - tol else 0
            best_loss = min(best_loss, epoch_loss)
            if n_bad_epochs >= n_iter_no_change:
                result.converged = True
                result.message = (
                    f"epoch loss did not improve by tol={tol} for {n_iter_no_change} epochs"
                )
                break
    else:
        result.message = f"reached max_iter={max_iter}"
    return result
