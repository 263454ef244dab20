"""SoftmaxRegression: a scikit-learn classifier on the fused softmax-regression kernels."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from fastsoftmax import functional as F
from fastsoftmax import solvers
from fastsoftmax._threads import single_threaded_blas, thread_limits
from fastsoftmax._validation import is_sparse

__all__ = ["SOLVERS", "SoftmaxRegression"]

#: The solver names, in the order the documentation lists them (the command line offers these).
SOLVERS = ("lbfgs", "newton-cg", "sgd", "gd")
# Logits of at most this many multiply-adds (n_samples x n_features x n_classes) are computed with
# BLAS on one thread. A small product on BLAS's pool pays its start and barrier, and on a busy
# machine waits for a descheduled thread: 1437 x 64 x 10 (float64) took 2.7-15.7 ms on two
# threads and 0.16-0.51 ms on one, with the other core busy (docs/design.md, "Threading and
# determinism").
SMALL_LOGITS_WORK = 2**23
_FLOAT_DTYPES = [np.float64, np.float32]


def _check_param_combinations(est: SoftmaxRegression, *, partial: bool) -> None:
    """What ``_parameter_constraints`` cannot say: parameters that exclude one another."""
    if est.tol is None and est.solver in ("lbfgs", "newton-cg") and not partial:
        raise ValueError(
            f"tol=None is for the 'sgd' and 'gd' solvers; {est.solver} needs a tol"
        )
    if partial and isinstance(est.class_weight, str):
        raise ValueError(
            "class_weight='balanced' needs the class counts of all the data, which "
            "partial_fit does not see; pass a dict of class weights instead"
        )


def _refuse_one_class(label, where: str = "") -> None:
    """fit and partial_fit refuse a single class with one message (softmax needs two)."""
    raise ValueError(
        f"SoftmaxRegression needs at least 2 classes{where}; got 1 class: {label!r}"
    )


def _refuse_nonfinite_init(name: str, values: np.ndarray) -> None:
    """A starting point the solvers cannot start from: named here, not as their internal W, b."""
    n_bad = int(np.count_nonzero(~np.isfinite(values)))
    if n_bad:
        raise ValueError(
            f"{name} must be finite in {values.dtype} (the dtype of X); {n_bad} of its entries "
            "are NaN or infinite"
        )


def _is_fitted_attribute(name: str) -> bool:
    """The attributes a fit sets: scikit-learn's trailing underscore (what ``check_is_fitted``
    looks for; ``n_features_in_`` and ``feature_names_in_`` from ``validate_data`` too), and the
    shuffling generator that ``partial_fit`` carries from call to call."""
    return (name.endswith("_") and not name.startswith("__")) or name == "_rng"


def _refuse_unsquarable_scale(X, sample_weight, solver: str) -> None:
    """lbfgs and newton-cg follow the curvature of the objective, which grows as the squared row
    norms of X: when those overflow float64, the solver fails deep inside (a NaN iterate W, an
    overflowing Hessian-vector product) with a message about its own arrays. Say what to change
    instead, before the solver starts.

    A float32 X cannot get there (its squares stay far inside float64); the exact norms are only
    computed when the largest entry allows an overflow: ``||x||^2 <= (entries per row * max
    |X|)^2``, also for a sparse row that stores a column twice.
    """
    if X.dtype != np.float64:
        return
    values = X.data if is_sparse(X) else X
    largest = max(float(values.max(initial=0.0)), -float(values.min(initial=0.0)))
    per_row = int(np.diff(X.indptr).max(initial=0)) if is_sparse(X) else X.shape[1]
    if largest * max(per_row, 1) <= np.sqrt(np.finfo(np.float64).max):
        return
    with np.errstate(over="ignore"):
        norms = solvers.squared_row_norms(X, sample_weight)
    if np.isfinite(norms).all():
        return
    raise ValueError(
        f"X is too large in scale for solver={solver!r}: the squared norms of its rows overflow "
        f"float64 (max |X| = {largest:.3g}), and so does the curvature the solver works with; "
        "standardize X (e.g. sklearn.preprocessing.StandardScaler) or divide it by a constant"
    )


class SoftmaxRegression(ClassifierMixin, BaseEstimator):
    """Softmax regression (multinomial logistic regression) on fused, parallel kernels.

    Minimizes the weighted mean cross-entropy of ``softmax(X W^T + b)`` plus ``alpha/2 ||W||^2``
    (the intercept is not penalized)::

        f(W, b) = sum_i w_i * -log softmax(x_i W^T + b)[y_i] / sum_i w_i + alpha/2 * ||W||_F^2

    where ``w_i`` is ``sample_weight`` times the class weight of ``y_i``. This is
    ``fastsoftmax.functional.linear_cross_entropy(..., reduction="mean")``: every gradient is one
    fused pass that never holds an n_samples x n_classes array.

    Relation to scikit-learn: ``LogisticRegression(C=C)`` (lbfgs) minimizes
    ``C * sum_i w_i CE_i + 1/2 ||coef||^2``. Divided by ``C * S``, with ``S = sum_i w_i`` the total
    weight (``n_samples`` when unweighted; ``sum_i sample_weight_i * class_weight[y_i]`` otherwise),
    it is the objective above with

    - ``alpha = 1 / (C * S)`` for three classes or more (both penalize all K rows of W);
    - ``alpha = 2 / (C * S)`` for two classes: LogisticRegression fits one vector ``beta``, the
      softmax two rows whose difference ``w_1 - w_0`` plays its part; for a given difference the
      penalty is smallest at ``w_1 = -w_0 = beta / 2``, where ``alpha/2 (||w_0||^2 + ||w_1||^2)``
      is ``alpha/4 ||beta||^2``, which equals ``1/(2 C S) ||beta||^2`` for this alpha.

    Both then have the same minimizer, the same ``predict_proba`` and ``decision_function``.

    float32 input trains and predicts in float32 (``coef_.dtype == np.float32``, no copy of X);
    float64 stays float64; other dtypes are converted to float64.

    Parameters
    ----------
    alpha : float, default=1e-4
        Strength of the L2 penalty ``alpha/2 ||W||^2`` on the coefficients (not the intercept).
    fit_intercept : bool, default=True
        Learn an intercept ``b``; when False the intercept is fixed at zero.
    solver : {"lbfgs", "newton-cg", "sgd", "gd"}, default="lbfgs"
        - "lbfgs": scipy's L-BFGS-B, one fused loss-and-gradient call per evaluation; stops when
          the projected gradient's max-abs is <= ``tol`` (or the objective stops decreasing to
          within ``64 * eps`` relative, as in scikit-learn).
        - "newton-cg": inexact Newton, conjugate gradients on the fused Hessian-vector product
          (``linear_cross_entropy_hvp``) and a Wolfe line search, as scikit-learn's newton-cg;
          preconditioned by the class-mean Hessian diagonal; stops when the gradient's max-abs is
          <= ``tol`` and the Newton decrement predicts the objective within ``max(tol**2,
          64 * eps)`` of its minimum. Few iterations on ill-conditioned problems (unscaled
          features, a small ``alpha``), where lbfgs needs hundreds. Dense or sparse X.
        - "sgd": mini-batch SGD with a fixed ``learning_rate``, ``batch_size`` samples per step,
          ``max_iter`` epochs, reshuffled every epoch (the Dive into Deep Learning recipe).
        - "gd": full-batch gradient descent with a fixed ``learning_rate``, ``max_iter`` steps
          (the textbook algorithm; ``reference.SoftmaxRegression`` is its NumPy twin).
    max_iter : int, default=100
        Iterations (lbfgs), Newton iterations (newton-cg), epochs (sgd) or gradient steps (gd).
        0 returns the starting model (zeros, or the warm start) with a ``ConvergenceWarning``
        when ``tol`` is set.
    tol : float or None, default=1e-4
        lbfgs: stop when the projected gradient's max-abs is <= tol; newton-cg: when the
        gradient's max-abs is <= tol and the Newton decrement agrees (above). gd: stop (before a
        step) when
        the gradient's max-abs is <= tol. sgd: stop when the epoch loss has not improved on the
        best one by at least tol for ``n_iter_no_change`` epochs in a row. None (sgd and gd only)
        runs exactly ``max_iter`` iterations and never warns, like a textbook training loop.
    learning_rate : float or "auto", default="auto"
        Step size of "sgd", "gd" and ``partial_fit``. A float is the textbook fixed step (Dive
        into Deep Learning uses 0.1 on data scaled to [0, 1]); too large a step for the data's
        scale makes training diverge, which stops it with a ``ConvergenceWarning`` (or a
        ``ValueError`` when the weights overflow). "auto" takes ``1 / L``, L bounding the
        curvature of the objective (``solvers.lipschitz_bound``): the Hessian of the
        cross-entropy in the logits has norm at most 1/2, so
        ``L = 0.5 * max_i (||x_i||^2 + fit_intercept) + alpha`` for "sgd" and ``partial_fit``
        (scikit-learn's SAG rule; any mini-batch), and the weighted mean of
        ``||x_i||^2 + fit_intercept`` in place of the max for "gd" and for "sgd" when
        ``batch_size >= n_samples`` (one batch: the full objective). No step of that
        size overshoots, whatever the data's scale; on standardized data with many features it is
        smaller (slower) than a hand-tuned step. ``partial_fit`` keeps the smallest step of the
        chunks seen so far. The step taken is stored in ``learning_rate_``.
    batch_size : int, default=256
        Samples per step of "sgd" and ``partial_fit``; capped at the number of samples.
    shuffle : bool, default=True
        Reshuffle the samples before every epoch of "sgd" and every ``partial_fit`` call.
    random_state : int, RandomState instance or None, default=None
        Seeds the shuffling. (The weights start at zero, so nothing else is random.)
    warm_start : bool, default=False
        Start ``fit`` from the previous ``coef_`` and ``intercept_`` when the classes and the
        number of features match. ``n_iter_`` and ``loss_curve_`` then count the new fit only.
    class_weight : dict, "balanced" or None, default=None
        Weights per class, multiplied into ``sample_weight``. "balanced" uses
        ``sum(sample_weight) / (n_classes * weighted_count(y))`` with the class counts weighted by
        ``sample_weight``, as scikit-learn's ``compute_class_weight`` (not supported by
        ``partial_fit``).
    label_smoothing : float in [0, 1), default=0.0
        Mixes the one-hot target with the uniform distribution, as in PyTorch's cross-entropy.
    n_iter_no_change : int, default=5
        Patience of the "sgd" stopping rule on ``tol``.
    n_jobs : int or None, default=None
        Numba and BLAS threads during fit and predict; restored afterwards. None leaves the
        thread counts as they are; -1 uses all of Numba's threads.
    verbose : int, default=0
        Print the objective after every iteration or epoch when > 0.
    callback : callable or None, default=None
        Called as ``callback(iteration, estimator)`` after every iteration (lbfgs, newton-cg),
        epoch (sgd, and each ``partial_fit`` call) or step (gd), ``iteration`` counting from 1.
        At that moment ``estimator.coef_``, ``intercept_``, ``classes_``, ``n_iter_`` hold the
        current solution (so ``estimator.predict`` and ``estimator.score`` work) and
        ``estimator.loss_curve_`` the objective values so far. If it returns True, training
        stops at once, without a ``ConvergenceWarning`` (the return value is ignored by
        ``partial_fit``). If it raises, the exception propagates and the estimator keeps the
        state it had before the call, as after any ``fit`` or ``partial_fit`` that raises.

    Attributes
    ----------
    coef_ : ndarray of shape (n_classes, n_features)
        The weights W, float32 when trained on float32 data, else float64. Two classes keep two
        rows (the softmax parameterization; ``LogisticRegression`` stores one): its single
        vector is ``coef_[1] - coef_[0]`` (shape (n_features,); ``[None]`` gives (1, n_features)),
        its intercept ``intercept_[1] - intercept_[0]``.
    intercept_ : ndarray of shape (n_classes,)
        The intercept b (zeros when ``fit_intercept=False``).
    classes_ : ndarray of shape (n_classes,)
        The class labels, sorted; any labels work (strings, non-contiguous integers).
    n_iter_ : int
        Iterations, epochs or steps performed by the last ``fit`` (``partial_fit`` adds one
        epoch per call). An int, as in ``SGDClassifier`` and ``MLPClassifier`` (one model, one
        count), not ``LogisticRegression``'s array of one count per fitted problem.
    learning_rate_ : float
        The step size used by "sgd", "gd" and ``partial_fit`` (``learning_rate``, or the value
        "auto" chose). Not set by "lbfgs" and "newton-cg".
    loss_curve_ : list of float
        The objective per iteration (lbfgs, newton-cg: after it), per step (gd: before it) or per epoch
        (sgd and partial_fit: the weighted mean of the batch objectives, each before its step).
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names, when X was a DataFrame with string column names.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from fastsoftmax.estimator import SoftmaxRegression
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = SoftmaxRegression(alpha=1 / len(X)).fit(X, y)   # LogisticRegression(C=1), 3 classes
    >>> clf.predict(X[:2])
    array([0, 0])
    """

    def __init__(
        self,
        *,
        alpha: float = 1e-4,
        fit_intercept: bool = True,
        solver: str = "lbfgs",
        max_iter: int = 100,
        tol: float | None = 1e-4,
        learning_rate: float | str = "auto",
        batch_size: int = 256,
        shuffle: bool = True,
        random_state=None,
        warm_start: bool = False,
        class_weight=None,
        label_smoothing: float = 0.0,
        n_iter_no_change: int = 5,
        n_jobs: int | None = None,
        verbose: int = 0,
        callback: Callable | None = None,
    ):
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.random_state = random_state
        self.warm_start = warm_start
        self.class_weight = class_weight
        self.label_smoothing = label_smoothing
        self.n_iter_no_change = n_iter_no_change
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.callback = callback

    # ------------------------------------------------------------------ validation

    _parameter_constraints: dict = {
        "alpha": [Interval(Real, 0, None, closed="left")],
        "fit_intercept": ["boolean"],
        "solver": [StrOptions(set(SOLVERS))],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left"), None],
        "learning_rate": [Interval(Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "label_smoothing": [Interval(Real, 0, 1, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        # 0 threads has no meaning; -1 is all of Numba's threads, -2 all but one, ...
        "n_jobs": [
            Interval(Integral, None, -1, closed="right"),
            Interval(Integral, 1, None, closed="left"),
            None,
        ],
        "verbose": ["verbose"],
        "callback": [callable, None],
    }

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # scipy.sparse X goes through the CSR kernels, for every solver.
        tags.input_tags.sparse = True
        return tags

    def _sample_weight(self, X, y_codes, sample_weight, n_classes):
        """Per-sample weights (float64) with the class weights folded in; None if all ones."""
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
            if np.any(sample_weight < 0):
                raise ValueError("sample_weight must be non-negative")
        if self.class_weight is not None:
            # "balanced" from the weighted class counts, as scikit-learn >= 1.6 (issue 10).
            with np.errstate(divide="ignore"):
                per_class = compute_class_weight(
                    self.class_weight, classes=self.classes_, y=self.classes_[y_codes],
                    sample_weight=sample_weight,
                )
            if isinstance(self.class_weight, str):
                # A class whose samples all weigh 0 gets weight inf from "balanced"; its samples
                # carry no weight either way.
                per_class = np.where(np.isfinite(per_class), per_class, 0.0)
            else:
                # A dict's weights are used as given: NaN or inf must not become the 0 that
                # "balanced"'s inf becomes (the class would be dropped without a word), and a
                # negative weight would be refused later under sample_weight's name.
                bad = ~(np.isfinite(per_class) & (per_class >= 0))
                if np.any(bad):
                    first = int(np.flatnonzero(bad)[0])
                    raise ValueError(
                        f"class_weight must map every class to a finite, non-negative weight; "
                        f"got {per_class[first]} for class {self.classes_[first]!r}"
                    )
            class_sw = per_class[y_codes]
            sample_weight = class_sw if sample_weight is None else sample_weight * class_sw
        if sample_weight is not None:
            class_totals = np.bincount(y_codes, weights=sample_weight, minlength=n_classes)
            if not np.any(class_totals > 0):
                raise ValueError("sample_weight (times class_weight) is all zero: nothing to fit")
            if not np.isfinite(class_totals.sum()):
                raise ValueError(
                    "sample_weight (times class_weight) sums to infinity in float64: the weights "
                    "are too extreme; divide them all by one factor (the objective is their "
                    "weighted mean, so the fit does not change)"
                )
        else:
            class_totals = np.bincount(y_codes, minlength=n_classes)
        return sample_weight, class_totals

    # ------------------------------------------------------------------ training

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None, *, coef_init=None, intercept_init=None):
        """Fit the model with the chosen solver.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data; float32 trains in float32, anything else in float64. Sparse X stays
            sparse (CSR).
        y : array-like of shape (n_samples,)
            Class labels of any type.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights; the loss is their weighted mean.
        coef_init : array-like of shape (n_classes, n_features), default=None
            Starting weights (zeros by default, or the previous ones with ``warm_start``).
        intercept_init : array-like of shape (n_classes,), default=None
            Starting intercept (zeros by default).

        Returns
        -------
        self : SoftmaxRegression
        """
        _check_param_combinations(self, partial=False)
        with self._fitted_state_kept_on_error():
            result = self._fit(X, y, sample_weight, coef_init, intercept_init)
        self._warn_outcome(result, self.solver, self.tol)
        return self

    def _fit(self, X, y, sample_weight, coef_init, intercept_init) -> solvers.SolverResult:
        """The body of fit: sets the fitted attributes, returns the solver's report."""
        # C order once here: the kernels want rows contiguous, and would otherwise copy an
        # F-ordered X at every evaluation.
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=_FLOAT_DTYPES, order="C")
        check_classification_targets(y)
        previous = self._warm_start_params()
        self.classes_, y_codes = np.unique(y, return_inverse=True)
        y_codes = y_codes.astype(np.intp, copy=False)
        n_classes = len(self.classes_)
        sample_weight, class_totals = self._sample_weight(X, y_codes, sample_weight, n_classes)
        if np.count_nonzero(class_totals > 0) < 2:
            _refuse_one_class(self.classes_[np.argmax(class_totals > 0)], " with positive weight")
        W, b = self._initial_params(X, n_classes, coef_init, intercept_init, previous)
        self._rng = check_random_state(self.random_state)
        if self.solver in ("lbfgs", "newton-cg"):
            _refuse_unsquarable_scale(X, sample_weight, self.solver)
            self.__dict__.pop("learning_rate_", None)  # a stale step from an earlier fit
        else:
            # one batch per epoch (batch_size >= n_samples) is full-batch descent
            full_batch = self.solver == "gd" or self.batch_size >= X.shape[0]
            self.learning_rate_ = self._learning_rate(X, sample_weight, full_batch)
        with thread_limits(self.n_jobs):
            result = self._run_solver(X, y_codes, sample_weight, W, b)
        self._set_solution(W, b, result.n_iter, result.loss_curve)
        return result

    @contextlib.contextmanager
    def _fitted_state_kept_on_error(self):
        """Put the fitted attributes back as they were when the body raises.

        fit and partial_fit set them on the way: ``validate_data`` sets ``n_features_in_`` first,
        ``classes_`` comes before the checks of y and the weights, and the callback sees the
        current solution as ``coef_``. A call that failed after that would leave new classes
        next to the old coefficients, and ``predict`` would answer with the wrong labels without
        an error: a call that raises (the callback's own exceptions included) leaves the earlier
        model whole, or the estimator unfitted. The saved values are the arrays themselves: a fit
        never writes into the arrays of an earlier one (a warm start copies them). The shuffling
        generator's draws are not taken back.
        """
        saved = {name: value for name, value in vars(self).items() if _is_fitted_attribute(name)}
        try:
            yield
        except BaseException:
            for name in [name for name in vars(self) if _is_fitted_attribute(name)]:
                delattr(self, name)
            vars(self).update(saved)
            raise

    def _learning_rate(self, X, sample_weight, full_batch: bool) -> float:
        if self.learning_rate != "auto":
            return float(self.learning_rate)
        return solvers.auto_learning_rate(
            X, sample_weight, float(self.alpha), self.fit_intercept, full_batch=full_batch
        )

    @staticmethod
    def _warn_outcome(result, solver: str, tol) -> None:
        """ConvergenceWarning for a diverged run (always) or an unconverged one (with a tol)."""
        if result.diverged:
            warnings.warn(
                f"SoftmaxRegression(solver={solver!r}) diverged: {result.message}.",
                ConvergenceWarning,
                stacklevel=4,  # through _fit_context's wrapper to the caller
            )
        elif not (result.converged or result.stopped) and tol is not None:
            warnings.warn(
                f"SoftmaxRegression(solver={solver!r}) did not converge: {result.message}. "
                "Increase max_iter, scale the data or loosen tol.",
                ConvergenceWarning,
                stacklevel=4,  # through _fit_context's wrapper to the caller
            )

    def _warm_start_params(self):
        if self.warm_start and hasattr(self, "coef_"):
            return self.classes_, self.coef_, self.intercept_
        return None

    def _initial_params(self, X, n_classes, coef_init, intercept_init, previous):
        shape = (n_classes, X.shape[1])
        W = np.zeros(shape, dtype=X.dtype)
        b = np.zeros(n_classes, dtype=X.dtype) if self.fit_intercept else None
        if previous is not None:
            classes, coef, intercept = previous
            if coef.shape == shape and np.array_equal(classes, self.classes_):
                W[...] = coef
                if b is not None:
                    b[...] = intercept
        if coef_init is not None:
            coef_init = np.asarray(coef_init)
            if coef_init.shape != shape:
                raise ValueError(f"coef_init must have shape {shape}, got {coef_init.shape}")
            with np.errstate(over="ignore"):  # beyond float32: inf, refused below
                W[...] = coef_init
            _refuse_nonfinite_init("coef_init", W)
        if intercept_init is not None:
            intercept_init = np.asarray(intercept_init)
            if intercept_init.shape != (n_classes,):
                raise ValueError(
                    f"intercept_init must have shape {(n_classes,)}, got {intercept_init.shape}"
                )
            if b is None:
                raise ValueError("intercept_init was given but fit_intercept=False")
            with np.errstate(over="ignore"):
                b[...] = intercept_init
            _refuse_nonfinite_init("intercept_init", b)
        return W, b

    def _run_solver(self, X, y_codes, sample_weight, W, b):
        common = {
            "alpha": float(self.alpha),
            "label_smoothing": float(self.label_smoothing),
            "callback": self._solver_callback(),
        }
        if self.solver == "lbfgs":
            # Up to SMALL_K_MAX classes the loss kernels use no BLAS, so scipy's OpenBLAS only
            # serves L-BFGS-B's vector updates, which gain nothing from threads whose spinning
            # steals cores from the kernels (docs/design.md, "Threading and determinism"); above
            # it the kernels' GEMMs need them.
            small_k = W.shape[0] <= F.SMALL_K_MAX
            return solvers.lbfgs(
                X,
                y_codes,
                sample_weight,
                W,
                b,
                max_iter=self.max_iter,
                tol=float(self.tol),
                blas_threads=1 if small_k else None,
                **common,
            )
        if self.solver == "newton-cg":
            return solvers.newton_cg(
                X, y_codes, sample_weight, W, b, max_iter=self.max_iter, tol=float(self.tol),
                **common,
            )
        if self.solver == "gd":
            return solvers.gd(
                X,
                y_codes,
                sample_weight,
                W,
                b,
                learning_rate=self.learning_rate_,
                max_iter=self.max_iter,
                tol=self.tol,
                **common,
            )
        return solvers.sgd(
            X,
            y_codes,
            sample_weight,
            W,
            b,
            learning_rate=self.learning_rate_,
            batch_size=self.batch_size,
            max_iter=self.max_iter,
            tol=self.tol,
            n_iter_no_change=self.n_iter_no_change,
            shuffle=self.shuffle,
            rng=self._rng,
            **common,
        )

    def _solver_callback(self, n_iter_offset: int = 0, loss_curve_prefix=()):
        if self.callback is None and not self.verbose:
            return None

        def on_iteration(n_iter, W, b, loss_curve):
            if self.verbose:
                print(f"[SoftmaxRegression] iteration {n_iter}: loss = {loss_curve[-1]:.8g}")
            if self.callback is None:
                return False
            self._set_solution(W.copy(), None if b is None else b.copy(), n_iter,
                               [*loss_curve_prefix, *loss_curve])
            return bool(self.callback(n_iter, self))

        return on_iteration

    def _set_solution(self, W, b, n_iter, loss_curve):
        self.coef_ = W
        self.intercept_ = b if b is not None else np.zeros(W.shape[0], dtype=W.dtype)
        self.n_iter_ = int(n_iter)
        self.loss_curve_ = [float(v) for v in loss_curve]

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch of mini-batch SGD over (X, y), for data that arrives in chunks.

        Uses ``learning_rate``, ``batch_size``, ``shuffle`` and ``random_state`` whatever the
        ``solver``, continues from the current solution (also one found by ``fit``), appends the
        epoch loss to ``loss_curve_`` and adds 1 to ``n_iter_``. As in scikit-learn, the
        parameters are validated on the first call only. A ``ConvergenceWarning`` reports
        divergence: an epoch loss clearly above the loss at the start (first call) or above
        ``log(n_classes)``, that of uniform probabilities (later calls), with a step larger than
        ``2 / L`` for the chunk (smaller steps cannot raise the loss of a batch; see
        ``learning_rate``).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            A chunk of training data. The first call fixes the dtype (float32 or float64).
        y : array-like of shape (n_samples,)
            Its labels; each must be one of ``classes``.
        classes : array-like of shape (n_classes,), default=None
            All the labels that can occur, at least 2 of them. Required on the first call,
            optional later (and then it must equal ``classes_``).
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights.

        Returns
        -------
        self : SoftmaxRegression
        """
        _check_param_combinations(self, partial=True)
        with self._fitted_state_kept_on_error():
            result = self._partial_fit(X, y, classes, sample_weight)
        self._warn_outcome(result, "sgd", None)  # one epoch: only divergence
        return self

    def _partial_fit(self, X, y, classes, sample_weight) -> solvers.SolverResult:
        """The body of partial_fit: sets the fitted attributes, returns the epoch's report."""
        first_call = not hasattr(self, "classes_")
        X, y = validate_data(
            self, X, y, accept_sparse="csr", dtype=_FLOAT_DTYPES, order="C", reset=first_call
        )
        check_classification_targets(y)
        y_codes = self._partial_fit_codes(y, classes, first_call)
        n_classes = len(self.classes_)
        if first_call:
            W, b = self._initial_params(X, n_classes, None, None, None)
            self._set_solution(W, b, 0, [])
            self._rng = check_random_state(self.random_state)
        elif X.dtype != self.coef_.dtype:
            X = X.astype(self.coef_.dtype)
        sample_weight, _ = self._sample_weight(X, y_codes, sample_weight, n_classes)
        step = self._learning_rate(X, sample_weight, self.batch_size >= X.shape[0])
        # "auto": never a larger step than an earlier chunk allowed (the bound holds for all).
        if self.learning_rate == "auto" and hasattr(self, "learning_rate_"):
            step = min(step, self.learning_rate_)
        self.learning_rate_ = step
        W = self.coef_.copy()
        b = self.intercept_.copy() if self.fit_intercept else None
        n_iter, loss_curve = self.n_iter_, list(self.loss_curve_)
        with thread_limits(self.n_jobs):
            result = solvers.sgd(
                X, y_codes, sample_weight, W, b,
                alpha=float(self.alpha),
                label_smoothing=float(self.label_smoothing),
                learning_rate=step,
                batch_size=self.batch_size,
                max_iter=1,
                tol=None,
                n_iter_no_change=self.n_iter_no_change,
                shuffle=self.shuffle,
                rng=self._rng,
                callback=self._solver_callback(n_iter, loss_curve),
                n_iter_start=n_iter,
                # Later calls: divergence is an epoch loss worse than uniform probabilities. The
                # loss of the current weights on the chunk would cost a pass of its own, and is
                # the epoch loss itself for a chunk of one batch: against it, a stream of such
                # calls with too large a step would never be reported. A chunk that the model
                # fits worse than uniform (hard, mislabeled) is not reported when the step is
                # too small to diverge: sgd checks that before it reports.
                initial_loss=None if first_call else float(np.log(n_classes)),
                reference=None if first_call else "log(n_classes), the loss of uniform probabilities",
            )
        self._set_solution(W, b, n_iter + result.n_iter, loss_curve + result.loss_curve)
        return result

    def _partial_fit_codes(self, y, classes, first_call: bool) -> np.ndarray:
        """Set ``classes_`` on the first call, check ``classes`` later; y's integer codes."""
        if first_call:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit")
            all_classes = np.unique(np.asarray(classes))
            if len(all_classes) < 2:
                _refuse_one_class(all_classes[0] if len(all_classes) else None)
            self.classes_ = all_classes
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(
                f"classes={classes!r} differs from the classes of the previous calls "
                f"{self.classes_!r}"
            )
        y_codes = np.searchsorted(self.classes_, y)
        y_codes = np.minimum(y_codes, len(self.classes_) - 1).astype(np.intp, copy=False)
        unknown = self.classes_[y_codes] != y
        if np.any(unknown):
            raise ValueError(f"y contains labels not in classes: {np.unique(y[unknown])!r}")
        return y_codes

    # ------------------------------------------------------------------ prediction

    def _validate_X(self, X):
        check_is_fitted(self)
        return validate_data(self, X, accept_sparse="csr", dtype=_FLOAT_DTYPES, reset=False)

    def _logits(self, X):
        if X.shape[0] * X.shape[1] * self.coef_.shape[0] <= SMALL_LOGITS_WORK:
            with single_threaded_blas():
                Z = X @ self.coef_.T
        else:
            Z = X @ self.coef_.T
        Z += self.intercept_
        return Z

    def decision_function(self, X):
        """The logits ``X W^T + b``, shape (n_samples, n_classes).

        For two classes, the 1-D margin ``z_1 - z_0`` of shape (n_samples,), positive where
        ``classes_[1]`` is predicted (scikit-learn's convention).
        """
        X = self._validate_X(X)
        with thread_limits(self.n_jobs):
            Z = self._logits(X)
        if Z.shape[1] == 2:
            return Z[:, 1] - Z[:, 0]
        return Z

    def predict(self, X):
        """The most probable class of each sample, shape (n_samples,)."""
        X = self._validate_X(X)
        with thread_limits(self.n_jobs):
            Z = self._logits(X)
        return self.classes_[np.argmax(Z, axis=1)]

    def predict_proba(self, X):
        """Class probabilities ``softmax(X W^T + b)``, shape (n_samples, n_classes)."""
        X = self._validate_X(X)
        with thread_limits(self.n_jobs):
            return F.linear_softmax(X, self.coef_, self.intercept_)

    def predict_log_proba(self, X):
        """Log-probabilities through a stable log-softmax (finite where the probability
        underflows to 0), shape (n_samples, n_classes)."""
        X = self._validate_X(X)
        with thread_limits(self.n_jobs):
            return F.log_softmax(self._logits(X))
