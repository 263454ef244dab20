"""``fastsoftmax.dask.SoftmaxRegression``: the in-memory estimator's lbfgs, evaluated per chunk on
a Dask cluster (docs/scaling.md)."""

from __future__ import annotations

import numpy as np
from sklearn.base import _fit_context
from sklearn.utils.multiclass import check_classification_targets

from fastsoftmax import estimator as _estimator
from fastsoftmax import solvers
from fastsoftmax.dask import _chunks
from fastsoftmax.dask._backend import DistributedBackend, LocalBackend
from fastsoftmax.dask._data import as_rows, frame_rows, is_dask, like_rows

__all__ = ["SoftmaxRegression"]

_InMemory = _estimator.SoftmaxRegression
# Weights whose largest lies outside [2^-64, 2^64] are multiplied by a power of two first
# (exact), as the in-memory kernels do: the weighted mean is scale invariant.
_WEIGHT_RANGE = (2.0**-64, 2.0**64)


def current_backend():
    """The active ``distributed.Client``'s backend (``Client.as_current()``, else the default
    client), else dask's local scheduler's."""
    try:
        from distributed import Client
    except ImportError:  # dask without distributed
        return LocalBackend()
    try:
        return DistributedBackend(Client.current(allow_global=True))
    except ValueError:  # no client
        return LocalBackend()


class _ClusterObjective(solvers._PackedObjective):
    """lbfgs's objective with every evaluation computed chunk by chunk on the cluster: the
    tree sum of per-chunk ``[loss, dW, db]`` sums, divided by the total weight, plus the
    penalty (added on the client, as the in-memory call adds it after its sums)."""

    def __init__(self, backend, columns, spec: _chunks.Spec, W, b, alpha: float, denom: float,
                 row_starts):
        super().__init__(None, None, None, W, b, alpha, spec.label_smoothing)
        self.backend, self.columns, self.spec, self.row_starts = backend, columns, spec, row_starts
        self.alpha, self.denom = alpha, denom
        self.n_evaluations = 0

    def __call__(self, x):
        try:
            total = self.backend.map(_chunks.loss_grad, self.columns, (x, self.spec), reduce=True)
        except _chunks.ChunkError as exc:  # name the rows: the worker knew its chunk only
            start, stop = self.row_starts[exc.chunk], self.row_starts[exc.chunk + 1]
            raise ValueError(
                f"chunk {exc.chunk} of X (rows {start} to {stop - 1} of the data, counted from "
                f"0; positions below are within the chunk): {exc.message}"
            ) from None
        self.n_evaluations += 1
        loss = float(total[0]) / self.denom
        grad = total[1:] / self.denom
        if self.alpha:
            W_x = self.unpack(x)[0].astype(np.float64).ravel()
            loss += 0.5 * self.alpha * float(W_x @ W_x)
            grad[: self.n_coef] += self.alpha * W_x
        if self.first_loss is None:
            self.first_loss = loss
        return loss, grad


class SoftmaxRegression(_InMemory):
    """Softmax regression fitted on data spread over a Dask cluster.

    The parameters and the objective of :class:`fastsoftmax.SoftmaxRegression`, plus
    ``classes``. On dask input (an Array chunked along rows, or a DataFrame of numeric columns;
    y an Array or Series partitioned like X) the fit is lbfgs done the way Spark MLlib does it:
    the chunks are persisted on the workers once and never come to the client; each evaluation
    sends the parameters (scattered), computes every chunk's fused loss and gradient where the
    chunk lives (one task per worker task slot), sums the partial results through a fixed tree, and runs
    scipy's L-BFGS-B on the client with the in-memory estimator's stopping rules. It uses the
    active ``distributed.Client``, else dask's local scheduler. numpy or pandas input is fitted
    by the in-memory estimator.

    Parameters
    ----------
    classes : array-like of shape (n_classes,), default=None
        All the labels. Given: no pass over y is made to find them (a label of y that is not
        among them raises ValueError; a class absent from y is still a row of ``coef_``).
        None: found in one pass over y.
    n_jobs : int or None, default=None
        On dask input, the kernel threads of each chunk task: None is one thread per task (Dask
        counts a task slot as a core); k > 1 is for workers with one slot and k cores each
        (docs/scaling.md, "Threads inside tasks"). On numpy input, as in the in-memory estimator.
    solver : "lbfgs", default="lbfgs"
        Only lbfgs on dask input; the other solvers on numpy input.

    The remaining parameters are :class:`fastsoftmax.SoftmaxRegression`'s. The fit on dask input
    gives the same optimum as the in-memory fit on the concatenated data (not the same bits: the
    sums run in another order), and bitwise the same ``coef_`` and ``intercept_`` for the same
    chunks whatever the number of workers and threads per worker. ``predict``,
    ``predict_proba``, ``predict_log_proba`` and ``decision_function`` return lazy dask arrays
    on dask input, numpy arrays on numpy input. A fit that raises, on either input, keeps the
    earlier model (or leaves the estimator unfitted), as the in-memory fit does.

    Attributes
    ----------
    n_evaluations_ : int
        Loss-and-gradient evaluations of the last fit on dask input (each one pass over the data).
    n_chunks_ : int
        Chunks of X in the last fit on dask input.
    n_samples_seen_ : int
        Rows of X in the last fit on dask input (counted by the workers: partition lengths may
        be unknown beforehand).
    """

    def __init__(
        self, *, alpha=1e-4, fit_intercept=True, solver="lbfgs", max_iter=100, tol=1e-4,
        learning_rate="auto", batch_size=256, shuffle=True, random_state=None, warm_start=False,
        class_weight=None, label_smoothing=0.0, n_iter_no_change=5, n_jobs=None, verbose=0,
        callback=None, classes=None,
    ):
        super().__init__(
            alpha=alpha, fit_intercept=fit_intercept, solver=solver, max_iter=max_iter, tol=tol,
            learning_rate=learning_rate, batch_size=batch_size, shuffle=shuffle,
            random_state=random_state, warm_start=warm_start, class_weight=class_weight,
            label_smoothing=label_smoothing, n_iter_no_change=n_iter_no_change, n_jobs=n_jobs,
            verbose=verbose, callback=callback,
        )
        self.classes = classes

    _parameter_constraints: dict = {**_InMemory._parameter_constraints, "classes": ["array-like", None]}

    # ------------------------------------------------------------------ fit

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit on dask input (see the class docstring), or in memory on numpy/pandas input.

        Parameters
        ----------
        X : dask Array or DataFrame of shape (n_samples, n_features), or array-like
            Chunked along rows (column chunks are merged); float32 trains in float32.
        y : dask Array or Series of shape (n_samples,), or array-like
            Labels, partitioned like X.
        sample_weight : dask Array or Series of shape (n_samples,), array-like, or None
            Non-negative weights, partitioned like X.

        Returns
        -------
        self : SoftmaxRegression
        """
        if not is_dask(X):
            return self._fit_in_memory(X, y, sample_weight)
        _estimator._check_param_combinations(self, partial=False)
        if self.solver != "lbfgs":
            raise ValueError(f"solver={self.solver!r} is not available on dask input; use 'lbfgs'")
        # feature_names_in_, n_features_in_ and classes_ are set before the chunks are checked
        # (and coef_ by the callback): a fit that raises keeps the earlier model whole, as the
        # in-memory fit does, not new classes_ next to the old coef_.
        with self._fitted_state_kept_on_error():
            result = self._fit_dask(X, y, sample_weight)
        self._warn_outcome(result, "lbfgs", self.tol)
        return self

    def _fit_dask(self, X, y, sample_weight) -> solvers.SolverResult:
        """The body of fit on dask input: sets the fitted attributes, returns lbfgs's report."""
        self._set_feature_names(X)
        X, y, sample_weight = frame_rows(X, y, sample_weight)
        X = as_rows(X)
        y, sample_weight = like_rows(y, X, "y"), like_rows(sample_weight, X, "sample_weight")
        self.n_features_in_ = int(X.shape[1])
        backend = current_backend()
        xs, ys, sws = backend.persist([X, y, sample_weight])
        try:
            return self._fit_chunks(backend, X, xs, ys, sws)
        finally:
            backend.release([xs, ys, sws])

    def _fit_chunks(self, backend, X, xs, ys, sws) -> solvers.SolverResult:
        previous = self._warm_start_params()
        given = None if self.classes is None else np.unique(np.asarray(self.classes))
        stats = backend.map(_chunks.stats, [xs, ys, sws], given)
        row_starts = np.concatenate([[0], np.cumsum([s.n_rows for s in stats])])
        _raise_bad_chunks(stats, row_starts)
        self.classes_ = self._check_classes(given, stats)
        K = len(self.classes_)
        # Kept on the workers, not gathered: the next round trip is the first evaluation.
        codes = backend.apply(_chunks.encode_labels_chunk, [ys], self.classes_)
        totals = np.zeros(K)
        for s in stats:  # chunk order: the same bits every run
            totals[np.searchsorted(self.classes_, s.labels)] += s.label_totals
        class_weight = self._class_weight_vector(totals, K)
        if class_weight is not None:
            totals = totals * class_weight
        if np.count_nonzero(totals > 0) < 2:
            _estimator._refuse_one_class(self.classes_[np.argmax(totals > 0)], " with positive weight")
        scale = self._weight_scale(stats, class_weight)
        ws = None
        if sws is not None or class_weight is not None:
            ws = backend.apply(_chunks.weights_chunk, [codes, sws], (class_weight, scale))
        denom = float(totals.sum()) * scale
        stand_in = np.empty((0, self.n_features_in_), dtype=X.dtype)
        W, b = self._initial_params(stand_in, K, None, None, previous)
        spec = _chunks.Spec(K, self.n_features_in_, X.dtype.name, self.fit_intercept,
                            float(self.label_smoothing), self.n_jobs)
        objective = _ClusterObjective(backend, [xs, codes, ws], spec, W, b, float(self.alpha),
                                      denom, row_starts)
        result = solvers.lbfgs(
            X, None, None, W, b, alpha=float(self.alpha), label_smoothing=float(self.label_smoothing),
            max_iter=self.max_iter, tol=float(self.tol), callback=self._solver_callback(),
            blas_threads=1, objective=objective,
        )
        self.__dict__.pop("learning_rate_", None)
        self._set_solution(W, b, result.n_iter, result.loss_curve)
        self.n_evaluations_, self.n_chunks_ = objective.n_evaluations, len(xs)
        self.n_samples_seen_ = int(row_starts[-1])
        return result

    @staticmethod
    def _check_classes(given, stats) -> np.ndarray:
        """The given classes, or those found in the chunks' labels; at least two."""
        if given is not None:
            classes = given
        else:
            classes = np.unique(np.concatenate([np.asarray(s.labels) for s in stats]))
        check_classification_targets(classes)
        if len(classes) < 2:
            _estimator._refuse_one_class(classes[0] if len(classes) else None)
        return classes

    def _class_weight_vector(self, totals, n_classes: int) -> np.ndarray | None:
        """Per-class weights (float64), "balanced" from the weighted class totals."""
        if self.class_weight is None:
            return None
        if self.class_weight == "balanced":
            with np.errstate(divide="ignore"):
                per_class = totals.sum() / (n_classes * totals)
            return np.where(np.isfinite(per_class), per_class, 0.0)
        # A dict: the in-memory rule, on one stand-in row per class (whose per-row weights are
        # then the class weights): the weights as given, each finite and non-negative, else the
        # in-memory ValueError naming the class. Unchecked, NaN or inf reached the chunks as a
        # "sample_weight must be finite" error in a chunk of X (an argument never passed), or as
        # NaN parameters for a class absent from y, and a negative weight of such a class was
        # taken without a word.
        stand_in = np.empty((n_classes, 0))
        return self._sample_weight(stand_in, np.arange(n_classes), None, n_classes)[0]

    @staticmethod
    def _weight_scale(stats, class_weight) -> float:
        largest = max(s.max_weight for s in stats)
        if class_weight is not None:
            largest = max(largest, 1.0) * float(class_weight.max())
        if largest == 0 or _WEIGHT_RANGE[0] <= largest <= _WEIGHT_RANGE[1]:
            return 1.0
        return float(2.0 ** -np.frexp(largest)[1])

    def _set_feature_names(self, X) -> None:
        columns = getattr(X, "columns", None)
        if columns is not None and len(columns) and all(isinstance(c, str) for c in columns):
            self.feature_names_in_ = np.asarray(list(columns), dtype=object)
        else:
            self.__dict__.pop("feature_names_in_", None)

    def _fit_in_memory(self, X, y, sample_weight):
        """numpy/pandas input: the in-memory estimator, with ``classes`` checked against y."""
        if self.classes is not None:
            classes = np.unique(np.asarray(self.classes))
            present = np.unique(np.asarray(y))
            _chunks.encode_labels(present, classes)  # ValueError for labels not in classes
            if len(present) != len(classes):
                raise ValueError(
                    f"classes {np.setdiff1d(classes, present)!r} do not occur in y: the in-memory "
                    "fit (numpy input) learns the classes of y; pass dask arrays to train with "
                    "classes absent from the data"
                )
        return _InMemory.fit.__wrapped__(self, X, y, sample_weight)

    # ------------------------------------------------------------------ prediction

    def _block_estimator(self) -> _InMemory:
        """A picklable in-memory copy of the fitted model for the prediction tasks."""
        est = _InMemory(**{k: v for k, v in self.get_params().items() if k != "classes"})
        est.set_params(callback=None, n_jobs=None)
        for name in ("coef_", "intercept_", "classes_", "n_features_in_", "n_iter_"):
            setattr(est, name, getattr(self, name))
        return est

    def _lazy(self, X, method: str):
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self)
        X = as_rows(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but SoftmaxRegression is expecting "
                f"{self.n_features_in_} features as input"
            )
        K = len(self.classes_)
        one_d = method == "predict" or (method == "decision_function" and K == 2)
        dtype = self.classes_.dtype if method == "predict" else self.coef_.dtype
        kwargs = {"drop_axis": 1} if one_d else {"chunks": (X.chunks[0], (K,))}
        return X.map_blocks(_chunks.predict_block, self._block_estimator(), method, self.n_jobs,
                            dtype=dtype, meta=np.empty((0,) * (1 if one_d else 2), dtype), **kwargs)

    def decision_function(self, X):
        """The logits (or the two-class margin); lazy on dask input."""
        return self._lazy(X, "decision_function") if is_dask(X) else super().decision_function(X)

    def predict(self, X):
        """The most probable class per sample; lazy on dask input."""
        return self._lazy(X, "predict") if is_dask(X) else super().predict(X)

    def predict_proba(self, X):
        """Class probabilities; lazy on dask input."""
        return self._lazy(X, "predict_proba") if is_dask(X) else super().predict_proba(X)

    def predict_log_proba(self, X):
        """Log-probabilities; lazy on dask input."""
        return self._lazy(X, "predict_log_proba") if is_dask(X) else super().predict_log_proba(X)

    def score(self, X, y, sample_weight=None):
        """Mean accuracy (weighted); computed on the cluster for dask input."""
        if not is_dask(X):
            return super().score(X, y, sample_weight)
        import dask.array as da

        X, y, sample_weight = frame_rows(X, y, sample_weight)
        predicted = self.predict(X)
        y = like_rows(y, predicted[:, None], "y")
        correct = (predicted == y).astype(np.float64)
        if sample_weight is None:
            return float(correct.mean().compute())
        w = like_rows(sample_weight, predicted[:, None], "sample_weight").astype(np.float64)
        num, den = da.compute((correct * w).sum(), w.sum())
        return float(num / den)


def _raise_bad_chunks(stats, row_starts) -> None:
    """ValueError naming the first chunk (and its rows) with bad sample weights."""
    for i, s in enumerate(stats):
        if s.bad_weight:
            raise ValueError(f"sample_weight in chunk {i} (rows {row_starts[i]} to "
                             f"{row_starts[i + 1] - 1}): {s.bad_weight}")
