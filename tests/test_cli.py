"""End-to-end tests of the ``fastsoftmax`` command, run as a real subprocess.

Every subprocess pays Python and Numba start-up, so the data is small and the subprocesses use the
test session's Numba cache (its NUMBA_CACHE_DIR, inherited): a kernel compiled by any earlier
process of the session, or by the first training run here, is loaded, not compiled again. (A
cache of their own made every kernel the command line runs compile once more, cold.)
"""

import gzip
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import idx_bytes

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INSTALL_HINT = 'pip install "fastsoftmax[cli]"'


@pytest.fixture(scope="session")
def cli_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["MPLBACKEND"] = "Agg"
    return env


def run(env, *args, cwd, extra_path=None, stderr=subprocess.PIPE):
    """Run ``python -m fastsoftmax ARGS`` in ``cwd``; ``extra_path`` goes first on PYTHONPATH."""
    if extra_path is not None:
        env = {**env, "PYTHONPATH": os.pathsep.join([str(extra_path), env["PYTHONPATH"]])}
    return subprocess.run(
        [sys.executable, "-m", "fastsoftmax", *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        timeout=300,
    )


def run_tty(env, *args, cwd, extra_path=None):
    """Like :func:`run`, with stderr on a pseudo-terminal; returns (returncode, stdout, stderr)."""
    pty = pytest.importorskip("pty")
    if extra_path is not None:
        env = {**env, "PYTHONPATH": os.pathsep.join([str(extra_path), env["PYTHONPATH"]])}
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastsoftmax", *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    while True:  # drain the terminal while the child runs, or it blocks on a full buffer
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    stdout = proc.stdout.read().decode()
    proc.stdout.close()
    os.close(master)
    return proc.wait(timeout=300), stdout, b"".join(chunks).decode(errors="replace")


def assert_one_line_error(result, *fragments):
    """Exit status 2, one ``fastsoftmax: error:`` line naming the problem, nothing on stdout."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fastsoftmax: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == ""


def hide_modules(directory: Path, *names) -> Path:
    """A directory that, first on PYTHONPATH, makes ``import NAME`` fail as if not installed."""
    for name in names:
        (directory / name).mkdir(parents=True)
        (directory / name / "__init__.py").write_text(
            f"raise ImportError('{name} is hidden by the test')\n"
        )
    return directory


def blobs(rng, n=150, d=4, k=3):
    """Well separated Gaussian classes: any sensible classifier scores above 0.9."""
    centers = rng.normal(0.0, 4.0, size=(k, d))
    y = np.arange(n) % k
    return centers[y] + rng.standard_normal((n, d)), y


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def write_idx_digits(directory: Path, rng, *, gz: bool, with_test: bool = True):
    """MNIST-style files of 8x8 images: class c lights up rows 2c..2c+1, plus noise."""
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", 60), ("t10k", 24)) if with_test else (("train", 60),):
        labels = np.arange(n) % 3
        images = rng.integers(0, 60, size=(n, 8, 8))
        for c in range(3):
            images[labels == c, 2 * c : 2 * c + 2, :] += 180
        with opener(directory / f"{prefix}-images-idx3-ubyte{suffix}", "wb") as f:
            f.write(idx_bytes(images))
        with opener(directory / f"{prefix}-labels-idx1-ubyte{suffix}", "wb") as f:
            f.write(idx_bytes(labels))


# ----------------------------------------------------------------------------- default data


@pytest.fixture(scope="module")
def digits_run(cli_env, tmp_path_factory):
    """``fastsoftmax train`` with no arguments, as in the README's first command."""
    cwd = tmp_path_factory.mktemp("default-train")
    result = run(cli_env, "train", cwd=cwd)
    return cwd, result


def test_train_with_no_arguments(digits_run):
    cwd, result = digits_run
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # stderr is not a terminal: no progress bar, and no warnings
    out = result.stdout
    for field in ["train accuracy:", "test accuracy:", "final objective", "wall time:"]:
        assert field in out
    assert "samples/s" in out
    assert "1437 train / 360 test samples, 64 features, 10 classes, float64" in out
    test_accuracy = float(out.split("test accuracy:")[1].split()[0])
    assert test_accuracy > 0.93

    with np.load(cwd / "model.npz", allow_pickle=False) as model:
        assert str(model["format"]) == "fastsoftmax-model"
        assert int(model["format_version"]) == 1
        assert model["coef"].shape == (10, 64) and model["coef"].dtype == np.float64
        assert model["intercept"].shape == (10,)
        np.testing.assert_array_equal(model["classes"], np.arange(10))
        assert int(model["n_features"]) == 64 and str(model["dtype"]) == "float64"
        assert model["mean"].shape == (0,)  # not standardized
    outputs = ["model.npz"]
    if _has_matplotlib():
        assert png_size((cwd / "training.png").read_bytes()) == (1000, 400)
        outputs.append("training.png")
    assert sorted(p.name for p in cwd.iterdir()) == outputs  # and no temporary files


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def test_evaluate_digits(cli_env, digits_run):
    cwd, _ = digits_run
    result = run(cli_env, "evaluate", "--model", "model.npz", "--data", "digits", "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n_samples"] == 1797
    assert report["classes"] == list(range(10))
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 1797
    assert report["accuracy"] == pytest.approx(np.trace(matrix) / 1797)
    assert report["accuracy"] > 0.95  # 80% of these rows were trained on
    assert len(report["precision"]) == len(report["recall"]) == 10
    assert min(report["recall"]) > 0.8

    human = run(cli_env, "evaluate", "--model", "model.npz", "--data", "digits", cwd=cwd)
    assert human.returncode == 0, human.stderr
    assert f"accuracy:  {report['accuracy']:.4f} ({np.trace(matrix)}/1797)" in human.stdout
    assert "confusion matrix (rows: true label, columns: predicted label):" in human.stdout
    assert "precision  recall  support" in human.stdout


def test_predict_digits_from_csv(cli_env, digits_run, tmp_path):
    from sklearn.datasets import load_digits

    cwd, _ = digits_run
    X, y = load_digits(return_X_y=True)
    np.savetxt(tmp_path / "new.csv", X[:30] / 16.0, delimiter=",")  # features only, no labels
    model = cwd / "model.npz"
    labels = run(cli_env, "predict", "--model", model, "--data", "new.csv", cwd=tmp_path)
    assert labels.returncode == 0, labels.stderr
    predicted = [int(line) for line in labels.stdout.splitlines()]
    assert len(predicted) == 30
    assert np.mean(np.array(predicted) == y[:30]) >= 0.9

    proba = run(
        cli_env, "predict", "--model", model, "--data", "new.csv", "--proba", "--header",
        "--out", "proba.csv", cwd=tmp_path,
    )  # fmt: skip
    assert proba.returncode == 0, proba.stderr
    assert proba.stdout == ""
    lines = (tmp_path / "proba.csv").read_text().splitlines()
    assert lines[0] == ",".join(str(c) for c in range(10))
    P = np.loadtxt(lines[1:], delimiter=",")
    assert P.shape == (30, 10)
    # Not the dtype tolerance: the file holds probabilities printed to about 7 significant digits.
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(P.argmax(axis=1), predicted)


# ----------------------------------------------------------------------------- file formats


def _write_npz(directory, rng):
    X, y = blobs(rng)
    np.savez(directory / "data.npz", X=X, y=y)
    return ["--data", "data.npz"], 4, 3


def _write_tsv(directory, rng):
    X, y = blobs(rng, d=5)
    np.savetxt(directory / "data.tsv", np.column_stack([X, y]), delimiter="\t", fmt="%.6g")
    return ["--data", "data.tsv"], 5, 3


def _write_svmlight(directory, rng):
    from sklearn.datasets import dump_svmlight_file

    X, y = blobs(rng, d=6, k=4)
    dump_svmlight_file(X, y, str(directory / "train.svm"))
    X_test, y_test = X[:40] + 0.1 * rng.standard_normal((40, 6)), y[:40]
    dump_svmlight_file(X_test, y_test, str(directory / "test.svm"))
    return ["--data", "train.svm", "--test-data", "test.svm"], 6, 4


def _write_idx_directory(directory, rng):
    write_idx_digits(directory, rng, gz=True)
    return ["--data", "."], 64, 3


def _write_idx_file(directory, rng):
    write_idx_digits(directory, rng, gz=False, with_test=False)
    return ["--data", "train-images-idx3-ubyte", "--standardize"], 64, 3


def _synthetic(directory, rng):
    return ["--data", "synthetic:600,5,3,1", "--dtype", "float32", "--threads", "1"], 5, 3


@pytest.mark.parametrize(
    "write",
    [_write_npz, _write_tsv, _write_svmlight, _write_idx_directory, _write_idx_file, _synthetic],
    ids=["npz", "tsv", "svmlight", "idx-dir-gz", "idx-file", "synthetic-float32"],
)
def test_train_on_each_format(cli_env, tmp_path, rng, write):
    args, n_features, n_classes = write(tmp_path, rng)
    result = run(
        cli_env, "train", *args, "--json", "--no-plot", "--model-out", "m.npz", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    summary = json.loads(result.stdout)
    assert summary["n_features"] == n_features
    assert summary["n_classes"] == n_classes
    assert summary["plot"] is None and summary["model"] == "m.npz"
    assert summary["n_iter"] >= 1 and summary["final_objective"] > 0
    assert summary["throughput_samples_per_second"] > 0
    assert len(summary["history"]["loss"]) == summary["n_iter"]
    # synthetic:600,5,3 has Bayes accuracy about 0.9; the others are nearly separable.
    assert summary["test_accuracy"] > (0.75 if write is _synthetic else 0.9)
    if write is _write_idx_directory:
        assert summary["n_train"] == 60 and summary["n_test"] == 24  # the t10k files
        assert "t10k" in summary["test_data"]
    elif write is _write_svmlight:
        assert summary["n_train"] == 150 and summary["n_test"] == 40
    else:
        assert summary["n_test"] == round(0.2 * (summary["n_train"] + summary["n_test"]))
    with np.load(tmp_path / "m.npz", allow_pickle=False) as model:
        assert model["coef"].shape == (n_classes, n_features)
        assert str(model["dtype"]) == ("float32" if write is _synthetic else "float64")
        assert model["coef"].dtype == model["dtype"]
        assert model["mean"].shape == ((64,) if write is _write_idx_file else (0,))


def test_csv_string_labels_sgd_standardized_then_evaluate_and_predict(cli_env, tmp_path, rng):
    X, y = blobs(rng, n=120, d=3)
    X = X * [1000.0, 0.01, 1.0] + [5e4, -3.0, 0.0]  # wildly different scales: standardize
    species = np.array(["setosa", "versicolor", "virginica"])[y]
    rows = ["width,species,height,depth"]
    rows += [f"{a:.8g},{s},{b:.8g},{c:.8g}" for (a, b, c), s in zip(X, species, strict=True)]
    (tmp_path / "iris.csv").write_text("\n".join(rows) + "\n")
    train = run(
        cli_env, "train", "--data", "iris.csv", "--label-column", "species", "--standardize",
        "--solver", "sgd", "--epochs", "30", "--learning-rate", "0.1", "--batch-size", "16",
        "--test-size", "0", "--alpha", "0", "--seed", "3", "--json", "--plot", "curves.png",
        cwd=tmp_path,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    summary = json.loads(train.stdout)
    assert summary["n_train"] == 120 and summary["n_test"] == 0
    assert summary["test_accuracy"] is None
    assert summary["train_accuracy"] > 0.9
    assert len(summary["history"]["train_accuracy"]) == summary["n_iter"]
    if _has_matplotlib():
        png_size((tmp_path / "curves.png").read_bytes())

    # evaluate must apply the stored standardization: same rows, same accuracy.
    evaluate = run(
        cli_env, "evaluate", "--model", "model.npz", "--data", "iris.csv",
        "--label-column", "species", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert evaluate.returncode == 0, evaluate.stderr
    report = json.loads(evaluate.stdout)
    assert report["classes"] == ["setosa", "versicolor", "virginica"]
    assert report["accuracy"] == pytest.approx(summary["train_accuracy"])

    # predict: features only (the label column dropped from a copy of the file).
    features = ["width,height,depth"] + [f"{a:.8g},{b:.8g},{c:.8g}" for a, b, c in X]
    (tmp_path / "new.csv").write_text("\n".join(features) + "\n")
    predict = run(cli_env, "predict", "--model", "model.npz", "--data", "new.csv", cwd=tmp_path)
    assert predict.returncode == 0, predict.stderr
    predicted = predict.stdout.splitlines()
    assert len(predicted) == 120 and set(predicted) <= set(species)
    assert np.mean(np.array(predicted) == species) == pytest.approx(report["accuracy"])
    same = run(
        cli_env, "predict", "--model", "model.npz", "--data", "iris.csv",
        "--label-column", "species", cwd=tmp_path,
    )  # fmt: skip
    assert same.stdout.splitlines() == predicted


def test_svmlight_index_base_and_feature_count(cli_env, digits_run, tmp_path):
    """digits dumped zero-based: pixel 0 is always zero, so the file looks one-based."""
    from sklearn.datasets import dump_svmlight_file, load_digits

    X, y = load_digits(return_X_y=True)
    dump_svmlight_file(X / 16.0, y, str(tmp_path / "digits.svm"), zero_based=True)
    guessed = run(
        cli_env, "train", "--data", "digits.svm", "--no-plot", "--json", "--model-out",
        "guessed.npz", cwd=tmp_path,
    )  # fmt: skip
    assert guessed.returncode == 0, guessed.stderr
    assert json.loads(guessed.stdout)["n_features"] == 63
    assert "digits.svm: no feature has index 0" in guessed.stderr
    assert "read as one-based (63 features)" in guessed.stderr
    told = run(
        cli_env, "train", "--data", "digits.svm", "--zero-based", "yes", "--no-plot", "--json",
        "--model-out", "told.npz", cwd=tmp_path,
    )  # fmt: skip
    assert told.returncode == 0, told.stderr
    assert json.loads(told.stdout)["n_features"] == 64 and told.stderr == ""

    # A 64-feature model on the file read one-based (63 features): an error, not a score.
    model = digits_run[0] / "model.npz"
    for command in ("evaluate", "predict"):
        result = run(cli_env, command, "--model", model, "--data", "digits.svm", cwd=tmp_path)
        assert_one_line_error(result, "63 features read as one-based", "64 expected")
    right = run(
        cli_env, "evaluate", "--model", model, "--data", "digits.svm", "--zero-based", "yes",
        "--json", cwd=tmp_path,
    )  # fmt: skip
    assert right.returncode == 0, right.stderr
    assert json.loads(right.stdout)["accuracy"] > 0.95


def test_data_from_a_pipe_is_read_once(cli_env, tmp_path, rng):
    X, y = blobs(rng, n=90, d=3)
    rows = [f"{a:.6g},{b:.6g},{c:.6g},{k}\n" for (a, b, c), k in zip(X, y, strict=True)]
    text = "a,b,c,label\n" + "".join(rows)
    result = subprocess.run(
        [sys.executable, "-m", "fastsoftmax", "train", "--data", "/dev/stdin", "--format", "csv",
         "--test-size", "0", "--no-plot", "--json"],
        input=text, cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["n_train"] == 90 and summary["n_features"] == 3
    assert summary["train_accuracy"] > 0.9


def test_held_out_count_and_fraction_are_printed_as_such(cli_env, digits_run, tmp_path):
    assert "test data:       20% held out from the data, seed 0" in digits_run[1].stdout
    result = run(
        cli_env, "train", "--data", "synthetic:300,4,3", "--test-size", "100", "--no-plot",
        "--max-iter", "5", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "test data:       100 rows held out from the data, seed 0" in result.stdout
    assert "200 train / 100 test samples" in result.stdout


def test_evaluate_on_the_training_data_says_so(cli_env, digits_run, tmp_path, rng):
    X, y = blobs(rng, n=60)
    np.savetxt(tmp_path / "data.csv", np.column_stack([X, y]), delimiter=",", fmt="%.6g")
    shutil.copy(tmp_path / "data.csv", tmp_path / "copy.csv")
    (tmp_path / "link.csv").symlink_to("data.csv")
    train = run(cli_env, "train", "--data", "data.csv", "--no-plot", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    note = "is the data the model was trained on (48 of its rows): this accuracy is not a held-out"
    for data, same in (("link.csv", True), ("copy.csv", False)):
        result = run(cli_env, "evaluate", "--model", "model.npz", "--data", data, "--json", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert (f"fastsoftmax: note: {data} {note}" in result.stderr) is same
        assert json.loads(result.stdout)["training_data"] is same
    digits = run(
        cli_env, "evaluate", "--model", digits_run[0] / "model.npz", "--data", "digits",
        cwd=tmp_path,
    )  # fmt: skip
    assert digits.returncode == 0, digits.stderr
    assert "digits is the data the model was trained on (1437 of its rows)" in digits.stderr


# ----------------------------------------------------------------------------- terminals


def test_progress_bar_only_on_a_terminal_and_not_when_quiet(cli_env, tmp_path):
    args = ["train", "--data", "synthetic:400,5,3", "--no-plot", "--max-iter", "30"]
    code, stdout, stderr = run_tty(cli_env, *args, cwd=tmp_path)
    assert code == 0, stderr
    assert "training (lbfgs):" in stderr and "/30 [" in stderr  # tqdm's bar with its total
    assert "test accuracy:" in stdout and "training (lbfgs)" not in stdout

    code, stdout, stderr = run_tty(cli_env, *args, "--quiet", cwd=tmp_path)
    assert code == 0
    assert stderr == ""
    assert "test accuracy:" in stdout


def test_without_tqdm_and_matplotlib(cli_env, tmp_path):
    hidden = hide_modules(tmp_path / "hidden", "tqdm", "matplotlib")
    work = tmp_path / "work"
    work.mkdir()
    code, stdout, stderr = run_tty(
        cli_env, "train", "--data", "synthetic:300,4,3", cwd=work, extra_path=hidden
    )
    assert code == 0, stderr
    assert f"no progress bar: tqdm is not installed ({INSTALL_HINT})" in stderr
    assert f"not writing training.png: matplotlib is not installed ({INSTALL_HINT})" in stderr
    assert "plot written" not in stdout
    assert sorted(p.name for p in work.iterdir()) == ["model.npz"]

    explicit = run(cli_env, "train", "--plot", "p.png", cwd=work, extra_path=hidden)
    assert_one_line_error(explicit, "--plot needs matplotlib", INSTALL_HINT)


def _pandas_csv(path, X, y=None):
    """What ``pd.DataFrame(X).assign(label=y).to_csv(path, index=False)`` writes (float repr)."""
    lines = [",".join([str(j) for j in range(X.shape[1])] + ([] if y is None else ["label"]))]
    for i, x in enumerate(X):
        lines.append(",".join([repr(float(v)) for v in x] + ([] if y is None else [str(y[i])])))
    path.write_text("\n".join(lines) + "\n")


def test_pandas_csv_header_is_not_a_data_row(cli_env, tmp_path, rng):
    """pandas' default column names 0,1,2 head the file: 40 samples of 2 classes, 5 predictions
    (they were a sample of class 'label', and a prediction that shifted all the others)."""
    X, y = blobs(rng, n=45, d=3, k=2)
    _pandas_csv(tmp_path / "train_pd.csv", X[:40], y[:40])
    _pandas_csv(tmp_path / "new_pd.csv", X[40:])
    train = run(cli_env, "train", "--data", "train_pd.csv", "--no-plot", "--model-out", "m.npz",
                "--test-size", "0", "--json", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    summary = json.loads(train.stdout)
    assert summary["n_train"] == 40 and summary["n_classes"] == 2
    assert summary["train_accuracy"] == 1.0
    predict = run(cli_env, "predict", "--model", "m.npz", "--data", "new_pd.csv", cwd=tmp_path)
    assert predict.returncode == 0, predict.stderr
    assert predict.stdout.splitlines() == [str(label) for label in y[40:]]
    assert "new_pd.csv: the first row (0,1,2) is read as a header" in predict.stderr
    as_data = run(cli_env, "predict", "--model", "m.npz", "--data", "new_pd.csv", "--csv-header",
                  "no", cwd=tmp_path)
    assert as_data.returncode == 0 and as_data.stderr == ""
    assert len(as_data.stdout.splitlines()) == 6 and as_data.stdout.endswith(predict.stdout)

    # Over integers the names could be data: say which.
    (tmp_path / "counts.csv").write_text("0,1,2\n3,0,1\n0,4,1\n")
    ambiguous = run(cli_env, "predict", "--model", "m.npz", "--data", "counts.csv", cwd=tmp_path)
    assert_one_line_error(ambiguous, "counts.csv: the first row (0,1,2) may be a header",
                          "say which (--csv-header yes/no")
    for answer, n_rows in (("yes", 2), ("no", 3)):
        told = run(cli_env, "predict", "--model", "m.npz", "--data", "counts.csv",
                   "--csv-header", answer, cwd=tmp_path)
        assert told.returncode == 0 and len(told.stdout.splitlines()) == n_rows


def test_blank_lines_before_the_header(cli_env, tmp_path):
    """The header after a blank line is skipped by its line (it was read as data: a traceback)."""
    (tmp_path / "blank_first.csv").write_text("\na,b,label\n1.0,2.0,0\n4.0,5.0,1\n2.0,1.0,0\n")
    result = run(cli_env, "train", "--data", "blank_first.csv", "--no-plot", "--test-size", "0",
                 "--json", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["n_train"] == 3 and summary["n_classes"] == 2


def test_evaluate_when_every_prediction_is_wrong(cli_env, digits_run, tmp_path):
    """scikit-learn returns the support as floats when all precisions and recalls are 0: it is
    still printed as counts (it was a traceback)."""
    from sklearn.datasets import load_digits

    X, _ = load_digits(return_X_y=True)
    np.savetxt(tmp_path / "unknown.csv", np.column_stack([X[:5] / 16.0, np.full(5, 11)]),
               delimiter=",", fmt="%.6g")
    result = run(cli_env, "evaluate", "--model", digits_run[0] / "model.npz", "--data",
                 "unknown.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "accuracy:  0.0000 (0/5)" in result.stdout
    assert "labels the model never saw: 11" in result.stdout
    assert result.stdout.rstrip().endswith("11     0.0000  0.0000        5")


def test_save_model_refuses_what_load_model_would_refuse(tmp_path):
    """A bad argument is a ValueError naming it, and no file: not a file load_model calls damaged."""
    from types import SimpleNamespace

    from fastsoftmax.model_io import load_model, save_model

    def fitted(**changes):
        arrays = {"coef_": np.ones((2, 3)), "intercept_": np.zeros(2), "classes_": np.array([0, 1])}
        return SimpleNamespace(**{**arrays, **changes})

    path = tmp_path / "m.npz"
    for kwargs, message in (
        ({"mean": np.zeros(3)}, "mean is given but scale is None"),
        ({"scale": np.ones(3)}, "scale is given but mean is None"),
        ({"mean": np.zeros(4), "scale": np.ones(4)}, r"mean must have shape \(3,\)"),
        ({"mean": np.zeros(3), "scale": np.ones((3, 1))}, r"scale must have shape \(3,\)"),
        ({"mean": [0, np.nan, 0], "scale": np.ones(3)}, "mean holds NaN or infinite values"),
        ({"mean": np.zeros(3), "scale": [1, 0, 1]}, "scale holds values <= 0"),
        ({"mean": ["a", "b", "c"], "scale": np.ones(3)}, "mean must be an array of numbers"),
        ({"info": [1, 2]}, "info must be a dict"),
        ({"info": {"n_iter": 2.0}}, r"info\['n_iter'\] must be an int"),
        ({"info": {"when": object()}}, "info is not JSON-serializable"),
    ):
        with pytest.raises(ValueError, match=message):
            save_model(path, fitted(), **kwargs)
        assert not path.exists()
    for estimator, message in (
        (fitted(coef_=np.full((2, 3), np.nan)), r"estimator.coef_ holds NaN"),
        (fitted(intercept_=np.array([0.0, np.inf])), r"estimator.intercept_ holds NaN"),
        (fitted(intercept_=np.zeros(3)), r"estimator.intercept_ must be 2 numbers"),
        (fitted(classes_=np.array([0, 1, 2])), r"estimator.classes_ must be 2 numbers or strings"),
        (fitted(coef_=np.ones(3)), r"estimator.coef_ must be float32 or float64 of shape"),
    ):
        with pytest.raises(ValueError, match=message):
            save_model(path, estimator)
        assert not path.exists()
    save_model(path, fitted(), mean=[0, 1, 2], scale=[1, 2, 3], info={"n_iter": 4})
    model = load_model(path)
    assert model.mean.tolist() == [0, 1, 2] and model.scale.tolist() == [1, 2, 3]
    assert model.info == {"n_iter": 4}


# ----------------------------------------------------------------------------- errors


@pytest.fixture
def error_dir(tmp_path, digits_run, rng):
    """A directory of good and bad inputs, with the default digits model as model.npz."""
    shutil.copy(digits_run[0] / "model.npz", tmp_path / "model.npz")
    (tmp_path / "ragged.csv").write_text("a,b,y\n1,2,0\n3,4\n")
    (tmp_path / "word.csv").write_text("a,b,y\n1,2,0\n3,oops,1\n")
    (tmp_path / "good.csv").write_text("a,b,y\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n")
    (tmp_path / "link.csv").symlink_to("good.csv")
    np.savetxt(tmp_path / "five.csv", rng.random((4, 5)), delimiter=",")
    (tmp_path / "one-class.csv").write_text("1,2,0\n3,4,0\n5,6,0\n7,8,0\n9,9,0\n")
    (tmp_path / "notes.npz").write_text("not a model, not even a zip file\n")
    np.savez(tmp_path / "other.npz", X=np.zeros((2, 64)), y=np.zeros(2))
    (tmp_path / "truncated.npz").write_bytes((tmp_path / "model.npz").read_bytes()[:2000])
    (tmp_path / "huge.csv").write_text("a,b,y\n1,2,0\n3,1e300,1\n5,6,0\n7,8,1\n")
    (tmp_path / "nan.csv").write_text("1,2,3,4,5\n1,2,nan,4,5\n")
    (tmp_path / "cat-label.csv").write_text("a,b,y\n1,2,0\n3,4,cat\n")
    # 64 features (the digits model's) and a label that is not a number (not in the first row:
    # a word there over numeric labels would be a header).
    np.savetxt(tmp_path / "cat64.csv", rng.random((3, 64)), delimiter=",", fmt="%.4f")
    rows = (tmp_path / "cat64.csv").read_text().splitlines()
    (tmp_path / "cat64.csv").write_text(
        "\n".join(f"{row},{label}" for row, label in zip(rows, ["3", "cat", "4"], strict=True))
    )
    integer_rows = rng.integers(0, 17, size=(3, 64))
    np.savetxt(tmp_path / "counts64.csv", integer_rows, delimiter=",", fmt="%d",
               header=",".join(map(str, range(64))), comments="")
    X = rng.random((6, 64))
    X[4, 9] = np.nan
    np.savez(tmp_path / "nan.npz", X=X, y=np.arange(6) % 2)
    write_damaged_models(tmp_path)
    write_damaged_idx(tmp_path, rng)
    return tmp_path


def write_damaged_models(directory: Path) -> None:
    """Copies of model.npz with one array changed (None: removed)."""
    with np.load(directory / "model.npz", allow_pickle=False) as npz:
        good = {name: npz[name] for name in npz.files}
    nan_coef = good["coef"].copy()
    nan_coef[3, 5] = np.nan
    inf_scale = np.ones(64)
    inf_scale[2] = np.inf
    for name, changes in {
        "nan-coef": {"coef": nan_coef},
        "inf-intercept": {"intercept": np.full(10, np.inf)},
        "inf-scale": {"mean": np.zeros(64), "scale": inf_scale},
        "info-list": {"info": np.array("[1, 2]")},
        "info-n-iter": {"info": np.array('{"n_iter": "many"}')},
        "info-number": {"n_features": np.array("64")},
        "no-intercept": {"intercept": None},
        "classes-2d": {"classes": np.arange(10).reshape(2, 5)},
        "classes-scalar": {"classes": np.array(3)},
        "coef-1d": {"coef": good["coef"].ravel()},
    }.items():
        arrays = {**good, **changes}
        np.savez(directory / f"{name}.npz", **{k: v for k, v in arrays.items() if v is not None})
    (directory / "empty.npz").write_bytes(b"")
    (directory / "model-dir.npz").mkdir()


def write_damaged_idx(directory: Path, rng) -> None:
    """IDX directories whose training images file is damaged."""
    images = idx_bytes(rng.integers(0, 255, size=(4, 3, 3)))
    labels = idx_bytes(np.arange(4) % 2)
    overflow = bytes([0, 0, 8, 3]) + (2**31).to_bytes(4, "big") * 2 + (4).to_bytes(4, "big")
    for name, content in {
        "idx-overflow": overflow,
        "idx-truncated": images[:-5],
        "idx-type": images[:2] + b"\x07" + images[3:],
    }.items():
        (directory / name).mkdir()
        (directory / name / "train-images-idx3-ubyte").write_bytes(content)
        (directory / name / "train-labels-idx1-ubyte").write_bytes(labels)


ERRORS = {
    "missing-data": (["train", "--data", "missing.csv"], "missing.csv: no such file or directory"),
    "unknown-builtin": (["train", "--data", "mnist"], "built-in data: digits"),
    "ragged-csv": (["train", "--data", "ragged.csv"], "row 3: expected 3 fields, found 2"),
    "non-numeric-csv": (
        ["train", "--data", "word.csv"],
        "word.csv: row 3, column 2 ('b'): 'oops' is not a number",
    ),
    "unknown-label-column": (
        ["train", "--data", "good.csv", "--label-column", "target"],
        "unknown label column 'target' (columns: a, b, y)",
    ),
    "label-column-out-of-range": (
        ["train", "--data", "good.csv", "--label-column", "9"],
        "unknown label column 9",
    ),
    "bad-synthetic": (["train", "--data", "synthetic:10,2"], "bad synthetic data"),
    "one-class": (
        ["train", "--data", "one-class.csv", "--test-size", "0"],
        "training data has only one class (0)",
    ),
    "negative-alpha": (["train", "--alpha", "-1"], "argument --alpha: expected a number >= 0"),
    "bad-test-size": (["train", "--test-size", "1.5"], "argument --test-size"),
    "zero-epochs": (["train", "--epochs", "0"], "argument --max-iter/--epochs"),
    "bad-solver": (["train", "--solver", "newton"], "invalid choice: 'newton'"),
    "bad-dtype": (["train", "--dtype", "int8"], "argument --dtype"),
    "bad-threads": (["train", "--threads", "many"], "argument --threads"),
    "no-output-dir": (["train", "--model-out", "nodir/m.npz"], "does not exist"),
    "same-outputs": (
        ["train", "--model-out", "x.npz", "--plot", "./x.npz"],
        "--model-out x.npz and --plot ./x.npz are the same file",
    ),
    "unknown-command": (["fit"], "invalid choice: 'fit'"),
    "missing-model": (["evaluate", "--model", "nope.npz", "--data", "digits"], "no such model"),
    "model-not-npz": (
        ["evaluate", "--model", "notes.npz", "--data", "digits"],
        "notes.npz: not a fastsoftmax model file",
    ),
    "model-from-other-tool": (
        ["evaluate", "--model", "other.npz", "--data", "digits"],
        "other.npz: not a fastsoftmax model file (no format marker)",
    ),
    "truncated-model": (
        ["predict", "--model", "truncated.npz", "--data", "five.csv"],
        "truncated.npz: not a readable fastsoftmax model file",
    ),
    "feature-mismatch-evaluate": (
        ["evaluate", "--model", "model.npz", "--data", "five.csv", "--label-column", "4"],
        "data five.csv has 4 features, the model expects 64",
    ),
    "feature-mismatch-predict": (
        ["predict", "--model", "model.npz", "--data", "five.csv"],
        "data five.csv has 5 features, the model expects 64",
    ),
    "evaluate-needs-model": (["evaluate", "--data", "digits"], "--model"),
    "overflowing-float32-csv": (
        ["train", "--data", "huge.csv", "--dtype", "float32", "--test-size", "0"],
        "huge.csv: row 3, column 2 ('b') is inf (NaN, infinite, or beyond the range of float32)",
    ),
    "nan-npz-evaluate": (
        ["evaluate", "--model", "model.npz", "--data", "nan.npz"],
        "nan.npz: row 5, column 10 is nan",
    ),
    "nan-csv-predict": (
        ["predict", "--model", "model.npz", "--data", "nan.csv"],
        "nan.csv: row 2, column 3 is nan",
    ),
    "test-size-too-large": (["train", "--test-size", "100000"], "--test-size 100000"),
    "model-out-is-data": (
        ["train", "--data", "good.csv", "--model-out", "good.csv"],
        "--model-out good.csv is the same file as --data good.csv",
    ),
    "model-out-is-data-respelled": (
        ["train", "--data", "good.csv", "--model-out", "./good.csv"],
        "is the same file as --data",
    ),
    "model-out-is-data-through-symlink": (
        ["train", "--data", "link.csv", "--model-out", "good.csv"],
        "is the same file as --data link.csv",
    ),
    "plot-is-test-data": (
        ["train", "--test-data", "good.csv", "--data", "good.csv", "--plot", "link.csv"],
        "--plot link.csv is the same file as --data good.csv",
    ),
    "predict-out-is-data": (
        ["predict", "--model", "model.npz", "--data", "five.csv", "--out", "five.csv"],
        "--out five.csv is the same file as --data five.csv",
    ),
    "predict-out-is-model": (
        ["predict", "--model", "model.npz", "--data", "five.csv", "--out", "./model.npz"],
        "--out ./model.npz is the same file as --model model.npz",
    ),
    "nan-coef-model": (
        ["evaluate", "--model", "nan-coef.npz", "--data", "digits"],
        "nan-coef.npz: damaged fastsoftmax model file (coef holds NaN or infinite values)",
    ),
    "inf-intercept-model": (
        ["predict", "--model", "inf-intercept.npz", "--data", "five.csv"],
        "intercept holds NaN or infinite values",
    ),
    "inf-scale-model": (
        ["predict", "--model", "inf-scale.npz", "--data", "five.csv"],
        "scale holds NaN or infinite values",
    ),
    "info-not-an-object": (
        ["evaluate", "--model", "info-list.npz", "--data", "digits"],
        "info-list.npz: damaged fastsoftmax model file (info is not a JSON object",
    ),
    "info-bad-n-iter": (
        ["evaluate", "--model", "info-n-iter.npz", "--data", "digits"],
        "info-n-iter.npz: damaged fastsoftmax model file",
    ),
    "n-features-a-string": (
        ["evaluate", "--model", "info-number.npz", "--data", "digits"],
        "info-number.npz: damaged fastsoftmax model file (n_features is <U2",
    ),
    "model-missing-array": (
        ["evaluate", "--model", "no-intercept.npz", "--data", "digits"],
        "no-intercept.npz: damaged fastsoftmax model file (no array intercept)",
    ),
    "model-classes-2d": (
        ["evaluate", "--model", "classes-2d.npz", "--data", "digits"],
        "classes-2d.npz: damaged fastsoftmax model file (classes is int64 of shape (2, 5))",
    ),
    "model-classes-scalar": (
        ["evaluate", "--model", "classes-scalar.npz", "--data", "digits"],
        "classes-scalar.npz: damaged fastsoftmax model file",
    ),
    "model-coef-1d": (
        ["evaluate", "--model", "coef-1d.npz", "--data", "digits"],
        "coef-1d.npz: damaged fastsoftmax model file (coef is float64 of shape (640,)",
    ),
    "model-empty": (
        ["evaluate", "--model", "empty.npz", "--data", "digits"],
        "empty.npz: empty file, not a model file",
    ),
    "model-directory": (
        ["evaluate", "--model", "model-dir.npz", "--data", "digits"],
        "model-dir.npz: is a directory",
    ),
    "model-dev-null": (
        ["evaluate", "--model", os.devnull, "--data", "digits"],
        f"{os.devnull}: not a regular file (a character device)",
    ),
    "idx-size-overflow": (["train", "--data", "idx-overflow"], "truncated IDX file"),
    "idx-truncated": (["train", "--data", "idx-truncated"], "truncated IDX file"),
    "idx-unknown-type": (
        ["train", "--data", "idx-type"],
        "not an IDX file (unknown element type code 0x07)",
    ),
    "pandas-names-over-integers": (
        ["predict", "--model", "model.npz", "--data", "counts64.csv"],
        "counts64.csv: the first row (0,1,2,...,63) may be a header (pandas' default column "
        "names) or a row of data",
    ),
    "label-name-without-header": (
        ["train", "--data", "good.csv", "--label-column", "y", "--csv-header", "no"],
        "good.csv: label column 'y' is a header name, but the file is read without a header",
    ),
    "bad-csv-header": (["train", "--csv-header", "maybe"], "argument --csv-header"),
    "test-label-not-a-number": (
        ["train", "--data", "good.csv", "--test-data", "cat-label.csv", "--quiet", "--no-plot"],
        "test data cat-label.csv: label 'cat' is not a number, but the training labels are (0, 1)",
    ),
    "evaluate-label-not-a-number": (
        ["evaluate", "--model", "model.npz", "--data", "cat64.csv"],
        "data cat64.csv: label 'cat' is not a number, but the model's classes are (0, 1, 2, 3, 4, "
        "...)",
    ),
    "model-out-matched-by-a-glob": (
        ["train", "--data", "goo*.csv", "--model-out", "good.csv", "--no-plot"],
        "--model-out good.csv is the same file as --data good.csv",
    ),
    "predict-no-output-dir": (
        ["predict", "--model", "model.npz", "--data", "five.csv", "--out", "nodir/p.csv"],
        "does not exist",
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line_with_status_2_and_write_nothing(cli_env, error_dir, case):
    args, message = ERRORS[case]
    before = sorted(p.name for p in error_dir.iterdir())
    result = run(cli_env, *args, cwd=error_dir)
    assert_one_line_error(result, message)
    assert sorted(p.name for p in error_dir.iterdir()) == before  # no output, no temp files


# ----------------------------------------------------------------------------- output files


@pytest.fixture
def char_device(tmp_path):
    """A character device to write to: a null device made in tmp_path where that is allowed (as
    root), so a writer that replaced it could only replace this node; else /dev/null itself."""
    node = tmp_path / "null-device"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except (OSError, AttributeError):
        return Path(os.devnull)
    return node


def test_outputs_write_through_symlinks(cli_env, digits_run, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    for name in ("m.npz", "p.png", "labels.csv"):
        (real / name).write_text("old contents\n")
        (tmp_path / name).symlink_to(real / name)
    plot = ["--plot", "p.png"] if _has_matplotlib() else ["--no-plot"]
    train = run(
        cli_env, "train", "--data", "synthetic:300,4,3", "--max-iter", "5", "--model-out",
        "m.npz", *plot, cwd=tmp_path,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    np.savetxt(tmp_path / "new.csv", np.zeros((3, 64)), delimiter=",")
    model = digits_run[0] / "model.npz"
    predict = run(
        cli_env, "predict", "--model", model, "--data", "new.csv", "--out", "labels.csv",
        cwd=tmp_path,
    )  # fmt: skip
    assert predict.returncode == 0, predict.stderr
    for name in ("m.npz", "p.png", "labels.csv"):
        assert (tmp_path / name).is_symlink(), name
    with np.load(real / "m.npz", allow_pickle=False) as written:
        assert written["coef"].shape == (3, 4)
    if _has_matplotlib():
        png_size((real / "p.png").read_bytes())
    assert len((real / "labels.csv").read_text().splitlines()) == 3
    assert sorted(p.name for p in real.iterdir()) == ["labels.csv", "m.npz", "p.png"]


def test_outputs_write_through_character_devices(cli_env, digits_run, tmp_path, char_device):
    plot = ["--plot", char_device] if _has_matplotlib() else ["--no-plot"]
    train = run(
        cli_env, "train", "--data", "synthetic:300,4,3", "--max-iter", "5", "--model-out",
        char_device, *plot, cwd=tmp_path,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    assert stat.S_ISCHR(os.stat(char_device).st_mode)
    np.savetxt(tmp_path / "new.csv", np.zeros((3, 64)), delimiter=",")
    predict = run(
        cli_env, "predict", "--model", digits_run[0] / "model.npz", "--data", "new.csv",
        "--out", char_device, cwd=tmp_path,
    )  # fmt: skip
    assert predict.returncode == 0, predict.stderr
    assert stat.S_ISCHR(os.stat(char_device).st_mode)


@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_help_has_examples(cli_env, tmp_path, command):
    result = run(cli_env, command, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: fastsoftmax {command}")
    assert "examples:" in result.stdout and f"fastsoftmax {command} " in result.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(shutil.which("fastsoftmax") is None, reason="package not installed")
def test_installed_console_script(tmp_path):
    result = subprocess.run(
        ["fastsoftmax", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "evaluate" in result.stdout and "predict" in result.stdout
