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


def make_hashed_problem(rng, dtype, n=300, d=4096, k=5, vocabulary=200):
    """Hashed text features: `vocabulary` columns of d in use, 8 stored entries a row (the rest
    of the columns empty, as a HashingVectorizer leaves most of its 2**20 on a small corpus)."""
    columns = np.sort(rng.choice(d, size=vocabulary, replace=False))
    rows = np.repeat(np.arange(n), 8)
    X = sp.csr_matrix((rng.uniform(0.1, 1.0, n * 8), (rows, rng.choice(columns, n * 8))),
                      shape=(n, d)).astype(dtype)
    y = np.argmax(X @ rng.normal(size=(d, k)) * 3 + rng.normal(size=(n, k)), axis=1)
    return X, y, columns


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_unused_features_leave_the_parameter_vector(rng, index_dtype):
    """`_drop_unused_features` keeps the features with a stored entry or a non-zero starting
    coefficient, renumbers X's columns in order, and leaves the problem whole when nothing is
    empty or when the copy of the indices would outweigh the solver's saving."""
    from fastsoftmax._validation import check_sparse_X

    X, _, columns = make_hashed_problem(rng, np.float64)
    X.indices, X.indptr = X.indices.astype(index_dtype), X.indptr.astype(index_dtype)
    Xc = check_sparse_X(X, np.float64)
    W = np.zeros((5, X.shape[1]))
    W[2, 7] = 0.5  # a warm start: this feature moves (its L2 term) although no row has it
    reduced, kept = solvers._drop_unused_features(Xc, W, solvers._LBFGS_VECTORS)
    want = np.union1d(columns[np.diff(X.tocsc().indptr)[columns] > 0], [7])
    np.testing.assert_array_equal(kept, want)
    assert reduced.indices.dtype == index_dtype and reduced.shape == (X.shape[0], want.size)
    back = sp.csr_matrix((reduced.data, reduced.indices, reduced.indptr), shape=reduced.shape)
    np.testing.assert_array_equal(back.toarray(), X.toarray()[:, want])
    assert solvers._drop_unused_features(Xc, W, n_vectors=0)[1] is None  # nothing to gain
    dense_columns = check_sparse_X(X[:, want], np.float64)
    assert solvers._drop_unused_features(dense_columns, W[:, want], 20)[1] is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("solver", ["lbfgs", "newton-cg"])
def test_fit_without_the_unused_features_matches_dense(rng, monkeypatch, solver, dtype):
    """lbfgs and newton-cg on sparse X leave the empty features out of the parameter vector
    (`_drop_unused_features`): the fit matches the dense fit on the same data (which keeps them),
    their coefficients are exactly zero, and the callback sees the full-size model."""
    X, y, _ = make_hashed_problem(rng, dtype)
    empty = np.diff(X.tocsc().indptr) == 0
    kept, original = [], solvers._drop_unused_features
    monkeypatch.setattr(solvers, "_drop_unused_features",
                        lambda *args: kept.append(original(*args)[1]) or original(*args))
    shapes = []

    def record(iteration, model):
        shapes.append(model.coef_.shape)

    params = dict(solver=solver, alpha=1e-3, tol=1e-6 if dtype == np.float64 else 1e-4,
                  max_iter=200)
    sparse_model = fit_quietly(SoftmaxRegression(callback=record, **params), X, y)
    dense_model = fit_quietly(SoftmaxRegression(**params), X.toarray(), y)
    assert shapes and set(shapes) == {(5, X.shape[1])}
    np.testing.assert_array_equal(kept[0], np.flatnonzero(~empty))
    assert empty.sum() > 3000 and not sparse_model.coef_[:, empty].any()
    tol = 1e-5 if dtype == np.float64 else 2e-3
    scale = max(1.0, float(np.abs(dense_model.coef_).max()))
    np.testing.assert_allclose(sparse_model.coef_, dense_model.coef_, atol=tol * scale)
    np.testing.assert_allclose(sparse_model.intercept_, dense_model.intercept_, atol=tol * scale)


def test_warm_start_moves_coefficients_of_features_now_empty(rng):
    """A warm start from coefficients that are non-zero in features absent from the new data:
    those features stay in the problem and their coefficients shrink under the penalty, as in the
    dense fit."""
    X, y, columns = make_hashed_problem(rng, np.float64)
    models = [SoftmaxRegression(alpha=0.05, warm_start=True, max_iter=300, tol=1e-8)
              for _ in range(2)]
    for model, data in zip(models, (X, X.toarray()), strict=True):
        fit_quietly(model, data, y)
    gone = columns[:20]
    X2 = X.tolil()
    X2[:, gone] = 0
    X2 = X2.tocsr()
    X2.eliminate_zeros()
    start = models[0].coef_[:, gone].copy()
    assert np.abs(start).max() > 1e-2
    for model, data in zip(models, (X2, X2.toarray()), strict=True):
        fit_quietly(model, data, y)
    np.testing.assert_allclose(models[0].coef_, models[1].coef_, atol=1e-6)
    assert np.abs(models[0].coef_[:, gone]).max() < 0.5 * np.abs(start).max()
