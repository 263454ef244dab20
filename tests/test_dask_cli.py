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


def _separable(rng, n=120, d=3, k=2):
    """Well separated classes: every sensible fit classifies every row right."""
    y = np.arange(n) % k
    return np.eye(k, d)[y] * 6.0 + 0.3 * rng.standard_normal((n, d)), y


def test_model_out_may_not_overwrite_a_shard_of_the_glob(capsys, tmp_path, rng):
    X, y = _separable(rng)
    for i in range(2):
        np.savez(tmp_path / f"s{i}.npz", X=X[i::2], y=y[i::2])
    before = (tmp_path / "s0.npz").read_bytes()
    status = main(["train", "--dask-workers", "1", "--data", str(tmp_path / "*.npz"), "--quiet",
                   "--no-plot", "--model-out", str(tmp_path / "s0.npz")])
    err = capsys.readouterr().err
    assert status == 2
    assert f"--model-out {tmp_path / 's0.npz'} is the same file as --data" in err
    assert (tmp_path / "s0.npz").read_bytes() == before


def _write_idx(directory, rng):
    """train-* files of separable 2x2 images, and t10k-* files of the same images labelled one
    class further: the t10k accuracy is 0 where the training accuracy is 1."""
    from conftest import idx_bytes

    directory.mkdir()
    y = np.arange(60) % 3
    images = rng.integers(0, 40, size=(60, 2, 2))
    images.reshape(60, 4)[np.arange(60), y] += 200
    for prefix, labels in (("train", y), ("t10k", (y + 1) % 3)):
        (directory / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images))
        (directory / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    return directory


def test_idx_directory_is_tested_on_its_t10k_files(capsys, scheduler, tmp_path, rng):
    """As in memory: the t10k files are the test set of an IDX --data (they were never used)
    and of an IDX --test-data (they were its training files)."""
    idx = _write_idx(tmp_path / "mnist", rng)
    X, y = _separable(rng, d=4, k=3)
    np.savez(tmp_path / "shard.npz", X=X, y=y)
    for data, test in ((idx, []), (tmp_path / "shard.npz", ["--test-data", str(idx)])):
        args = ["--data", str(data), *test, "--model-out", str(tmp_path / "m.npz")]
        in_memory = _train(capsys, *args)
        on_dask = _train(capsys, *args, "--scheduler", scheduler)
        assert in_memory["train_accuracy"] == on_dask["train_accuracy"] == 1.0
        assert in_memory["test_accuracy"] == on_dask["test_accuracy"] == 0.0
        assert "t10k" in on_dask["test_data"] or str(idx) in on_dask["test_data"]
    no_test = _train(capsys, "--data", str(idx), "--test-size", "0", "--scheduler", scheduler,
                     "--model-out", str(tmp_path / "m.npz"))
    assert no_test["test_accuracy"] is None and no_test["test_data"] == "none (--test-size 0)"


def test_shard_labels_are_read_as_in_memory(capsys, scheduler, tmp_path, rng):
    """Shard labels become what the in-memory loader makes of them: strings of numbers numbers,
    whole floats integers; so a CSV test file of the same rows scores the same."""
    X, y = _separable(rng)
    text = np.array([" 1", "2"])[y]  # string labels, one with a space, as a CSV can hold them
    np.savez(tmp_path / "all.npz", X=X, y=text)
    np.savez(tmp_path / "part0.npz", X=X[:60], y=text[:60])
    np.savez(tmp_path / "part1.npz", X=X[60:], y=text[60:])
    np.savetxt(tmp_path / "test.csv", np.column_stack([X, y + 1]), delimiter=",", fmt="%.17g")
    test = ["--test-data", str(tmp_path / "test.csv")]
    in_memory = _train(capsys, "--data", str(tmp_path / "all.npz"), *test,
                       "--model-out", str(tmp_path / "memory.npz"))
    on_dask = _train(capsys, "--data", str(tmp_path / "part*.npz"), *test, "--scheduler",
                     scheduler, "--model-out", str(tmp_path / "dask.npz"))
    assert in_memory["test_accuracy"] == on_dask["test_accuracy"] == 1.0
    for name in ("memory.npz", "dask.npz"):
        classes = load_model(tmp_path / name).estimator.classes_
        assert classes.dtype == np.int64 and classes.tolist() == [1, 2]

    # Whole-number float labels of .npy shards, and a shard of whole floats beside one of strings.
    for i in range(2):
        np.save(tmp_path / f"rows{i}.npy", np.column_stack([X[i::2], y[i::2] + 1.0]))
    np.savez(tmp_path / "mixed0.npz", X=X[:60], y=y[:60] + 1.0)
    np.savez(tmp_path / "mixed1.npz", X=X[60:], y=text[60:])
    for pattern in ("rows*.npy", "mixed*.npz"):
        summary = _train(capsys, "--data", str(tmp_path / pattern), *test, "--scheduler",
                         scheduler, "--model-out", str(tmp_path / "m.npz"))
        assert summary["test_accuracy"] == 1.0
        estimator = load_model(tmp_path / "m.npz").estimator
        assert estimator.classes_.dtype == np.int64 and estimator.classes_.tolist() == [1, 2]
        assert estimator.predict(X[:4]).tolist() == (y[:4] + 1).tolist()


def test_test_data_problems_are_clean_errors(capsys, scheduler, tmp_path, rng):
    X, y = _separable(rng)
    np.savez(tmp_path / "train.npz", X=X, y=y)
    np.savez(tmp_path / "wide.npz", X=np.column_stack([X, X[:, 0]]), y=y)
    (tmp_path / "words.csv").write_text("1,0,0,0\n0,1,0,cat\n")
    for test, message in (
        ("wide.npz", f"test data {tmp_path / 'wide.npz'} has 4 features, training data has 3"),
        ("words.csv", f"test data {tmp_path / 'words.csv'}: label 'cat' is not a number, but "
                      "the training labels are (0, 1)"),
    ):
        status = main(["train", "--quiet", "--no-plot", "--data", str(tmp_path / "train.npz"),
                       "--test-data", str(tmp_path / test), "--scheduler", scheduler,
                       "--model-out", str(tmp_path / "m.npz")])
        assert status == 2
        assert capsys.readouterr().err == f"fastsoftmax: error: {message}\n"
        assert not (tmp_path / "m.npz").exists()
