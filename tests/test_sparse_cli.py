"""svmlight data stays sparse through the command line: training, evaluation, prediction."""

import json

import numpy as np
from test_cli import cli_env, run  # noqa: F401 (fixture)

N_FEATURES = 10**6  # dense, 300 rows of these would take 2.4 GB


def _write_wide_svmlight(path, rng, n=300, k=3):
    """Rows of ~20 stored entries among 10**6 features; each class has its own 30 topic features."""
    topics = rng.choice(N_FEATURES, size=(k, 30), replace=False)
    lines = []
    for i in range(n):
        label = i % k
        cols = np.unique(np.concatenate([topics[label, rng.integers(0, 30, 10)],
                                         rng.integers(0, N_FEATURES, 10)]))
        lines.append(f"{label} " + " ".join(f"{c + 1}:{rng.uniform(0.5, 1.5):.4f}" for c in cols))
    lines[-1] = f"{(n - 1) % k} {N_FEATURES}:0.5"  # the file mentions the last feature
    path.write_text("\n".join(lines) + "\n")


def test_wide_svmlight_train_evaluate_predict(cli_env, tmp_path, rng):  # noqa: F811
    _write_wide_svmlight(tmp_path / "wide.svm", rng)
    result = run(cli_env, "train", "--data", "wide.svm", "--json", "--no-plot",
                 "--model-out", "m.npz", "--max-iter", "30", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["n_features"] == N_FEATURES
    assert summary["test_accuracy"] > 0.8
    result = run(cli_env, "evaluate", "--model", "m.npz", "--data", "wide.svm", "--json",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["accuracy"] > 0.8
    result = run(cli_env, "predict", "--model", "m.npz", "--data", "wide.svm", "--proba",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    P = np.loadtxt(result.stdout.splitlines(), delimiter=",")
    assert P.shape == (300, 3)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-4)


def test_standardize_of_sparse_data_is_refused(cli_env, tmp_path, rng):  # noqa: F811
    _write_wide_svmlight(tmp_path / "wide.svm", rng, n=30)
    result = run(cli_env, "train", "--data", "wide.svm", "--standardize", "--no-plot",
                 cwd=tmp_path)
    assert result.returncode != 0
    assert "--standardize centers every feature" in result.stderr
    assert "Traceback" not in result.stderr


def test_test_data_that_omits_the_last_features_is_padded(cli_env, tmp_path, rng):  # noqa: F811
    """`train --test-data` reads an svmlight test file at the training width, as evaluate and
    predict do: a test file need not mention the highest feature index."""
    _write_wide_svmlight(tmp_path / "wide.svm", rng, n=60)
    lines = (tmp_path / "wide.svm").read_text().splitlines()
    (tmp_path / "test.svm").write_text("\n".join(lines[:-1]) + "\n")  # without the last feature
    result = run(cli_env, "train", "--data", "wide.svm", "--test-data", "test.svm",
                 "--zero-based", "no", "--json", "--no-plot", "--max-iter", "5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["n_features"] == N_FEATURES
    assert 0.0 <= summary["test_accuracy"] <= 1.0
