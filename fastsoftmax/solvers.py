"""Optimizers for the softmax-regression objective, built only on the functional API.

All three minimize the objective of :class:`fastsoftmax.SoftmaxRegression`,

    f(W, b) = sum_i w_i CE(x_i W^T + b, y_i) / sum_i w_i  +  alpha/2 ||W||_F^2,

which is ``F.linear_cross_entropy(..., reduction="mean")``: one fused call gives the loss and both
gradients without an N x K array.

- :func:`lbfgs`: scipy's L-BFGS-B, one fused call per function evaluation.
- :func:`sgd`: mini-batch stochastic gradient descent with a fixed learning rate, reshuffled every
  epoch (the Dive into Deep Learning recipe). Inputs are validated once per call, not per batch;
  up to ``F.SMALL_K_MAX`` classes the kernel reads a batch's rows of X in place (no gathered
  copy), above that each batch is gathered (one batch x n_features copy). Beyond the epoch's
  permutation, nothing of size N is allocated.
- :func:`gd`: full-batch gradient descent with a fixed learning rate (the textbook algorithm).
- :func:`newton_cg`: inexact Newton with a conjugate-gradient inner loop on the fused
  Hessian-vector product ``F.linear_cross_entropy_hvp``, preconditioned by the class-mean Hessian
  diagonal (:func:`feature_curvature`), and a Wolfe line search (scikit-learn's ``_newton_cg``);
  few iterations where the problem is ill-conditioned.

Conventions: X ``(n_samples, n_features)`` float32 or float64, W ``(n_classes, n_features)`` and b
``(n_classes,)`` (or None: no intercept) of X's dtype, y integer codes ``0..n_classes-1`` of shape
``(n_samples,)``, sample_weight ``(n_samples,)`` float64 or None. The solvers update W and b in
place (lbfgs writes its result into them) and return a :class:`SolverResult`.

``callback(n_iter, W, b, loss_curve) -> bool`` is called after every iteration (lbfgs) or epoch
(sgd, gd) with the current solution; returning True stops the solver.

Step sizes: the objective's gradient is Lipschitz with constant at most
``0.5 * max_i (||x_i||^2 + fit_intercept) + alpha`` (see :func:`lipschitz_bound`), so a step of
``1 / L`` never overshoots. sgd and gd stop with ``diverged=True`` once the loss rises clearly
above the starting loss (sgd: only with a step above ``2 / L``, the only steps that can raise a
batch's loss), and raise ``ValueError`` naming the learning rate and the data scale when the
iterates become non-finite, instead of returning a model that is worse than the start.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.optimize

from fastsoftmax import _kernels as _k
from fastsoftmax import _sparse
from fastsoftmax import functional as F
from fastsoftmax._threads import blas_limits
from fastsoftmax._validation import (
    CsrInput,
    L2Overflow,
    as_float,
    check_labels,
    check_linear,
    check_sparse_linear,
    check_sparse_X,
    check_weights,
    is_sparse,
    readonly,
)

__all__ = [
    "SolverResult", "auto_learning_rate", "gd", "lbfgs", "lipschitz_bound", "newton_cg", "sgd",
]

Callback = Callable[[int, np.ndarray, "np.ndarray | None", list], bool]


@dataclass
class SolverResult:
    """What a solver reports besides the solution it wrote into W and b.

    Attributes
    ----------
    n_iter : int
        Iterations (lbfgs), Newton iterations (newton_cg), epochs (sgd) or gradient steps (gd)
        performed.
    loss_curve : list of float
        The objective per iteration or epoch (see each solver for the exact point).
    converged : bool
        The stopping criterion on ``tol`` was met.
    stopped : bool
        The callback asked to stop.
    diverged : bool
        The objective rose instead of falling (sgd, gd: the loss went clearly above the starting
        loss, sgd with a step that can raise it; lbfgs: the line search found no decrease from
        the start). ``message`` says why.
    message : str
        The optimizer's own account of why it stopped.
    """

    n_iter: int = 0
    loss_curve: list = field(default_factory=list)
    converged: bool = False
    stopped: bool = False
    diverged: bool = False
    message: str = ""


# Margin of the divergence test, relative to max(starting loss, log n_classes): SGD's epoch loss
# is noisy, but an epoch 10% worse than the start (or than predicting uniform probabilities) is no
# longer noise around a decreasing path.
_DIVERGENCE_MARGIN = 0.1
# Rows whose squared norms are summed in float64 per block: bounds the temporary for float32 X.
_NORM_BLOCK = 2048


def squared_row_norms(X: np.ndarray, sample_weight: np.ndarray | None = None) -> np.ndarray:
    """``||x_i||^2`` in float64 (no float32 overflow), over rows of positive weight only."""
    if is_sparse(X):  # the squares of the stored entries only: X stays sparse
        squares = X.tocsr().astype(np.float64)  # a copy
        squares.sum_duplicates()  # (v1 + v2)^2 of an entry stored twice, not v1^2 + v2^2
        squares.data **= 2
        norms = np.asarray(squares.sum(axis=1)).ravel()
        return norms if sample_weight is None else norms[sample_weight > 0]
    norms = np.empty(X.shape[0], dtype=np.float64)
    for start in range(0, X.shape[0], _NORM_BLOCK):
        block = X[start:start + _NORM_BLOCK].astype(np.float64, copy=False)
        norms[start:start + _NORM_BLOCK] = np.einsum("ij,ij->i", block, block)
    return norms if sample_weight is None else norms[sample_weight > 0]


def lipschitz_bound(
    X: np.ndarray,
    sample_weight: np.ndarray | None,
    alpha: float,
    fit_intercept: bool,
    *,
    full_batch: bool = False,
) -> float:
    """An upper bound L on the Lipschitz constant of the objective's gradient in (W, b).

    The Hessian of the cross-entropy with respect to a row's logits is ``diag(p) - p p^T``, whose
    largest eigenvalue is at most 1/2 (label smoothing does not change it: the target enters
    linearly). Through ``z_i = W x_i + b`` a row adds ``(diag(p) - p p^T) kron x~_i x~_i^T`` with
    ``x~_i = [x_i, 1]`` (``[x_i]`` without intercept), of norm at most ``||x~_i||^2 / 2``; the
    weighted mean over rows is at most their weighted mean, and the penalty adds ``alpha``:

        L <= 0.5 * sum_i w_i ||x~_i||^2 / sum_i w_i + alpha      (full batch: gd)
        L <= 0.5 * max_i ||x~_i||^2 + alpha                       (any mini-batch: sgd)

    The second is scikit-learn's SAG rule (its binary log-loss has 1/4 where the two-row softmax
    has 1/2); only rows of positive weight count. Returns inf when the squared norms overflow.
    """
    norms = squared_row_norms(X, sample_weight)
    if norms.size == 0:
        return float(alpha)
    if full_batch:
        w = None if sample_weight is None else sample_weight[sample_weight > 0]
        typical = float(np.average(norms, weights=w))
    else:
        typical = float(norms.max())
    return 0.5 * (typical + float(fit_intercept)) + float(alpha)


def auto_learning_rate(X, sample_weight, alpha, fit_intercept, *, full_batch=False) -> float:
    """The step ``1 / L`` of :func:`lipschitz_bound`; ValueError if X's scale makes it 0."""
    with np.errstate(over="ignore"):
        L = lipschitz_bound(X, sample_weight, alpha, fit_intercept, full_batch=full_batch)
    if not (np.isfinite(L) and L > 0):
        raise ValueError(
            f"learning_rate='auto' is undefined: the squared row norms of X overflow float64 "
            f"(max |X| = {float(np.max(np.abs(X))):.3g}) or are all zero with alpha=0; "
            "standardize X or pass a float learning_rate"
        )
    return 1.0 / L


def _divergence_message(X, sample_weight, learning_rate, fit_intercept, alpha, what) -> str:
    with np.errstate(over="ignore"):
        norms = squared_row_norms(X, sample_weight)
        max_norm = float(norms.max()) if norms.size else 0.0
        L = 0.5 * (max_norm + float(fit_intercept)) + alpha
    return (
        f"{what}: learning_rate={learning_rate:.3g} is too large for the data scale (max squared "
        f"row norm of X = {max_norm:.3g}; steps up to 1/L = {1 / L:.3g} are stable, "
        "learning_rate='auto' takes one); standardize X or lower learning_rate"
    )


def _step_cannot_diverge(X, sample_weight, learning_rate, alpha, fit_intercept, *,
                         full_batch: bool) -> bool:
    """True when no step of ``learning_rate`` can raise the objective of the batch it is taken on.

    A batch's objective has a gradient Lipschitz with constant at most L
    (:func:`lipschitz_bound`: any mini-batch, or all the rows with ``full_batch``), and a
    gradient step of at most ``2 / L`` never raises an L-smooth function (the descent lemma).
    An epoch loss above the reference then comes from the data, not from the step: a chunk that
    the model fits worse than the earlier ones (partial_fit on mislabeled rows), batches of one
    class each without shuffling. The advice of a divergence report, a smaller learning_rate,
    would be wrong there, so there is none.
    """
    with np.errstate(over="ignore"):
        L = lipschitz_bound(X, sample_weight, alpha, fit_intercept, full_batch=full_batch)
    return bool(learning_rate * L <= 2.0)


def _finite(W, b) -> bool:
    return bool(np.isfinite(W).all() and (b is None or np.isfinite(b).all()))


def _rose_above(loss: float, reference: float, n_classes: int) -> bool:
    """True when ``loss`` is clearly above ``reference`` (see _DIVERGENCE_MARGIN)."""
    return loss > reference + _DIVERGENCE_MARGIN * max(reference, np.log(n_classes))


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
    objective: _PackedObjective | None = None,
) -> SolverResult:
    """Minimize with scipy's L-BFGS-B, stopping when the projected gradient's max-abs is <= tol.

    The parameters travel as one float64 vector ``[W.ravel(), b]`` (scipy works in float64); every
    evaluation converts it to X's dtype and makes one fused loss-and-gradient call. As in
    scikit-learn, ``ftol = 64 * eps`` (float64's: the loss is accumulated in float64 for both
    dtypes) also stops the run when the objective no longer decreases, and ``maxls = 50``.
    ``converged`` is False when the iteration budget ran out (``max_iter=0`` returns the start
    untouched) and when the line search failed without lowering the objective from its starting
    value (``diverged``: typically data of extreme scale). ``loss_curve[k]`` is the objective at
    the iterate after iteration k + 1. ``blas_threads`` limits scipy's own OpenBLAS (used by
    L-BFGS-B itself) during the run: its threads otherwise spin against the loss kernels' threads.
    ``objective``, when given, replaces the in-memory one (same interface as ``_PackedObjective``;
    ``fastsoftmax.dask`` evaluates on a cluster): y and sample_weight are then unused, and X only
    serves the message of a diverged run.
    """
    result = SolverResult()
    if max_iter == 0:
        result.message = "reached max_iter=0: the starting point is returned"
        return result
    if objective is None:
        objective = _PackedObjective(X, y, sample_weight, W, b, alpha, label_smoothing)

    def on_iteration(intermediate_result):
        # scipy's value at the accepted point (its last evaluation), by this parameter's name
        xk = intermediate_result.x
        result.loss_curve.append(float(intermediate_result.fun))
        result.n_iter += 1
        if objective.report(callback, result, xk):
            objective.stop_x = xk.copy()
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
                objective, objective.x0, method="L-BFGS-B", jac=True, callback=on_iteration,
                options=options,
            )
        x = opt.x
        _lbfgs_outcome(result, opt, max_iter, objective.first_loss, X)
    except _StopRequested:
        x = objective.stop_x
        result.stopped = True
        result.message = "stopped by the callback"
    objective.write(x, W, b)
    return result


class _Packing:
    """W and b as one float64 vector ``[W.ravel(), b]`` (scipy's optimizer and the Newton iterate
    work in float64), and back in the data dtype. Given ``features``, the vector holds only those
    columns of W (the features the fit moves, `_drop_unused_features`): the others stay zero."""

    def __init__(self, W, b, dtype, features: np.ndarray | None = None):
        self.dtype, self.has_bias = np.dtype(dtype), b is not None
        self.full_shape, self.features = W.shape, features
        self.shape = W.shape if features is None else (W.shape[0], features.size)
        self.n_coef = self.shape[0] * self.shape[1]

    @staticmethod
    def pack(W, b) -> np.ndarray:
        return np.concatenate([W.ravel(), b if b is not None else []]).astype(np.float64)

    def start(self, W, b) -> np.ndarray:
        """The vector of the full-size starting point (W, b)."""
        return self.pack(W if self.features is None else W[:, self.features], b)

    def unpack(self, x):
        """(W, b) of the vector x, read-only in the data dtype (b None without intercept); W of
        ``self.shape``."""
        W_x = as_float("W", x[: self.n_coef].reshape(self.shape), self.dtype)
        b_x = as_float("b", x[self.n_coef:], self.dtype) if self.has_bias else None
        return W_x, b_x

    def write(self, x, W, b) -> None:
        """Store the point x into the full-size W and b, in place (the columns left out of the
        vector were zero at the start and stay so)."""
        W_x, b_x = self.unpack(x)
        self._scatter(W_x, W)
        if b is not None:
            b[...] = b_x

    def _scatter(self, W_x, W) -> None:
        """W (full size) := W_x in the vector's columns (all of them when none were dropped)."""
        if self.features is None:
            W[...] = W_x
        else:
            W[:, self.features] = W_x

    def report(self, callback, result: SolverResult, x) -> bool:
        """Call ``callback`` (if any) with copies of the iterate x; True when it asks to stop."""
        if callback is None:
            return False
        W_x, b_x = self.unpack(x)
        W_full = np.zeros(self.full_shape, W_x.dtype)
        self._scatter(W_x, W_full)
        return bool(callback(result.n_iter, W_full, None if b_x is None else b_x.copy(),
                             list(result.loss_curve)))


# The float64 vectors of the parameters each solver holds: L-BFGS-B's history of 2 * maxcor (scipy's
# default maxcor = 10, which lbfgs keeps) pairs, and Newton-CG's iterate, gradient, direction,
# preconditioner and CG's residual, step and product.
_LBFGS_VECTORS = 20
_NEWTON_VECTORS = 6
# Stored entries per chunk when scanning or remapping X's column indices: numpy converts an index
# array to intp, so a whole RCV1-sized indices array would cost a transient copy of 8 bytes each.
_INDEX_CHUNK = 1 << 20


def _drop_unused_features(X: CsrInput, W, n_vectors: int):
    """(X, columns): X restricted to the features the fit moves, numbered 0.. in order, and their
    columns of W; (X, None) when the problem is left whole.

    A feature with no stored entry in X does not change the loss, so its gradient is alpha * W[:, j]:
    zero at every iterate when it starts at zero (lbfgs's and newton-cg's steps are combinations of
    gradients and Hessian products, zero there), and its optimum is zero. Leaving such features out
    of the parameter vector gives the same iterates in the others on a smaller problem: L-BFGS-B's
    cost per iteration is about 2 * maxcor passes over the vector, and with hashed text features
    (2**18 to 2**20 columns, most of them empty in a corpus of a few thousand documents) those
    passes are most of a fit. A feature that starts non-zero (warm start) stays in. The remapped
    column indices are a copy of X's indices, made only when the solver's `n_vectors` vectors
    shrink by at least as many bytes."""
    n, d = X.shape
    used = np.any(W != 0, axis=0)
    for start in range(0, X.indices.shape[0], _INDEX_CHUNK):
        used[X.indices[start:start + _INDEX_CHUNK]] = True
    n_used = int(np.count_nonzero(used))
    saved = n_vectors * 8 * W.shape[0] * (d - n_used)
    if n_used in (0, d) or saved < X.indices.nbytes:
        return X, None
    columns = np.flatnonzero(used)
    position = np.zeros(d, X.indices.dtype)
    position[columns] = np.arange(n_used, dtype=X.indices.dtype)
    indices = np.empty_like(X.indices)
    for start in range(0, X.indices.shape[0], _INDEX_CHUNK):
        stop = start + _INDEX_CHUNK
        np.take(position, X.indices[start:stop], out=indices[start:stop])
    return CsrInput(X.indptr, readonly(indices), X.data, (n, n_used)), columns


class _PackedObjective(_Packing):
    """The objective as scipy sees it: a function of one float64 vector ``[W.ravel(), b]`` returning
    (loss, gradient), one fused call per evaluation in X's dtype. Remembers the first loss (scipy
    evaluates x0 first)."""

    def __init__(self, X, y, sample_weight, W, b, alpha, label_smoothing):
        self.data = (X, y, sample_weight, alpha, label_smoothing)
        self.sparse, dtype, columns = None, W.dtype, None
        if is_sparse(X):  # validated once: per evaluation, the checks scanned X's indices
            Xc, _, _, dtype = check_sparse_linear(X, W, b)
            Xc, columns = _drop_unused_features(Xc, W, _LBFGS_VECTORS)
            w, denom = check_weights(sample_weight, X.shape[0], "mean")
            self.sparse = (Xc, check_labels(y, X.shape[0], W.shape[0]), w, denom)
        super().__init__(W, b, dtype, columns)
        self.x0 = self.start(W, b)
        self.first_loss, self.stop_x = None, None

    def __call__(self, x):
        X, y, sample_weight, alpha, label_smoothing = self.data
        W_x, b_x = self.unpack(x)
        grad = np.empty_like(x)
        if self.sparse is None:
            loss, dW, db = _loss_grad(X, W_x, b_x, y, sample_weight, alpha, label_smoothing)
            grad[: self.n_coef] = dW.ravel()
        else:
            loss, db = self._sparse_loss_grad(W_x, b_x, grad)
        if self.has_bias:
            grad[self.n_coef :] = db
        if self.first_loss is None:
            self.first_loss = loss
        return loss, grad

    def _sparse_loss_grad(self, W_x, b_x, grad):
        """The checked sparse call, dW into ``grad[:n_coef]`` (in float64 written there directly);
        returns (loss, db)."""
        X, y, w, denom = self.sparse
        alpha, label_smoothing = self.data[3:]
        out = grad[: self.n_coef].reshape(self.shape) if self.dtype == np.float64 else None
        loss, dW, db = _sparse.linear_cross_entropy_checked(
            X, W_x, b_x, y, w, label_smoothing, alpha, denom, dW=out
        )
        if out is None:
            grad[: self.n_coef] = dW.ravel()
        return loss, db


def _lbfgs_outcome(result: SolverResult, opt, max_iter: int, first_loss: float, X) -> None:
    """Fill ``result`` from scipy's status: converged, out of budget, or no decrease at all."""
    result.message = str(opt.message)
    if opt.status == 1:
        result.message = f"reached max_iter={max_iter} ({opt.message})"
    elif opt.status == 2 and (result.n_iter == 0 or not float(opt.fun) < first_loss):
        # The line search failed before any decrease: with a gradient as large as data of
        # extreme scale makes it, every trial step overshoots by orders of magnitude and the
        # backtracking runs out (issue 10: iris * 1e60 stopped at the all-zero model silently).
        result.diverged = True
        scipy_says = str(opt.message).rstrip(": ")
        result.message = (
            f"the objective did not decrease from its starting value {first_loss:.6g} "
            f"(L-BFGS-B: {scipy_says}, {result.n_iter} iterations): the line search "
            "found no step that lowers it, which happens when the data's scale is extreme "
            f"(max |X| = {float(np.max(np.abs(X))):.3g}); standardize X"
        )
    else:
        # status 2 after progress: the line search found no further decrease, i.e. the objective
        # is flat to the precision of its evaluation (common in float32 with a small tol); it is
        # a stop at the attainable optimum, not a failure.
        result.converged = True


def _max_abs(*arrays) -> float:
    return max(float(np.max(np.abs(a))) for a in arrays if a is not None and a.size)


def _step(W, dW, b, db, learning_rate) -> None:
    """``W -= learning_rate * dW`` (and b) in place. Callers silence numpy's overflow warnings
    (``_quiet_overflow``) and check the weights themselves, to raise an error naming the cause."""
    dW *= learning_rate
    W -= dW
    if b is not None:
        db *= learning_rate
        b -= db


def _quiet_overflow():
    return np.errstate(over="ignore", invalid="ignore")


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
    from, as the textbook loop records it. Stops with ``diverged=True`` when the objective rises
    clearly above its starting value (a step of at most ``2 / L`` never raises it), and raises
    ValueError when a step overflows the weights.
    """
    result = SolverResult()
    for _ in range(max_iter):
        try:
            loss, dW, db = _loss_grad(X, W, b, y, sample_weight, alpha, label_smoothing)
        except L2Overflow:  # alpha * W beyond the dtype: the steps overflowed the weights
            loss, dW, db = np.inf, None, None
        if dW is not None and tol is not None and _max_abs(dW, db) <= tol:
            result.converged = True
            result.message = f"gradient max-abs <= tol={tol}"
            break
        if not np.isfinite(loss):
            raise ValueError(_divergence_message(
                X, sample_weight, learning_rate, b is not None, alpha,
                f"gradient descent overflowed the weights or the objective by step "
                f"{result.n_iter}",
            ))
        if result.loss_curve and _rose_above(loss, result.loss_curve[0], W.shape[0]):
            result.diverged = True
            result.message = _divergence_message(
                X, sample_weight, learning_rate, b is not None, alpha,
                f"the objective rose from {result.loss_curve[0]:.4g} to {loss:.4g} in "
                f"{result.n_iter} step(s)",
            )
            break
        with _quiet_overflow():
            _step(W, dW, b, db, learning_rate)
        if not _finite(W, b):
            raise ValueError(_divergence_message(
                X, sample_weight, learning_rate, b is not None, alpha,
                f"gradient descent overflowed the weights at step {result.n_iter + 1}",
            ))
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
    initial_loss: float | None = None,
    reference: str | None = None,
) -> SolverResult:
    """Mini-batch SGD: ``max_iter`` epochs of batches of ``batch_size``, reshuffled each epoch.

    Every batch takes one step on its own objective (the weighted mean over the batch plus the
    L2 term); batches whose weights are all zero are skipped. ``loss_curve[k]`` is the mean of
    the batch objectives of epoch k + 1, weighted by the batches' total sample weight, each taken
    before its step (the training loss a Dive into Deep Learning loop prints). With ``tol`` set,
    training stops once the epoch loss has not improved on the best one by at least ``tol`` for
    ``n_iter_no_change`` epochs in a row (scikit-learn's SGD rule). ``n_iter_start`` offsets the
    epoch numbers passed to the callback (for partial_fit).

    Divergence: training stops with ``diverged=True`` once an epoch loss rises clearly above
    ``initial_loss``, the objective at the start (``log(n_classes)`` from all-zero weights;
    computed with one pass when None and the start is not zero), unless ``learning_rate`` is too
    small for any step to raise the objective of its batch (:func:`_step_cannot_diverge`: the
    rise is then the data's, as on a chunk that the model fits badly). It raises ValueError when
    a step overflows the weights. ``reference`` names what ``initial_loss`` is in the message,
    when it is not the loss at the start (partial_fit's later calls).
    """
    batch_size = max(1, min(batch_size, X.shape[0]))
    data = _SgdData(X, y, sample_weight, W, b, batch_size)
    if initial_loss is None:
        initial_loss = _starting_loss(data, W, b, alpha, label_smoothing)
    result = SolverResult()
    best_loss, n_bad_epochs = np.inf, 0
    stable_step = None  # computed when an epoch loss first rises (a pass over X's rows)
    for _ in range(max_iter):
        with _quiet_overflow():  # once per epoch, not per batch
            epoch_loss = _sgd_epoch(
                data, W, b, alpha, label_smoothing, learning_rate, shuffle, rng
            )
        if epoch_loss is None or not (np.isfinite(epoch_loss) and _finite(W, b)):
            raise ValueError(_divergence_message(
                X, sample_weight, learning_rate, b is not None, alpha,
                f"SGD overflowed the weights or the objective in epoch "
                f"{n_iter_start + result.n_iter + 1}",
            ))
        result.loss_curve.append(epoch_loss)
        result.n_iter += 1
        if callback is not None and callback(
            n_iter_start + result.n_iter, W, b, list(result.loss_curve)
        ):
            result.stopped = True
            result.message = "stopped by the callback"
            break
        if _rose_above(epoch_loss, initial_loss, W.shape[0]):
            if stable_step is None:
                stable_step = _step_cannot_diverge(
                    X, sample_weight, learning_rate, alpha, b is not None,
                    full_batch=batch_size >= data.n_samples,
                )
            if not stable_step:
                epoch = n_iter_start + result.n_iter
                rise = (
                    f"the epoch loss rose from {initial_loss:.4g} at the start to "
                    f"{epoch_loss:.4g} in epoch {epoch}" if reference is None else
                    f"the epoch loss {epoch_loss:.4g} of epoch {epoch} is clearly above "
                    f"{initial_loss:.4g} = {reference}"
                )
                result.diverged = True
                result.message = _divergence_message(
                    X, sample_weight, learning_rate, b is not None, alpha, rise
                )
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


class _SgdData:
    """X, y, weights validated once for all batches, and the batch buffers.

    Read-only C-contiguous views, as the functional API makes them (a copy only for a
    non-C-contiguous X); each batch then skips validation, and for small K its rows are read
    from X in place. ``W_in``, ``b_in``: read-only views of W and b, which see the in-place updates.
    """

    def __init__(self, X, y, sample_weight, W, b, batch_size):
        self.n_samples = X.shape[0]
        if is_sparse(X):  # kept as a CSR matrix whose row batches are checked one by one
            _, self.W_in, self.b_in, dtype = check_sparse_linear(X, W, b)
            self.X = X.tocsr().astype(dtype, copy=False)
        else:
            self.X, self.W_in, self.b_in, dtype = check_linear(X, W, b)
        for name, a in (("W", W), ("b", b)):
            if a is not None and not (
                a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
            ):
                raise ValueError(
                    f"{name} must be a writable C-contiguous {dtype} array (updated in place)"
                )
        self.y = check_labels(y, self.n_samples, W.shape[0])
        self.w, _ = check_weights(sample_weight, self.n_samples, "sum")
        self.total_weight = float(self.w.sum()) if self.w.size else float(self.n_samples)
        self.batch_size = batch_size
        self.y_buf = np.empty(batch_size, dtype=np.intp)
        self.w_buf = np.empty(batch_size if self.w.size else 0, dtype=np.float64)
        self.y_batch, self.w_batch = readonly(self.y_buf), readonly(self.w_buf)


def _starting_loss(data: _SgdData, W, b, alpha, label_smoothing) -> float:
    """The objective at the start: log(n_classes) from zero weights, else one full pass."""
    if not (W.any() or (b is not None and b.any())):
        return float(np.log(W.shape[0]))
    loss, _, _ = _batch_loss_grad(
        data, data.X, F._ALL_ROWS, data.y, data.w, label_smoothing, alpha, data.total_weight
    )
    return loss


def _batch_loss_grad(data: _SgdData, X_b, rows, y_b, w_b, label_smoothing, alpha, denom):
    """The checked linear_cross_entropy of a batch: rows `rows` of X_b (all rows when empty).
    Sparse X: the batch's rows are sliced out (a CSR matrix of the batch only) and checked."""
    if is_sparse(X_b):
        if rows.shape[0]:
            X_b = X_b[rows]
        return _sparse.linear_cross_entropy_checked(
            check_sparse_X(X_b, data.W_in.dtype), data.W_in, data.b_in, y_b, w_b,
            label_smoothing, alpha, denom,
        )
    return F._linear_cross_entropy_checked(
        X_b, data.W_in, data.b_in, y_b, w_b, label_smoothing, alpha, denom, rows=rows
    )


def _sgd_epoch(data: _SgdData, W, b, alpha, label_smoothing, learning_rate, shuffle, rng):
    """One epoch of steps; the weighted mean batch loss, or None when the weights overflowed."""
    n_samples, batch_size, w = data.n_samples, data.batch_size, data.w
    order = readonly(rng.permutation(n_samples).astype(np.intp, copy=False)) if shuffle else None
    loss_sum, weight_sum = 0.0, 0.0
    for start in range(0, n_samples, batch_size):
        stop = min(start + batch_size, n_samples)
        m = stop - start
        if order is None:
            X_b, rows = data.X[start:stop], F._ALL_ROWS
            y_b, w_b = data.y[start:stop], w[start:stop]
        else:
            X_b, rows = data.X, order[start:stop]
            np.take(data.y, rows, out=data.y_buf[:m])
            y_b = data.y_batch[:m]
            if w.size:
                np.take(w, rows, out=data.w_buf[:m])
            w_b = data.w_batch[:m]
        batch_weight = float(m) if not w.size else float(w_b.sum())
        if batch_weight == 0.0:
            continue
        try:
            loss, dW, db = _batch_loss_grad(
                data, X_b, rows, y_b, w_b, label_smoothing, alpha, batch_weight
            )
        except ValueError as exc:
            if _finite(W, b) and not isinstance(exc, L2Overflow):
                raise
            return None  # the previous step overflowed W: the logits (or alpha W) are not representable
        _step(W, dW, b, db, learning_rate)
        loss_sum += loss * batch_weight
        weight_sum += batch_weight
    return loss_sum / weight_sum if weight_sum > 0 else np.nan


# ------------------------------------------------------------------------------------------------
# Newton-CG
# ------------------------------------------------------------------------------------------------


class _NewtonProblem(_Packing):
    """The objective, its gradient and its Hessian-vector product on a float64 parameter vector
    ``[W.ravel(), b]``, on data validated once (read-only C-contiguous X, or sparse X as its
    checked CSR arrays; intp labels, float64 weights and their sum). Each call converts the
    vector to X's dtype and makes one fused call; the last loss-and-gradient evaluation is cached
    by point (the line search asks for the value and the gradient separately)."""

    def __init__(self, X, y, sample_weight, W, b, alpha, label_smoothing):
        columns = None
        if is_sparse(X):  # a CsrInput, through the CSR kernels
            self.X, _, _, self.dtype = check_sparse_linear(X, W, b)
            self.X, columns = _drop_unused_features(self.X, W, _NEWTON_VECTORS)
            self._loss_grad, self._hvp = (_sparse.linear_cross_entropy_checked,
                                          _sparse.linear_hvp_checked)
        else:
            self.X, _, _, self.dtype = check_linear(X, W, b)
            self._loss_grad, self._hvp = F._linear_cross_entropy_checked, F._linear_hvp_checked
        super().__init__(W, b, self.dtype, columns)
        self.y = check_labels(y, X.shape[0], W.shape[0])
        self.w, self.denom = check_weights(sample_weight, X.shape[0], "mean")
        self.alpha, self.eps = alpha, label_smoothing
        self._cache_x, self._cache = None, None
        self.n_evaluations = 0

    def loss_grad(self, x):
        if self._cache_x is None or not np.array_equal(self._cache_x, x):
            W_x, b_x = self.unpack(x)
            loss, dW, db = self._loss_grad(
                self.X, W_x, b_x, self.y, self.w, self.eps, self.alpha, self.denom
            )
            grad = self.pack(dW, db)
            self._cache_x, self._cache = x.copy(), (loss, grad)
            self.n_evaluations += 1
        return self._cache

    def hessp(self, x):
        """The Hessian-vector product at x, as a function of the direction."""
        W_x, b_x = self.unpack(x)

        def product(v):
            S, s_b = self.unpack(v)
            return self.pack(*self._hvp(self.X, W_x, b_x, S, s_b, self.w, self.alpha, self.denom))

        return product

    def preconditioner(self, x) -> np.ndarray:
        """The inverse of the class-mean Hessian diagonal at x (see :func:`feature_curvature`), one
        entry per coefficient, the same for every class of a feature."""
        W_x, b_x = self.unpack(x)
        D, q_sum = feature_curvature(self.X, W_x, b_x, self.w, self.denom)
        D += self.alpha
        diag = np.empty(self.n_coef + (self.shape[0] if self.has_bias else 0))
        diag[: self.n_coef] = np.broadcast_to(D, self.shape).ravel()
        diag[self.n_coef:] = q_sum
        # A feature of no curvature (an all-zero column with alpha = 0) has a zero gradient and
        # residual: any positive entry leaves CG unchanged there.
        diag[~(np.isfinite(diag) & (diag > 0))] = 1.0
        return 1.0 / diag


# Rows per block of the curvature's block path (sparse X, or more than F.SMALL_K_MAX classes): the
# block's probabilities (rows x K) stay within a few MB.
_CURVATURE_BLOCK_ELEMENTS = 2**20


def feature_curvature(X, W, b, sample_weight, denom):
    """The class-mean Hessian diagonal of the mean cross-entropy (no penalty) at (W, b).

    With ``q_i = w_i mean_k p_ik (1 - p_ik) / denom``: ``D_j = sum_i q_i x_ij^2`` (the mean over
    classes of the diagonal entries at ``W[:, j]``) and ``sum_i q_i`` (the same for b). One fused
    kernel pass for dense X up to ``F.SMALL_K_MAX`` classes, else blocks of rows through
    ``F.linear_softmax`` (sparse X: squares of the stored entries only).

    Parameters
    ----------
    X : ndarray (read-only C-contiguous, as :class:`_NewtonProblem` holds it), CsrInput (the
        checked CSR arrays :class:`_NewtonProblem` holds for sparse X) or scipy.sparse matrix
    W, b : the point, in X's dtype (b None: no intercept)
    sample_weight : float64 ndarray of shape (n_samples,), or empty for all ones
    denom : float, the reduction's denominator

    Returns
    -------
    D : float64 ndarray of shape (n_features,)
    q_sum : float
    """
    if is_sparse(X):
        X = check_sparse_X(X, W.dtype)
    if isinstance(X, CsrInput):
        return _csr_feature_curvature(X, W, b, sample_weight, denom)
    N, d = X.shape
    K = W.shape[0]
    if K <= F.SMALL_K_MAX:
        # layer note: the solver calls the kernel directly, as F's private paths do; its input is
        # already validated (read-only C-contiguous X of one dtype, float64 weights)
        C = max(1, min(F.SMALL_K_CHUNKS, _k.n_blocks(N, F.SMALL_K_CHUNK_ROWS)))
        D_parts, q_parts = np.empty((C, d)), np.empty(C)
        none = readonly(np.empty(0, X.dtype))
        bad = _k._feature_curvature_small(C, X, W, none if b is None else b, sample_weight,
                                          1.0 / denom, D_parts, q_parts)
        if bad:
            raise ValueError("the logits X W^T + b are not finite: scale X down")
        return D_parts.sum(axis=0), float(q_parts.sum())
    rows = max(1, _CURVATURE_BLOCK_ELEMENTS // max(K, d))
    D, q_sum = np.zeros(d), 0.0
    for lo in range(0, N, rows):
        block = X[lo:lo + rows]
        q = _row_curvature(F.linear_softmax(block, W, b), sample_weight[lo:lo + rows], denom)
        block = block.astype(np.float64, copy=False)
        D += np.einsum("i,ij,ij->j", q, block, block)
        q_sum += float(q.sum())
    return D, q_sum


def _row_curvature(P, sample_weight, denom):
    """``q_i = w_i mean_k p_ik (1 - p_ik) / denom`` in float64 for a block's probabilities P."""
    P = P.astype(np.float64, copy=False)
    q = (P * (1.0 - P)).mean(axis=1) / denom
    return q * sample_weight if sample_weight.size else q


def _csr_feature_curvature(X: CsrInput, W, b, sample_weight, denom):
    """:func:`feature_curvature` on checked CSR arrays: blocks of rows (a view of indptr, which
    the kernels read as absolute offsets), the squares of the stored entries summed per column."""
    N, d = X.shape
    rows = max(1, _CURVATURE_BLOCK_ELEMENTS // max(W.shape[0], 1))
    D, q_sum = np.zeros(d), 0.0
    WT = _sparse.padded_transpose(W)  # once, not per block
    for lo in range(0, N, rows):
        hi = min(N, lo + rows)
        indptr = X.indptr[lo:hi + 1]
        P = _sparse.linear_softmax_checked(X._replace(indptr=indptr, shape=(hi - lo, d)), W, b,
                                           WT)
        q = _row_curvature(P, sample_weight[lo:hi], denom)
        start, stop = int(indptr[0]), int(indptr[-1])
        values = X.data[start:stop].astype(np.float64)
        D += np.bincount(X.indices[start:stop], minlength=d,
                         weights=np.repeat(q, np.diff(indptr)) * values * values)
        q_sum += float(q.sum())
    return D, q_sum


def _dot(a: np.ndarray, c: np.ndarray) -> float:
    # numpy's pairwise sum, not BLAS: numpy's OpenBLAS threads would spin against the kernels'
    # (docs/design.md, "Threading and determinism"), and the sum is the same bits every run.
    return float((a * c).sum())


def _conjugate_gradient(hessp, grad: np.ndarray, max_inner: int, tol: float,
                        inverse_diag: np.ndarray) -> np.ndarray:
    """Approximately solve ``H p = -grad`` by conjugate gradients preconditioned with the diagonal
    matrix M whose inverse is ``inverse_diag``; stopped when the residual's L1 norm is <= tol,
    after ``max_inner`` products, or at the first direction of non-positive curvature
    (scikit-learn's ``_cg``, preconditioned). Stopped short of tol with a residual larger than
    the smallest one it met, it returns the iterate of that smallest residual (when no iterate
    improved on the start, the last one, as before): in floating point the residual has a floor,
    and past it CG can drift far away (raw wine data, a gradient of 6e-10: the residual fell from
    1.5e-9 to 5e-15 in 50 products, then rose to 4e-9 by the zero-curvature exit at 116, the
    iterate grown from 1.4e-9 to 0.1, and that step raised the gradient 35-fold). It does not stop
    at a stall: a residual can stay above its minimum for dozens of products while CG still
    converges."""
    p = np.zeros_like(grad)
    residual = grad.copy()
    z = inverse_diag * residual
    direction = -z
    rz = _dot(residual, z)
    best_p, best_norm = None, np.abs(residual).sum()
    for i in range(max_inner + 1):
        norm = np.abs(residual).sum()
        if norm <= tol:
            return p
        if norm < best_norm:
            best_p, best_norm = p.copy(), norm
        Hd = hessp(direction)
        curvature = _dot(direction, Hd)
        # Zero curvature relative to the direction's length in M's metric (scikit-learn's test is
        # absolute, 16 eps: on this mean-normalized objective, gradients of 1e-9 met it and CG
        # returned 0).
        if 0 <= curvature <= 16 * np.finfo(np.float64).eps * _dot(direction,
                                                                  direction / inverse_diag):
            break
        if curvature < 0:
            if i == 0:  # the preconditioned steepest-descent step scaled by its curvature
                p += rz / curvature * direction
            break
        step = rz / curvature
        p += step * direction
        residual += step * Hd
        z = inverse_diag * residual
        rz_next = _dot(residual, z)
        direction = -z + (rz_next / rz) * direction
        rz = rz_next
    if best_p is None or np.abs(residual).sum() <= best_norm:
        return p
    return best_p


# Backtracking when scipy's Wolfe line search fails: halve the step this many times at most,
# accepting the first step with a sufficient (Armijo) decrease.
_BACKTRACK_STEPS = 30
_ARMIJO_C1 = 1e-4


def _line_search(problem: _NewtonProblem, x, direction, loss, grad, old_loss):
    """A step along ``direction`` and the loss there: scipy's strong-Wolfe search (as
    scikit-learn's newton-cg), else backtracking from 1 on the Armijo condition; (None, loss)
    when neither finds a decrease."""
    f = lambda z: problem.loss_grad(z)[0]  # noqa: E731
    g = lambda z: problem.loss_grad(z)[1]  # noqa: E731
    try:
        with warnings.catch_warnings():  # its warnings (a RuntimeWarning subclass that scipy does
            # not export): the fallback below takes over, and overflow is handled there
            warnings.simplefilter("ignore", RuntimeWarning)
            step, _, _, new_loss, _, _ = scipy.optimize.line_search(
                f, g, x, direction, gfk=grad, old_fval=loss, old_old_fval=old_loss
            )
    except ValueError:  # a trial step so long that the logits overflowed
        step = None
    if step is not None and new_loss is not None and np.isfinite(new_loss):
        return step, new_loss
    slope = _dot(grad, direction)
    step = 1.0
    for _ in range(_BACKTRACK_STEPS):
        try:
            new_loss = f(x + step * direction)
        except ValueError:  # overflowing logits: too long a step
            new_loss = np.inf
        if new_loss <= loss + _ARMIJO_C1 * step * slope:
            return step, new_loss
        step *= 0.5
    return None, loss


def newton_cg(
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
    max_inner: int = 200,
) -> SolverResult:
    """Inexact Newton: each iteration solves ``H p = -g`` by conjugate gradients on the fused
    Hessian-vector product, then takes a line-searched step along p (scikit-learn's
    ``_newton_cg``). Converged when the gradient's max-abs is <= tol (as lbfgs's projected
    gradient) and the Newton decrement ``lambda^2 = g^T H^-1 g`` (``-g.p`` from CG) says the
    objective is close to its minimum (:func:`_newton_converged`): either the previous iterate's
    ``lambda^2 / 2`` was <= ``max(tol^2, flat)`` (a Newton step from a point predicted within
    that of the minimum; the iterate is better still), or x's own ``lambda^2 / 2`` is <= ``flat``
    (a step would gain less than the loss's evaluation resolves, ``flat = max(64 eps64,
    eps(dtype)) max(1, |loss|)``; a warm start at the optimum takes no step). Else stops after
    ``max_iter`` Newton iterations, not converged.

    CG stops once the residual's L1 norm is <= ``min(0.5, |g|_1) |g|_1`` (the forcing term that
    makes the outer iteration quadratic; scikit-learn's ``sqrt(|g|_1)`` left the last iterate
    only superlinearly accurate: weighted and repeated samples then fitted 1.4e-7 apart, beyond
    scikit-learn's check_sample_weight_equivalence), after ``max_inner`` products, or at a
    direction of non-positive curvature. It is preconditioned by the Hessian diagonal averaged over the
    classes (one entry per feature, and one for the intercept; :func:`feature_curvature`,
    recomputed at every Newton iteration in one pass over X): features of very different scales
    then cost no more CG steps than standardized ones. The mean over classes, not the diagonal
    itself: the iterates, gradients and Hessian products keep ``sum_k W[k] = 0`` (with b) once
    started there, and a preconditioner that differs between classes leaks CG into the directions
    ``u 1_K^T``, where the curvature is only alpha (the plain Jacobi diagonal still hit the
    200-product cap near the optimum). The iterate is held in float64 (as lbfgs's); each evaluation and
    product runs in X's dtype. ``loss_curve[k]`` is the objective after iteration k + 1. When the
    line search finds no decrease, the run stops: converged after progress if the predicted
    decrease is within the loss's rounding (the objective is flat to its evaluation precision, as
    lbfgs's status 2; see :func:`_no_decrease`), not converged otherwise, ``diverged`` from the
    start.
    """
    result = SolverResult()
    if max_iter == 0:
        result.message = "reached max_iter=0: the starting point is returned"
        return result
    problem = _NewtonProblem(X, y, sample_weight, W, b, alpha, label_smoothing)
    x = problem.start(W, b)
    loss, grad = problem.loss_grad(x)
    old_loss = None
    decrement = np.inf  # the Newton decrement at the previous iterate: none yet
    while True:
        flat = _flat(loss, problem.dtype)
        if _newton_converged(result, grad, tol, decrement, max(tol * tol, flat)):
            break  # the gap at x is below the previous iterate's, at most tol^2
        if result.n_iter >= max_iter:
            result.message = f"reached max_iter={max_iter}"
            break
        direction, decrement = _newton_direction(problem, x, grad, max_inner)
        if _newton_converged(result, grad, tol, decrement, flat):
            break  # a step from x would gain less than the evaluation of the loss resolves
        step, new_loss = _line_search(problem, x, direction, loss, grad, old_loss)
        if step is None or not np.any(step * direction):
            _no_decrease(result, loss, decrement, problem.dtype)
            break
        x, old_loss = x + step * direction, loss
        loss, grad = problem.loss_grad(x)
        result.n_iter += 1
        result.loss_curve.append(float(loss))
        if problem.report(callback, result, x):
            result.stopped = True
            result.message = "stopped by the callback"
            break
    problem.write(x, W, b)
    return result


def _newton_direction(problem: _NewtonProblem, x, grad, max_inner: int):
    """The CG solution p of ``H p = -grad`` at x and the Newton decrement ``-grad.p`` it gives
    (inf when p is no descent direction: a CG exit at negative curvature from rounding)."""
    l1 = float(np.abs(grad).sum())
    direction = _conjugate_gradient(problem.hessp(x), grad, max_inner,
                                    min(0.5, l1) * l1, problem.preconditioner(x))
    decrement = -_dot(grad, direction)
    return direction, (decrement if decrement >= 0 else np.inf)


# A decrease of the objective smaller than this fraction of max(1, |loss|) is not resolved by its
# evaluation: float64's 64 eps is lbfgs's ftol (which bounds the decrease it sees between
# iterations the same way); float32 logits resolve the loss to about float32's eps.
_NEWTON_FLAT = 64 * float(np.finfo(np.float64).eps)


def _flat(loss: float, dtype) -> float:
    return max(_NEWTON_FLAT, float(np.finfo(dtype).eps)) * max(1.0, abs(loss))


def _newton_converged(result: SolverResult, grad, tol: float, decrement: float,
                      bound: float) -> bool:
    """The stopping test of :func:`newton_cg`, recorded in ``result``: the gradient's max-abs is
    <= tol and half a Newton decrement, the decrease the Newton step predicts, is <= bound.

    The gradient test alone (scikit-learn's) is not enough on a mean objective: a feature seen in
    m of N rows has gradient and curvature of order m / N, so its coefficient can be far from its
    optimum while its gradient lies under tol (text-like 30000 x 65536 x 20, tol 1e-4: one
    iteration, objective 0.659 against 0.140). The decrement ``g^T H^-1 g`` (from CG: ``-g.p``)
    weighs each direction by its inverse curvature; half of it is the excess of the quadratic
    model over its minimum, close to f - f* near the optimum.
    """
    g_max = float(np.abs(grad).max(initial=0.0))
    if not (g_max <= tol and decrement / 2 <= bound):
        return False
    result.converged = True
    result.message = (f"gradient max-abs {g_max:.3g} <= tol={tol} and Newton decrement / 2 "
                      f"{decrement / 2:.3g} <= {bound:.3g}")
    return True


def _no_decrease(result: SolverResult, loss: float, decrement: float, dtype) -> None:
    """Record a line search that found no decrease from x (decrement: the Newton decrement at x).
    After progress it is convergence only when the decrease the Newton step predicts is within
    the evaluation noise of the loss (``sqrt(eps) max(1, |loss|)``, eps of X's dtype: float32
    runs with a small tol end here, their products too noisy for the decrement test); a larger
    predicted decrease that the line search cannot find is a failure, not an optimum."""
    predicted = decrement / 2
    if result.n_iter and predicted <= np.sqrt(np.finfo(dtype).eps) * max(1.0, abs(loss)):
        result.converged = True
        result.message = (
            f"the line search found no further decrease at loss {loss:.17g} (predicted "
            f"{predicted:.3g}): the objective is flat to the precision of its evaluation"
        )
    elif result.n_iter:
        result.message = (
            f"the line search found no decrease at loss {loss:.17g} although the Newton step "
            f"predicts {predicted:.3g}: the Hessian products are too inexact (try float64 X)"
        )
    else:
        result.diverged = True
        result.message = (
            f"the objective did not decrease from its starting value {loss:.6g}: the line "
            "search found no step that lowers it, which happens when the data's scale is "
            "extreme; standardize X"
        )
