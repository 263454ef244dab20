"""scikit-learn's estimator checks for every solver with its default parameters, no expected failures."""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastsoftmax.estimator import SOLVERS, SoftmaxRegression

# The checks fit tiny separable problems (make_blobs) where the optimum with alpha=1e-4 has large
# weights: the first-order solvers need far more than max_iter=100 epochs or steps to meet tol
# there (gd: over 10000 steps to a gradient of 1e-4), and say so with a ConvergenceWarning, as
# LogisticRegression does when it runs out of iterations. check_estimator does not count warnings
# as failures; pytest here would, so exactly that warning is let through ("." for the ":" that
# separates the fields of a filter). Every assertion of the
# checks still runs, and a divergence warning still fails them.
RAN_OUT = r"ignore:SoftmaxRegression.*did not converge. reached max_iter:" + (
    "sklearn.exceptions.ConvergenceWarning"
)


@pytest.mark.filterwarnings(RAN_OUT)
@parametrize_with_checks([SoftmaxRegression(solver=solver) for solver in SOLVERS])
def test_sklearn_compatible(estimator, check):
    check(estimator)


@parametrize_with_checks([SoftmaxRegression(solver="sgd", tol=None),
                          SoftmaxRegression(solver="gd", tol=None)])
def test_sklearn_compatible_textbook_loop(estimator, check):
    """tol=None: exactly max_iter epochs or steps, as a course's training loop runs."""
    check(estimator)
