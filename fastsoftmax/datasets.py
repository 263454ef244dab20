"""Data loaders for the command line, usable from Python too.

Every loader returns ``X`` of shape ``(n_samples, n_features)`` in the requested float dtype and
``y`` of shape ``(n_samples,)`` (integer labels when they are integral, strings otherwise), or
``y=None`` when labels are not wanted. Problems with the data raise :class:`DataError`, a
``ValueError`` whose message names the file and, where it applies, the line and column.

Sources understood by :func:`load_dataset`:

``digits``
    scikit-learn's 8x8 handwritten digits (1797 images, 64 features, 10 classes), pixel
    intensities scaled to [0, 1]. Ships with scikit-learn, so it needs no download.
``synthetic:N,d,K[,seed]``
    N samples of a well-specified multinomial problem with d features and K classes (see
    :func:`make_synthetic`).
``*.npz``
    arrays ``X`` and ``y`` (``y`` optional when labels are not wanted).
``*.csv``, ``*.tsv`` (optionally ``.gz``)
    with or without a header row; the label column is chosen by ``label_column``.
``*.svm``, ``*.svmlight``, ``*.libsvm``
    svmlight / libsvm text, read with :func:`sklearn.datasets.load_svmlight_file`; X stays a
    scipy.sparse CSR matrix.
a directory of IDX files, or one ``*-images-idx3-ubyte[.gz]`` file
    MNIST or Fashion-MNIST as distributed (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, plain or ``.gz``); unsigned byte pixels
    are scaled to [0, 1].
"""

from __future__ import annotations

import csv
import gzip
import os
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "DataError",
    "Dataset",
    "FORMATS",
    "guess_format",
    "has_test_split",
    "load_csv",
    "load_dataset",
    "load_digits",
    "load_idx",
    "load_npz",
    "load_svmlight",
    "make_synthetic",
    "parse_synthetic",
    "read_idx",
]

FORMATS = ("auto", "npz", "csv", "tsv", "svmlight", "idx")

_SVMLIGHT_SUFFIXES = (".svm", ".svmlight", ".libsvm")
_IDX_IMAGES = re.compile(r"^(?P<split>train|t10k)-images[.-]idx3-ubyte(?P<gz>\.gz)?$")
_SYNTHETIC = re.compile(r"^synthetic:(\d+),(\d+),(\d+)(?:,(\d+))?$")
# IDX element type codes (http://yann.lecun.com/exdb/mnist/): all multi-byte types are big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(ValueError):
    """The data cannot be read: the message names the file and what is wrong with it."""


class Dataset(NamedTuple):
    """``X (n_samples, n_features)``, labels ``y (n_samples,)`` or None, and a description."""

    X: np.ndarray
    y: np.ndarray | None
    description: str


# ----------------------------------------------------------------------------- dispatch


def guess_format(source: str | os.PathLike) -> str:
    """The format of a path from its name: ``npz``, ``csv``, ``tsv``, ``svmlight`` or ``idx``."""
    path = Path(source)
    if path.is_dir() or _IDX_IMAGES.match(path.name):
        return "idx"
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix, fmt in ((".npz", "npz"), (".csv", "csv"), (".tsv", "tsv"), (".tab", "tsv")):
        if name.endswith(suffix):
            return fmt
    if name.endswith(_SVMLIGHT_SUFFIXES):
        return "svmlight"
    raise DataError(
        f"{source}: cannot tell the format from the file name; expected .npz, .csv, .tsv, "
        ".svm/.svmlight/.libsvm or an IDX directory (or pass the format explicitly)"
    )


def load_dataset(
    source: str | os.PathLike,
    *,
    dtype=np.float64,
    labels: bool = True,
    label_column: int | str | None = None,
    fmt: str = "auto",
    split: str = "train",
    n_features: int | None = None,
) -> Dataset:
    """Load ``digits``, ``synthetic:N,d,K[,seed]`` or a data file.

    Parameters
    ----------
    source : str or path
        ``"digits"``, ``"synthetic:N,d,K[,seed]"``, or a path (see the module docstring).
    dtype : float32 or float64
        dtype of the returned ``X``.
    labels : bool
        Whether the source holds labels. When False, a CSV is read as features only (unless
        ``label_column`` is given, in which case that column is dropped) and ``y`` is None.
    label_column : int, str or None
        CSV/TSV only: the label column as a 0-based index (negative counts from the end) or a
        header name; None means the last column.
    fmt : {"auto", "npz", "csv", "tsv", "svmlight", "idx"}
        File format; "auto" guesses it from the name.
    split : {"train", "test"}
        IDX only: the ``train-*`` or the ``t10k-*`` files.
    n_features : int or None
        svmlight only: the number of features (the file may not mention the last ones).

    Returns
    -------
    Dataset
        ``(X, y, description)``.
    """
    dtype = _check_dtype(dtype)
    source = os.fspath(source)
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if source == "digits" and fmt == "auto":
        X, y = load_digits(dtype=dtype)
        return Dataset(X, y if labels else None, "digits (scikit-learn 8x8 handwritten digits)")
    if source.startswith("synthetic:") and fmt == "auto":
        n, d, k, seed = parse_synthetic(source)
        X, y = make_synthetic(n, d, k, seed=seed, dtype=dtype)
        return Dataset(X, y if labels else None, f"synthetic N={n} d={d} K={k} seed={seed}")
    if not os.path.exists(source):
        hint = ""
        if os.sep not in source and "." not in source:
            hint = " (built-in data: digits, synthetic:N,d,K[,seed])"
        raise DataError(f"{source}: no such file or directory{hint}")
    if fmt == "auto":
        fmt = guess_format(source)
    with np.errstate(over="ignore", invalid="ignore"):  # reported below, by file and row
        X, y = _load_file(source, fmt, dtype, labels, label_column, split, n_features)
    _check_finite(X, source)
    return Dataset(X, y, f"{source} ({fmt})")


def _check_finite(X, source) -> None:
    """A data file whose features hold NaN or infinity (or overflow the dtype) is an error."""
    finite = np.isfinite(X.data if hasattr(X, "tocsr") else X)
    if finite.all():
        return
    if hasattr(X, "tocsr"):
        raise DataError(f"{source}: features hold NaN or infinity (or overflow {X.dtype})")
    row, col = (int(i) for i in np.argwhere(~finite)[0])
    raise DataError(
        f"{source}: row {row + 1}, feature {col + 1} is {X[row, col]} "
        f"(NaN, infinite, or beyond the range of {X.dtype})"
    )


def _load_file(source, fmt, dtype, labels, label_column, split, n_features):
    if fmt == "npz":
        X, y = load_npz(source, dtype=dtype, labels=labels)
    elif fmt in ("csv", "tsv"):
        X, y = load_csv(
            source,
            dtype=dtype,
            labels=labels,
            label_column=label_column,
            delimiter="\t" if fmt == "tsv" else ",",
        )
    elif fmt == "svmlight":
        X, y = load_svmlight(source, dtype=dtype, n_features=n_features)
        y = y if labels else None
    else:
        X, y = load_idx(source, split=split, dtype=dtype)
        y = y if labels else None
    return X, y


def has_test_split(source: str | os.PathLike) -> bool:
    """Whether ``source`` ships its own test set (an IDX directory with the ``t10k-*`` files)."""
    source = os.fspath(source)
    if not os.path.isdir(source):
        return False
    return _find_idx_pair(Path(source), "test") is not None


def _check_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise DataError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _as_labels(values: np.ndarray) -> np.ndarray:
    """Integral labels as int64, other numbers as float64, anything else as str."""
    values = np.asarray(values)
    if values.dtype.kind in "iub":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        if np.all(np.isfinite(values)) and np.all(values == np.round(values)):
            return values.astype(np.int64)
        return values.astype(np.float64)
    as_str = np.char.strip(values.astype(str))
    try:
        return _as_labels(as_str.astype(np.float64))
    except ValueError:
        return as_str


# ----------------------------------------------------------------------------- built-in data


def load_digits(*, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits: X ``(1797, 64)`` in [0, 1], y ``(1797,)`` in 0..9."""
    from sklearn.datasets import load_digits as _sk_load_digits

    X, y = _sk_load_digits(return_X_y=True)
    return (X / 16.0).astype(_check_dtype(dtype)), y.astype(np.int64)


def parse_synthetic(spec: str) -> tuple[int, int, int, int]:
    """``"synthetic:N,d,K[,seed]"`` -> ``(N, d, K, seed)``; seed defaults to 0."""
    match = _SYNTHETIC.match(spec.replace(" ", ""))
    if not match:
        raise DataError(
            f"bad synthetic data {spec!r}: expected synthetic:N,d,K[,seed] with non-negative "
            "integers, e.g. synthetic:100000,50,10"
        )
    n, d, k = (int(match.group(i)) for i in (1, 2, 3))
    seed = int(match.group(4)) if match.group(4) is not None else 0
    if n < 1 or d < 1 or k < 2:
        raise DataError(f"bad synthetic data {spec!r}: need N >= 1, d >= 1 and K >= 2")
    return n, d, k, seed


def make_synthetic(
    n_samples: int,
    n_features: int,
    n_classes: int,
    *,
    seed: int | np.random.Generator | None = 0,
    dtype=np.float64,
    separation: float = 8.0,
    coef: bool = False,
):
    """Samples of a well-specified softmax regression problem: the one problem generator.

    Features are standard normal, drawn directly in ``dtype``; labels are drawn from
    ``softmax(X W^T + b)`` (Gumbel-max trick), where the true ``W`` has entries of size
    ``separation / sqrt(n_features)`` and ``b`` entries of size 0.5. With the default
    ``separation=8`` the logits spread over several units: classes overlap somewhat, as in real
    data (the Bayes accuracy is about 0.87 for 10 classes, 0.93 for 3, 0.78 for 100), but far
    above chance; smaller values give harder, less separable problems. The true ``W`` and ``b``
    depend only on ``n_features``, ``n_classes`` and ``separation``; ``seed`` only draws the
    samples, so a different seed gives a fresh test sample of the same problem.

    Parameters
    ----------
    n_samples, n_features, n_classes : int
        N, d and K.
    seed : int, numpy.random.Generator or None, default 0
        Draws ``X`` and the labels: the same integer gives the same data; a Generator is used (and
        advanced) as given; None draws fresh entropy.
    dtype : float32 or float64, default float64
        dtype of ``X`` (and of ``W`` and ``b``).
    separation : float, default 8.0
        Size of the true weights times ``sqrt(n_features)``: how far apart the classes are.
    coef : bool, default False
        Also return the true ``W`` and ``b`` (a linear layer of the right shapes and scale for
        benchmarks and tests of the kernels).

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), dtype ``dtype``
    y : ndarray of shape (n_samples,), int64 in ``0..n_classes-1``
    W : ndarray of shape (n_classes, n_features), dtype ``dtype``; only when ``coef``
    b : ndarray of shape (n_classes,), dtype ``dtype``; only when ``coef``
    """
    dtype = _check_dtype(dtype)
    truth = np.random.default_rng([n_features, n_classes, 20261124])
    scale = separation / np.sqrt(max(n_features, 1))  # d = 0: W is empty, keep the scale finite
    W = (truth.standard_normal((n_classes, n_features)) * scale).astype(dtype)
    b = truth.normal(0.0, 0.5, n_classes).astype(dtype)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_features), dtype=dtype)
    y = np.empty(n_samples, dtype=np.int64)
    chunk = 1 << 16  # bounds the N x K logits held at once
    for start in range(0, n_samples, chunk):
        Z = X[start : start + chunk] @ W.T + b
        y[start : start + chunk] = np.argmax(Z + rng.gumbel(size=Z.shape), axis=1)
    return (X, y, W, b) if coef else (X, y)


# ----------------------------------------------------------------------------- npz


def load_npz(path, *, dtype=np.float64, labels: bool = True):
    """Arrays ``X`` (2-D) and ``y`` (1-D, required when ``labels``) from an ``.npz`` file."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":  # every .npz is a zip archive
                raise DataError(f"{path}: not an .npz file (not a zip archive)")
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if "X" not in names:
                listed = ", ".join(names) or "none"
                raise DataError(f"{path}: no array 'X' in the .npz file (arrays: {listed})")
            X = npz["X"]
            y = npz["y"] if "y" in names else None
    except DataError:
        raise
    except Exception as exc:  # zipfile, zlib, pickle refusal, OSError: all mean "unreadable"
        raise DataError(f"{path}: not a readable .npz file ({_reason(exc)})") from None
    if X.ndim != 2:
        raise DataError(f"{path}: X must be 2-D (n_samples, n_features), got shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise DataError(f"{path}: X must be numeric, got dtype {X.dtype}")
    if labels:
        if y is None:
            raise DataError(f"{path}: no array 'y' (labels) in the .npz file")
        if y.ndim != 1 or len(y) != len(X):
            raise DataError(f"{path}: y must have shape ({len(X)},), got {y.shape}")
        y = _as_labels(y)
    else:
        y = None
    return X.astype(_check_dtype(dtype)), y


# ----------------------------------------------------------------------------- CSV / TSV


def _open_text(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    return opener(path, "rt", newline="", encoding="utf-8")


def _loadtxt(path, **kwargs) -> np.ndarray:
    """np.loadtxt, strict (no comments, double quotes), silent on files without data rows."""
    with warnings.catch_warnings():
        # An empty table is reported as a DataError by the caller, not as a UserWarning.
        warnings.filterwarnings("ignore", "loadtxt: input contained no data", UserWarning)
        return np.loadtxt(path, comments=None, quotechar='"', encoding="utf-8", **kwargs)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_csv(
    path,
    *,
    dtype=np.float64,
    labels: bool = True,
    label_column: int | str | None = None,
    delimiter: str = ",",
    header: bool | None = None,
):
    """Features and labels from delimited text.

    The first row is a header when ``header`` is True, or, when ``header`` is None, when one of its
    feature fields is not a number (or when ``label_column`` is a name). ``label_column`` is a
    0-based index (negative counts from the end) or a header name; None means the last column when
    ``labels`` and no label column otherwise. Every row must have as many fields as the first;
    feature fields must be numbers.
    """
    try:
        with _open_text(path) as f:
            first = next((row for row in csv.reader(f, delimiter=delimiter) if row), None)
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({_reason(exc)})") from None
    if first is None:
        raise DataError(f"{path}: empty file, no data rows")
    n_fields = len(first)
    if label_column is None and labels:
        label_column = -1
    if isinstance(label_column, str):
        names = [name.strip() for name in first]
        if label_column not in names:
            raise DataError(
                f"{path}: unknown label column {label_column!r} (columns: {', '.join(names)})"
            )
        label_index = names.index(label_column)
        header = True
    elif label_column is not None:
        if not -n_fields <= label_column < n_fields:
            raise DataError(
                f"{path}: unknown label column {label_column} (the file has {n_fields} columns, "
                f"0..{n_fields - 1})"
            )
        label_index = label_column % n_fields
    else:
        label_index = None
    feature_index = [j for j in range(n_fields) if j != label_index]
    if not feature_index:
        raise DataError(f"{path}: no feature columns besides the label column")
    if header is None:
        header = not all(_is_number(first[j]) for j in feature_index)
    columns = [name.strip() for name in first] if header else [str(j) for j in range(n_fields)]
    skip = 1 if header else 0

    try:
        table = _loadtxt(
            path,
            delimiter=delimiter,
            skiprows=skip,
            dtype=np.float64,
            ndmin=2,
        )
    except ValueError:
        table = None  # find the precise problem (or string labels) below
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({_reason(exc)})") from None

    if table is None:
        _scan_delimited(path, delimiter, n_fields, feature_index, columns, skip)
        # Only the label column holds non-numbers: string labels.
        X = _loadtxt(
            path,
            delimiter=delimiter,
            skiprows=skip,
            dtype=np.float64,
            ndmin=2,
            usecols=feature_index,
        )
        y_raw = _loadtxt(
            path,
            delimiter=delimiter,
            skiprows=skip,
            dtype=str,
            ndmin=1,
            usecols=[label_index],
        )
    else:
        if table.shape[0] == 0:
            raise DataError(f"{path}: no data rows")
        if table.shape[1] != n_fields:  # defensive: loadtxt already checks row lengths
            raise DataError(f"{path}: expected {n_fields} fields per row, found {table.shape[1]}")
        X = table[:, feature_index]
        y_raw = table[:, label_index] if label_index is not None else None
    if len(X) == 0:
        raise DataError(f"{path}: no data rows")
    y = _as_labels(y_raw) if (labels and y_raw is not None) else None
    return np.ascontiguousarray(X, dtype=_check_dtype(dtype)), y


def _scan_delimited(path, delimiter, n_fields, feature_index, columns, skip) -> None:
    """Raise DataError at the first ragged row or non-numeric feature field, if there is one."""
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter=delimiter)
        seen = 0
        try:
            for row in reader:
                if not row:
                    continue
                seen += 1
                if seen <= skip:
                    continue
                if len(row) != n_fields:
                    raise DataError(
                        f"{path}: line {reader.line_num}: expected {n_fields} fields, "
                        f"found {len(row)}"
                    )
                for j in feature_index:
                    if not _is_number(row[j]):
                        raise DataError(
                            f"{path}: line {reader.line_num}, column {columns[j]!r}: "
                            f"{row[j]!r} is not a number"
                        )
        except csv.Error as exc:
            raise DataError(f"{path}: line {reader.line_num}: malformed row ({exc})") from None


# ----------------------------------------------------------------------------- svmlight


def load_svmlight(path, *, dtype=np.float64, n_features: int | None = None):
    """svmlight / libsvm text as a scipy.sparse CSR ``X`` (never densified: an RCV1 file would
    need hundreds of GB dense) and labels ``y``."""
    from sklearn.datasets import load_svmlight_file

    try:
        X, y = load_svmlight_file(os.fspath(path), n_features=n_features, dtype=np.float64)
    except (ValueError, OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"{path}: not a readable svmlight/libsvm file ({_reason(exc)})") from None
    if X.shape[0] == 0:
        raise DataError(f"{path}: no data rows")
    return X.tocsr().astype(_check_dtype(dtype), copy=False), _as_labels(y)


# ----------------------------------------------------------------------------- IDX (MNIST)


def read_idx(path) -> np.ndarray:
    """One IDX file (plain or ``.gz``) as an array of its stored shape and native-endian dtype."""
    try:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read ({_reason(exc)})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    if ndim < 1 or len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    available = len(data) - 4 - 4 * ndim
    if available < expected:
        raise DataError(
            f"{path}: truncated IDX file: shape {shape} needs {expected} bytes, found {available}"
        )
    if available > expected:
        raise DataError(f"{path}: {available - expected} unexpected bytes after the IDX data")
    array = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _find_idx_pair(directory: Path, split: str):
    """``(images, labels)`` paths of one split in a directory, or None."""
    prefix = "train" if split == "train" else "t10k"
    for sep in ("-", "."):
        for gz in ("", ".gz"):
            images = directory / f"{prefix}-images{sep}idx3-ubyte{gz}"
            labels = directory / f"{prefix}-labels{sep}idx1-ubyte{gz}"
            if images.is_file() and labels.is_file():
                return images, labels
    return None


def load_idx(source, *, split: str = "train", dtype=np.float64):
    """MNIST-style IDX data: a directory (``split`` picks train or t10k) or one images file.

    Images ``(n, rows, cols)`` become rows of ``rows * cols`` features; unsigned-byte pixels are
    scaled to [0, 1].
    """
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    source = Path(source)
    if source.is_dir():
        pair = _find_idx_pair(source, split)
        if pair is None:
            prefix = "train" if split == "train" else "t10k"
            raise DataError(
                f"{source}: no {split} IDX files in the directory (expected "
                f"{prefix}-images-idx3-ubyte and {prefix}-labels-idx1-ubyte, plain or .gz)"
            )
        images_path, labels_path = pair
    else:
        match = _IDX_IMAGES.match(source.name)
        if not match:
            raise DataError(f"{source}: not an IDX images file name (like train-images-idx3-ubyte)")
        images_path = source
        labels_path = source.with_name(
            source.name.replace("images", "labels", 1).replace("idx3", "idx1", 1)
        )
        if not labels_path.is_file():
            raise DataError(f"{source}: the labels file {labels_path.name} is missing")
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim < 2:
        raise DataError(f"{images_path}: expected images (n, rows, ...), got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected a 1-D labels file, got shape {labels.shape}")
    if len(labels) != len(images):
        raise DataError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}"
        )
    X = images.reshape(len(images), -1).astype(_check_dtype(dtype))
    if images.dtype == np.uint8:
        X /= X.dtype.type(255)
    return X, _as_labels(labels)


def _reason(exc: BaseException) -> str:
    """A one-line reason from an exception (first line only)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
