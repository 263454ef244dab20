"""SoftmaxRegression(solver="newton-cg"): scikit-learn's newton-cg optimum, warm start, callbacks,
weights, float32."""

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

import fastsoftmax as fs
from fastsoftmax import SoftmaxRegression

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
