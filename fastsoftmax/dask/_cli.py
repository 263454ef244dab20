"""``fastsoftmax train --dask-workers N`` / ``--scheduler ADDRESS``: training on a Dask cluster.

The data is read by the workers, never by this process: a glob of ``.npy`` shards (2-D arrays,
labels in ``--label-column``, default the last column), of ``.npz`` shards (arrays ``X`` and
``y``, as the in-memory loader reads them), of Parquet files (dask.dataframe with pyarrow; labels
in ``--label-column``, default the last column), or ``synthetic:N,d,K[,seed]`` generated chunk by
chunk on the workers. Any other ``--data`` is loaded here and split into chunks.
"""

from __future__ import annotations

import glob
import json
import os
import time
import warnings
import zipfile
from contextlib import contextmanager

import numpy as np

from fastsoftmax.cli import CLIError, _load, _note, _reason
from fastsoftmax.datasets import DataError, parse_synthetic
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


def load(args, source: str, dtype, n_workers: int):
    """Lazy (X, y, description) of ``source`` as row-chunked dask collections."""
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
    data = _load(args, source, labels=True, split="train", dtype=np.dtype(dtype))
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


def _read_npy(path: str, label: int, dtype):
    A = np.load(path, mmap_mode="r")
    features = np.delete(np.arange(A.shape[1]), label)
    return np.ascontiguousarray(A[:, features], dtype=dtype), np.asarray(A[:, label])


def _npy_shards(files, label_column, dtype):
    import dask
    import dask.array as da

    xs, ys = [], []
    for path in files:
        shape, kind = _npy_header(path)
        if len(shape) != 2 or shape[1] < 2 or kind.kind not in "biuf":
            raise DataError(f"{path}: a shard must be a 2-D numeric array with a label column, "
                            f"got shape {shape} of {kind}")
        label = _label_index(label_column, shape[1], path)
        part = dask.delayed(_read_npy, pure=True, nout=2)(path, label, dtype)
        xs.append(da.from_delayed(part[0], (shape[0], shape[1] - 1), dtype=dtype))
        ys.append(da.from_delayed(part[1], (shape[0],), dtype=kind))
    return _concatenate(xs, ys)


def _read_npz(path: str, dtype):
    with np.load(path, allow_pickle=False) as f:
        return np.ascontiguousarray(f["X"], dtype=dtype), np.asarray(f["y"]).ravel()


def _npz_shards(files, dtype):
    import dask
    import dask.array as da

    xs, ys = [], []
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
        part = dask.delayed(_read_npz, pure=True, nout=2)(path, dtype)
        xs.append(da.from_delayed(part[0], x_shape, dtype=dtype))
        ys.append(da.from_delayed(part[1], (x_shape[0],), dtype=y_kind))
    return _concatenate(xs, ys)


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
        test = None if args.test_data is None else load(args, args.test_data, args.dtype, n_workers)
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
        for key in ("data", "n_train", "n_features", "n_classes", "n_chunks", "n_iter",
                    "final_objective", "train_accuracy", "test_accuracy", "fit_seconds", "model"):
            print(f"{key + ':':18}{summary[key]}")
    return 0


def _summary(args, estimator, X, y, test, description, mean, scale) -> dict:
    """Accuracies (computed on the cluster), the model written, the summary record."""
    train_accuracy = float(estimator.score(X, y))
    test_accuracy = None
    if test is not None:
        X_test = test[0] if mean is None else (test[0] - mean) / scale
        test_accuracy = float(estimator.score(X_test, test[1]))
    info = {"solver": "lbfgs", "n_iter": int(estimator.n_iter_), "data": description,
            "data_source": args.data, "n_train": int(estimator.n_samples_seen_),
            "train_accuracy": train_accuracy,
            "test_accuracy": test_accuracy, "dask": True}
    write_atomically({args.model_out: model_bytes(estimator, mean, scale, info)})
    curve = estimator.loss_curve_
    return {
        "command": "train", "data": description, "n_features": int(estimator.n_features_in_),
        "n_classes": len(estimator.classes_), "n_chunks": int(estimator.n_chunks_),
        "n_train": int(estimator.n_samples_seen_),
        "dtype": estimator.coef_.dtype.name, "n_iter": int(estimator.n_iter_),
        "final_objective": float(curve[-1]) if curve else None,
        "train_accuracy": train_accuracy, "test_accuracy": test_accuracy, "model": args.model_out,
    }
