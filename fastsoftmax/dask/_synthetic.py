"""The project's synthetic problem, generated chunk by chunk where the chunks are computed."""

from __future__ import annotations

import numpy as np

from fastsoftmax.datasets import make_synthetic as _make_synthetic

__all__ = ["make_synthetic"]


def _chunk(n_rows: int, n_features: int, n_classes: int, seed: int, index: int, dtype):
    return _make_synthetic(n_rows, n_features, n_classes, seed=[seed, index], dtype=dtype)


def make_synthetic(n_samples: int, n_features: int, n_classes: int, *, n_chunks: int = 16,
                   seed: int = 0, dtype=np.float64):
    """Lazy X (n_samples, n_features) and y (n_samples,) of ``fastsoftmax.datasets.make_synthetic``'s
    problem, in ``n_chunks`` row chunks generated independently (chunk i from the seed
    ``[seed, i]``), so the client never holds the data.

    Every chunk samples the same true model (it depends on n_features and n_classes only); the
    rows differ from those of the in-memory ``make_synthetic(n_samples, ...)``, which draws them
    from one stream. Returns dask Arrays (X in ``dtype``, y int64).
    """
    import dask
    import dask.array as da

    if n_samples < 1 or n_chunks < 1:
        raise ValueError(f"need n_samples >= 1 and n_chunks >= 1, got {n_samples}, {n_chunks}")
    n_chunks = min(n_chunks, n_samples)
    bounds = np.linspace(0, n_samples, n_chunks + 1).astype(int)
    dtype = np.dtype(dtype)
    xs, ys = [], []
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        part = dask.delayed(_chunk, pure=True, nout=2)(
            int(hi - lo), n_features, n_classes, seed, i, dtype)
        xs.append(da.from_delayed(part[0], (int(hi - lo), n_features), dtype=dtype))
        ys.append(da.from_delayed(part[1], (int(hi - lo),), dtype=np.int64))
    return da.concatenate(xs), da.concatenate(ys)
