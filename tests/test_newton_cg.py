"""SoftmaxRegression(solver="newton-cg"): scikit-learn's newton-cg optimum, warm start, callbacks,
weights, float32."""

import warnings

import numpy as np
import pytest
from conftest import assert_close
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

import fastsoftmax as fs
from fastsoftmax import SoftmaxRegression, solvers
from fastsoftmax import _kernels as k
from fastsoftmax import functional as F
from fastsoftmax._validation import readonly
from fastsoftmax.datasets import make_synthetic

LOADERS = [load_iris, load_wine, load_digits, load_breast_cancer]


def objective(X, y_codes, W, b, alpha, sample_weight=None):
    """The estimator's objective in float64 (the functional API, mean reduction)."""
    return fs.linear_cross_entropy(X.astype(np.float64), np.asarray(W, np.float64),
                                   np.asarray(b, np.float64), y_codes, alpha=alpha,
                                   sample_weight=sample_weight)[0]


def sklearn_optimum(X, y, C, sample_weight=None):
    """LogisticRegression(newton-cg)'s solution as softmax parameters (two classes: +-beta/2)."""
    lr = LogisticRegression(solver="newton-cg", C=C, tol=1e-10, max_iter=1000)
    lr.fit(X, y, sample_weight=sample_weight)
    if lr.coef_.shape[0] == 1:
        return (np.vstack([-lr.coef_[0] / 2, lr.coef_[0] / 2]),
                np.array([-lr.intercept_[0] / 2, lr.intercept_[0] / 2]))
    return lr.coef_, lr.intercept_


def alpha_for(C, total_weight, n_classes):
    """The README's rule: alpha = 1 / (C S) for >= 3 classes, 2 / (C S) for 2."""
    return (1.0 if n_classes > 2 else 2.0) / (C * total_weight)


@pytest.mark.parametrize("load", LOADERS, ids=[f.__name__[5:] for f in LOADERS])
def test_reaches_scikit_learn_newton_cg_optimum(load):
    X, y = load(return_X_y=True)
    K = len(np.unique(y))
    alpha = alpha_for(1.0, len(y), K)
    W_ref, b_ref = sklearn_optimum(X, y, 1.0)
    clf = SoftmaxRegression(solver="newton-cg", alpha=alpha, tol=1e-10, max_iter=500).fit(X, y)
    ours, theirs = objective(X, y, clf.coef_, clf.intercept_, alpha), objective(X, y, W_ref,
                                                                                b_ref, alpha)
    assert abs(ours - theirs) <= 1e-9 * theirs
    assert clf.n_iter_ == len(clf.loss_curve_) > 0
    assert np.all(np.diff(clf.loss_curve_) <= 0)
    assert not hasattr(clf, "learning_rate_")


def test_conjugate_gradient_past_its_rounding_floor_keeps_its_best_iterate():
    """Raw wine data (features up to 1680) at tol 1e-10: at a gradient of 6e-10, CG's residual
    reaches its floating-point floor (5e-15) long before the forcing term (2e-18), then drifts,
    the iterate growing 1e8-fold. Its best iterate is the Newton step; before, the drifted one
    raised the gradient 35-fold and the line search crawled on steps of 2^-29 with the gradient
    stuck at 1.3e-8 until max_iter=500 (on AVX2 machines; scikit-learn: 65 iterations, 5e-14)."""
    X, y = load_wine(return_X_y=True)
    alpha, tol = alpha_for(1.0, len(y), 3), 1e-10
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf = SoftmaxRegression(solver="newton-cg", alpha=alpha, tol=tol, max_iter=100).fit(X, y)
    assert clf.n_iter_ < 40
    dW, db = F.linear_cross_entropy(X, clf.coef_, clf.intercept_, y, alpha=alpha)[1:]
    assert max(np.abs(dW).max(), np.abs(db).max()) <= tol


def test_sample_and_class_weights_match_scikit_learn(rng):
    X, y = load_iris(return_X_y=True)
    sw = rng.uniform(0.1, 3.0, size=len(y))
    class_weight = {0: 1.0, 1: 2.0, 2: 0.5}
    total = float((sw * np.array([class_weight[c] for c in y])).sum())
    alpha = alpha_for(1.0, total, 3)
    lr = LogisticRegression(solver="newton-cg", C=1.0, tol=1e-10, max_iter=1000,
                            class_weight=class_weight).fit(X, y, sample_weight=sw)
    clf = SoftmaxRegression(solver="newton-cg", alpha=alpha, tol=1e-10, class_weight=class_weight)
    clf.fit(X, y, sample_weight=sw)
    w = sw * np.array([class_weight[c] for c in y])
    ours = objective(X, y, clf.coef_, clf.intercept_, alpha, w)
    theirs = objective(X, y, lr.coef_, lr.intercept_, alpha, w)
    assert abs(ours - theirs) <= 1e-9 * theirs


def test_same_optimum_as_lbfgs_without_intercept():
    X, y = load_wine(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    kw = dict(alpha=1e-2, fit_intercept=False, tol=1e-9, max_iter=1000)
    a = SoftmaxRegression(solver="newton-cg", **kw).fit(X, y)
    b = SoftmaxRegression(solver="lbfgs", **kw).fit(X, y)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(a.intercept_, 0.0)


def test_warm_start_continues_from_the_solution():
    X, y = load_iris(return_X_y=True)
    clf = SoftmaxRegression(solver="newton-cg", alpha=1e-2, tol=1e-8, warm_start=True).fit(X, y)
    coef = clf.coef_.copy()
    clf.fit(X, y)
    assert clf.n_iter_ == 0
    np.testing.assert_array_equal(clf.coef_, coef)
    cold = SoftmaxRegression(solver="newton-cg", alpha=1e-2, tol=1e-8, max_iter=2).fit
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        partial = cold(X, y)
    clf = SoftmaxRegression(solver="newton-cg", alpha=1e-2, tol=1e-8, warm_start=True)
    clf.coef_, clf.intercept_, clf.classes_ = partial.coef_, partial.intercept_, partial.classes_
    clf.fit(X, y)
    full = SoftmaxRegression(solver="newton-cg", alpha=1e-2, tol=1e-8).fit(X, y)
    assert clf.n_iter_ < full.n_iter_
    np.testing.assert_allclose(clf.coef_, full.coef_, rtol=1e-5, atol=1e-6)


def test_callback_stops_and_sees_the_current_model():
    X, y = load_digits(return_X_y=True)
    seen = []

    def callback(n_iter, est):
        seen.append((n_iter, est.n_iter_, len(est.loss_curve_), est.score(X, y)))
        return n_iter == 2

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clf = SoftmaxRegression(solver="newton-cg", callback=callback).fit(X, y)
    assert [s[:3] for s in seen] == [(1, 1, 1), (2, 2, 2)]
    assert clf.n_iter_ == 2 and len(clf.loss_curve_) == 2
    assert clf.score(X, y) == seen[-1][3]


def test_float32_is_kept_and_reaches_the_optimum():
    X, y = load_breast_cancer(return_X_y=True)
    X = ((X - X.mean(axis=0)) / X.std(axis=0))
    alpha = alpha_for(1.0, len(y), 2)
    c64 = SoftmaxRegression(solver="newton-cg", alpha=alpha, tol=1e-10).fit(X, y)
    c32 = SoftmaxRegression(solver="newton-cg", alpha=alpha, tol=1e-5).fit(X.astype(np.float32), y)
    assert c32.coef_.dtype == np.float32 and c32.intercept_.dtype == np.float32
    o64 = objective(X, y, c64.coef_, c64.intercept_, alpha)
    o32 = objective(X, y, c32.coef_, c32.intercept_, alpha)
    assert abs(o32 - o64) <= 1e-5 * o64


def test_tol_none_is_refused_and_max_iter_zero_returns_the_start():
    X, y = load_iris(return_X_y=True)
    with pytest.raises(ValueError, match="newton-cg needs a tol"):
        SoftmaxRegression(solver="newton-cg", tol=None).fit(X, y)
    with pytest.warns(ConvergenceWarning, match="max_iter=0"):
        clf = SoftmaxRegression(solver="newton-cg", max_iter=0).fit(X, y)
    np.testing.assert_array_equal(clf.coef_, 0.0)
    assert clf.n_iter_ == 0 and clf.loss_curve_ == []


# ---------------------------------------------------------------- ill-conditioned problems


def ill_conditioned(n, d, k, seed=0):
    """Standardized features scaled by factors spread over four decades (the benchmark's case)."""
    X, y = make_synthetic(n, d, k, seed=seed, dtype=np.float64, separation=3.0)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    return X * 10.0 ** np.random.default_rng(seed + 1).uniform(-2.0, 2.0, size=d), y


def test_ill_conditioned_problem_takes_few_newton_and_cg_iterations(monkeypatch):
    """Regression: without a preconditioner, CG on features of scales 1e-2..1e2 needs hundreds of
    products per Newton step and the run did not converge within 30 Newton iterations; with the
    class-mean Hessian diagonal it takes about 10 iterations and a few dozen products."""
    X, y = ill_conditioned(4000, 60, 8)
    products = []
    monkeypatch.setattr(F, "_linear_hvp_checked",
                        lambda *a, f=F._linear_hvp_checked: products.append(1) or f(*a))
    alpha = 1.0 / len(y)
    clf = SoftmaxRegression(solver="newton-cg", alpha=alpha, tol=1e-6, max_iter=30).fit(X, y)
    assert clf.n_iter_ <= 20 and len(products) <= 150, (clf.n_iter_, len(products))
    _, dW, db = fs.linear_cross_entropy(X, clf.coef_, clf.intercept_, y, alpha=alpha)
    assert max(np.abs(dW).max(), np.abs(db).max()) <= 1e-6


def curvature_reference(X, W, b, sample_weight, denom):
    """feature_curvature in plain NumPy: the class mean of the Hessian diagonal."""
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    X, W = X.astype(np.float64), W.astype(np.float64)
    Z = X @ W.T + (0.0 if b is None else b.astype(np.float64))
    P = np.exp(Z - Z.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    q = (P * (1 - P)).mean(axis=1) / denom
    if sample_weight.size:
        q *= sample_weight
    return q @ X**2, q.sum()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n_classes", [1, 3, 33])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("intercept", [False, True], ids=["no-intercept", "intercept"])
def test_feature_curvature_matches_numpy(rng, dtype, n_classes, sparse, weighted, intercept):
    """The class-mean Hessian diagonal of every path (fused kernel: dense up to 32 classes;
    blocks through linear_softmax: more classes, sparse X)."""
    import scipy.sparse as sp

    n, d = 300, 7
    X = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, size=d)
    X[rng.uniform(size=X.shape) < 0.4] = 0.0
    X = X.astype(dtype)
    W = rng.normal(size=(n_classes, d)).astype(dtype) / 4
    b = rng.normal(size=n_classes).astype(dtype) if intercept else None
    w = rng.uniform(0, 2, size=n) if weighted else np.empty(0)
    denom = float(w.sum()) if weighted else float(n)
    X_in = sp.csr_matrix(X) if sparse else readonly(np.ascontiguousarray(X))
    D, q_sum = solvers.feature_curvature(X_in, W, b, w, denom)
    D_ref, q_ref = curvature_reference(X, W, b, w, denom)
    assert D.dtype == np.float64 and D.shape == (d,)
    assert_close(D, D_ref, dtype)
    assert_close(q_sum, q_ref, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_feature_curvature_twins_are_bitwise_equal(rng, dtype):
    n, d, K, C = 200, 6, 7, 3
    X = readonly(rng.normal(size=(n, d)).astype(dtype))
    W = readonly((rng.normal(size=(K, d)) / 2).astype(dtype))
    b = readonly(rng.normal(size=K).astype(dtype))
    w = readonly(rng.uniform(0, 2, n))
    results = []
    for twin in (k._feature_curvature_small.parallel, k._feature_curvature_small.serial):
        D_parts, q_parts = np.empty((C, d)), np.empty(C)
        bad = twin(X, W, b, w, 1 / n, D_parts, q_parts)
        results.append((bad, D_parts.tobytes(), q_parts.tobytes()))
    assert results[0] == results[1]


# ---------------------------------------------------------------- the stopping test


def text_like(rng, n=1000, d=4096, k=10, words=20, topic_words=300):
    """Word counts of a text-like problem as CSR: Zipf-distributed words, 30% of them from the
    row's class topic, log(1 + count), rows L2-normalized (most features are rare)."""
    import scipy.sparse as sp

    y = rng.integers(0, k, size=n)
    cdf = np.cumsum(1.0 / (np.arange(1, d + 1) + 2.7))
    rows = np.repeat(np.arange(n), words)
    cols = np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(n * words)), d - 1)
    topic = rng.random(n * words) < 0.3
    topics = rng.integers(0, d, size=(k, topic_words))
    cols[topic] = topics[y[rows[topic]], rng.integers(0, topic_words, topic.sum())]
    X = sp.csr_matrix((np.ones(n * words), (rows, cols)), shape=(n, d))
    X.sum_duplicates()
    X.data = np.log1p(X.data)
    return sp.csr_matrix(X.multiply(1.0 / np.sqrt(X.multiply(X).sum(axis=1)))), y


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_default_tol_reaches_the_optimum_on_text_like_data(rng, sparse):
    """Regression: the gradient test alone (max-abs <= tol, scikit-learn's) stopped at the
    default tol 2e-4 above the optimum (5 iterations; at 30000 x 65536 x 20 after one, at 0.659
    against 0.140), reported as converged: rare features have gradients of order (rows holding
    them) / n_samples however far their coefficients are from the optimum. The Newton decrement
    test (predicted decrease <= tol^2) runs on to the optimum, sparse and dense alike."""
    X, y = text_like(rng)
    C = 100.0
    alpha = alpha_for(C, len(y), 10)
    W_ref, b_ref = sklearn_optimum(X, y, C)
    X_in = X if sparse else X.toarray()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converged: no ConvergenceWarning
        clf = SoftmaxRegression(solver="newton-cg", alpha=alpha).fit(X_in, y)
    ours, theirs = (objective(X_in, y, clf.coef_, clf.intercept_, alpha),
                    objective(X_in, y, W_ref, b_ref, alpha))
    assert abs(ours - theirs) <= 1e-9 * theirs, (ours, theirs, clf.n_iter_)
    assert clf.n_iter_ == len(clf.loss_curve_) < 15


def test_a_failed_line_search_is_convergence_only_when_the_decrease_is_unresolvable(monkeypatch):
    """A line search that finds no decrease after progress ends the run; it is reported as
    converged only when the decrease the Newton step predicts is within the loss's rounding,
    else as not converged (a ConvergenceWarning naming the predicted decrease)."""
    X, y = load_iris(return_X_y=True)
    searches = []

    def failing_after_two(problem, x, direction, loss, grad, old_loss, f=solvers._line_search):
        searches.append(1)
        return f(problem, x, direction, loss, grad, old_loss) if len(searches) <= 2 else (
            None, loss)

    monkeypatch.setattr(solvers, "_line_search", failing_after_two)
    with pytest.warns(ConvergenceWarning, match="predicts"):
        clf = SoftmaxRegression(solver="newton-cg", alpha=1e-2, tol=1e-10).fit(X, y)
    assert clf.n_iter_ == 2
    monkeypatch.undo()
    # float32 with a tol beyond its precision: the search fails at the optimum, a converged run
    X32 = readonly(X.astype(np.float32))
    W, b = np.zeros((3, 4), np.float32), np.zeros(3, np.float32)
    result = solvers.newton_cg(X32, y, None, W, b, alpha=1 / len(y), label_smoothing=0.0,
                               max_iter=100, tol=1e-10)
    assert result.converged and "flat to the precision" in result.message, result.message
