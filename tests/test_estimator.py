"""SoftmaxRegression: the textbook recipe, scikit-learn's optimum, the API, the contracts."""

import contextlib
import copy
import pickle
import warnings

import numba
import numpy as np
import pytest
import scipy.sparse as sp
from _reliability import blas_threads
from conftest import assert_close
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine, make_blobs
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.class_weight import compute_class_weight, compute_sample_weight

import reference
from fastsoftmax import functional as F
from fastsoftmax import solvers
from fastsoftmax.estimator import SOLVERS, SoftmaxRegression

DTYPES = [np.float64, np.float32]
LOADERS = {
    "iris": load_iris, "wine": load_wine, "digits": load_digits, "cancer": load_breast_cancer
}


def standardized(name):
    X, y = LOADERS[name](return_X_y=True)
    return StandardScaler().fit_transform(X), y


def objective(X, y, W, b, alpha, sample_weight=None, label_smoothing=0.0):
    """The estimator's objective, evaluated in float64 by the reference."""
    loss, _, _ = reference.linear_cross_entropy(
        np.asarray(X, np.float64),
        np.asarray(W, np.float64),
        np.asarray(b, np.float64),
        y,
        sample_weight=sample_weight,
        label_smoothing=label_smoothing,
        alpha=alpha,
    )
    return loss


def record_iterates(history):
    """A callback that stores a copy of the solution after every iteration."""

    def callback(iteration, est):
        history.append((iteration, est.coef_.copy(), est.intercept_.copy(), list(est.loss_curve_)))

    return callback


# ---------------------------------------------------------------- the textbook recipe


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_gd_follows_textbook_reference_step_for_step(rng, dtype, fit_intercept, weighted):
    X, y = standardized("iris")
    X = X.astype(dtype)
    sample_weight = rng.uniform(0.5, 2.0, len(y)) if weighted else None
    coef0 = rng.normal(0, 0.01, (3, X.shape[1]))  # D2L's initialization
    intercept0 = rng.normal(0, 0.01, 3) if fit_intercept else None
    params = {"learning_rate": 0.5, "alpha": 1e-2, "fit_intercept": fit_intercept}
    n_steps = 12

    history = []
    est = SoftmaxRegression(solver="gd", max_iter=n_steps, tol=None,
                            callback=record_iterates(history), **params)
    est.fit(X, y, sample_weight, coef_init=coef0, intercept_init=intercept0)
    assert [h[0] for h in history] == list(range(1, n_steps + 1))

    for step, coef, intercept, _ in history:
        ref = reference.SoftmaxRegression(max_iter=step, **params)
        ref.fit(X, y, sample_weight, coef_init=coef0, intercept_init=intercept0)
        assert coef.dtype == ref.coef_.dtype == dtype
        assert_close(coef, ref.coef_, dtype)
        assert_close(intercept, ref.intercept_, dtype)
    assert_close(est.loss_curve_, ref.loss_curve_, dtype)
    assert est.n_iter_ == n_steps


@pytest.mark.parametrize("shuffle", [True, False])
def test_sgd_is_the_minibatch_recipe(rng, shuffle):
    """Batches of batch_size from a fresh permutation each epoch, one step per batch."""
    X = rng.normal(size=(70, 5))
    y = rng.integers(0, 4, 70)
    lr, batch, epochs, alpha, seed = 0.3, 16, 3, 1e-3, 7
    est = SoftmaxRegression(solver="sgd", learning_rate=lr, batch_size=batch, max_iter=epochs,
                            tol=None, alpha=alpha, shuffle=shuffle, random_state=seed).fit(X, y)

    W, b = np.zeros((4, 5)), np.zeros(4)
    perms = np.random.RandomState(seed)
    epoch_losses = []
    for _ in range(epochs):
        order = perms.permutation(len(y)) if shuffle else np.arange(len(y))
        total = 0.0
        for start in range(0, len(y), batch):
            rows = order[start:start + batch]
            loss, dW, db = reference.linear_cross_entropy(X[rows], W, b, y[rows], alpha=alpha)
            W, b = W - lr * dW, b - lr * db
            total += loss * len(rows)
        epoch_losses.append(total / len(y))
    assert_close(est.coef_, W)
    assert_close(est.intercept_, b)
    assert_close(est.loss_curve_, epoch_losses)


# ---------------------------------------------------------------- scikit-learn's optimum


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["iris", "wine", "digits"])
def test_lbfgs_reaches_logistic_regression_optimum(name, dtype):
    X, y = standardized(name)
    C = 1.0
    alpha = 1.0 / (C * len(y))
    sk = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X, y)
    tol = 1e-8 if dtype == np.float64 else 1e-5
    est = SoftmaxRegression(alpha=alpha, tol=tol, max_iter=10_000).fit(X.astype(dtype), y)

    assert est.coef_.dtype == est.intercept_.dtype == dtype
    f_sk = objective(X, y, sk.coef_, sk.intercept_, alpha)
    f_est = objective(X, y, est.coef_, est.intercept_, alpha)
    # float64: 1e-7 relative; float32: 1e-4 relative (the acceptance bounds)
    bound = 1e-7 if dtype == np.float64 else 1e-4
    assert f_est <= f_sk * (1 + bound)
    assert f_sk <= f_est * (1 + bound)  # the same optimum, not a different one
    np.testing.assert_array_equal(est.predict(X), sk.predict(X))


def test_lbfgs_sample_weight_matches_logistic_regression(rng):
    X, y = standardized("wine")
    sample_weight = rng.uniform(0.1, 3.0, len(y))
    C = 0.5
    alpha = 1.0 / (C * sample_weight.sum())
    sk = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X, y, sample_weight)
    est = SoftmaxRegression(alpha=alpha, tol=1e-8, max_iter=10_000).fit(X, y, sample_weight)
    f_sk = objective(X, y, sk.coef_, sk.intercept_, alpha, sample_weight)
    f_est = objective(X, y, est.coef_, est.intercept_, alpha, sample_weight)
    assert abs(f_est - f_sk) <= 1e-7 * f_sk


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_lbfgs_solution_is_stationary(label_smoothing, fit_intercept):
    X, y = standardized("iris")
    alpha = 1e-2
    est = SoftmaxRegression(alpha=alpha, tol=1e-9, max_iter=1000, fit_intercept=fit_intercept,
                            label_smoothing=label_smoothing).fit(X, y)
    b = est.intercept_ if fit_intercept else None
    _, dW, db = reference.linear_cross_entropy(X, est.coef_, b, y, alpha=alpha,
                                               label_smoothing=label_smoothing)
    # the gradient starts near 0.3; ftol = 64 eps may stop L-BFGS-B just before tol=1e-9
    assert np.abs(dW).max() <= 1e-6
    if fit_intercept:
        assert np.abs(db).max() <= 1e-6
    else:
        np.testing.assert_array_equal(est.intercept_, np.zeros(3))


# ---------------------------------------------------------------- sgd, partial_fit


def test_sgd_matches_lbfgs_accuracy_on_digits():
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)
    scaler = StandardScaler().fit(X_train)
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    alpha = 1e-3
    lbfgs = SoftmaxRegression(alpha=alpha, max_iter=1000).fit(X_train, y_train)
    sgd = SoftmaxRegression(solver="sgd", alpha=alpha, batch_size=32, learning_rate=0.1,
                            max_iter=30, tol=None, random_state=0).fit(X_train, y_train)
    assert sgd.score(X_test, y_test) >= lbfgs.score(X_test, y_test) - 0.01
    assert sgd.loss_curve_[-1] < sgd.loss_curve_[0]


def test_partial_fit_over_chunks_approaches_fit():
    X, y = standardized("digits")
    alpha, lr, batch, passes = 1e-3, 0.1, 32, 10
    full = SoftmaxRegression(alpha=alpha, tol=1e-8, max_iter=1000).fit(X, y)
    f_opt = objective(X, y, full.coef_, full.intercept_, alpha)

    est = SoftmaxRegression(alpha=alpha, batch_size=batch, learning_rate=lr, random_state=0)
    chunks = np.array_split(np.arange(len(y)), 6)
    gaps = []
    for _ in range(passes):
        for chunk in chunks:
            est.partial_fit(X[chunk], y[chunk], classes=np.arange(10))
        gaps.append(objective(X, y, est.coef_, est.intercept_, alpha) - f_opt)
    assert est.n_iter_ == 6 * passes and len(est.loss_curve_) == 6 * passes
    assert np.all(np.diff(gaps) < 0)
    assert gaps[-1] < 0.2 * gaps[0]
    # as close to the optimum as fit(solver="sgd") gets with the same number of passes
    sgd = SoftmaxRegression(solver="sgd", alpha=alpha, batch_size=batch, learning_rate=lr,
                            max_iter=passes, tol=None, random_state=0).fit(X, y)
    assert gaps[-1] < 1.25 * (objective(X, y, sgd.coef_, sgd.intercept_, alpha) - f_opt)
    assert np.mean(est.predict(X) == full.predict(X)) > 0.97


def test_partial_fit_continues_from_fit(rng):
    X, y = standardized("iris")
    est = SoftmaxRegression(alpha=1e-2, random_state=0).fit(X, y)
    coef, n_iter = est.coef_.copy(), est.n_iter_
    est.partial_fit(X, y)
    assert est.n_iter_ == len(est.loss_curve_) == n_iter + 1  # fit's iterations plus one epoch
    # one small SGD epoch from the optimum stays near it
    assert np.abs(est.coef_ - coef).max() < 0.1 * np.abs(coef).max()


def test_partial_fit_errors():
    X, y = standardized("iris")
    est = SoftmaxRegression()
    with pytest.raises(ValueError, match="classes must be passed"):
        est.partial_fit(X, y)
    est.partial_fit(X[y < 2], y[y < 2], classes=[0, 1, 2])
    np.testing.assert_array_equal(est.classes_, [0, 1, 2])
    with pytest.raises(ValueError, match="not in classes"):
        est.partial_fit(X, y + 1)
    with pytest.raises(ValueError, match="differs from the classes"):
        est.partial_fit(X, y, classes=[0, 1])
    with pytest.raises(ValueError, match="balanced"):
        SoftmaxRegression(class_weight="balanced").partial_fit(X, y, classes=[0, 1, 2])


# ---------------------------------------------------------------- dtype and memory


@pytest.mark.parametrize("solver", ["lbfgs", "sgd", "gd"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dtype_is_kept_and_X_is_not_copied(monkeypatch, solver, dtype):
    X, y = standardized("iris")
    X = np.asarray(X, dtype=dtype)
    X.flags.writeable = False  # read-only input works and is never written
    seen = []
    original = F._linear_cross_entropy_checked  # every solver's loss and gradient goes through it

    def spy(X_arg, *args, **kwargs):
        seen.append((X_arg.dtype, np.shares_memory(X_arg, X), args[0].dtype))
        return original(X_arg, *args, **kwargs)

    monkeypatch.setattr(F, "_linear_cross_entropy_checked", spy)
    est = SoftmaxRegression(solver=solver, tol=None if solver != "lbfgs" else 1e-4, max_iter=5,
                            batch_size=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    assert seen
    assert all(x_dtype == dtype and w_dtype == dtype for x_dtype, _, w_dtype in seen)
    assert all(shared for _, shared, _ in seen)  # sgd too: its batches are read from X in place
    assert est.coef_.dtype == est.intercept_.dtype == dtype
    assert est.predict_proba(X).dtype == dtype
    assert est.predict_log_proba(X).dtype == dtype
    assert est.decision_function(X).dtype == dtype


def test_other_dtypes_train_in_float64():
    X, y = load_iris(return_X_y=True)
    est = SoftmaxRegression(max_iter=500).fit((X * 10).astype(np.int64), y)
    assert est.coef_.dtype == np.float64


# ---------------------------------------------------------------- predictions


def test_predictions_match_reference(rng):
    X, y = standardized("wine")
    est = SoftmaxRegression(alpha=1e-2).fit(X, y)
    P = est.predict_proba(X)
    assert_close(P, reference.linear_softmax(X, est.coef_, est.intercept_))
    Z = X @ est.coef_.T + est.intercept_
    assert_close(est.decision_function(X), Z)
    assert_close(est.predict_log_proba(X), reference.log_softmax(Z))
    np.testing.assert_array_equal(est.predict(X), est.classes_[P.argmax(axis=1)])
    assert est.score(X, y) == np.mean(est.predict(X) == y)


def test_small_predictions_run_blas_on_one_thread(monkeypatch):
    """The logits of a small X are one BLAS thread's work (a pool's barrier costs more than the
    product, and on a busy machine waits for a descheduled thread); a large X keeps BLAS's pool."""
    import fastsoftmax.estimator as E

    X, y = standardized("wine")
    est = SoftmaxRegression().fit(X, y)
    expected = est.decision_function(X)
    seen = []
    real = E.single_threaded_blas

    @contextlib.contextmanager
    def recording():
        with real():
            seen.append({n for api, _, n in blas_threads() if api == "openblas"})
            yield

    monkeypatch.setattr(E, "single_threaded_blas", recording)
    for method in (est.predict, est.decision_function, est.predict_log_proba):
        method(X)
    assert seen == [{1}] * 3
    monkeypatch.setattr(E, "SMALL_LOGITS_WORK", X.size * 3 - 1)  # wine has 3 classes
    seen.clear()
    np.testing.assert_array_equal(est.decision_function(X), expected)
    assert seen == []


def test_predict_log_proba_is_finite_where_proba_underflows():
    est = SoftmaxRegression().fit([[-1.0], [1.0]], [0, 1])
    est.coef_ = np.array([[-1000.0], [1000.0]])
    est.intercept_ = np.zeros(2)
    X = np.array([[1.0], [-1.0]])
    assert est.predict_proba(X)[0, 0] == 0.0
    log_proba = est.predict_log_proba(X)
    assert np.all(np.isfinite(log_proba))
    assert_close(log_proba, [[-2000.0, 0.0], [0.0, -2000.0]])


def test_binary_decision_function_is_one_dimensional(rng):
    X = rng.normal(size=(40, 3))
    y = np.where(X[:, 0] > 0, "yes", "no")
    est = SoftmaxRegression().fit(X, y)
    d = est.decision_function(X)
    assert d.shape == (40,)
    np.testing.assert_array_equal(est.predict(X), est.classes_[(d > 0).astype(int)])
    assert est.coef_.shape == (2, 3)


@pytest.mark.parametrize("labels", [["cat", "dog", "emu"], [-5, 3, 100]], ids=["str", "int"])
def test_any_labels(labels):
    X, y = standardized("iris")
    y_labels = np.asarray(labels)[y]
    est = SoftmaxRegression().fit(X, y_labels)
    np.testing.assert_array_equal(est.classes_, np.sort(labels))
    assert est.score(X, y_labels) > 0.95


def test_feature_names_in_from_a_dataframe():
    pd = pytest.importorskip("pandas")
    X, y = standardized("iris")
    names = ["sepal_len", "sepal_wid", "petal_len", "petal_wid"]
    est = SoftmaxRegression().fit(pd.DataFrame(X, columns=names), y)
    np.testing.assert_array_equal(est.feature_names_in_, names)
    assert est.n_features_in_ == 4
    with pytest.raises(ValueError, match="feature names"):
        est.predict(pd.DataFrame(X, columns=names[::-1]))


def test_unfitted_raises():
    with pytest.raises(NotFittedError):
        SoftmaxRegression().predict(np.zeros((2, 3)))


# ---------------------------------------------------------------- sklearn workflow


def test_pipeline_grid_search_and_cross_val_score():
    X, y = load_iris(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), SoftmaxRegression())
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.85
    search = GridSearchCV(pipe, {"softmaxregression__alpha": [1e-3, 1e-1, 10.0]}, cv=3).fit(X, y)
    assert search.best_params_["softmaxregression__alpha"] in (1e-3, 1e-1)
    assert search.best_score_ > 0.9
    # a huge penalty shrinks the coefficients towards zero
    strong = search.best_estimator_.set_params(softmaxregression__alpha=1e3).fit(X, y)
    assert np.abs(strong[-1].coef_).max() < 1e-2


def test_warm_start_continues_exactly_for_gd():
    X, y = standardized("wine")
    params = {"solver": "gd", "tol": None, "learning_rate": 0.3}
    once = SoftmaxRegression(max_iter=20, **params).fit(X, y)
    twice = SoftmaxRegression(max_iter=10, warm_start=True, **params).fit(X, y)
    first_curve = twice.loss_curve_
    twice.fit(X, y)
    assert_close(twice.coef_, once.coef_)
    assert_close(twice.intercept_, once.intercept_)
    assert_close(first_curve + twice.loss_curve_, once.loss_curve_)
    assert twice.n_iter_ == 10


def test_warm_start_lbfgs_starts_at_the_optimum():
    X, y = standardized("wine")
    est = SoftmaxRegression(warm_start=True, tol=1e-6, max_iter=1000).fit(X, y)
    cold_iters = est.n_iter_
    coef = est.coef_.copy()
    est.fit(X, y)
    assert est.n_iter_ <= 2 < cold_iters
    assert_close(est.coef_, coef, scale=1e4)  # ~1e-6 relative
    cold = SoftmaxRegression(warm_start=False, tol=1e-6, max_iter=1000).fit(X, y)
    assert cold.n_iter_ == cold_iters


def test_class_weight_balanced_equals_sample_weight():
    X, y = standardized("wine")
    keep = np.r_[np.flatnonzero(y == 0), np.flatnonzero(y == 1)[:20], np.flatnonzero(y == 2)]
    X, y = X[keep], y[keep]
    balanced = SoftmaxRegression(class_weight="balanced", tol=1e-8).fit(X, y)
    weighted = SoftmaxRegression(tol=1e-8).fit(X, y, compute_sample_weight("balanced", y))
    assert_close(balanced.coef_, weighted.coef_)
    assert_close(balanced.intercept_, weighted.intercept_)


def test_class_weight_dict_multiplies_sample_weight(rng):
    X, y = standardized("iris")
    sample_weight = rng.uniform(0.5, 1.5, len(y))
    class_weight = {0: 2.0, 1: 0.5, 2: 1.0}
    a = SoftmaxRegression(class_weight=class_weight, tol=1e-8).fit(X, y, sample_weight)
    b = SoftmaxRegression(tol=1e-8).fit(
        X, y, sample_weight * np.array([2.0, 0.5, 1.0])[y]
    )
    assert_close(a.coef_, b.coef_)


@pytest.mark.parametrize("weight", [np.nan, np.inf, -1.0], ids=["nan", "inf", "negative"])
def test_class_weight_dict_must_be_finite_and_non_negative(weight):
    """NaN and inf silently dropped the class (the fit was bit for bit class_weight={0: 0, ...});
    -1 raised "sample_weight must be non-negative", an argument the user had not passed."""
    X, y = standardized("iris")
    est = SoftmaxRegression(class_weight={0: weight, 1: 1.0, 2: 1.0})
    match = (r"class_weight must map every class to a finite, non-negative weight; "
             rf"got {weight} for class .*0")
    with pytest.raises(ValueError, match=match):
        est.fit(X, y)
    with pytest.raises(ValueError, match=match):
        est.partial_fit(X, y, classes=[0, 1, 2])
    # 0 drops a class on purpose; "balanced" gives a class of zero total weight inf, read as 0
    SoftmaxRegression(class_weight={0: 0.0, 1: 1.0, 2: 1.0}).fit(X, y)
    SoftmaxRegression(class_weight="balanced").fit(X, y, sample_weight=(y != 0).astype(float))


# ---------------------------------------------------------------- callback, warnings, pickle


@pytest.mark.parametrize("solver", ["lbfgs", "sgd", "gd"])
def test_callback_sees_current_solution_and_can_stop(solver):
    X, y = standardized("iris")
    calls = []

    def callback(iteration, est):
        calls.append(iteration)
        assert len(est.loss_curve_) == iteration == est.n_iter_
        assert est.coef_.shape == (3, 4) and list(est.classes_) == [0, 1, 2]
        assert_close(est.predict_proba(X),
                     reference.linear_softmax(X, est.coef_, est.intercept_))
        est.score(X, y)
        return iteration == 3

    est = SoftmaxRegression(solver=solver, max_iter=50, tol=1e-12, callback=callback,
                            batch_size=32, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stopping through the callback does not warn
        est.fit(X, y)
    assert calls == [1, 2, 3]
    assert est.n_iter_ == 3 and len(est.loss_curve_) == 3


def test_callback_in_partial_fit_counts_epochs():
    X, y = standardized("iris")
    calls = []
    est = SoftmaxRegression(callback=lambda i, e: calls.append((i, len(e.loss_curve_))))
    for _ in range(3):
        est.partial_fit(X, y, classes=[0, 1, 2])
    assert calls == [(1, 1), (2, 2), (3, 3)]


@pytest.mark.parametrize("solver", ["lbfgs", "sgd", "gd"])
def test_convergence_warning_when_max_iter_is_reached(solver):
    X, y = standardized("digits")
    est = SoftmaxRegression(solver=solver, max_iter=2, tol=1e-10, alpha=0.0, random_state=0)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        est.fit(X, y)
    assert est.n_iter_ == 2


def test_tol_none_runs_max_iter_without_warning():
    X, y = standardized("digits")
    est = SoftmaxRegression(solver="sgd", max_iter=3, tol=None, random_state=0).fit(X, y)
    assert est.n_iter_ == 3 and len(est.loss_curve_) == 3


def test_loss_curve_decreases_and_lbfgs_records_objective():
    X, y = standardized("wine")
    est = SoftmaxRegression(alpha=1e-2, tol=1e-8).fit(X, y)
    curve = np.asarray(est.loss_curve_)
    assert len(curve) == est.n_iter_
    assert np.all(np.diff(curve) <= 1e-12)
    assert curve[-1] == pytest.approx(objective(X, y, est.coef_, est.intercept_, 1e-2), rel=1e-12)


@pytest.mark.parametrize("solver", ["lbfgs", "sgd"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_pickle_round_trip(solver, dtype):
    X, y = standardized("digits")
    X = X.astype(dtype)
    est = SoftmaxRegression(solver=solver, tol=None if solver == "sgd" else 1e-4, max_iter=20,
                            random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    clone = pickle.loads(pickle.dumps(est))
    for method in ["predict", "predict_proba", "predict_log_proba", "decision_function"]:
        np.testing.assert_array_equal(getattr(clone, method)(X), getattr(est, method)(X))
    clone.partial_fit(X, y)
    est.partial_fit(X, y)  # the shuffling state travels too
    np.testing.assert_array_equal(clone.coef_, est.coef_)


def test_sgd_is_reproducible_with_random_state():
    X, y = standardized("iris")
    params = {"solver": "sgd", "batch_size": 16, "max_iter": 3, "tol": None}
    a = SoftmaxRegression(random_state=1, **params).fit(X, y)
    b = SoftmaxRegression(random_state=1, **params).fit(X, y)
    c = SoftmaxRegression(random_state=2, **params).fit(X, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert not np.array_equal(a.coef_, c.coef_)


# ---------------------------------------------------------------- threads and parameters


def _blas_threads():
    return sorted({num_threads for _, _, num_threads in blas_threads()})


@pytest.mark.parametrize("solver", ["lbfgs", "sgd"])
def test_n_jobs_sets_threads_during_fit_and_restores_them(solver):
    X, y = standardized("iris")
    before = (numba.get_num_threads(), _blas_threads())
    during = []

    def callback(iteration, est):
        during.append((numba.get_num_threads(), _blas_threads()))
        return True

    SoftmaxRegression(solver=solver, n_jobs=1, callback=callback).fit(X, y)
    assert during == [(1, [1])]
    assert (numba.get_num_threads(), _blas_threads()) == before


def test_thread_counts_are_restored_after_an_error():
    before = (numba.get_num_threads(), _blas_threads())
    with pytest.raises(ValueError):
        SoftmaxRegression(n_jobs=1).fit(np.zeros((3, 2)), [0, 1, 0], sample_weight=[1, -1, 1])

    def failing(iteration, est):
        raise RuntimeError("boom")

    X, y = standardized("iris")
    with pytest.raises(RuntimeError, match="boom"):
        SoftmaxRegression(n_jobs=1, callback=failing).fit(X, y)
    assert (numba.get_num_threads(), _blas_threads()) == before


def test_n_jobs_gives_the_same_model(rng):
    X, y = standardized("digits")
    one = SoftmaxRegression(n_jobs=1).fit(X, y)
    all_ = SoftmaxRegression(n_jobs=-1).fit(X, y)
    assert_close(one.coef_, all_.coef_)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"solver": "newton"}, r"'solver' parameter of SoftmaxRegression must be a str among"),
        ({"alpha": -1.0}, r"'alpha' parameter .* must be a float in the range \[0.0, inf\)"),
        ({"alpha": np.inf}, r"'alpha' parameter"),
        ({"learning_rate": 0.0}, r"'learning_rate' parameter .* \(0.0, inf\) or a str among"),
        ({"learning_rate": "fast"}, r"'learning_rate' parameter"),
        ({"label_smoothing": 1.0}, r"'label_smoothing' parameter .* \[0.0, 1.0\)"),
        ({"max_iter": -1}, r"'max_iter' parameter .* must be an int in the range \[0, inf\)"),
        ({"batch_size": 2.5}, r"'batch_size' parameter .* must be an int"),
        ({"n_jobs": 0}, r"'n_jobs' parameter"),
        ({"class_weight": "uniform"}, r"'class_weight' parameter"),
        ({"callback": 3}, r"'callback' parameter .* must be a callable or None"),
        ({"fit_intercept": "yes"}, r"'fit_intercept' parameter .* must be an instance of 'bool'"),
    ],
)
def test_bad_parameters_raise_scikit_learn_errors(params, match):
    X, y = standardized("iris")
    fits = [lambda est: est.fit(X, y), lambda est: est.partial_fit(X, y, classes=[0, 1, 2])]
    for fit in fits:
        with pytest.raises(InvalidParameterError, match=match) as info:
            fit(SoftmaxRegression(**params))
        assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)


def test_parameter_combinations_raise():
    X, y = standardized("iris")
    with pytest.raises(ValueError, match="lbfgs needs a tol"):
        SoftmaxRegression(tol=None).fit(X, y)
    SoftmaxRegression(tol=None, max_iter=1).partial_fit(X, y, classes=[0, 1, 2])  # sgd: fine


def test_solver_names_and_defaults_are_exposed():
    """The command line takes the solver names and defaults from the estimator."""
    assert set(SOLVERS) == SoftmaxRegression._parameter_constraints["solver"][0].options
    assert SOLVERS[0] == SoftmaxRegression().solver == "lbfgs"
    assert SoftmaxRegression().get_params()["learning_rate"] == "auto"


def test_bad_fit_inputs_raise():
    X, y = standardized("iris")
    with pytest.raises(ValueError, match="needs at least 2 classes with positive weight"):
        SoftmaxRegression().fit(X, np.zeros(len(y)))
    with pytest.raises(ValueError, match="non-negative"):
        SoftmaxRegression().fit(X, y, sample_weight=-np.ones(len(y)))
    with pytest.raises(ValueError, match="coef_init"):
        SoftmaxRegression().fit(X, y, coef_init=np.zeros((2, 4)))
    # named as the user passed them (the solvers said "W contains NaN or infinity")
    with pytest.raises(ValueError, match="coef_init must be finite in float64"):
        SoftmaxRegression().fit(X, y, coef_init=np.full((3, 4), np.nan))
    with pytest.raises(ValueError, match="intercept_init must be finite in float32"):
        SoftmaxRegression().fit(X.astype(np.float32), y, intercept_init=[1e300, 0.0, 0.0])


# ---------------------------------------------------------------- issue 10: scale, steps, rules


def noisy_blobs(n_centers=3):
    """scikit-learn's check_class_weight_classifiers data: unscaled (|x| ~ 50), very noisy."""
    return make_blobs(centers=n_centers, random_state=0, cluster_std=20)


def test_lbfgs_warns_when_extreme_scale_stops_it_at_the_start():
    X, y = load_iris(return_X_y=True)
    with pytest.warns(ConvergenceWarning, match=r"did not decrease.*max \|X\| = 7\.9e\+60"):
        est = SoftmaxRegression().fit(X * 1e60, y)
    assert est.n_iter_ == 0 and not est.coef_.any()  # the starting model, and the user is told


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("solver", ["lbfgs", "newton-cg"])
def test_second_order_solvers_name_the_scale_of_X(solver, sparse):
    """iris * 1e160: the squared row norms overflow float64. lbfgs failed with "W contains NaN or
    infinity" and newton-cg with an overflowing Hessian-vector product of "S" (after a numpy
    RuntimeWarning): arrays of the solvers, not arguments of the user."""
    X, y = load_iris(return_X_y=True)
    X = X * 1e160
    with pytest.raises(ValueError, match=rf"X is too large in scale for solver='{solver}': the "
                                         r"squared norms .*\(max \|X\| = 7\.9e\+160\).*standardize X"):
        SoftmaxRegression(solver=solver).fit(sp.csr_matrix(X) if sparse else X, y)


@pytest.mark.parametrize("solver", ["sgd", "gd"])
def test_default_learning_rate_fits_unscaled_data(solver):
    """The textbook step 0.1 diverged here (epoch loss up to 9.85, worse than the zero model)."""
    X, y = noisy_blobs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # gd may need more than 100 steps
        est = SoftmaxRegression(solver=solver, random_state=0).fit(X, y)
    assert np.all(np.isfinite(est.loss_curve_))
    assert max(est.loss_curve_) <= np.log(3) + 1e-3  # never above the start by more than noise
    # near the optimum (1.0720; LogisticRegression's accuracy here is only 0.39: noise)
    assert objective(X, y, est.coef_, est.intercept_, est.alpha) < 1.0720 + 0.005


@pytest.mark.parametrize("solver", ["sgd", "gd"])
def test_auto_learning_rate_is_one_over_the_lipschitz_bound(rng, solver):
    X = rng.normal(size=(50, 3)) * [1.0, 10.0, 0.1]
    y = rng.integers(0, 3, 50)
    alpha = 1e-2
    est = SoftmaxRegression(solver=solver, alpha=alpha, max_iter=3, tol=None, batch_size=10)
    est.fit(X, y)
    norms = (X**2).sum(axis=1) + 1.0
    L = 0.5 * (norms.mean() if solver == "gd" else norms.max()) + alpha
    assert est.learning_rate_ == pytest.approx(1 / L, rel=1e-12)
    # one batch per epoch is full-batch descent: the mean bound holds
    one_batch = est.set_params(batch_size=50).fit(X, y)
    assert one_batch.learning_rate_ == pytest.approx(1 / (0.5 * norms.mean() + alpha), rel=1e-12)
    assert SoftmaxRegression(solver=solver, learning_rate=0.3, max_iter=1, tol=None).fit(
        X, y).learning_rate_ == 0.3


@pytest.mark.parametrize("full_batch", [False, True])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_lipschitz_bound_bounds_the_gradient_change(rng, full_batch, fit_intercept):
    """||grad f(a) - grad f(b)|| <= L ||a - b|| for random pairs, with label smoothing too."""
    X = rng.normal(size=(40, 4)) * rng.uniform(0.1, 5.0, 4)
    y = rng.integers(0, 2, 40)  # two classes: the softmax Hessian's 1/2 is reached here
    w = rng.uniform(0.0, 2.0, 40)
    alpha = 1e-3
    L = solvers.lipschitz_bound(X, w, alpha, fit_intercept, full_batch=full_batch)

    def grad(theta):
        W = theta[:8].reshape(2, 4)
        b = theta[8:] if fit_intercept else None
        _, dW, db = reference.linear_cross_entropy(X, W, b, y, sample_weight=w, alpha=alpha,
                                                   label_smoothing=0.1)
        return np.concatenate([dW.ravel(), db if fit_intercept else []])

    n = 10 if fit_intercept else 8
    ratios = []
    for _ in range(200):
        a = rng.normal(0, 0.05, n)
        d = rng.normal(0, 1e-4, n)
        ratios.append(np.linalg.norm(grad(a + d) - grad(a)) / np.linalg.norm(d))
    assert max(ratios) <= L
    if full_batch:
        assert max(ratios) > 0.05 * L  # a bound, but not a vacuous one


@pytest.mark.parametrize("solver", ["sgd", "gd"])
def test_too_large_fixed_step_stops_with_a_warning_naming_it(solver):
    X, y = noisy_blobs()
    est = SoftmaxRegression(solver=solver, learning_rate=0.1, tol=None, random_state=0)
    with pytest.warns(ConvergenceWarning, match=r"diverged.*learning_rate=0\.1 is too large.*"
                                                r"max squared row norm of X = 2\.98e\+03"):
        est.fit(X, y)
    assert est.n_iter_ < 5  # stopped as soon as the loss rose, not after max_iter


@pytest.mark.parametrize(("chunk", "batch_size"), [(100, 16), (100, 256), (10, 32)],
                         ids=["batches", "one-batch", "one-small-batch"])
def test_partial_fit_reports_a_too_large_step(chunk, batch_size):
    """The same step diverges in partial_fit: reported within two calls, also when every call is
    one batch (its epoch loss is then its loss at the start, so only a reference across calls,
    uniform probabilities, can show the rise)."""
    X, y = noisy_blobs()
    est = SoftmaxRegression(learning_rate=0.1, batch_size=batch_size, random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for call in range(2):
            rows = np.arange(call * chunk, (call + 1) * chunk) % len(y)
            est.partial_fit(X[rows], y[rows], classes=[0, 1, 2])
            if caught:
                break
    assert [w.category for w in caught] == [ConvergenceWarning]
    message = str(caught[0].message)
    assert "diverged" in message and "learning_rate=0.1 is too large" in message
    if call:  # a later call names its reference, not "the start"
        assert "above 1.099 = log(n_classes), the loss of uniform probabilities" in message


def test_partial_fit_does_not_call_a_hard_chunk_divergence(rng):
    """A well-trained model (loss 0.2) meets mislabeled points: their loss (about 9) is far above
    log 2, the reference of later calls, but the automatic step is too small to diverge. Before:
    "diverged: the epoch loss rose from 0.6931 at the start to 8.785 ... learning_rate=0.122 is
    too large", a start loss the model never had and a step that was fine."""
    X = rng.normal(size=(600, 2))
    y = (X[:, 0] > 0).astype(int)
    est = SoftmaxRegression(random_state=0)
    for _ in range(30):
        order = rng.permutation(len(y))
        est.partial_fit(X[order], y[order], classes=[0, 1])
    assert est.loss_curve_[-1] < 0.25
    hard = np.array([[3.0, 0.0], [2.5, 0.0], [4.0, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est.partial_fit(hard, [0, 0, 0])  # one batch
        est.set_params(batch_size=2).partial_fit(np.repeat(hard, 4, axis=0), np.zeros(12, int))
    assert min(est.loss_curve_[-2:]) > 1.1 * np.log(2)  # where the old test fired


def test_sgd_reports_a_rise_only_for_a_step_that_can_diverge(rng):
    """Every step of at most 2 / L lowers the objective of its batch (the descent lemma): an epoch
    loss above the reference is then the data's, not divergence. The same rise with a larger
    step is reported."""
    X = rng.normal(size=(40, 3))
    y = rng.integers(0, 3, 40)
    W0 = rng.normal(0.0, 3.0, (3, 3))  # a model that fits these rows badly
    L = solvers.lipschitz_bound(X, None, 0.0, True)
    for learning_rate, diverged in [(2 / L, False), (20 / L, True)]:
        W, b = W0.copy(), np.zeros(3)
        result = solvers.sgd(X, y, None, W, b, alpha=0.0, label_smoothing=0.0,
                             learning_rate=learning_rate, batch_size=8, max_iter=1, tol=None,
                             n_iter_no_change=5, shuffle=True, rng=np.random.RandomState(0),
                             initial_loss=0.1)
        assert result.loss_curve[0] > 0.1 + 0.1 * np.log(3)  # above the reference either way
        assert result.diverged is diverged


@pytest.mark.parametrize("solver", ["sgd", "gd"])
def test_overflowing_weights_raise_naming_the_learning_rate(solver):
    X, y = standardized("iris")
    with pytest.raises(ValueError, match=r"overflowed the weights.*learning_rate=1e\+300 is too "
                                         r"large.*max squared row norm of X = "):
        SoftmaxRegression(solver=solver, learning_rate=1e300).fit(X * 10, y)


def test_extreme_sample_weights_raise_naming_them():
    X, y = standardized("iris")
    with pytest.raises(ValueError, match="sample_weight .* sums to infinity"):
        SoftmaxRegression(solver="sgd").fit(X, y, np.full(len(y), 1e308))


@pytest.mark.parametrize("solver", ["lbfgs", "sgd", "gd"])
def test_max_iter_zero_returns_the_start_with_a_warning(solver):
    X, y = standardized("iris")
    with pytest.warns(ConvergenceWarning, match="max_iter=0"):
        est = SoftmaxRegression(solver=solver, max_iter=0).fit(X, y)
    assert est.n_iter_ == 0 and est.loss_curve_ == []
    assert not est.coef_.any() and not est.intercept_.any()
    np.testing.assert_allclose(est.predict_proba(X), 1 / 3)


def test_partial_fit_refuses_one_class_like_fit():
    X, y = standardized("iris")
    with pytest.raises(ValueError) as from_fit:
        SoftmaxRegression().fit(X[y == 0], y[y == 0])
    with pytest.raises(ValueError) as from_partial_fit:
        SoftmaxRegression().partial_fit(X[y == 0], y[y == 0], classes=[0])
    message = "SoftmaxRegression needs at least 2 classes"
    assert str(from_fit.value).startswith(message)
    assert str(from_partial_fit.value).startswith(message)


def test_partial_fit_auto_step_never_grows():
    X, y = standardized("iris")
    est = SoftmaxRegression(random_state=0, batch_size=16)
    est.partial_fit(X * 3, y, classes=[0, 1, 2])
    first = est.learning_rate_
    est.partial_fit(X, y)  # smaller rows would allow a larger step: the earlier bound holds
    assert est.learning_rate_ == first


def _logistic_regression_pair(X, y, C, sample_weight, class_weight):
    """LogisticRegression(C) and the SoftmaxRegression with the README's alpha rule."""
    sk = LogisticRegression(C=C, tol=1e-12, max_iter=10_000, class_weight=class_weight)
    sk.fit(X, y, sample_weight)
    classes = np.unique(y)
    w = np.ones(len(y)) if sample_weight is None else sample_weight
    per_class = (np.ones(len(classes)) if class_weight is None else
                 compute_class_weight(class_weight, classes=classes, y=y, sample_weight=w))
    total = np.sum(w * per_class[np.searchsorted(classes, y)])  # S, the weighted total
    alpha = (2.0 if len(classes) == 2 else 1.0) / (C * total)
    est = SoftmaxRegression(alpha=alpha, tol=1e-12, max_iter=10_000, class_weight=class_weight)
    return sk, est.fit(X, y, sample_weight)


# The optimizers stop at gradient max-abs ~1e-10..1e-8 (ftol = 64 eps may stop them first); with
# the problems' curvature of order 1e-2..1, coefficients and probabilities agree to about 1e-6.
OPTIMUM_ATOL = 1e-5


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("class_weight", [None, "balanced", {0: 2.0, 1: 0.5}])
def test_binary_alpha_rule_matches_logistic_regression(rng, weighted, class_weight):
    """Two classes: alpha = 2 / (C * S); the softmax's two rows share LogisticRegression's one."""
    X, y = standardized("cancer")
    sample_weight = rng.uniform(0.1, 3.0, len(y)) if weighted else None
    sk, est = _logistic_regression_pair(X, y, 0.5, sample_weight, class_weight)
    np.testing.assert_allclose(est.coef_[1] - est.coef_[0], sk.coef_[0], atol=OPTIMUM_ATOL)
    np.testing.assert_allclose(est.coef_[1], -est.coef_[0], atol=OPTIMUM_ATOL)
    np.testing.assert_allclose(est.decision_function(X), sk.decision_function(X),
                               atol=OPTIMUM_ATOL * np.abs(X).sum(axis=1).max())
    np.testing.assert_allclose(est.predict_proba(X), sk.predict_proba(X), atol=OPTIMUM_ATOL)


@pytest.mark.parametrize("class_weight", [None, "balanced"])
def test_weighted_multiclass_alpha_rule_matches_logistic_regression(rng, class_weight):
    """Three classes with sample weights: alpha = 1 / (C * sum(sample_weight * class_weight))."""
    X, y = standardized("iris")
    sample_weight = rng.uniform(0.1, 3.0, len(y))
    sk, est = _logistic_regression_pair(X, y, 0.5, sample_weight, class_weight)
    np.testing.assert_allclose(est.coef_, sk.coef_, atol=OPTIMUM_ATOL)
    np.testing.assert_allclose(est.intercept_, sk.intercept_, atol=OPTIMUM_ATOL)
    np.testing.assert_allclose(est.predict_proba(X), sk.predict_proba(X), atol=OPTIMUM_ATOL)


def test_balanced_class_weight_uses_weighted_counts(rng):
    """'balanced' with sample_weight: class weights from the weighted counts (scikit-learn)."""
    X, y = standardized("iris")
    sample_weight = rng.uniform(0.1, 3.0, len(y)) * np.array([1.0, 4.0, 0.5])[y]
    balanced = SoftmaxRegression(class_weight="balanced", tol=1e-10).fit(X, y, sample_weight)
    per_class = compute_class_weight("balanced", classes=np.arange(3), y=y,
                                     sample_weight=sample_weight)
    weighted = SoftmaxRegression(tol=1e-10).fit(X, y, sample_weight * per_class[y])
    assert_close(balanced.coef_, weighted.coef_)
    unweighted_counts = compute_class_weight("balanced", classes=np.arange(3), y=y)
    assert not np.allclose(per_class, unweighted_counts, rtol=0.1)  # the test can tell them apart


# ---------------------------------------------------------------- a call that raises changes nothing


def fitted_state(est):
    """Copies of the fitted attributes (the trailing underscore that check_is_fitted looks for)."""
    return {name: copy.deepcopy(value) for name, value in vars(est).items() if name.endswith("_")}


def assert_state(est, state):
    now = fitted_state(est)
    assert now.keys() == state.keys()
    for name, value in state.items():
        np.testing.assert_array_equal(now[name], value, err_msg=name)


def raise_at(iteration):
    def callback(i, est):
        if i == iteration:
            raise RuntimeError("stop here")

    return callback


LABELS = np.array(["x", "y", "z"])
FAILING_REFITS = {
    "one class with positive weight":
        lambda est, X, y: est.fit(X, LABELS[y], sample_weight=(y == 0).astype(float)),
    "weights overflow in gd":
        lambda est, X, y: est.set_params(solver="gd", learning_rate=1e300).fit(X * 10, LABELS[y]),
    "fewer features and classes":
        lambda est, X, y: est.fit(X[:, :2], y % 2, sample_weight=-np.ones(len(y))),
    "nan coef_init":
        lambda est, X, y: est.fit(X, LABELS[y], coef_init=np.full((3, 4), np.nan)),
    "callback raises in a warm start":
        lambda est, X, y: est.set_params(warm_start=True, solver="gd", learning_rate=0.5, tol=None,
                                         callback=raise_at(3)).fit(X, y),
}


@pytest.mark.parametrize("failing_fit", FAILING_REFITS.values(), ids=FAILING_REFITS.keys())
def test_a_failed_fit_keeps_the_earlier_model(failing_fit):
    """classes_ (and n_features_in_) were set before the checks: a refit that raised left the new
    labels next to the old coefficients, and predict answered "z", "y", ... for a model trained
    on 0, 1, 2 (or raised IndexError when the number of classes changed)."""
    X, y = standardized("iris")
    est = SoftmaxRegression(alpha=1e-2, random_state=0).fit(X, y)
    est.partial_fit(X, y)  # learning_rate_ too
    before, predictions = fitted_state(est), est.predict(X)
    with pytest.raises((ValueError, RuntimeError)):
        failing_fit(est, X, y)
    assert_state(est, before)
    np.testing.assert_array_equal(est.predict(X), predictions)


def test_a_failed_partial_fit_keeps_the_earlier_model():
    X, y = standardized("iris")
    est = SoftmaxRegression(random_state=0, batch_size=16)
    est.partial_fit(X, y, classes=[0, 1, 2])
    before, predictions = fitted_state(est), est.predict(X)
    failing = [
        lambda: est.partial_fit(X, y + 1),  # a label not in classes
        lambda: est.partial_fit(X[:, :3], y),
        lambda: est.partial_fit(X, y, sample_weight=-np.ones(len(y))),
        # a smaller automatic step (learning_rate_), and an epoch done when the callback raises
        lambda: est.set_params(callback=raise_at(2)).partial_fit(X * 3, y),
    ]
    for call in failing:
        with pytest.raises((ValueError, RuntimeError)):
            call()
        assert_state(est, before)
        np.testing.assert_array_equal(est.predict(X), predictions)


def test_a_failed_first_call_leaves_the_estimator_unfitted():
    """A first fit or partial_fit that raised left classes_ without coef_: predict, and a
    corrected partial_fit, raised AttributeError."""
    X, y = standardized("iris")
    labels = np.array(["a", "b", "c"])
    attempts = [
        (lambda est: est.fit(X, y, sample_weight=(y == 0).astype(float)),
         lambda est: est.fit(X, y)),
        (lambda est: est.partial_fit(X, y, classes=labels),  # y's labels are not the classes
         lambda est: est.partial_fit(X, labels[y], classes=labels)),
    ]
    for fail, retry in attempts:
        est = SoftmaxRegression()
        with pytest.raises(ValueError):
            fail(est)
        assert fitted_state(est) == {}
        with pytest.raises(NotFittedError):
            est.predict(X)
        retry(est)
        assert est.predict(X).shape == y.shape and est.n_iter_ >= 1


def test_a_failed_fit_keeps_the_feature_names():
    pd = pytest.importorskip("pandas")
    X, y = standardized("iris")
    names = ["sepal_len", "sepal_wid", "petal_len", "petal_wid"]
    frame = pd.DataFrame(X, columns=names)
    est = SoftmaxRegression().fit(frame, y)
    with pytest.raises(ValueError, match="needs at least 2 classes"):
        est.fit(X[:, :3], np.zeros(len(y)))  # an array: validate_data dropped the names
    np.testing.assert_array_equal(est.feature_names_in_, names)
    assert est.n_features_in_ == 4
    est.predict(frame)
