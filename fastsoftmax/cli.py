"""The ``fastsoftmax`` command: ``train``, ``evaluate`` and ``predict`` from the shell.

Built on :class:`fastsoftmax.estimator.SoftmaxRegression`, :mod:`fastsoftmax.datasets` and
:mod:`fastsoftmax.model_io` only. Conventions every command follows:

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
import glob
import inspect
import io
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from fastsoftmax import estimator as estimator_module
from fastsoftmax.datasets import (
    FORMATS,
    DataError,
    _is_number,
    _reason,
    has_test_split,
    load_dataset,
    source_files,
)
from fastsoftmax.estimator import SoftmaxRegression
from fastsoftmax.model_io import (
    Model,
    ModelIOError,
    check_distinct,
    check_writable,
    load_model,
    model_bytes,
    same_file,
    save_model,
    write_atomically,
)

__all__ = ["CLIError", "Model", "ModelIOError", "load_model", "main", "save_model"]

PROG = "fastsoftmax"
INSTALL_HINT = 'pip install "fastsoftmax[cli]"'
DEFAULT_PLOT = "training.png"
# Per-iteration accuracies for the plot are measured on at most this many rows of each set, so
# monitoring stays a small fraction of an iteration on large data; final accuracies use all rows.
MONITOR_ROWS = 10_000
SOLVERS: tuple[str, ...] = estimator_module.SOLVERS
# The estimator's own defaults, quoted in --help and used when an option is not given, so the
# command line never drifts from the estimator.
ESTIMATOR_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(SoftmaxRegression.__init__).parameters.items()
    if p.default is not inspect.Parameter.empty
}
# sgd counts epochs: 10 is the course recipe's training length, not the estimator's max_iter.
SGD_EPOCHS = 10


class CLIError(Exception):
    """An expected failure: reported as one ``fastsoftmax: error: ...`` line, exit status 2."""


def _default_max_iter(solver: str) -> int:
    return SGD_EPOCHS if solver == "sgd" else ESTIMATOR_DEFAULTS["max_iter"]


def _note(args, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(f"{PROG}: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------- data helpers


_ZERO_BASED = {"auto": "auto", "yes": True, "no": False}
_CSV_HEADER = {"auto": None, "yes": True, "no": False}


def _load(args, source, *, labels: bool, split: str, dtype, n_features=None):
    return load_dataset(
        source,
        dtype=dtype,
        labels=labels,
        label_column=args.label_column,
        fmt=args.format,
        split=split,
        n_features=n_features,
        zero_based=_ZERO_BASED[args.zero_based],
        header=_CSV_HEADER[args.csv_header],
        note=lambda message: _note(args, message),
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


def _labels_for(y: np.ndarray, classes: np.ndarray, what: str, against: str) -> np.ndarray:
    """:func:`_labels_like`, refusing labels that cannot be compared with numeric classes.

    Strings that are not all numbers could never be predicted by a model of numeric classes, and
    scikit-learn refuses to compare them: a CLIError naming one (``what`` names the data,
    ``against`` the classes).
    """
    y = _labels_like(y, classes)
    if y.dtype.kind != "U" or classes.dtype.kind == "U":
        return y
    bad = [str(label) for label in np.unique(y) if not _is_number(label)]
    if not bad:
        return y.astype(np.float64)  # numbers, not all of the classes' type ("1.5" for ints)
    shown = ", ".join(str(c) for c in classes[:5]) + (", ..." if len(classes) > 5 else "")
    raise CLIError(f"{what}: label {bad[0]!r} is not a number, but {against} are ({shown})")


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


# ----------------------------------------------------------------------------- train: steps


class _Sets(NamedTuple):
    """The training and test sets of a run, and where the test set came from."""

    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    test_description: str


class _Fit(NamedTuple):
    """A fitted estimator and how the fit went."""

    estimator: Any
    monitor: _Monitor
    converged: bool
    max_iter: int
    unit: str
    subsampled: bool
    warm_up_seconds: float
    fit_seconds: float


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


def _plot_path(args) -> str | None:
    """The plot to write: the default one only when matplotlib is installed, with a note."""
    if args.plot is False:
        return None
    if args.plot is None:
        if _import_matplotlib() is not None:
            return DEFAULT_PLOT
        _note(args, f"not writing {DEFAULT_PLOT}: matplotlib is not installed ({INSTALL_HINT})")
        return None
    if _import_matplotlib() is None:
        raise CLIError(f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}")
    return args.plot


def _inputs(args) -> list[tuple[str, str]]:
    """``(option, path)`` of every file the command reads.

    A glob (Dask reads the shards it matches) stands for the files it matches as well: a literal
    pattern exists as no file, so it alone would protect none of them from being overwritten.
    """
    pairs = []
    for option in ("--data", "--test-data", "--model"):
        value = getattr(args, option[2:].replace("-", "_"), None)
        if value is not None:
            fmt = "auto" if option == "--model" else args.format
            matches = sorted(glob.glob(os.path.expanduser(value))) if glob.has_magic(value) else []
            for source in [value, *matches]:
                pairs += [(option, path) for path in source_files(source, fmt)]
    return pairs


def _check_outputs(args, outputs: list[tuple[str, str, str]]) -> None:
    """Fail before any work when an output cannot be written or would overwrite another file.

    ``outputs`` holds ``(option, path, what)``; an output may not be the same file as an input
    or as another output.
    """
    for _, path, what in outputs:
        check_writable(path, what)
    check_distinct([(option, path) for option, path, _ in outputs], _inputs(args))


def _check_train_outputs(args, plot_path: str | None) -> None:
    outputs = [("--model-out", args.model_out, "the model")]
    if plot_path is not None:
        outputs.append(("--plot", plot_path, "the plot"))
    _check_outputs(args, outputs)


def _load_training_sets(args, dtype) -> tuple[Any, _Sets]:
    """The training data, and the test set: --test-data, the t10k files, or a held-out split."""
    data = _load(args, args.data, labels=True, split="train", dtype=dtype)
    X, y = data.X, data.y
    if args.test_data is not None:
        # The training width, as predict and evaluate pass the model's: an svmlight test file
        # need not mention the last features.
        test = _load(args, args.test_data, labels=True, split="test", dtype=dtype,
                     n_features=X.shape[1])
        if test.X.shape[1] != X.shape[1]:
            raise CLIError(
                f"test data {args.test_data} has {test.X.shape[1]} features, "
                f"training data has {X.shape[1]}"
            )
        sets = _Sets(X, test.X, y, test.y, test.description)
    elif args.test_size is None and has_test_split(args.data):
        test = _load(args, args.data, labels=True, split="test", dtype=dtype)
        sets = _Sets(X, test.X, y, test.y, f"{args.data} (t10k files)")
    else:
        test_size = 0.2 if args.test_size is None else args.test_size
        sets = _Sets(*_split(X, y, test_size, args.seed, args), _held_out_text(test_size, args))
    _check_training_sets(sets)
    if sets.y_test.dtype.kind != sets.y_train.dtype.kind:
        what = f"test data {args.test_data}" if args.test_data is not None else args.data
        y_test = _labels_for(sets.y_test, np.unique(sets.y_train), what, "the training labels")
        sets = sets._replace(y_test=y_test)
    return data, sets


def _held_out_text(test_size: int | float, args) -> str:
    """``--test-size`` is a count of rows when an integer, a fraction of the data otherwise."""
    if test_size == 0:
        return "none (--test-size 0)"
    if isinstance(test_size, int):
        held_out = f"{test_size} row{'s' if test_size > 1 else ''} held out"
    else:
        held_out = f"{100 * test_size:.4g}% held out"
    return f"{held_out} from the data, seed {args.seed}"


def _training_source(args) -> str:
    """The training data as the model records it: a real path, or the built-in data's name."""
    files = source_files(args.data, args.format)
    return os.path.realpath(args.data) if files else args.data


def _check_training_sets(sets: _Sets) -> None:
    if sets.X_train.shape[0] == 0:
        raise CLIError("no training samples left after the held-out split")
    present = np.unique(sets.y_train)
    if len(present) < 2:
        raise CLIError(
            f"training data has only one class ({present[0]}): softmax regression needs at "
            "least 2 classes"
        )


def _standardize_sets(sets: _Sets) -> tuple[np.ndarray, np.ndarray, _Sets]:
    """Statistics of the training set, applied to both sets."""
    if scipy_sparse_issparse(sets.X_train):
        raise CLIError(_SPARSE_STANDARDIZE)
    mean = sets.X_train.mean(axis=0, dtype=np.float64)
    scale = sets.X_train.std(axis=0, dtype=np.float64)
    scale[scale == 0] = 1.0  # constant features stay constant (zero) instead of dividing by 0
    return (
        mean,
        scale,
        sets._replace(
            X_train=_standardize(sets.X_train, mean, scale),
            X_test=_standardize(sets.X_test, mean, scale),
        ),
    )


def _make_monitor(args, sets: _Sets, watch: bool, max_iter: int, unit: str):
    """The progress callback; accuracies are watched on subsamples when ``watch``."""
    monitor_train = monitor_test = None
    subsampled = False
    if watch:
        monitor_train = _subsample(sets.X_train, sets.y_train, MONITOR_ROWS, args.seed)
        if sets.X_test.shape[0]:
            monitor_test = _subsample(sets.X_test, sets.y_test, MONITOR_ROWS, args.seed)
        subsampled = sets.X_train.shape[0] > MONITOR_ROWS or sets.X_test.shape[0] > MONITOR_ROWS
    bar = _progress_bar(args, max_iter, unit)
    return _Monitor(bar, monitor_train, monitor_test), subsampled


def _fit(args, sets: _Sets, watch: bool) -> _Fit:
    """Warm the JIT up, then fit with the progress callback; convergence is reported, not warned."""
    from sklearn.exceptions import ConvergenceWarning

    max_iter = args.max_iter if args.max_iter is not None else _default_max_iter(args.solver)
    unit = "epoch" if args.solver == "sgd" else "iteration"
    monitor, subsampled = _make_monitor(args, sets, watch, max_iter, unit)
    estimator = SoftmaxRegression(**_train_params(args, max_iter, monitor))
    warm_up_seconds = _warm_up(_train_params(args, 2, None), sets.X_train, sets.y_train)
    fit_start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            estimator.fit(sets.X_train, sets.y_train)
    except ValueError as exc:
        raise CLIError(f"training failed: {_reason(exc)}") from None
    finally:
        if monitor.bar is not None:
            monitor.bar.close()
    converged = True
    for warning in caught:
        # Not converging within --max-iter is a normal outcome: reported in the summary.
        if issubclass(warning.category, ConvergenceWarning):
            converged = False
        else:
            _note(args, f"warning: {_reason(warning.message)}")
    fit_seconds = time.perf_counter() - fit_start
    estimator.callback = None  # the monitor is not part of the model
    return _Fit(estimator, monitor, converged, max_iter, unit, subsampled, warm_up_seconds, fit_seconds)


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


def _warm_up(params: dict, X: np.ndarray, y: np.ndarray) -> float:
    """Fit briefly on a few rows so JIT compilation (or loading the cache) is not timed as training.

    The rows include every class, so the same kernels run as in the real fit.
    """
    start = time.perf_counter()
    _, first_of_each_class = np.unique(y, return_index=True)
    rows = np.union1d(np.arange(min(len(y), 256)), first_of_each_class)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            SoftmaxRegression(**params).fit(X[rows], y[rows])
    except ValueError:
        pass  # the real fit reports the problem
    return time.perf_counter() - start


def _write_train_outputs(args, data, sets: _Sets, fit: _Fit, stats, plot_path) -> dict:
    """Write the model (and the plot) together; return the model's info record."""
    estimator = fit.estimator
    info = {
        "solver": args.solver,
        "n_iter": int(np.max(estimator.n_iter_)),
        "data": data.description,
        "data_source": _training_source(args),
        "n_train": sets.X_train.shape[0],
        "train_accuracy": float(estimator.score(sets.X_train, sets.y_train)),
        "test_accuracy": (
            float(estimator.score(sets.X_test, sets.y_test)) if sets.X_test.shape[0] else None
        ),
    }
    try:
        outputs = {args.model_out: model_bytes(estimator, *stats, info)}
    except ValueError as exc:  # non-finite coefficients or statistics: a file load_model refuses
        raise CLIError(f"cannot write the model {args.model_out}: {_reason(exc)}") from None
    if plot_path is not None:
        title = (
            f"{data.description}: softmax regression, {args.solver}, "
            f"{sets.X_train.shape[0]} train / {sets.X_test.shape[0]} test samples"
        )
        outputs[plot_path] = _plot_bytes(fit.monitor.history, fit.unit, title, fit.subsampled)
    write_atomically(outputs)
    return info


def _train_summary(args, data, sets: _Sets, fit: _Fit, info: dict, plot_path, started) -> dict:
    curve = np.asarray(getattr(fit.estimator, "loss_curve_", []), dtype=float)
    train_seconds = max(fit.fit_seconds - fit.monitor.seconds, 1e-9)
    history = fit.monitor.history
    return {
        "command": "train",
        "data": data.description,
        "test_data": sets.test_description,
        "n_train": sets.X_train.shape[0],
        "n_test": sets.X_test.shape[0],
        "n_features": int(sets.X_train.shape[1]),
        "n_classes": len(fit.estimator.classes_),
        "dtype": sets.X_train.dtype.name,
        "solver": args.solver,
        "standardize": bool(args.standardize),
        "n_iter": info["n_iter"],
        "converged": fit.converged,
        "final_objective": float(curve[-1]) if curve.size else None,
        "train_accuracy": info["train_accuracy"],
        "test_accuracy": info["test_accuracy"],
        "warm_up_seconds": fit.warm_up_seconds,
        "fit_seconds": fit.fit_seconds,
        "monitor_seconds": fit.monitor.seconds,
        "wall_seconds": time.perf_counter() - started,
        "throughput_samples_per_second": sets.X_train.shape[0] * info["n_iter"] / train_seconds,
        "model": args.model_out,
        "plot": plot_path,
        "history": history if history["iteration"] else {"loss": curve.tolist()},
    }


def _print_train_summary(summary: dict, fit: _Fit) -> None:
    test_accuracy, objective = summary["test_accuracy"], summary["final_objective"]
    test_text = "n/a (no test set)" if test_accuracy is None else f"{test_accuracy:.4f}"
    objective_text = "n/a" if objective is None else f"{objective:.6g}"
    unit = fit.unit
    print(f"data:            {summary['data']}")
    print(f"test data:       {summary['test_data']}")
    print(
        f"problem:         {summary['n_train']} train / {summary['n_test']} test samples, "
        f"{summary['n_features']} features, {summary['n_classes']} classes, {summary['dtype']}"
        + (", standardized" if summary["standardize"] else "")
    )
    stopped = "" if fit.converged else f" (stopped at --max-iter {fit.max_iter} before converging)"
    print(
        f"solver:          {summary['solver']}, {summary['n_iter']} {unit}s{stopped}, "
        f"final objective {objective_text}"
    )
    print(f"train accuracy:  {summary['train_accuracy']:.4f}")
    print(f"test accuracy:   {test_text}")
    print(
        f"wall time:       {summary['wall_seconds']:.2f} s "
        f"(JIT warm-up {fit.warm_up_seconds:.2f} s, training {fit.fit_seconds:.2f} s "
        f"of which monitoring {fit.monitor.seconds:.2f} s)"
    )
    throughput = summary["throughput_samples_per_second"]
    print(f"throughput:      {throughput:,.0f} samples/s (train samples x {unit}s / training time)")
    print(f"model written:   {summary['model']}")
    if summary["plot"] is not None:
        print(f"plot written:    {summary['plot']}")


def _train_on_dask(args) -> int:
    """``train --dask-workers N`` or ``--scheduler ADDRESS``: fastsoftmax.dask does the work."""
    if isinstance(args.plot, str):
        raise CLIError("--plot: no training plot with Dask (use --no-plot, or leave it out)")
    _check_train_outputs(args, None)
    try:
        from fastsoftmax.dask._cli import train
    except ImportError as exc:
        raise CLIError(f"Dask training needs dask ({_reason(exc)}): "
                       'pip install "fastsoftmax[dask]"') from None
    return train(args)


def cmd_train(args) -> int:
    if args.dask_workers is not None or args.scheduler is not None:
        return _train_on_dask(args)
    started = time.perf_counter()
    plot_path = _plot_path(args)
    _check_train_outputs(args, plot_path)
    data, sets = _load_training_sets(args, np.dtype(args.dtype))
    stats = (None, None)
    if args.standardize:
        *stats, sets = _standardize_sets(sets)
    fit = _fit(args, sets, watch=plot_path is not None or not args.quiet)
    info = _write_train_outputs(args, data, sets, fit, stats, plot_path)
    summary = _train_summary(args, data, sets, fit, info, plot_path, started)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_train_summary(summary, fit)
    return 0


# ----------------------------------------------------------------------------- evaluate, predict


def _model_and_data(args, *, labels: bool):
    """The model, the data (checked against the model's features) and X, standardized."""
    model = load_model(args.model)
    if getattr(args, "out", None) is not None:
        _check_outputs(args, [("--out", args.out, "predictions")])
    split = "test" if has_test_split(args.data) else "train"
    data = _load(
        args, args.data, labels=labels, split=split, dtype=model.dtype, n_features=model.n_features
    )
    _check_n_features(data.X, model.n_features, f"data {args.data}")
    if args.threads is not None:
        model.estimator.n_jobs = args.threads
    return model, data, _standardize(data.X, model.mean, model.scale)


def _evaluation(estimator, X, y) -> dict:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    predicted = estimator.predict(X)
    labels = list(estimator.classes_)
    extra = [label for label in np.unique(y) if label not in set(labels)]
    labels = labels + extra
    precision, recall, _, support = precision_recall_fscore_support(
        y, predicted, labels=labels, zero_division=0
    )
    names = [label.item() if hasattr(label, "item") else label for label in labels]
    return {
        "n_samples": len(y),
        "n_correct": int(np.sum(predicted == y)),
        "accuracy": float(np.mean(predicted == y)),
        "classes": names,
        "confusion_matrix": confusion_matrix(y, predicted, labels=labels),
        "precision": precision,
        "recall": recall,
        # Counts: scikit-learn returns them as floats when every precision and recall is 0.
        "support": support.astype(np.int64),
        "unknown_labels": names[len(estimator.classes_) :],
    }


def _print_evaluation(description: str, result: dict) -> None:
    names, matrix = result["classes"], result["confusion_matrix"]
    print(f"data:      {description}")
    print(f"accuracy:  {result['accuracy']:.4f} ({result['n_correct']}/{result['n_samples']})")
    if result["unknown_labels"]:
        print(f"labels the model never saw: {', '.join(map(str, result['unknown_labels']))}")
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
    columns = (result["precision"], result["recall"], result["support"])
    for name, p, r, s in zip(text, *columns, strict=True):
        print(f"{name.rjust(width)}  {p:9.4f}  {r:6.4f}  {s:7d}")


def _is_training_data(args, info: dict) -> bool:
    """Whether evaluate reads the rows the model was trained on (or a superset of them)."""
    source = info.get("data_source")
    if not isinstance(source, str) or has_test_split(args.data):
        return False  # an IDX directory's t10k files were never trained on
    if not source_files(args.data, args.format):
        return source == args.data  # built-in data: same name, same rows
    return os.path.exists(source) and same_file(source, args.data)


def cmd_evaluate(args) -> int:
    model, data, X = _model_and_data(args, labels=True)
    training_data = _is_training_data(args, model.info)
    if training_data:
        n_train = model.info.get("n_train")
        trained = f" ({n_train} of its rows)" if isinstance(n_train, int) else ""
        _note(
            args,
            f"note: {args.data} is the data the model was trained on{trained}: this accuracy "
            "is not a held-out score",
        )
    classes = model.estimator.classes_
    y = _labels_for(data.y, classes, f"data {args.data}", "the model's classes")
    result = _evaluation(model.estimator, X, y)
    if not args.json:
        _print_evaluation(data.description, result)
        return 0
    report = {"command": "evaluate", "model": args.model, "data": data.description}
    report["training_data"] = training_data
    report.update(result)
    del report["n_correct"]
    for name in ("confusion_matrix", "precision", "recall", "support"):
        report[name] = report[name].tolist()
    print(json.dumps(report, indent=2))
    return 0


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
    model, _, X = _model_and_data(args, labels=args.label_column is not None)
    text = _predictions_text(model.estimator, X, args.proba, args.header)
    if args.out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_atomically({args.out: text.encode()})
    return 0


# ----------------------------------------------------------------------------- option types


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error format of the other failures."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _number(kind: Callable, check: Callable[[Any], bool], requirement: str):
    """An argparse type: ``kind(text)`` that must pass ``check``, else says ``requirement``."""

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


def _learning_rate(text: str):
    """'auto' (the estimator's step from the data) or a fixed step > 0."""
    return text if text == "auto" else _step(text)


_step = _number(float, lambda v: v > 0 and np.isfinite(v), "'auto' or a number > 0")
_fraction = _number(float, lambda v: 0.0 <= v < 1.0, "a fraction in [0, 1) or a count of samples")
_count = _number(int, lambda v: v >= 0, "a fraction or a count >= 0")


def _test_size(text: str):
    """A fraction in [0, 1) or a number of samples (an integer >= 0)."""
    try:
        int(text)
    except ValueError:
        return _fraction(text)
    return _count(text)


def _label_column(text: str):
    try:
        return int(text)
    except ValueError:
        return text


# ----------------------------------------------------------------------------- parser

_TRAIN_EXAMPLES = """\
examples:
  fastsoftmax train                              # digits, 20% held out, model.npz + training.png
  fastsoftmax train --data synthetic:200000,100,10 --dtype float32 --solver sgd --epochs 5
  fastsoftmax train --data data.csv --label-column species --standardize --model-out iris.npz
  fastsoftmax train --data ~/mnist --standardize     # train-* files, tested on the t10k-* files
  fastsoftmax train --data train.svm --test-data test.svm --json --quiet --no-plot
  fastsoftmax train --data 'shards/*.npz' --dask-workers 4 --no-plot   # Dask: data on the workers

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
  fastsoftmax predict --model model.npz --data counts.csv --csv-header no  # row 1 0,1,2 is data
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
        "--csv-header",
        choices=tuple(_CSV_HEADER),
        default="auto",
        help="CSV/TSV input: whether the first row names the columns (default: auto: a header "
        "when a feature field is not a number, when the label field alone is not one (over "
        "numeric labels), or when it is pandas' default names 0,1,2,... over decimals; an error "
        "when such names could as well be a row of integer data)",
    )
    parser.add_argument(
        "--zero-based",
        choices=tuple(_ZERO_BASED),
        default="auto",
        help="svmlight: whether feature indices start at 0 (default: auto, one-based when no "
        "feature has index 0, with a note)",
    )
    parser.add_argument(
        "--threads", type=_positive_int, metavar="N", help="worker threads (default: all cores)"
    )


def _add_model_input_options(parser, *, data_help: str) -> None:
    parser.add_argument("--model", required=True, metavar="FILE", help="model .npz file")
    parser.add_argument("--data", required=True, metavar="DATA", help=data_help)


def _add_train_data_options(train) -> None:
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


def _add_solver_options(train) -> None:
    defaults = ESTIMATOR_DEFAULTS
    solver = defaults["solver"]
    train.add_argument("--solver", choices=SOLVERS, default=solver, help=f"(default: {solver})")
    others = ", ".join(name for name in SOLVERS if name != "sgd")
    train.add_argument(
        "--max-iter",
        "--epochs",
        dest="max_iter",
        type=_positive_int,
        metavar="N",
        help=f"iterations ({others}) or epochs (sgd) (default: {defaults['max_iter']} for "
        f"{others.replace(', ', ' and ')}, {SGD_EPOCHS} for sgd)",
    )
    for flag, kind, metavar, text in (
        ("--learning-rate", _learning_rate, "LR", "step size of sgd and gd: 'auto' or a number"),
        ("--batch-size", _positive_int, "B", "sgd mini-batch size"),
        ("--alpha", _nonnegative_float, "A", "L2 penalty alpha/2 ||W||^2"),
        ("--tol", _nonnegative_float, "T", "convergence tolerance"),
    ):
        default = defaults[flag[2:].replace("-", "_")]
        train.add_argument(flag, type=kind, metavar=metavar, help=f"{text} (default: {default})")
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


def _add_train_output_options(train) -> None:
    train.add_argument("--model-out", default="model.npz", metavar="FILE", help="(default: model.npz)")
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


def _add_dask_options(train) -> None:
    where = train.add_mutually_exclusive_group()
    where.add_argument(
        "--dask-workers", type=_positive_int, metavar="N",
        help="train on a local Dask cluster of N worker processes (pip install "
        '"fastsoftmax[dask]"); --data may then also be a glob of .npy/.npz shards or Parquet '
        "files, read by the workers, and synthetic data is generated on the workers",
    )
    where.add_argument(
        "--scheduler", metavar="ADDRESS",
        help="train on the Dask cluster of this scheduler (e.g. tcp://host:8786); as "
        "--dask-workers otherwise",
    )


def _add_command(commands, name: str, func, help: str, description: str, epilog: str):
    """A subcommand whose description and examples keep their line breaks."""
    command = commands.add_parser(name, help=help, description=description, epilog=epilog,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    command.set_defaults(func=func)
    return command


def _add_train(commands) -> None:
    train = _add_command(
        commands, "train", cmd_train,
        help="train a model and write it (and a training plot)",
        description="Train softmax regression, print accuracy, objective, time and throughput,\n"
        "and write the model (and a PNG of the training curves).",
        epilog=_TRAIN_EXAMPLES,
    )
    _add_train_data_options(train)
    _add_solver_options(train)
    _add_train_output_options(train)
    _add_dask_options(train)


def _add_evaluate(commands) -> None:
    evaluate = _add_command(
        commands, "evaluate", cmd_evaluate,
        help="accuracy, confusion matrix and per-class precision/recall of a model",
        description="Evaluate a model on labelled data: accuracy, confusion matrix,\n"
        "per-class precision and recall.",
        epilog=_EVALUATE_EXAMPLES,
    )
    _add_model_input_options(evaluate, data_help="labelled data")
    _add_data_options(evaluate, label_help="CSV/TSV label column: index or header name (default: last)")
    evaluate.add_argument("--json", action="store_true", help="print JSON on stdout")


def _add_predict(commands) -> None:
    predict = _add_command(
        commands, "predict", cmd_predict,
        help="predict labels or probabilities, as CSV",
        description="Predict one label (or, with --proba, one row of class probabilities) per\n"
        "input row, as CSV on stdout or in a file. CSV/TSV input holds features only.",
        epilog=_PREDICT_EXAMPLES,
    )
    _add_model_input_options(predict, data_help="input features")
    _add_data_options(predict, label_help="CSV/TSV: a column to ignore (e.g. labels); default: none")
    predict.add_argument("--proba", action="store_true", help="class probabilities")
    predict.add_argument(
        "--header", action="store_true", help="write a first line naming the output's columns"
    )
    predict.add_argument("--out", metavar="FILE", help="write here instead of stdout")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fastsoftmax")
    except PackageNotFoundError:  # running from a source checkout
        import fastsoftmax

        return getattr(fastsoftmax, "__version__", "(not installed)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fastsoftmax`` command."""
    parser = _Parser(
        prog=PROG,
        description="Softmax regression (multinomial logistic regression) on the CPU, "
        "with fused Numba kernels.",
        epilog="Run 'fastsoftmax COMMAND --help' for the options and examples of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_train(commands)
    _add_evaluate(commands)
    _add_predict(commands)
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
    except (CLIError, DataError, ModelIOError) as exc:
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
