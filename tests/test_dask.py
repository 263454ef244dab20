"""fastsoftmax.dask: the distributed fit against the in-memory one, determinism across cluster
shapes, faults, inputs, lazy prediction and the threads rule inside worker tasks."""

import os
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("distributed")
pytest.importorskip("dask.dataframe")

import dask.array as da  # noqa: E402
import dask.dataframe as dd  # noqa: E402
import pandas as pd  # noqa: E402
from distributed import Client, LocalCluster, WorkerPlugin  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402

from fastsoftmax import functional as F  # noqa: E402
from fastsoftmax.dask import (  # noqa: E402
    SoftmaxRegression,
    _backend,  # noqa: E402
    make_synthetic,
)
from fastsoftmax.datasets import make_synthetic as make_in_memory  # noqa: E402
from fastsoftmax.estimator import SoftmaxRegression as InMemory  # noqa: E402

# The objective at two optima found to tol=1e-10 agrees to this (the target).
OPTIMUM_RTOL = 1e-9
FIT = {"tol": 1e-10, "max_iter": 500, "alpha": 1e-3}


def _cluster(n_workers, threads_per_worker):
    """A client of its own LocalCluster of worker processes, both closed at the end."""
    with LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                      dashboard_address=":0", silence_logs=50) as cluster, \
            Client(cluster, set_as_default=False) as client:
        yield client


@pytest.fixture(scope="module")
def client():
    """2 worker processes x 1 thread: the cluster most tests run on."""
    yield from _cluster(2, 1)


@pytest.fixture(scope="module")
def client_1x2():
    """1 worker process x 2 threads: another cluster shape for the same chunks."""
    yield from _cluster(1, 2)


@pytest.fixture(scope="module")
def data():
    X, y = make_in_memory(3000, 6, 3, seed=3)
    return X, y


@pytest.fixture(scope="module")
def reference(client, data):
    """The fit on 2 workers x 1 thread of the standard chunks, to compare others with."""
    with client.as_current():
        return SoftmaxRegression(**FIT).fit(*_chunked(*data))


def _chunked(X, y, rows=500):
    return da.from_array(X, chunks=(rows, -1)), da.from_array(y, chunks=rows)


def _objective(est, X, y, sample_weight=None):
    """The in-memory objective at the estimator's solution, on the concatenated data."""
    codes = np.searchsorted(est.classes_, y)
    loss, _, _ = F.linear_cross_entropy(
        X.astype(np.float64), est.coef_.astype(np.float64), est.intercept_.astype(np.float64),
        codes, sample_weight=sample_weight, alpha=est.alpha,
    )
    return loss


def _class_weights(est, y, sample_weight):
    """Per-row weights of the in-memory estimator (sample weight times class weight)."""
    return est._sample_weight(np.empty((len(y), 0)), np.searchsorted(est.classes_, y),
                              sample_weight, len(est.classes_))[0]


def test_import_fastsoftmax_never_imports_dask():
    code = (
        "import sys, fastsoftmax, fastsoftmax.cli\n"
        "fastsoftmax.SoftmaxRegression\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


@pytest.mark.parametrize("weights", ["none", "sample", "balanced", "dict"])
def test_same_optimum_as_in_memory(client, data, rng, weights):
    X, y = data
    sample_weight = rng.uniform(0, 3, len(y)) if weights == "sample" else None
    class_weight = {"balanced": "balanced", "dict": {0: 2.0, 2: 0.5}}.get(weights)
    memory = InMemory(class_weight=class_weight, **FIT).fit(X, y, sample_weight)
    Xd, yd = _chunked(X, y)
    swd = None if sample_weight is None else da.from_array(sample_weight, chunks=500)
    with client.as_current():
        dist = SoftmaxRegression(class_weight=class_weight, **FIT).fit(Xd, yd, swd)
    assert dist.coef_.dtype == np.float64 and dist.n_chunks_ == 6
    w = _class_weights(memory, y, sample_weight)
    f_memory, f_dist = _objective(memory, X, y, w), _objective(dist, X, y, w)
    assert abs(f_dist - f_memory) <= OPTIMUM_RTOL * abs(f_memory)
    np.testing.assert_allclose(dist.coef_, memory.coef_, rtol=0, atol=1e-5)


@pytest.mark.parametrize("rows", [500, 75])
def test_bitwise_whatever_the_workers_and_threads(client, client_1x2, data, reference, rows):
    """The same chunks give the same bits on 2 workers x 1 thread, 1 worker x 2 threads, and
    dask's local scheduler; 40 chunks take the reduction tree's inner level (on the workers)."""
    X, y = data
    Xd, yd = _chunked(X, y, rows)
    fits = [reference] if rows == 500 else []
    for c in (client, client_1x2, None)[len(fits):]:
        with c.as_current() if c is not None else _no_client():
            fits.append(SoftmaxRegression(**FIT).fit(Xd, yd))
    assert len(_backend.tree_levels(fits[0].n_chunks_)) == (rows == 75)
    for other in fits[1:]:
        assert np.array_equal(other.coef_, fits[0].coef_)
        assert np.array_equal(other.intercept_, fits[0].intercept_)
        assert other.loss_curve_ == fits[0].loss_curve_


class _no_client:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_float32_trains_in_float32(client, data):
    X, y = data
    X32 = X.astype(np.float32)
    memory = InMemory(tol=1e-4, alpha=1e-3).fit(X32, y)
    with client.as_current():
        dist = SoftmaxRegression(tol=1e-4, alpha=1e-3).fit(*_chunked(X32, y))
    assert dist.coef_.dtype == np.float32 and dist.intercept_.dtype == np.float32
    f_memory, f_dist = _objective(memory, X, y), _objective(dist, X, y)
    assert abs(f_dist - f_memory) <= 1e-5 * f_memory


class _KillOnce(WorkerPlugin):
    """SIGKILLs its worker process when the worker starts its ``after``-th evaluation task
    (``marker`` is created first, exclusively: one kill per test, never on the restarted
    worker)."""

    def __init__(self, marker, after):
        self.marker, self.after, self.seen = marker, after, 0

    def transition(self, key, start, finish, **kwargs):
        if finish != "executing" or not str(key).startswith("loss_grad"):
            return
        self.seen += 1
        if self.seen < self.after:
            return
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


def test_worker_killed_mid_fit_gives_the_undisturbed_result(client, data, reference, tmp_path):
    X, y = data
    Xd, yd = _chunked(X, y)
    undisturbed = reference
    with client.as_current():
        marker = tmp_path / "killed"
        client.register_plugin(_KillOnce(str(marker), after=5), name="kill-once")
        try:
            disturbed = SoftmaxRegression(**FIT).fit(Xd, yd)
        finally:
            client.unregister_worker_plugin("kill-once")
        client.wait_for_workers(2, timeout=60)
    assert marker.exists()  # a worker really died in the middle of the fit
    assert np.array_equal(disturbed.coef_, undisturbed.coef_)
    assert np.array_equal(disturbed.intercept_, undisturbed.intercept_)
    assert disturbed.n_iter_ == undisturbed.n_iter_ > 3


def test_dataframe_with_unknown_partition_lengths(client, data):
    X, y = data
    frame = pd.DataFrame(X, columns=[f"f{j}" for j in range(X.shape[1])])
    frame = frame.assign(label=y, row=np.arange(len(y)))
    # Filtering leaves partition lengths unknown (and the second partition empty).
    ddf = dd.from_pandas(frame, npartitions=5)
    ddf = ddf[(ddf.row < 600) | (ddf.row >= 1200)].drop(columns="row")
    kept = frame[(frame.row < 600) | (frame.row >= 1200)].drop(columns="row")
    Xf, yf = ddf.drop(columns="label"), ddf["label"]
    assert np.isnan(Xf.to_dask_array().chunks[0][0])
    with client.as_current():
        dist = SoftmaxRegression(**FIT).fit(Xf, yf)
    memory = InMemory(**FIT).fit(kept.drop(columns="label"), kept["label"])
    X_kept, y_kept = kept.drop(columns="label").to_numpy(), kept["label"].to_numpy()
    f_memory, f_dist = _objective(memory, X_kept, y_kept), _objective(dist, X_kept, y_kept)
    assert abs(f_dist - f_memory) <= OPTIMUM_RTOL * abs(f_memory)
    assert list(dist.feature_names_in_) == list(Xf.columns)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predicted = dist.predict(Xf)
        assert isinstance(predicted, da.Array)
        np.testing.assert_array_equal(predicted.compute(), memory.predict(kept.drop(columns="label")))


def test_predict_is_lazy_on_dask_input_and_numpy_on_numpy(data, reference):
    X, y = data
    Xd, yd = _chunked(X, y)
    est = reference
    twin = InMemory()
    for name in ("coef_", "intercept_", "classes_", "n_features_in_"):
        setattr(twin, name, getattr(est, name))
    for method in ("predict", "predict_proba", "predict_log_proba", "decision_function"):
        lazy = getattr(est, method)(Xd)
        assert isinstance(lazy, da.Array)
        np.testing.assert_array_equal(lazy.compute(), getattr(twin, method)(X))
        eager = getattr(est, method)(X)
        assert isinstance(eager, np.ndarray)
        np.testing.assert_array_equal(eager, getattr(twin, method)(X))
    assert est.score(Xd, yd) == twin.score(X, y)


def test_two_class_decision_function_is_one_dimensional(data):
    X, y = data
    y2 = (y > 0).astype(int)
    est = SoftmaxRegression().fit(*_chunked(X, y2))
    assert est.decision_function(_chunked(X, y2)[0]).shape == (len(y2),)


def test_classes_given_and_absent_from_y(data):
    X, y = data
    est = SoftmaxRegression(classes=[0, 1, 2, 7]).fit(*_chunked(X, y))
    assert list(est.classes_) == [0, 1, 2, 7] and est.coef_.shape == (4, 6)
    assert est.predict_proba(_chunked(X, y)[0])[:, 3].max().compute() < 0.01


def test_label_not_in_classes_raises(client, data):
    X, y = data
    with client.as_current(), pytest.raises(ValueError, match=r"y contains labels not in classes"):
        SoftmaxRegression(classes=[0, 1]).fit(*_chunked(X, y))
    with pytest.raises(ValueError, match=r"y contains labels not in classes"):
        SoftmaxRegression(classes=[0, 1]).fit(X, y)


def test_nan_in_a_chunk_raises_naming_it(client, data):
    X, y = data
    X = X.copy()
    X[1234, 2] = np.nan
    message = r"chunk 2 of X \(rows 1000 to 1499 .*\): X contains NaN .* first at \(234, 2\)"
    with client.as_current(), pytest.raises(ValueError, match=message):
        SoftmaxRegression().fit(*_chunked(X, y))
    X[1234, 2] = np.inf
    with pytest.raises(ValueError, match=message):
        SoftmaxRegression().fit(*_chunked(X, y))


def test_bad_sample_weight_raises(data):
    X, y = data
    w = np.ones(len(y))
    w[700] = -1
    with pytest.raises(ValueError, match=r"sample_weight in chunk 1.*negative"):
        SoftmaxRegression().fit(*_chunked(X, y), da.from_array(w, chunks=500))


def test_bad_dask_input_raises(data):
    X, y = data
    Xd, yd = _chunked(X, y)
    with pytest.raises(TypeError, match="X must hold real numbers"):
        SoftmaxRegression().fit(Xd.astype(str), yd)
    with pytest.raises(ValueError, match="solver='sgd' is not available on dask input"):
        SoftmaxRegression(solver="sgd").fit(Xd, yd)
    with pytest.raises(ValueError, match="y has 2999 rows, X has 3000"):
        SoftmaxRegression().fit(Xd, yd[1:])
    with pytest.raises(ValueError, match="at least 2 classes"):
        SoftmaxRegression().fit(Xd, da.zeros(3000, chunks=500, dtype=int))


# A small problem for the tests of failed fits (dask's local scheduler, three chunks).
SMALL = make_in_memory(600, 4, 3, seed=1)
LABELS = np.array(["x", "y", "z"])


def _raise_at(iteration):
    def callback(i, est):
        if i == iteration:
            raise RuntimeError("stop here")

    return callback


def _fitted_state(est):
    """Copies of the fitted attributes (the trailing underscore that check_is_fitted looks for)."""
    return {name: np.array(value, copy=True) for name, value in vars(est).items()
            if name.endswith("_")}


def _with_nan(X):
    X = X.copy()
    X[5, 0] = np.nan
    return X


FAILING_REFITS = {
    "one class with positive weight":
        lambda est, X, y: est.fit(*_chunked(X, LABELS[y], 200),
                                  da.from_array((y == 0).astype(float), chunks=200)),
    "fewer features, NaN in X":  # raised by the first evaluation, on the workers
        lambda est, X, y: est.fit(*_chunked(_with_nan(X[:, :2]), LABELS[y], 200)),
    "callback raises":
        lambda est, X, y: est.set_params(callback=_raise_at(2)).fit(*_chunked(X, LABELS[y], 200)),
}


@pytest.mark.parametrize("failing_fit", FAILING_REFITS.values(), ids=FAILING_REFITS.keys())
def test_a_failed_refit_keeps_the_earlier_model(failing_fit):
    """feature_names_in_, n_features_in_ and classes_ were set before the chunks were checked: a
    refit that raised left "x", "y", "z" next to the coefficients of 0, 1, 2, and predict answered
    with them (or refused X of the width the model was trained on)."""
    X, y = SMALL
    frame = dd.from_pandas(pd.DataFrame(X, columns=["a", "b", "c", "d"]), npartitions=3)
    est = SoftmaxRegression(alpha=1e-2).fit(frame, dd.from_pandas(pd.Series(y), npartitions=3))
    before, predictions = _fitted_state(est), est.predict(frame).compute()
    with pytest.raises((ValueError, RuntimeError)):
        failing_fit(est, X, y)
    now = _fitted_state(est)
    assert now.keys() == before.keys()
    for name, value in before.items():
        np.testing.assert_array_equal(now[name], value, err_msg=name)
    np.testing.assert_array_equal(est.predict(frame).compute(), predictions)


def test_a_failed_first_fit_leaves_the_estimator_unfitted():
    """It left classes_ and n_features_in_ without coef_: predict raised AttributeError."""
    X, y = SMALL
    est = SoftmaxRegression()
    with pytest.raises(ValueError, match="at least 2 classes with positive weight"):
        est.fit(*_chunked(X, y, 200), da.from_array((y == 0).astype(float), chunks=200))
    assert _fitted_state(est) == {}
    with pytest.raises(NotFittedError):
        est.predict(_chunked(X, y, 200)[0])


@pytest.mark.parametrize("weight", [np.nan, np.inf, -1.0], ids=["nan", "inf", "negative"])
def test_class_weight_dict_must_be_finite_and_non_negative(weight):
    """The dict was not checked: NaN or inf raised "sample_weight must be finite" from a chunk of X
    (an argument never passed), or NaN parameters for a class absent from y (given in classes),
    whose negative weight was taken without a word. Now the in-memory error, before any pass."""
    X, y = SMALL
    Xd, yd = _chunked(X, y, 200)
    match = (r"class_weight must map every class to a finite, non-negative weight; "
             rf"got {weight} for class .*{{}}")
    with pytest.raises(ValueError, match=match.format(0)):
        SoftmaxRegression(class_weight={0: weight, 1: 1.0, 2: 1.0}).fit(Xd, yd)
    with pytest.raises(ValueError, match=match.format(7)):
        SoftmaxRegression(class_weight={7: weight}, classes=[0, 1, 2, 7]).fit(Xd, yd)
    # 0 drops a class on purpose, as in memory
    est = SoftmaxRegression(class_weight={0: 0.0, 1: 1.0, 2: 1.0}).fit(Xd, yd)
    assert np.isfinite(est.coef_).all() and list(est.classes_) == [0, 1, 2]


def test_numpy_input_is_the_in_memory_fit(data):
    X, y = data
    est, memory = SoftmaxRegression(**FIT).fit(X, y), InMemory(**FIT).fit(X, y)
    assert np.array_equal(est.coef_, memory.coef_)


def test_threads_rule_inside_worker_tasks(client, client_1x2):
    """One kernel thread (Numba and BLAS) per task by default, whatever the worker's slots;
    n_jobs=k gives k (for one-slot workers owning k cores)."""
    for c in (client, client_1x2):
        numba_threads, blas = c.submit(_backend.probe_task_threads, None, pure=False).result()
        assert numba_threads == 1 and set(blas) <= {1}
    import numba

    if numba.config.NUMBA_NUM_THREADS >= 2:
        numba_threads, blas = client.submit(_backend.probe_task_threads, 2, pure=False).result()
        assert numba_threads == 2 and set(blas) <= {2}


def test_synthetic_generated_on_workers_matches_in_memory_problem(client):
    Xd, yd = make_synthetic(1000, 4, 3, n_chunks=4, seed=5, dtype=np.float32)
    with client.as_current():
        est = SoftmaxRegression(tol=1e-6).fit(Xd, yd)
    assert Xd.dtype == np.float32 and Xd.numblocks == (4, 1)
    assert est.score(Xd, yd) > 0.8


def test_tree_sum_groups_fixed_chunks():
    parts = [np.array([float(i)]) * 0.1 for i in range(40)]
    inner = [_backend.sum_group(*parts[i:i + _backend.FAN_IN]) for i in range(0, 40, _backend.FAN_IN)]
    assert np.array_equal(_backend.tree_sum(parts), _backend.sum_group(*inner))
    assert _backend.tree_levels(16) == [] and _backend.tree_levels(17) == [2]
    assert _backend.tree_levels(16 * 16 * 3) == [48, 3]


class _Cell:
    """A stand-in for a chunk's future: a key the fake client places, and the value."""

    def __init__(self, key, value):
        self.key, self.value = key, value


class _PlacingClient:
    """A stand-in for distributed.Client that runs tasks at once and reports the placement it
    was given (chunk i on worker ``place(i)``)."""

    def __init__(self, place):
        self.place, self.tasks = place, []

    def scatter(self, value, hash, broadcast, workers):
        return value

    def who_has(self, futures):
        return {f.key: (self.place(int(f.key)),) for f in futures}

    def nthreads(self):
        return {"a": 1, "b": 1}

    def submit(self, fn, *args, key):
        self.tasks.append(key)
        return _Done(fn(*(a.value if isinstance(a, _Done) else a for a in args)))

    def gather(self, futures):
        return [f.value for f in futures]


class _Done:
    def __init__(self, value):
        self.value = value


@pytest.mark.parametrize("n", [5, 40, 16 * 16 + 5])
@pytest.mark.parametrize("placement", ["one worker", "blocks of 24", "alternate"])
def test_grouped_tasks_sum_in_the_tree_order_whatever_the_placement(n, placement):
    """One task per worker, first-level nodes summed where their chunks all live or by a task of
    their own: the bits of `tree_sum`, for a tree of one, two or three levels."""
    place = {"one worker": lambda i: "a", "blocks of 24": lambda i: "ab"[i // 24 % 2],
             "alternate": lambda i: "ab"[i % 2]}[placement]
    parts = [np.random.default_rng(i).standard_normal(3) * 10.0**(i % 7) for i in range(n)]
    cells = [_Cell(str(i), p) for i, p in enumerate(parts)]
    fake = _PlacingClient(place)
    total = _backend.DistributedBackend(fake).map(
        lambda i, cell, shared: cell.value * shared, [cells], 1.0, reduce=True)
    assert np.array_equal(total, _backend.tree_sum(parts))
    evaluations = [k for k in fake.tasks if k.startswith("<lambda>")]
    assert len(evaluations) == len({place(i) for i in range(n)})
    listed = _backend.DistributedBackend(fake).map(lambda i, cell, shared: i, [cells], None)
    assert listed == list(range(n))


def test_worker_plans_keep_whole_first_level_nodes_on_their_worker():
    placed = {"a": [i for i in range(16) if i != 3], "b": [3, *range(16, 40)]}
    plans = _backend._worker_plans(placed, 40, reduce=True)
    assert plans == {"a": [[i] for i in range(16) if i != 3],
                     "b": [[3], list(range(16, 32)), list(range(32, 40))]}
    assert _backend._worker_plans(placed, 40, reduce=False)["b"] == [[3], *[[i] for i in range(16, 40)]]


def test_a_worker_plan_is_cut_into_one_task_per_slot():
    plan = [[0], [1], list(range(2, 18)), [18], [19]]
    assert _backend._split(plan, 1) == [plan]
    assert _backend._split(plan, 2) == [[[0], [1], list(range(2, 18))], [[18], [19]]]
    assert _backend._split([[i] for i in range(8)], 2) == [[[0], [1], [2], [3]], [[4], [5], [6], [7]]]
    assert _backend._split([[i] for i in range(3)], 4) == [[[0]], [[1]], [[2]]]


class _LosingClient:
    """A stand-in for distributed.Client whose first ``losses`` gathers fail the way a lost
    scattered value does (FutureCancelledError: 'already forgotten'); then it computes."""

    def __init__(self, losses):
        self.losses, self.scattered = losses, []

    def scatter(self, value, hash, broadcast, workers):
        assert hash is False
        self.scattered.append(value)
        return value

    def who_has(self, futures):
        return {}

    def nthreads(self):
        return {}

    def submit(self, fn, *args, key):
        return fn(*args)

    def gather(self, results):
        from distributed.client import FutureCancelledError

        if self.losses:
            self.losses -= 1
            raise FutureCancelledError("x", reason="already forgotten")
        return results


def test_evaluation_resubmitted_when_the_scattered_parameters_are_lost():
    parts = [np.array([1.0, 2.0]), np.array([3.0, 4.0])]
    lossy = _LosingClient(losses=2)
    total = _backend.DistributedBackend(lossy).map(
        lambda i, part, shared: part * shared, [parts], 2.0, reduce=True)
    assert np.array_equal(total, [8.0, 12.0]) and len(lossy.scattered) == 3
    with pytest.raises(RuntimeError, match="lost data of this evaluation 4 times"):
        _backend.DistributedBackend(_LosingClient(losses=4)).map(
            lambda i, part, shared: part, [parts], 1.0, reduce=True)
