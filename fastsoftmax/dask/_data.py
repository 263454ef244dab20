"""Dask inputs to row-chunked arrays: X (n_samples, n_features) with one column chunk, y and
sample_weight (n_samples,) chunked like X. Nothing here computes: the checks that need the data
run in the first pass over the chunks (``_chunks.stats``)."""

from __future__ import annotations

import numpy as np

__all__ = ["as_rows", "frame_rows", "is_dask", "like_rows", "to_dask_array"]

_Y, _W = "__fastsoftmax_y__", "__fastsoftmax_sample_weight__"


def is_dask(a) -> bool:
    """Whether ``a`` is a dask collection (without importing dask when it is not loaded)."""
    import sys

    if "dask" not in sys.modules:
        return False
    from dask import is_dask_collection

    return is_dask_collection(a)


def to_dask_array(a, name: str):
    """A dask Array from a dask Array, DataFrame or Series (partition lengths may stay unknown,
    as dask.dataframe leaves them: the first pass over the chunks counts the rows)."""
    import dask.array as da
    import dask.dataframe as dd

    if isinstance(a, da.Array):
        return a
    if isinstance(a, dd.DataFrame):
        kinds = {np.dtype(t).kind if _is_numpy_dtype(t) else "O" for t in a.dtypes}
        if not kinds <= set("biuf"):
            bad = [str(c) for c, t in a.dtypes.items()
                   if not (_is_numpy_dtype(t) and np.dtype(t).kind in "biuf")]
            raise TypeError(f"{name} must have numeric columns only; not numeric: {bad[:10]}")
        return a.to_dask_array()
    if isinstance(a, dd.Series):
        return a.to_dask_array()
    raise TypeError(f"{name} must be a dask Array, DataFrame or Series, got {type(a).__name__}")


def _is_numpy_dtype(t) -> bool:
    try:
        np.dtype(t)
    except TypeError:
        return False
    return not hasattr(t, "na_value") or np.dtype(t).kind in "biuf"


def as_rows(X):
    """X as a 2-D dask Array in float32 (kept) or float64 (anything else), one column chunk."""
    X = to_dask_array(X, "X")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got {X.ndim} dimensions")
    if X.dtype.kind not in "biuf":
        raise TypeError(f"X must hold real numbers, got dtype {X.dtype}")
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    if X.numblocks[1] > 1:
        X = X.rechunk({1: -1})  # each task needs whole rows
    return X


def like_rows(a, X, name: str):
    """y or sample_weight as a 1-D dask Array with X's row chunks (None stays None). numpy or
    pandas input is split along X's chunks when they are known."""
    if a is None:
        return None
    import dask.array as da

    if not is_dask(a):
        a = np.asarray(a)
        if any(np.isnan(c) for c in X.chunks[0]):
            raise TypeError(
                f"{name} must be a dask Array or Series when X's partition lengths are unknown "
                f"(a dask DataFrame); got {type(a).__name__}"
            )
        if a.ndim != 1 or a.shape[0] != X.shape[0]:
            raise ValueError(f"{name} must have shape ({X.shape[0]},), got {a.shape}")
        return da.from_array(a, chunks=(X.chunks[0],))
    a = to_dask_array(a, name)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got {a.ndim} dimensions")
    if a.numblocks[0] != X.numblocks[0] or (a.chunks[0] != X.chunks[0] and not _unknown(a, X)):
        if _unknown(a, X):
            raise ValueError(
                f"{name} has {a.numblocks[0]} partitions and X {X.numblocks[0]}: with unknown "
                f"partition lengths, {name} must be partitioned like X"
            )
        if a.shape[0] != X.shape[0]:
            raise ValueError(f"{name} has {a.shape[0]} rows, X has {X.shape[0]}")
        a = a.rechunk((X.chunks[0],))
    return a


def _unknown(*arrays) -> bool:
    return any(np.isnan(c) for a in arrays for c in a.chunks[0])


def frame_rows(X, y, sample_weight):
    """A dask DataFrame X with y (and sample_weight) Series: dask Arrays cut from the same
    partitions. Converted one by one, dask's optimizer may partition a column projection
    differently from the rest of the frame (Parquet files it combines for one and not the
    other), so X, y and the weights are joined into one frame and split per partition."""
    import dask
    import dask.array as da
    import dask.dataframe as dd

    series = {name: s for name, s in ((_Y, y), (_W, sample_weight)) if isinstance(s, dd.Series)}
    if not isinstance(X, dd.DataFrame) or not series:
        return X, y, sample_weight
    to_dask_array(X, "X")  # numeric columns only
    try:
        combined = X.assign(**series)
    except (ValueError, NotImplementedError) as exc:
        raise ValueError(f"y and sample_weight must be partitioned like X ({exc})") from None
    features = list(X.columns)
    x_dtype = np.float32 if all(np.dtype(t) == np.float32 for t in X.dtypes) else np.float64
    parts = [dask.delayed(_split_partition, pure=True, nout=3)(p, features, x_dtype)
             for p in combined.to_delayed()]
    arrays = [da.concatenate([da.from_delayed(p[0], (np.nan, len(features)), dtype=x_dtype)
                              for p in parts])]
    for j, (name, given) in enumerate(((_Y, y), (_W, sample_weight)), start=1):
        if name in series:
            dtype = given.dtype if _is_numpy_dtype(given.dtype) else np.dtype(object)
            arrays.append(da.concatenate([da.from_delayed(p[j], (np.nan,), dtype=dtype)
                                          for p in parts]))
        else:
            arrays.append(given)
    return tuple(arrays)


def _split_partition(part, features, x_dtype):
    """(X, y, sample_weight) of one partition of the joined frame (None for absent columns)."""
    X = np.ascontiguousarray(part[features].to_numpy(dtype=x_dtype))
    y = part[_Y].to_numpy() if _Y in part.columns else None
    w = part[_W].to_numpy(dtype=np.float64) if _W in part.columns else None
    return X, y, w
