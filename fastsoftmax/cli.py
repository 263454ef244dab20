"""The ``fastsoftmax`` command: ``train``, ``evaluate`` and ``predict`` from the shell.

Built on :class:`fastsoftmax.estimator.SoftmaxRegression` and :mod:`fastsoftmax.datasets` only.
Conventions every command follows:

- Results go to stdout (a human summary, or one JSON document with ``--json``); progress bars and
  notes go to stderr. The progress bar (tqdm) appears only when stderr is a terminal.
- Every expected failure (bad data, bad model file, bad option value) prints one line
  ``fastsoftmax: error: ...`` to stderr and exits with status 2, without a traceback.
- Output files (model, plot, predictions) are written to a temporary file in the target directory
  and renamed into place only after everything succeeded, so a failure never leaves a partial or
  stale-looking file behind.
- tqdm and matplotlib are optional (``pip install "fastsoftmax[cli]"``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from fastsoftmax.datasets import FORMATS, DataError, _reason, has_test_split, load_dataset

__all__ = ["CLIError", "Model", "load_model", "main", "save_model"]

PROG = "fastsoftmax"
MODEL_FORMAT = "fastsoftmax-model"
MODEL_VERSION = 1
INSTALL_HINT = 'pip install "fastsoftmax[cli]"'
DEFAULT_PLOT = "training.png"
# Per-iteration accuracies for the plot are measured on at most this many rows of each set, so
# monitoring stays a small fraction of an iteration on large data; final accuracies use all rows.
MONITOR_ROWS = 10_000
DEFAULT_MAX_ITER = {"lbfgs": 100, "sgd": 10, "gd": 100}


class CLIError(Exception):
    """An expected failure: reported as one ``fastsoftmax: error: ...`` line, exit status 2."""


# ----------------------------------------------------------------------------- model files


class Model(NamedTuple):
    """A loaded model file: the fitted estimator and the preprocessing it expects."""

    estimator: Any
    mean: np.ndarray | None
    scale: np.ndarray | None
    dtype: np.dtype
    n_features: int
    info: dict


def save_model(path, estimator, *, mean=None, scale=None, info: dict | None = None) -> None:
    """Write a fitted estimator (and standardization statistics) as a fastsoftmax ``.npz`` file.

    The file holds only plain arrays (it loads with ``allow_pickle=False``): ``format``,
    ``format_version``, ``coef (n_classes, n_features)``, ``intercept (n_classes,)``,
    ``classes (n_classes,)``, ``mean`` and ``scale`` (``(n_features,)``, or empty when the
    features are not standardized), ``dtype``, ``n_features`` and ``info`` (a JSON string).
    The file is written atomically.
    """
    _write_atomically({path: _model_bytes(estimator, mean, scale, info)})


def _model_bytes(estimator, mean, scale, info) -> bytes:
    coef = np.asarray(estimator.coef_)
    classes = np.asarray(estimator.classes_)
    if classes.dtype.kind == "O":
        classes = classes.astype(str)  # object arrays would need pickle to load
    empty = np.zeros(0, dtype=np.float64)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        format=np.array(MODEL_FORMAT),
        format_version=np.array(MODEL_VERSION, dtype=np.int64),
        coef=coef,
        intercept=np.asarray(estimator.intercept_, dtype=coef.dtype).reshape(-1),
        classes=classes,
        mean=empty if mean is None else np.asarray(mean, dtype=np.float64),
        scale=empty if scale is None else np.asarray(scale, dtype=np.float64),
        dtype=np.array(coef.dtype.name),
        n_features=np.array(coef.shape[1], dtype=np.int64),
        info=np.array(json.dumps(info or {})),
    )
    return buffer.getvalue()


def load_model(path) -> Model:
    """Read a model written by :func:`save_model`; raise :class:`CLIError` on any problem."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CLIError(f"{path}: no such model file")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise CLIError(f"{path}: cannot read the model file ({exc.strerror})") from None
    if magic != b"PK\x03\x04":  # every .npz is a zip archive
        raise CLIError(f"{path}: not a fastsoftmax model file (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "format" not in npz.files:
                raise CLIError(f"{path}: not a fastsoftmax model file (no format marker)")
            arrays = {name: npz[name] for name in npz.files}
    except CLIError:
        raise
    except Exception as exc:  # zip, zlib, pickle refusal, OSError: the file is not ours or broken
        raise CLIError(f"{path}: not a readable fastsoftmax model file ({_reason(exc)})") from None
    if str(arrays["format"]) != MODEL_FORMAT:
        raise CLIError(f"{path}: not a fastsoftmax model file (format {str(arrays['format'])!r})")
    try:
        version = int(arrays["format_version"])
        if version > MODEL_VERSION:
            raise CLIError(
                f"{path}: model format version {version} is newer than this fastsoftmax "
                f"supports ({MODEL_VERSION}); upgrade fastsoftmax"
            )
        coef, intercept, classes = arrays["coef"], arrays["intercept"], arrays["classes"]
        mean, scale = arrays["mean"], arrays["scale"]
        n_features = int(arrays["n_features"])
        dtype = np.dtype(str(arrays["dtype"]))
        info = json.loads(str(arrays["info"]))
    except CLIError:
        raise
    except (KeyError, ValueError, TypeError) as exc:
        raise CLIError(f"{path}: damaged fastsoftmax model file ({_reason(exc)})") from None
    n_classes = len(classes)
    if (
        coef.shape != (n_classes, n_features)
        or intercept.shape != (n_classes,)
        or mean.shape not in ((0,), (n_features,))
        or scale.shape != mean.shape
        or dtype not in (np.dtype(np.float32), np.dtype(np.float64))
    ):
        raise CLIError(f"{path}: damaged fastsoftmax model file (inconsistent array shapes)")
    from fastsoftmax.estimator import SoftmaxRegression

    estimator = SoftmaxRegression()
    estimator.coef_ = coef.astype(dtype)
    estimator.intercept_ = intercept.astype(dtype)
    estimator.classes_ = classes
    estimator.n_features_in_ = n_features
    estimator.n_iter_ = int(info.get("n_iter", 0))
    has_stats = mean.shape == (n_features,)
    return Model(
        estimator,
        mean if has_stats else None,
        scale if has_stats else None,
        dtype,
        n_features,
        info,
    )


# ----------------------------------------------------------------------------- files


def _check_writable(path: str, what: str) -> None:
    """Fail before any work when ``path`` cannot be created."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CLIError(f"cannot write {what} to {path}: it is a directory")
    if not os.path.isdir(directory):
        raise CLIError(f"cannot write {what} to {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise CLIError(f"cannot write {what} to {path}: directory {directory} is not writable")


def _write_atomically(contents: dict[str, bytes]) -> None:
    """Write every file to a temporary sibling, then rename them all into place."""
    staged: list[tuple[str, str]] = []
    umask = os.umask(0)
    os.umask(umask)
    try:
        for path, data in contents.items():
            directory = os.path.dirname(os.path.abspath(path))
            fd, tmp = tempfile.mkstemp(
                dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
            )
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        for tmp, path in staged:
            os.replace(tmp, path)
    except OSError as exc:
        raise CLIError(f"cannot write {path}: {exc.strerror or _reason(exc)}") from None
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _note(args, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(f"{PROG}: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------- data helpers


def _load(args, source, *, labels: bool, split: str, dtype, n_features=None):
    return load_dataset(
        source,
        dtype=dtype,
        labels=labels,
        label_column=args.label_column,
        fmt=args.format,
        split=split,
        n_features=n_features,
    )


def _standardize(X: np.ndarray, mean, scale) -> np.ndarray:
    if mean is None:
        return X
    if scipy_sparse_issparse(X):
        raise CLIError(_SPARSE_STANDARDIZE)
    return ((X - mean) / scale).astype(X.dtype, copy=False)


# Centering a sparse matrix makes it dense (svmlight files are sparse and stay sparse).
_SPARSE_STANDARDIZE = (
    "--standardize centers every feature, which would turn the sparse (svmlight) data dense; "
    "train without --standardize (text features such as TF-IDF are already on a common scale), "
    "or convert the data to a dense format"
)


def scipy_sparse_issparse(X) -> bool:
    """Whether X is a scipy.sparse matrix (svmlight data), without importing scipy.sparse."""
    sparse = sys.modules.get("scipy.sparse")
    return sparse is not None and sparse.issparse(X)


def _check_n_features(X: np.ndarray, n_features: int, what: str) -> None:
    if X.shape[1] != n_features:
        raise CLIError(f"{what} has {X.shape[1]} features, the model expects {n_features}")


def _labels_like(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Labels read from a file, converted to the type of the model's classes where possible."""
    if classes.dtype.kind == "U" and y.dtype.kind != "U":
        return y.astype(str)
    if classes.dtype.kind in "iuf" and y.dtype.kind == "U":
        try:
            return y.astype(classes.dtype)
        except ValueError:
            return y
    return y


def _subsample(X, y, n_rows: int, seed: int):
    if X.shape[0] <= n_rows:
        return X, y
    idx = np.sort(np.random.default_rng(seed).choice(X.shape[0], n_rows, replace=False))
    return X[idx], y[idx]


def _split(X, y, test_size, seed, args):
    from sklearn.model_selection import train_test_split

    if test_size == 0:
        return X, X[:0], y, y[:0]
    try:
        return train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y)
    except ValueError:
        pass  # stratification needs at least 2 samples of every class: try a plain split
    try:
        split = train_test_split(X, y, test_size=test_size, random_state=seed)
    except ValueError as exc:
        raise CLIError(f"--test-size {test_size}: {_reason(exc)}") from None
    _note(args, "some class has fewer than 2 samples: held-out split is not stratified")
    return split


# ----------------------------------------------------------------------------- train


class _Monitor:
    """The estimator callback: records the curves and drives the progress bar."""

    def __init__(self, bar, train_set, test_set):
        self.bar = bar
        self.train_set = train_set
        self.test_set = test_set
        self.history: dict[str, list] = {
            "iteration": [],
            "loss": [],
            "train_accuracy": [],
            "test_accuracy": [],
        }
        self.seconds = 0.0

    def __call__(self, iteration: int, estimator) -> bool:
        start = time.perf_counter()
        curve = getattr(estimator, "loss_curve_", None)
        loss = float(curve[-1]) if curve is not None and len(curve) else float("nan")
        self.history["iteration"].append(int(iteration))
        self.history["loss"].append(loss)
        postfix = {"loss": f"{loss:.4g}"}
        for name, data in (("train", self.train_set), ("test", self.test_set)):
            if data is not None:
                accuracy = float(estimator.score(*data))
                self.history[f"{name}_accuracy"].append(accuracy)
                postfix[f"{name}_acc"] = f"{accuracy:.4f}"
        if self.bar is not None:
            self.bar.update(max(0, int(iteration) - self.bar.n))
            self.bar.set_postfix(postfix, refresh=False)
        self.seconds += time.perf_counter() - start
        return False


def _progress_bar(args, total: int, unit: str):
    if args.quiet or not sys.stderr.isatty():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        _note(args, f"no progress bar: tqdm is not installed ({INSTALL_HINT})")
        return None
    size = {}
    try:
        columns, lines = os.get_terminal_size(sys.stderr.fileno())
    except OSError:
        columns = lines = 0
    if columns <= 0 or lines <= 0:
        # A pseudo-terminal that reports a 0 x 0 size (CI, `script`) makes tqdm draw nothing.
        size = {"ncols": 100, "nrows": 24}
    return tqdm(total=total, unit=unit, desc=f"training ({args.solver})", file=sys.stderr, **size)


def _import_matplotlib():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def _plot_bytes(history: dict, unit: str, title: str, subsampled: bool) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    steps = history["iteration"]
    loss = np.asarray(history["loss"], dtype=float)
    ax_loss.plot(steps, loss, marker="." if len(steps) < 30 else None, color="C0")
    if loss.size and np.all(loss[np.isfinite(loss)] > 0):
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel(unit)
    ax_loss.set_ylabel("objective (mean cross-entropy + penalty)")
    ax_loss.set_title("training objective")
    ax_loss.grid(True, alpha=0.3)
    suffix = " (subsample)" if subsampled else ""
    for name, color in (("train", "C1"), ("test", "C2")):
        values = history[f"{name}_accuracy"]
        if values:
            ax_acc.plot(steps, values, label=f"{name}{suffix}", color=color)
    ax_acc.set_xlabel(unit)
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_title("accuracy")
    ax_acc.grid(True, alpha=0.3)
    if history["train_accuracy"] or history["test_accuracy"]:
        ax_acc.legend(loc="lower right")
    fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _train_params(args, max_iter: int, callback) -> dict:
    params: dict[str, Any] = {
        "solver": args.solver,
        "max_iter": max_iter,
        "random_state": args.seed,
        "callback": callback,
    }
    optional = {
        "alpha": args.alpha,
        "learning_rate": args.learning_rate,
        "batch_size": args.batch_size,
        "tol": args.tol,
        "n_jobs": args.threads,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    return params


def _warm_up(estimator_class, params: dict, X: np.ndarray, y: np.ndarray) -> float:
    """Fit briefly on a few rows so JIT compilation (or loading the cache) is not timed as training.

    The rows include every class, so the same kernels run as in the real fit.
    """
    start = time.perf_counter()
    _, first_of_each_class = np.unique(y, return_index=True)
    rows = np.union1d(np.arange(min(len(y), 256)), first_of_each_class)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            estimator_class(**params).fit(X[rows], y[rows])
    except ValueError:
        pass  # the real fit reports the problem
    return time.perf_counter() - start


def cmd_train(args) -> int:
    started = time.perf_counter()
    dtype = np.dtype(args.dtype)
    plot_path = args.plot
    if args.plot is None:  # default plot: skipped, with a note, when matplotlib is missing
        plot_path = DEFAULT_PLOT if _import_matplotlib() is not None else None
        if plot_path is None:
            _note(args, f"not writing {DEFAULT_PLOT}: matplotlib is not installed ({INSTALL_HINT})")
    elif args.plot is False:
        plot_path = None
    elif _import_matplotlib() is None:
        raise CLIError(f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}")
    _check_writable(args.model_out, "the model")
    if plot_path is not None:
        _check_writable(plot_path, "the plot")
        if os.path.abspath(plot_path) == os.path.abspath(args.model_out):
            raise CLIError("--plot and --model-out name the same file")

    data = _load(args, args.data, labels=True, split="train", dtype=dtype)
    X, y = data.X, data.y
    if args.test_data is not None:
        test = _load(args, args.test_data, labels=True, split="test", dtype=dtype)
        if test.X.shape[1] != X.shape[1]:
            raise CLIError(
                f"test data {args.test_data} has {test.X.shape[1]} features, "
                f"training data has {X.shape[1]}"
            )
        X_train, X_test, y_train, y_test = X, test.X, y, test.y
        test_description = test.description
    elif args.test_size is None and has_test_split(args.data):
        test = _load(args, args.data, labels=True, split="test", dtype=dtype)
        X_train, X_test, y_train, y_test = X, test.X, y, test.y
        test_description = f"{args.data} (t10k files)"
    else:
        test_size = 0.2 if args.test_size is None else args.test_size
        X_train, X_test, y_train, y_test = _split(X, y, test_size, args.seed, args)
        test_description = f"held-out {test_size:g} of the data, seed {args.seed}"
    if X_train.shape[0] == 0:
        raise CLIError("no training samples left after the held-out split")
    present = np.unique(y_train)
    if len(present) < 2:
        raise CLIError(
            f"training data has only one class ({present[0]}): softmax regression needs at "
            "least 2 classes"
        )
    if y_test.dtype.kind != y_train.dtype.kind:
        y_test = _labels_like(y_test, np.unique(y_train))

    mean = scale = None
    if args.standardize and scipy_sparse_issparse(X_train):
        raise CLIError(_SPARSE_STANDARDIZE)
    if args.standardize:
        mean = X_train.mean(axis=0, dtype=np.float64)
        scale = X_train.std(axis=0, dtype=np.float64)
        scale[scale == 0] = 1.0  # constant features stay constant (zero) instead of dividing by 0
        X_train = _standardize(X_train, mean, scale)
        X_test = _standardize(X_test, mean, scale)

    max_iter = args.max_iter if args.max_iter is not None else DEFAULT_MAX_ITER[args.solver]
    unit = "epoch" if args.solver == "sgd" else "iteration"
    monitor_train = monitor_test = None
    subsampled = False
    if plot_path is not None or not args.quiet:
        monitor_train = _subsample(X_train, y_train, MONITOR_ROWS, args.seed)
        if X_test.shape[0]:
            monitor_test = _subsample(X_test, y_test, MONITOR_ROWS, args.seed)
        subsampled = X_train.shape[0] > MONITOR_ROWS or X_test.shape[0] > MONITOR_ROWS
    bar = _progress_bar(args, max_iter, unit)
    monitor = _Monitor(bar, monitor_train, monitor_test)

    from sklearn.exceptions import ConvergenceWarning

    from fastsoftmax.estimator import SoftmaxRegression

    estimator = SoftmaxRegression(**_train_params(args, max_iter, monitor))
    warm_up_seconds = _warm_up(SoftmaxRegression, _train_params(args, 2, None), X_train, y_train)
    fit_start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            estimator.fit(X_train, y_train)
    except ValueError as exc:
        raise CLIError(f"training failed: {_reason(exc)}") from None
    finally:
        if bar is not None:
            bar.close()
    converged = True
    for warning in caught:
        # Not converging within --max-iter is a normal outcome: reported in the summary.
        if issubclass(warning.category, ConvergenceWarning):
            converged = False
        else:
            _note(args, f"warning: {_reason(warning.message)}")
    fit_seconds = time.perf_counter() - fit_start
    estimator.callback = None  # the monitor is not part of the model

    n_iter = int(np.max(estimator.n_iter_))
    curve = np.asarray(getattr(estimator, "loss_curve_", []), dtype=float)
    objective = float(curve[-1]) if curve.size else None
    train_accuracy = float(estimator.score(X_train, y_train))
    test_accuracy = float(estimator.score(X_test, y_test)) if X_test.shape[0] else None
    train_seconds = max(fit_seconds - monitor.seconds, 1e-9)
    throughput = X_train.shape[0] * n_iter / train_seconds

    info = {
        "solver": args.solver,
        "n_iter": n_iter,
        "data": data.description,
        "n_train": X_train.shape[0],
        "train_accuracy": train_accuracy,
        "test_accuracy": test_accuracy,
    }
    outputs = {args.model_out: _model_bytes(estimator, mean, scale, info)}
    if plot_path is not None:
        title = (
            f"{data.description}: softmax regression, {args.solver}, "
            f"{X_train.shape[0]} train / {X_test.shape[0]} test samples"
        )
        outputs[plot_path] = _plot_bytes(monitor.history, unit, title, subsampled)
    _write_atomically(outputs)

    summary = {
        "command": "train",
        "data": data.description,
        "test_data": test_description,
        "n_train": X_train.shape[0],
        "n_test": X_test.shape[0],
        "n_features": int(X_train.shape[1]),
        "n_classes": len(estimator.classes_),
        "dtype": dtype.name,
        "solver": args.solver,
        "standardize": bool(args.standardize),
        "n_iter": n_iter,
        "converged": converged,
        "final_objective": objective,
        "train_accuracy": train_accuracy,
        "test_accuracy": test_accuracy,
        "warm_up_seconds": warm_up_seconds,
        "fit_seconds": fit_seconds,
        "monitor_seconds": monitor.seconds,
        "wall_seconds": time.perf_counter() - started,
        "throughput_samples_per_second": throughput,
        "model": args.model_out,
        "plot": plot_path,
        "history": monitor.history if monitor.history["iteration"] else {"loss": curve.tolist()},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    test_text = "n/a (no test set)" if test_accuracy is None else f"{test_accuracy:.4f}"
    objective_text = "n/a" if objective is None else f"{objective:.6g}"
    print(f"data:            {data.description}")
    print(f"test data:       {test_description}")
    print(
        f"problem:         {X_train.shape[0]} train / {X_test.shape[0]} test samples, "
        f"{X_train.shape[1]} features, {len(estimator.classes_)} classes, {dtype.name}"
        + (", standardized" if args.standardize else "")
    )
    stopped = "" if converged else f" (stopped at --max-iter {max_iter} before converging)"
    print(
        f"solver:          {args.solver}, {n_iter} {unit}s{stopped}, "
        f"final objective {objective_text}"
    )
    print(f"train accuracy:  {train_accuracy:.4f}")
    print(f"test accuracy:   {test_text}")
    print(
        f"wall time:       {summary['wall_seconds']:.2f} s "
        f"(JIT warm-up {warm_up_seconds:.2f} s, training {fit_seconds:.2f} s "
        f"of which monitoring {monitor.seconds:.2f} s)"
    )
    print(f"throughput:      {throughput:,.0f} samples/s (train samples x {unit}s / training time)")
    print(f"model written:   {args.model_out}")
    if plot_path is not None:
        print(f"plot written:    {plot_path}")
    return 0


# ----------------------------------------------------------------------------- evaluate


def cmd_evaluate(args) -> int:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    model = load_model(args.model)
    split = "test" if has_test_split(args.data) else "train"
    data = _load(
        args, args.data, labels=True, split=split, dtype=model.dtype, n_features=model.n_features
    )
    _check_n_features(data.X, model.n_features, f"data {args.data}")
    estimator = model.estimator
    if args.threads is not None:
        estimator.n_jobs = args.threads
    X = _standardize(data.X, model.mean, model.scale)
    y = _labels_like(data.y, estimator.classes_)
    predicted = estimator.predict(X)
    accuracy = float(np.mean(predicted == y))
    labels = list(estimator.classes_)
    extra = [label for label in np.unique(y) if label not in set(labels)]
    labels = labels + extra
    matrix = confusion_matrix(y, predicted, labels=labels)
    precision, recall, _, support = precision_recall_fscore_support(
        y, predicted, labels=labels, zero_division=0
    )
    names = [label.item() if hasattr(label, "item") else label for label in labels]
    if args.json:
        print(
            json.dumps(
                {
                    "command": "evaluate",
                    "model": args.model,
                    "data": data.description,
                    "n_samples": len(y),
                    "accuracy": accuracy,
                    "classes": names,
                    "confusion_matrix": matrix.tolist(),
                    "precision": precision.tolist(),
                    "recall": recall.tolist(),
                    "support": support.tolist(),
                    "unknown_labels": [name for name in names[len(estimator.classes_) :]],
                },
                indent=2,
            )
        )
        return 0
    correct = int(np.sum(predicted == y))
    print(f"data:      {data.description}")
    print(f"accuracy:  {accuracy:.4f} ({correct}/{len(y)})")
    if extra:
        print(f"labels the model never saw: {', '.join(map(str, extra))}")
    text = [str(name) for name in names]
    if len(names) <= 30:
        width = max(max(len(t) for t in text), len(str(matrix.max())), 3)
        print("\nconfusion matrix (rows: true label, columns: predicted label):")
        print(" " * (width + 2) + " ".join(t.rjust(width) for t in text))
        for name, row in zip(text, matrix, strict=True):
            print(f"{name.rjust(width)}  " + " ".join(str(v).rjust(width) for v in row))
    else:
        print(f"\nconfusion matrix: {len(names)} x {len(names)}, see --json")
    width = max(max(len(t) for t in text), len("class"))
    print(f"\n{'class'.rjust(width)}  precision  recall  support")
    for name, p, r, s in zip(text, precision, recall, support, strict=True):
        print(f"{name.rjust(width)}  {p:9.4f}  {r:6.4f}  {s:7d}")
    return 0


# ----------------------------------------------------------------------------- predict


def _predictions_text(estimator, X, proba: bool, header: bool) -> str:
    out = io.StringIO()
    if proba:
        P = estimator.predict_proba(X)
        if header:
            csv.writer(out, lineterminator="\n").writerow([str(c) for c in estimator.classes_])
        np.savetxt(out, P, fmt="%.8g", delimiter=",")
    else:
        writer = csv.writer(out, lineterminator="\n")
        if header:
            writer.writerow(["label"])
        writer.writerows([label] for label in estimator.predict(X).tolist())
    return out.getvalue()


def cmd_predict(args) -> int:
    model = load_model(args.model)
    if args.out is not None:
        _check_writable(args.out, "predictions")
    split = "test" if has_test_split(args.data) else "train"
    labels = args.label_column is not None
    data = _load(
        args, args.data, labels=labels, split=split, dtype=model.dtype, n_features=model.n_features
    )
    _check_n_features(data.X, model.n_features, f"data {args.data}")
    estimator = model.estimator
    if args.threads is not None:
        estimator.n_jobs = args.threads
    X = _standardize(data.X, model.mean, model.scale)
    text = _predictions_text(estimator, X, args.proba, args.header)
    if args.out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        _write_atomically({args.out: text.encode()})
    return 0


# ----------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error format of the other failures."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _number(kind: Callable, check: Callable[[Any], bool], requirement: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {requirement}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"expected {requirement}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
_nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number(float, lambda v: v > 0 and np.isfinite(v), "a number > 0")
_nonnegative_float = _number(float, lambda v: v >= 0 and np.isfinite(v), "a number >= 0")


def _test_size(text: str):
    """A fraction in [0, 1) or a number of samples (an integer >= 1)."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is not None:
        if value < 0:
            raise argparse.ArgumentTypeError(f"expected a fraction or a count >= 0, got {text!r}")
        return value
    try:
        fraction = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a fraction in [0, 1) or a count of samples, got {text!r}"
        ) from None
    if not 0.0 <= fraction < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return fraction


def _label_column(text: str):
    try:
        return int(text)
    except ValueError:
        return text


_TRAIN_EXAMPLES = """\
examples:
  fastsoftmax train                              # digits, 20% held out, model.npz + training.png
  fastsoftmax train --data synthetic:200000,100,10 --dtype float32 --solver sgd --epochs 5
  fastsoftmax train --data data.csv --label-column species --standardize --model-out iris.npz
  fastsoftmax train --data ~/mnist --standardize     # train-* files, tested on the t10k-* files
  fastsoftmax train --data train.svm --test-data test.svm --json --quiet --no-plot

data: digits | synthetic:N,d,K[,seed] | FILE.npz (X, y) | FILE.csv / FILE.tsv | FILE.svm
(svmlight/libsvm) | a directory of MNIST / Fashion-MNIST IDX files (plain or .gz)
"""

_EVALUATE_EXAMPLES = """\
examples:
  fastsoftmax evaluate --model model.npz --data digits
  fastsoftmax evaluate --model mnist.npz --data ~/mnist   # the t10k-* files
  fastsoftmax evaluate --model iris.npz --data test.csv --label-column species --json
"""

_PREDICT_EXAMPLES = """\
examples:
  fastsoftmax predict --model model.npz --data new.csv              # features only, one label/line
  fastsoftmax predict --model model.npz --data new.csv --proba --header --out proba.csv
  fastsoftmax predict --model model.npz --data labelled.csv --label-column 64  # drop a column
"""


def _add_data_options(parser, *, label_help: str) -> None:
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="data file format (default: from the file name)",
    )
    parser.add_argument("--label-column", type=_label_column, metavar="COL", help=label_help)
    parser.add_argument(
        "--threads", type=_positive_int, metavar="N", help="worker threads (default: all cores)"
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fastsoftmax")
    except PackageNotFoundError:  # running from a source checkout
        import fastsoftmax

        return getattr(fastsoftmax, "__version__", "(not installed)")


def _estimator_defaults() -> dict:
    """SoftmaxRegression's parameter defaults, quoted in --help so they never drift."""
    import inspect

    from fastsoftmax.estimator import SoftmaxRegression

    return {
        name: p.default
        for name, p in inspect.signature(SoftmaxRegression).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fastsoftmax`` command."""
    version = _version()
    parser = _Parser(
        prog=PROG,
        description="Softmax regression (multinomial logistic regression) on the CPU, "
        "with fused Numba kernels.",
        epilog="Run 'fastsoftmax COMMAND --help' for the options and examples of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    raw = argparse.RawDescriptionHelpFormatter

    train = commands.add_parser(
        "train",
        help="train a model and write it (and a training plot)",
        description="Train softmax regression, print accuracy, objective, time and throughput,\n"
        "and write the model (and a PNG of the training curves).",
        epilog=_TRAIN_EXAMPLES,
        formatter_class=raw,
    )
    train.add_argument(
        "--data",
        default="digits",
        metavar="DATA",
        help="training data (default: digits, scikit-learn's handwritten digits)",
    )
    held_out = train.add_mutually_exclusive_group()
    held_out.add_argument("--test-data", metavar="DATA", help="separate test data")
    held_out.add_argument(
        "--test-size",
        type=_test_size,
        metavar="F",
        help="held-out fraction (or count) of --data, stratified and seeded; 0 for none "
        "(default: 0.2, or the t10k files of an IDX directory)",
    )
    _add_data_options(
        train,
        label_help="CSV/TSV label column: 0-based index (negative from the end) or header "
        "name (default: last)",
    )
    train.add_argument(
        "--solver", choices=("lbfgs", "sgd", "gd"), default="lbfgs", help="(default: lbfgs)"
    )
    train.add_argument(
        "--max-iter",
        "--epochs",
        dest="max_iter",
        type=_positive_int,
        metavar="N",
        help="iterations (lbfgs, gd) or epochs (sgd) (default: 100 for lbfgs and gd, 10 for sgd)",
    )
    defaults = _estimator_defaults()
    train.add_argument(
        "--learning-rate",
        type=_positive_float,
        metavar="LR",
        help=f"step size of sgd and gd (default: {defaults.get('learning_rate', '?')})",
    )
    train.add_argument(
        "--batch-size",
        type=_positive_int,
        metavar="B",
        help=f"sgd mini-batch size (default: {defaults.get('batch_size', '?')})",
    )
    train.add_argument(
        "--alpha",
        type=_nonnegative_float,
        metavar="A",
        help=f"L2 penalty alpha/2 ||W||^2 (default: {defaults.get('alpha', '?')})",
    )
    train.add_argument(
        "--tol",
        type=_nonnegative_float,
        metavar="T",
        help=f"convergence tolerance (default: {defaults.get('tol', '?')})",
    )
    train.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float64",
        help="float32 halves memory and trains in float32 (default: float64)",
    )
    train.add_argument(
        "--seed", type=_nonnegative_int, default=0, help="seed of the split and solver (default 0)"
    )
    train.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="scale features to zero mean and unit variance (statistics saved in the model)",
    )
    train.add_argument(
        "--model-out", default="model.npz", metavar="FILE", help="(default: model.npz)"
    )
    plot = train.add_mutually_exclusive_group()
    plot.add_argument(
        "--plot",
        metavar="FILE",
        help=f"PNG of objective and accuracy per iteration (default: {DEFAULT_PLOT}, "
        "skipped if matplotlib is missing)",
    )
    plot.add_argument("--no-plot", dest="plot", action="store_false", help="write no plot")
    train.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    train.add_argument(
        "--quiet", "-q", action="store_true", help="no progress bar and no notes on stderr"
    )
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="accuracy, confusion matrix and per-class precision/recall of a model",
        description="Evaluate a model on labelled data: accuracy, confusion matrix,\n"
        "per-class precision and recall.",
        epilog=_EVALUATE_EXAMPLES,
        formatter_class=raw,
    )
    evaluate.add_argument("--model", required=True, metavar="FILE", help="model .npz file")
    evaluate.add_argument("--data", required=True, metavar="DATA", help="labelled data")
    _add_data_options(
        evaluate, label_help="CSV/TSV label column: index or header name (default: last)"
    )
    evaluate.add_argument("--json", action="store_true", help="print JSON on stdout")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = commands.add_parser(
        "predict",
        help="predict labels or probabilities, as CSV",
        description="Predict one label (or, with --proba, one row of class probabilities) per\n"
        "input row, as CSV on stdout or in a file. CSV/TSV input holds features only.",
        epilog=_PREDICT_EXAMPLES,
        formatter_class=raw,
    )
    predict.add_argument("--model", required=True, metavar="FILE", help="model .npz file")
    predict.add_argument("--data", required=True, metavar="DATA", help="input features")
    _add_data_options(
        predict, label_help="CSV/TSV: a column to ignore (e.g. labels); default: none"
    )
    predict.add_argument("--proba", action="store_true", help="class probabilities")
    predict.add_argument("--header", action="store_true", help="first line names the columns")
    predict.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    predict.set_defaults(func=cmd_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fastsoftmax`` command on ``argv`` (default ``sys.argv[1:]``); the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except (CLIError, DataError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
    except MemoryError:
        print(f"{PROG}: error: out of memory (try --dtype float32 or less data)", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted; nothing written", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): silence the flush at exit, as the Python docs advise.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return 2
