"""``fastsoftmax train`` on Dask: --dask-workers, --scheduler, shards and Parquet read by the
workers, synthetic data generated on them."""

import json

import numpy as np
import pytest

pytest.importorskip("distributed")
pytest.importorskip("pyarrow")

import pandas as pd  # noqa: E402
from distributed import LocalCluster  # noqa: E402

from fastsoftmax.cli import main  # noqa: E402
from fastsoftmax.datasets import make_synthetic  # noqa: E402
from fastsoftmax.model_io import load_model  # noqa: E402


@pytest.fixture(scope="module")
def scheduler():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=50) as cluster:
        yield cluster.scheduler_address


def _train(capsys, *argv):
    status = main(["train", "--json", "--quiet", "--no-plot", *argv])
    out, err = capsys.readouterr()
    assert status == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    X, y = make_synthetic(900, 4, 3, seed=7)
    root = tmp_path_factory.mktemp("shards")
    for i in range(3):
        rows = slice(300 * i, 300 * (i + 1))
        np.savez(root / f"part{i}.npz", X=X[rows], y=y[rows])
        np.save(root / f"part{i}.npy", np.column_stack([X[rows], y[rows]]))
        frame = pd.DataFrame(X[rows], columns=list("abcd")).assign(label=y[rows])
        frame.to_parquet(root / f"part{i}.parquet")
    return root, X, y


@pytest.mark.parametrize("pattern", ["part*.npz", "part*.npy", "part*.parquet"])
def test_shards_read_by_the_workers(capsys, scheduler, shards, tmp_path, pattern):
    root, X, y = shards
    model = tmp_path / "model.npz"
    summary = _train(capsys, "--data", str(root / pattern), "--scheduler", scheduler,
                     "--model-out", str(model))
    assert summary["n_chunks"] == 3 and summary["n_features"] == 4 and summary["n_classes"] == 3
    assert summary["converged"] and summary["train_accuracy"] > 0.8
    loaded = load_model(model).estimator
    assert loaded.predict(X).shape == (900,)


def test_synthetic_generated_on_local_workers(capsys, tmp_path):
    summary = _train(capsys, "--data", "synthetic:3000,5,3,1", "--dask-workers", "1",
                     "--dtype", "float32", "--standardize", "--model-out", str(tmp_path / "m.npz"))
    assert summary["dtype"] == "float32" and summary["n_workers"] == 1
    assert summary["n_train"] == 3000 and summary["train_accuracy"] > 0.8
    assert load_model(tmp_path / "m.npz").mean.shape == (5,)


def test_dask_options_refused_with_what_they_cannot_do(capsys, tmp_path):
    for extra, message in (
        (["--solver", "sgd"], "--solver sgd is not available with Dask"),
        (["--test-size", "0.2"], "no held-out split with Dask"),
    ):
        status = main(["train", "--data", "synthetic:100,2,2", "--dask-workers", "1",
                       "--no-plot", "--model-out", str(tmp_path / "m.npz"), *extra])
        assert status == 2 and message in capsys.readouterr().err
    status = main(["train", "--dask-workers", "1", "--scheduler", "tcp://x:1"])
    assert status == 2 and "not allowed with" in capsys.readouterr().err
