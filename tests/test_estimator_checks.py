"""scikit-learn's estimator checks for every solver with its default parameters, no expected failures."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from fastsoftmax.estimator import SOLVERS, SoftmaxRegression


@parametrize_with_checks([SoftmaxRegression(solver=solver) for solver in SOLVERS])
def test_sklearn_compatible(estimator, check):
    check(estimator)


@parametrize_with_checks([SoftmaxRegression(solver="sgd", tol=None),
                          SoftmaxRegression(solver="gd", tol=None)])
def test_sklearn_compatible_textbook_loop(estimator, check):
    """tol=None: exactly max_iter epochs or steps, as a course's training loop runs."""
    check(estimator)
