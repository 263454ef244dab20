"""``fastsoftmax train --dask-workers N`` / ``--scheduler ADDRESS``: training on a Dask cluster.

The data is read by the workers, never by this process: a glob of ``.npy`` shards (2-D arrays,
labels in ``--label-column``, default the last column), of ``.npz`` shards (arrays ``X`` and
``y``, as the in-memory loader reads them), of Parquet files (dask.dataframe with pyarrow; labels
in ``--label-column``, default the last column), or ``synthetic:N,d,K[,seed]`` generated chunk by
chunk on the workers. Any other ``--data`` is loaded here and split into chunks.

Labels of shards become what the in-memory loader makes of the same labels in one file
(``datasets._as_labels``: whole numbers int64, other numbers float64, strings of numbers numbers,
other strings stripped strings), decided over all the shards' labels; test labels are converted to
the type of the training classes as the in-memory command converts them.
"""

from __future__ import annotations

import glob
import json
import os
import time
import warnings
import zipfile
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np

from fastsoftmax.cli import CLIError, _labels_for, _load, _note, _reason
from fastsoftmax.datasets import DataError, _as_labels, has_test_split, parse_synthetic
from fastsoftmax.model_io import model_bytes, write_atomically

__all__ = ["train"]

# Rows per chunk of synthetic or in-process data: about this many bytes of X per task.
CHUNK_BYTES = 64 * 2**20


@contextmanager
def cluster(args):
    """A Client of a new LocalCluster (``--dask-workers``) or of ``--scheduler``."""
    from distributed import Client, LocalCluster

    if args.scheduler is not None:
        try:
            client = Client(args.scheduler, timeout="10s", set_as_default=False)
        except OSError as exc:
            raise CLIError(f"cannot reach the Dask scheduler {args.scheduler}: {_reason(exc)}") from None
        with client, client.as_current():
            yield client
        return
    with LocalCluster(n_workers=args.dask_workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=40) as local:
        with Client(local, set_as_default=False) as client, client.as_current():
            yield client


def _chunk_rows(n_features: int, itemsize: int) -> int:
    return max(1, CHUNK_BYTES // max(1, n_features * itemsize))


def _files(source: str) -> list[str]:
    return sorted(glob.glob(os.path.expanduser(source))) if glob.has_magic(source) else (
        [source] if os.path.isfile(source) else [])


def load(args, source: str, dtype, n_workers: int, *, split: str = "train", n_features=None):
    """Lazy (X, y, description) of ``source`` as row-chunked dask collections.

    ``split`` picks the train or t10k files of an IDX directory; ``n_features`` is the width of
    an svmlight file (as the in-memory command passes the training width for test data).
    """
    import dask.array as da

    if source.startswith("synthetic:"):
        from fastsoftmax.dask import make_synthetic

        n, d, k, seed = parse_synthetic(source)
        n_chunks = max(n_workers, -(-n // _chunk_rows(d, np.dtype(dtype).itemsize)))
        X, y = make_synthetic(n, d, k, n_chunks=n_chunks, seed=seed, dtype=dtype)
        return X, y, f"synthetic {n} x {d}, {k} classes, seed {seed} (generated on the workers)"
    files = _files(source)
    kinds = {os.path.splitext(f)[1].lower() for f in files}
    if files and kinds <= {".npy", ".npz", ".parquet", ".pq"} and len(kinds) == 1:
        kind = kinds.pop()
        what = f"{len(files)} {kind} file(s) matching {source}"
        if kind == ".npy":
            return (*_npy_shards(files, args.label_column, dtype), what)
        if kind == ".npz":
            return (*_npz_shards(files, dtype), what)
        return (*_parquet(files, args.label_column, dtype), what)
    data = _load(args, source, labels=True, split=split, dtype=np.dtype(dtype),
                 n_features=n_features)
    rows = _chunk_rows(data.X.shape[1], data.X.dtype.itemsize)
    n_chunks = max(n_workers, -(-data.X.shape[0] // rows))
    rows = max(1, -(-data.X.shape[0] // n_chunks))
    return (da.from_array(data.X, chunks=(rows, -1)), da.from_array(data.y, chunks=rows),
            f"{data.description} (loaded here, {n_chunks} chunks)")


def _npy_header(path: str):
    with open(path, "rb") as f:
        return _header(f, path)


def _header(f, path: str):
    try:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read(f)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not a .npy array ({_reason(exc)})") from None
    return shape, dtype


def _label_index(label_column, n_columns: int, path: str) -> int:
    index = -1 if label_column is None else label_column
    if not isinstance(index, int) or not -n_columns <= index < n_columns:
        raise DataError(f"{path}: --label-column {label_column!r} is not a column index of "
                        f"its {n_columns} columns")
    return index % n_columns


def _npy_labels(path: str, label: int) -> np.ndarray:
    return np.asarray(np.load(path, mmap_mode="r")[:, label])


def _read_npy(path: str, label: int, dtype, label_dtype):
    A = np.load(path, mmap_mode="r")
    features = np.delete(np.arange(A.shape[1]), label)
    return (np.ascontiguousarray(A[:, features], dtype=dtype),
            _labels_as(np.asarray(A[:, label]), label_dtype))


def _npy_shards(files, label_column, dtype):
    import dask
    import dask.array as da

    shards = []
    for path in files:
        shape, kind = _npy_header(path)
        if len(shape) != 2 or shape[1] < 2 or kind.kind not in "biuf":
            raise DataError(f"{path}: a shard must be a 2-D numeric array with a label column, "
                            f"got shape {shape} of {kind}")
        shards.append((path, shape, kind, _label_index(label_column, shape[1], path)))
    label_dtype = _label_dtype([(_npy_labels, path, label) for path, _, _, label in shards],
                               [kind for _, _, kind, _ in shards])
    xs, ys = [], []
    for path, shape, _, label in shards:
        part = dask.delayed(_read_npy, pure=True, nout=2)(path, label, dtype, label_dtype)
        xs.append(da.from_delayed(part[0], (shape[0], shape[1] - 1), dtype=dtype))
        ys.append(da.from_delayed(part[1], (shape[0],), dtype=label_dtype))
    return _concatenate(xs, ys)


def _npz_labels(path: str) -> np.ndarray:
    with np.load(path, allow_pickle=False) as f:
        return np.asarray(f["y"]).ravel()


def _read_npz(path: str, dtype, label_dtype):
    with np.load(path, allow_pickle=False) as f:
        X = np.ascontiguousarray(f["X"], dtype=dtype)
        return X, _labels_as(np.asarray(f["y"]).ravel(), label_dtype)


def _npz_shards(files, dtype):
    import dask
    import dask.array as da

    shards = []
    for path in files:
        try:
            with zipfile.ZipFile(path) as z:
                with z.open("X.npy") as f:
                    x_shape, _ = _header(f, path)
                with z.open("y.npy") as f:
                    y_shape, y_kind = _header(f, path)
        except (KeyError, zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"{path}: a shard must be an .npz with arrays X and y "
                            f"({_reason(exc)})") from None
        if len(x_shape) != 2 or int(np.prod(y_shape)) != x_shape[0]:
            raise DataError(f"{path}: X of shape {x_shape} and y of shape {y_shape} do not match")
        shards.append((path, x_shape, y_kind))
    label_dtype = _label_dtype([(_npz_labels, path) for path, _, _ in shards],
                               [y_kind for _, _, y_kind in shards])
    xs, ys = [], []
    for path, x_shape, _ in shards:
        part = dask.delayed(_read_npz, pure=True, nout=2)(path, dtype, label_dtype)
        xs.append(da.from_delayed(part[0], x_shape, dtype=dtype))
        ys.append(da.from_delayed(part[1], (x_shape[0],), dtype=label_dtype))
    return _concatenate(xs, ys)


def _label_dtype(readers, kinds) -> np.dtype:
    """The dtype ``_as_labels`` gives the labels of all the shards together.

    Integer labels are int64. Otherwise the type depends on the values (whole numbers or not,
    strings of numbers or not), which depends only on the distinct labels: each shard's are
    found where it is read, on the workers. ``readers`` are ``(function, *arguments)`` reading
    one shard's labels.
    """
    import dask

    if all(np.dtype(kind).kind in "biu" for kind in kinds):
        return np.dtype(np.int64)
    try:
        distinct = dask.compute(*[dask.delayed(_distinct, pure=True)(*r) for r in readers])
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read the labels of the shards ({_reason(exc)})") from None
    if any(d.dtype.kind not in "biuf" for d in distinct):
        distinct = [d.astype(str) for d in distinct]  # numbers beside strings: all text
    return _as_labels(np.concatenate(distinct)).dtype


def _distinct(read, *args) -> np.ndarray:
    return np.unique(read(*args))


def _labels_as(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """One shard's labels converted as ``_as_labels`` converts all of them, to ``dtype``."""
    if dtype.kind == "U" or values.dtype.kind not in "biuf":
        values = np.char.strip(values.astype(str))
    if dtype.kind == "U":
        return values.astype(dtype)  # the longest label of all the shards fits
    if values.dtype.kind == "U":
        values = values.astype(np.float64)  # "2" -> 2.0 -> 2, as _as_labels reads it
    return values.astype(dtype)


def _concatenate(xs, ys):
    import dask.array as da

    widths = {x.shape[1] for x in xs}
    if len(widths) > 1:
        raise DataError(f"the shards have different numbers of features: {sorted(widths)}")
    return da.concatenate(xs), da.concatenate(ys)


def _parquet(files, label_column, dtype):
    import dask.dataframe as dd

    frame = dd.read_parquet(files)
    columns = list(frame.columns)
    if label_column is None or isinstance(label_column, int):
        label = columns[_label_index(label_column, len(columns), files[0])]
    elif label_column in columns:
        label = label_column
    else:
        raise DataError(f"--label-column {label_column!r} is not a column of {files[0]}")
    return frame.drop(columns=label).astype(dtype), frame[label]


def _standardize(X):
    import dask.array as da

    from fastsoftmax.dask._data import as_rows

    X = as_rows(X)
    mean, scale = da.compute(X.mean(axis=0, dtype=np.float64), X.std(axis=0, dtype=np.float64))
    scale[scale == 0] = 1.0
    return ((X - mean) / scale).astype(X.dtype), mean, scale


def _params(args):
    from fastsoftmax.cli import ESTIMATOR_DEFAULTS

    params = {"max_iter": args.max_iter or ESTIMATOR_DEFAULTS["max_iter"], "n_jobs": args.threads}
    params.update({k: getattr(args, k) for k in ("alpha", "tol") if getattr(args, k) is not None})
    return params


def _check_options(args) -> None:
    if args.solver != "lbfgs":
        raise CLIError(f"--solver {args.solver} is not available with Dask; lbfgs is")
    if args.test_size not in (None, 0):
        raise CLIError("--test-size: no held-out split with Dask; pass --test-data (or 0)")


def train(args) -> int:
    """The ``train`` command on a Dask cluster; prints the summary, writes the model."""
    from sklearn.exceptions import ConvergenceWarning

    from fastsoftmax.dask import SoftmaxRegression

    _check_options(args)
    started = time.perf_counter()
    with cluster(args) as client:
        n_workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
        X, y, description = load(args, args.data, args.dtype, n_workers)
        test = _load_test(args, X, n_workers)
        mean = scale = None
        if args.standardize:
            X, mean, scale = _standardize(X)
        estimator = SoftmaxRegression(**_params(args))
        fit_start = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                estimator.fit(X, y)
        except (ValueError, TypeError) as exc:
            raise CLIError(f"training failed: {_reason(exc)}") from None
        fit_seconds = time.perf_counter() - fit_start
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        summary = _summary(args, estimator, X, y, test, description, mean, scale)
    summary.update(converged=converged, fit_seconds=fit_seconds, n_workers=n_workers,
                   wall_seconds=time.perf_counter() - started)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _note(args, f"trained on {n_workers} Dask worker(s)")
        for key in ("data", "test_data", "n_train", "n_features", "n_classes", "n_chunks", "n_iter",
                    "final_objective", "train_accuracy", "test_accuracy", "fit_seconds", "model"):
            print(f"{key + ':':18}{summary[key]}")
    return 0


class _Test(NamedTuple):
    """The test set (lazy), what the messages call it, and its description."""

    X: Any
    y: Any
    name: str
    description: str


def _load_test(args, X, n_workers: int) -> _Test | None:
    """The test set the in-memory command would use: --test-data (the t10k files of an IDX
    directory), else the t10k files of an IDX --data (unless --test-size 0), else none."""
    if args.test_data is not None:
        name = f"test data {args.test_data}"
        X_test, y_test, description = load(args, args.test_data, args.dtype, n_workers,
                                           split="test", n_features=int(X.shape[1]))
    elif args.test_size is None and has_test_split(args.data):
        name = description = f"{args.data} (t10k files)"
        X_test, y_test, _ = load(args, args.data, args.dtype, n_workers, split="test")
    else:
        return None
    if X_test.shape[1] != X.shape[1]:
        raise CLIError(f"{name} has {X_test.shape[1]} features, training data has {X.shape[1]}")
    return _Test(X_test, y_test, name, description)


def _test_labels(y, classes: np.ndarray, name: str):
    """Test labels compared with the training classes as the in-memory command compares them
    (``cli._labels_for``), converted lazily. Strings against numeric classes are checked on
    their distinct values, found on the workers."""
    kind = getattr(y.dtype, "kind", "O")  # a Parquet string column has a pandas dtype
    if classes.dtype.kind == "U":
        return y.astype(str) if kind in "biuf" else y
    if kind in "biuf":
        return y
    import dask.array as da

    distinct = y.unique() if hasattr(y, "to_dask_array") else da.unique(y)
    _labels_for(np.asarray(distinct.compute()).astype(str), classes, name, "the training labels")
    return y.astype(np.float64)  # every one a number (else _labels_for raised)


def _summary(args, estimator, X, y, test: _Test | None, description, mean, scale) -> dict:
    """Accuracies (computed on the cluster), the model written, the summary record."""
    train_accuracy = float(estimator.score(X, y))
    test_accuracy = None
    if test is not None:
        X_test = test.X if mean is None else (test.X - mean) / scale
        y_test = _test_labels(test.y, estimator.classes_, test.name)
        try:
            test_accuracy = float(estimator.score(X_test, y_test))
        except (ValueError, TypeError) as exc:
            raise CLIError(f"{test.name}: {_reason(exc)}") from None
    info = {"solver": "lbfgs", "n_iter": int(estimator.n_iter_), "data": description,
            "data_source": args.data, "n_train": int(estimator.n_samples_seen_),
            "train_accuracy": train_accuracy,
            "test_accuracy": test_accuracy, "dask": True}
    try:
        model = model_bytes(estimator, mean, scale, info)
    except ValueError as exc:  # non-finite coefficients or statistics: a file load_model refuses
        raise CLIError(f"cannot write the model {args.model_out}: {_reason(exc)}") from None
    write_atomically({args.model_out: model})
    curve = estimator.loss_curve_
    return {
        "command": "train", "data": description,
        "test_data": test.description if test is not None else (
            "none (--test-size 0)" if args.test_size == 0 else "none (no --test-data)"),
        "n_features": int(estimator.n_features_in_),
        "n_classes": len(estimator.classes_), "n_chunks": int(estimator.n_chunks_),
        "n_train": int(estimator.n_samples_seen_),
        "dtype": estimator.coef_.dtype.name, "n_iter": int(estimator.n_iter_),
        "final_objective": float(curve[-1]) if curve else None,
        "train_accuracy": train_accuracy, "test_accuracy": test_accuracy, "model": args.model_out,
    }
