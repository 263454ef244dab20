"""SoftmaxRegression on scipy.sparse X: every solver and method gives what the same data dense gives,
float32 sparse trains in float32, X is never modified or densified."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import assert_close
from sklearn.exceptions import ConvergenceWarning

from fastsoftmax import SoftmaxRegression, solvers

DTYPES = [np.float64, np.float32]


def make_problem(rng, dtype, n=400, d=30, k=4):
    X = sp.random(n, d, density=0.25, format="csr", random_state=rng,
                  data_rvs=lambda size: rng.normal(size=size)).astype(dtype)
    y = np.array(["a", "b", "c", "d"])[rng.integers(0, k, size=n)]
    return X, y


def fit_quietly(model, X, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X, y, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("solver", ["lbfgs", "newton-cg", "gd", "sgd"])
def test_fit_and_predict_match_dense(rng, solver, dtype):
    X, y = make_problem(rng, dtype)
    w = rng.uniform(0.5, 2.0, size=X.shape[0])
    snap = X.copy()
    params = dict(solver=solver, max_iter=20, random_state=0, batch_size=64)
    sparse_model = fit_quietly(SoftmaxRegression(**params), X, y, sample_weight=w)
    dense_model = fit_quietly(SoftmaxRegression(**params), X.toarray(), y, sample_weight=w)
    assert sparse_model.coef_.dtype == dtype
    # the iterates differ by the rounding of the two kernels, amplified by up to 20 steps
    scale = max(1.0, float(np.abs(dense_model.coef_).max()))
    tol = 1e-8 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(sparse_model.coef_, dense_model.coef_, atol=tol * scale)
    np.testing.assert_allclose(sparse_model.intercept_, dense_model.intercept_, atol=tol * scale)
    Xd = X.toarray()
    for method in ("predict_proba", "predict_log_proba", "decision_function"):
        assert_close(getattr(sparse_model, method)(X), getattr(sparse_model, method)(Xd), dtype)
    np.testing.assert_array_equal(sparse_model.predict(X), sparse_model.predict(Xd))
    assert sparse_model.score(X, y) == sparse_model.score(Xd, y)
    np.testing.assert_array_equal(X.toarray(), snap.toarray())
    np.testing.assert_array_equal(X.indices, snap.indices)


@pytest.mark.parametrize("fmt", ["csc", "coo", "csr_array"])
def test_other_formats(rng, fmt):
    X, y = make_problem(rng, np.float64)
    Xf = sp.csr_array(X) if fmt == "csr_array" else X.asformat(fmt)
    a = fit_quietly(SoftmaxRegression(max_iter=15), Xf, y)
    b = fit_quietly(SoftmaxRegression(max_iter=15), X, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_array_equal(a.predict_proba(Xf), b.predict_proba(X))


@pytest.mark.parametrize("dtype", DTYPES)
def test_partial_fit_matches_dense(rng, dtype):
    X, y = make_problem(rng, dtype)
    classes = np.unique(y)
    models = [SoftmaxRegression(random_state=0, batch_size=50) for _ in range(2)]
    for chunk in (slice(0, 200), slice(200, 400)):
        models[0].partial_fit(X[chunk], y[chunk], classes=classes)
        models[1].partial_fit(X[chunk].toarray(), y[chunk], classes=classes)
    assert models[0].coef_.dtype == dtype
    tol = 1e-10 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(models[0].coef_, models[1].coef_, atol=tol)


def test_squared_row_norms_sparse_equal_dense(rng):
    X, _ = make_problem(rng, np.float32)
    w = rng.uniform(0, 1, size=X.shape[0])
    w[::7] = 0
    np.testing.assert_allclose(solvers.squared_row_norms(X, w),
                               solvers.squared_row_norms(X.toarray(), w), rtol=1e-6)


def test_squared_row_norms_sum_duplicates_first(rng):
    """An entry stored as two halves has norm v^2, not 2 (v / 2)^2: the automatic learning rate
    of gd and sgd came out 14x too large on CSR input holding each entry as 20 duplicates."""
    X, _ = make_problem(rng, np.float64)
    X = X.tocsr()
    twenty = sp.csr_matrix((np.repeat(X.data / 20, 20), np.repeat(X.indices, 20), X.indptr * 20),
                           shape=X.shape)
    assert not twenty.has_canonical_format
    np.testing.assert_allclose(solvers.squared_row_norms(twenty),
                               solvers.squared_row_norms(X.toarray()), rtol=1e-12)
    assert not twenty.has_canonical_format  # the caller's matrix is left as it was


@pytest.mark.parametrize("solver", ["lbfgs", "newton-cg", "gd", "sgd"])
def test_sparse_tag(solver):
    assert SoftmaxRegression(solver=solver).__sklearn_tags__().input_tags.sparse


@pytest.mark.parametrize("dtype", DTYPES)
def test_newton_cg_reaches_the_lbfgs_optimum(rng, dtype):
    """newton-cg on sparse X (it refused it before its product had a sparse path) reaches the
    optimum lbfgs reaches on the same sparse data, in few iterations. float32 at tol 1e-5: its
    gradients cannot resolve 1e-7, and there the run crept down the loss's last digits until the
    line search found no decrease, after 6 to 24 iterations depending on the last bits of the
    products."""
    X, y = make_problem(rng, dtype)
    params = dict(alpha=1e-2, tol=1e-7 if dtype == np.float64 else 1e-5)
    newton = SoftmaxRegression(solver="newton-cg", **params).fit(X, y)
    lbfgs = SoftmaxRegression(solver="lbfgs", **params).fit(X, y)
    assert newton.coef_.dtype == dtype and newton.n_iter_ < 20
    tol = 1e-6 if dtype == np.float64 else 1e-3
    np.testing.assert_allclose(newton.coef_, lbfgs.coef_, atol=tol)
    assert newton.loss_curve_[-1] <= lbfgs.loss_curve_[-1] + tol


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_lbfgs_objective_on_sparse_x_matches_the_public_call(rng, dtype, bias):
    """lbfgs's objective validates sparse X once and (float64) lets the merge write dW into its
    gradient vector: loss and gradient are the bits of the public call at the same point."""
    import fastsoftmax as fs

    X, labels = make_problem(rng, dtype)
    y = np.unique(labels, return_inverse=True)[1]
    W = rng.normal(size=(4, X.shape[1])).astype(dtype)
    b = rng.normal(size=4).astype(dtype) if bias else None
    w = rng.uniform(0.5, 2.0, size=X.shape[0])
    objective = solvers._PackedObjective(X, y, w, W, b, 0.01, 0.1)
    x = objective.pack(W, b) + rng.normal(size=objective.x0.shape) * 0.1
    W_x, b_x = objective.unpack(x)
    loss, grad = objective(x)
    want = fs.linear_cross_entropy(X, W_x, b_x, y, sample_weight=w, label_smoothing=0.1,
                                   alpha=0.01)
    assert loss == want[0]
    np.testing.assert_array_equal(grad, objective.pack(want[1], want[2]))
    assert objective.loss_at(x) == loss
