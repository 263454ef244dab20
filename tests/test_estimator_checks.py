"""scikit-learn's estimator checks for every solver, with no expected failures."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from fastsoftmax.estimator import SoftmaxRegression


@parametrize_with_checks(
    [
        SoftmaxRegression(solver="lbfgs"),
        SoftmaxRegression(solver="sgd", tol=None),
        SoftmaxRegression(solver="gd", tol=None),
    ]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)
