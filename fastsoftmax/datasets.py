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
    with or without a header row (told by ``header``, else recognized: see :func:`load_csv`);
    the label column is chosen by ``label_column``.
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
import io
import math
import os
import re
import stat
import warnings
from collections.abc import Callable
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
    "source_files",
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
    zero_based: str | bool = "auto",
    header: bool | None = None,
    note: Callable[[str], None] | None = None,
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
    zero_based : {"auto", True, False}
        svmlight only: whether feature indices start at 0 (see :func:`load_svmlight`).
    header : bool or None
        CSV/TSV only: whether the first row is a header; None recognizes it (see
        :func:`load_csv`).
    note : callable or None
        Called with a one-line message when the loader had to guess (the svmlight index base,
        a CSV header of pandas' default column names).

    Returns
    -------
    Dataset
        ``(X, y, description)``.
    """
    dtype = _check_dtype(dtype)
    source = os.fspath(source)
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    builtin = _load_builtin(source, fmt, dtype, labels)
    if builtin is not None:
        return builtin
    if not os.path.exists(source):
        hint = ""
        if os.sep not in source and "." not in source:
            hint = " (built-in data: digits, synthetic:N,d,K[,seed])"
        raise DataError(f"{source}: no such file or directory{hint}")
    if fmt == "auto":
        fmt = guess_format(source)
    options = {"n_features": n_features, "zero_based": zero_based, "header": header, "note": note}
    path = _readable(source) if fmt != "idx" else source
    with np.errstate(over="ignore", invalid="ignore"):  # reported below, by file and row
        X, y = _load_file(path, fmt, dtype, labels, label_column, split, options)
    _check_finite(X, source)
    return Dataset(X, y, f"{source} ({fmt})")


def _load_builtin(source: str, fmt: str, dtype, labels: bool) -> Dataset | None:
    """``digits`` or ``synthetic:...`` (only when the format is not given), else None."""
    if source == "digits" and fmt == "auto":
        X, y = load_digits(dtype=dtype)
        return Dataset(X, y if labels else None, "digits (scikit-learn 8x8 handwritten digits)")
    if source.startswith("synthetic:") and fmt == "auto":
        n, d, k, seed = parse_synthetic(source)
        X, y = make_synthetic(n, d, k, seed=seed, dtype=dtype)
        return Dataset(X, y if labels else None, f"synthetic N={n} d={d} K={k} seed={seed}")
    return None


def _check_finite(X, source, where: Callable[[int, int], str] | None = None) -> None:
    """A data file whose features hold NaN or infinity (or overflow the dtype) is an error.

    ``where(row, col)`` names the position of ``X[row, col]`` in the file; by default it is
    ``row {row + 1}, column {col + 1}``: rows and columns count from 1, as in a spreadsheet.
    """
    finite = np.isfinite(X.data if hasattr(X, "tocsr") else X)
    if finite.all():
        return
    if hasattr(X, "tocsr"):
        raise DataError(f"{source}: features hold NaN or infinity (or overflow {X.dtype})")
    row, col = (int(i) for i in np.argwhere(~finite)[0])
    position = where(row, col) if where is not None else f"row {row + 1}, column {col + 1}"
    raise DataError(
        f"{source}: {position} is {X[row, col]} (NaN, infinite, or beyond the range of {X.dtype})"
    )


def _load_file(source, fmt, dtype, labels, label_column, split, options):
    if fmt == "npz":
        X, y = load_npz(source, dtype=dtype, labels=labels)
    elif fmt in ("csv", "tsv"):
        X, y = load_csv(
            source,
            dtype=dtype,
            labels=labels,
            label_column=label_column,
            delimiter="\t" if fmt == "tsv" else ",",
            header=options["header"],
            note=options["note"],
        )
    elif fmt == "svmlight":
        svmlight_options = {k: options[k] for k in ("n_features", "zero_based", "note")}
        X, y = load_svmlight(source, dtype=dtype, **svmlight_options)
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


def source_files(source: str | os.PathLike, fmt: str = "auto") -> list[str]:
    """The paths :func:`load_dataset` may read for ``source``.

    None for built-in data; the images and labels files of an IDX directory (both splits) or of
    an IDX images file; otherwise the path itself.
    """
    source = os.fspath(source)
    if fmt == "auto" and (source == "digits" or source.startswith("synthetic:")):
        return []
    path = Path(source)
    if path.is_dir():
        pairs = [_find_idx_pair(path, split) for split in ("train", "test")]
        return [str(p) for pair in pairs if pair is not None for p in pair]
    if _IDX_IMAGES.match(path.name):
        labels = path.name.replace("images", "labels", 1).replace("idx3", "idx1", 1)
        return [source, str(path.with_name(labels))]
    return [source]


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


# ----------------------------------------------------------------------------- streams


class _Buffered(NamedTuple):
    """A pipe or device (``/dev/stdin``) read once into memory: it cannot be read twice."""

    name: str
    data: bytes

    def __str__(self) -> str:
        return self.name


def _readable(path):
    """``path``, or its contents read once into memory if it is a pipe or a device.

    A regular file, a directory or a missing path is returned as is (the loader reports it).
    """
    if isinstance(path, _Buffered):
        return path
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return path
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return path
    try:
        with open(path, "rb") as f:
            return _Buffered(os.fspath(path), f.read())
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({_reason(exc)})") from None


def _as_file(path):
    """What a reader can open: the path, or a fresh in-memory file of a buffered stream."""
    return io.BytesIO(path.data) if isinstance(path, _Buffered) else path


def _open_binary(path):
    return io.BytesIO(path.data) if isinstance(path, _Buffered) else open(path, "rb")


# ----------------------------------------------------------------------------- npz


def load_npz(path, *, dtype=np.float64, labels: bool = True):
    """Arrays ``X`` (2-D) and ``y`` (1-D, required when ``labels``) from an ``.npz`` file."""
    path = _readable(path)
    try:
        with _open_binary(path) as f:
            if f.read(4) != b"PK\x03\x04":  # every .npz is a zip archive
                raise DataError(f"{path}: not an .npz file (not a zip archive)")
        with np.load(_as_file(path), allow_pickle=False) as npz:
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


def _open_text(path, newline: str | None = ""):
    # utf-8-sig drops a byte-order mark (spreadsheets write one): read as data it would turn the
    # first row into a header, or make the first header name unmatchable.
    opener = gzip.open if str(path).endswith(".gz") else open
    if isinstance(path, _Buffered) and opener is open:
        return io.TextIOWrapper(_as_file(path), encoding="utf-8-sig", newline=newline)
    return opener(_as_file(path), "rt", newline=newline, encoding="utf-8-sig")


def _loadtxt(path, **kwargs) -> np.ndarray:
    """np.loadtxt, strict (no comments, double quotes), silent on files without data rows."""
    with warnings.catch_warnings():
        # An empty table is reported as a DataError by the caller, not as a UserWarning.
        warnings.filterwarnings("ignore", "loadtxt: input contained no data", UserWarning)
        # Blank lines are skipped, as csv.reader skips them; numpy warns that they do not count
        # towards max_rows (which it uses itself, reading strings in chunks).
        warnings.filterwarnings("ignore", "Input line .* contained no data", UserWarning)
        if isinstance(path, _Buffered):
            with _open_text(path, newline=None) as f:
                return np.loadtxt(f, comments=None, quotechar='"', **kwargs)
        return np.loadtxt(path, comments=None, quotechar='"', encoding="utf-8-sig", **kwargs)


def _is_number(text: str) -> bool:
    """Whether np.loadtxt reads ``text`` as a number (Python's float() also takes ``1_000`` and
    digits of other scripts, which np.loadtxt refuses)."""
    if not text.isascii() or "_" in text:
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


class _Layout(NamedTuple):
    """Where things are in a delimited file (0-based field indices)."""

    n_fields: int
    label_index: int | None
    feature_index: list[int]
    names: list[str] | None  # the header's names, or None without a header
    # Lines up to the end of the header, blank ones before it included (np.loadtxt's skiprows
    # counts lines, csv.reader skips blank ones); 0 without a header.
    skiprows: int = 0

    def column(self, j: int) -> str:
        """Field ``j`` as messages name it: 1-based, with its header name when there is one."""
        return f"column {j + 1}" + (f" ({self.names[j]!r})" if self.names else "")


def load_csv(
    path,
    *,
    dtype=np.float64,
    labels: bool = True,
    label_column: int | str | None = None,
    delimiter: str = ",",
    header: bool | None = None,
    note: Callable[[str], None] | None = None,
):
    """Features and labels from delimited text.

    The first row is a header when ``header`` is True or ``label_column`` is a name, and data when
    ``header`` is False. When ``header`` is None it is a header when

    - one of its feature fields is not a number (``width,height,species``);
    - its label field is not a number while every later row's is (``0,1,2,label`` over numeric
      labels);
    - it is exactly pandas' default column names, the integers ``0,1,2,...`` in order (in all its
      fields, or in its feature fields beside a label column's name), over rows written with
      decimals (``df.to_csv(index=False)`` of a frame of floats); ``note`` is called to say so.

    Pandas' default names over rows of integers could as well be a row of data: that is a
    DataError asking which (``header=True`` or False). ``label_column`` is a 0-based index
    (negative counts from the end) or a header name; None means the last column when ``labels``
    and no label column otherwise. Every row must have as many fields as the first; feature fields
    must be finite numbers. Blank lines are skipped. Messages name rows and columns from 1, as a
    spreadsheet or an editor shows them (the header is row 1).
    """
    if header not in (None, True, False):
        raise DataError(f"header must be None, True or False, got {header!r}")
    path = _readable(path)
    try:
        with _open_text(path) as f:
            reader = csv.reader(f, delimiter=delimiter)
            first = next((row for row in reader if row), None)
            first_line = reader.line_num
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({_reason(exc)})") from None
    if first is None:
        raise DataError(f"{path}: empty file, no data rows")
    layout = _csv_layout(path, first, labels, label_column, header)
    if header is None and layout.names is None and _is_header(path, delimiter, first, first_line,
                                                              layout, note):
        layout = layout._replace(names=[name.strip() for name in first])
    if layout.names:
        layout = layout._replace(skiprows=first_line)
    X, y_raw = _read_table(path, delimiter, layout)
    if len(X) == 0:
        raise DataError(f"{path}: no data rows")
    with np.errstate(over="ignore"):  # overflow to inf is reported with its row and column
        X = np.ascontiguousarray(X, dtype=_check_dtype(dtype))
    skip = 1 if layout.names else 0

    def where(row: int, col: int) -> str:
        file_row = _file_row(path, delimiter, row + skip)
        return f"row {file_row}, {layout.column(layout.feature_index[col])}"

    _check_finite(X, path, where)
    y = _as_labels(y_raw) if (labels and y_raw is not None) else None
    return X, y


def _csv_layout(path, first: list[str], labels: bool, label_column, header) -> _Layout:
    """The label and feature columns, and whether ``first`` is a header as far as it alone tells:
    told so, a label column named, or a feature field that is not a number."""
    n_fields = len(first)
    if label_column is None and labels:
        label_column = -1
    if isinstance(label_column, str):
        names = [name.strip() for name in first]
        if header is False:
            raise DataError(
                f"{path}: label column {label_column!r} is a header name, but the file is read "
                "without a header (--csv-header no, header=False): give the column's index"
            )
        if label_column not in names:
            raise DataError(
                f"{path}: unknown label column {label_column!r} (columns: {', '.join(names)})"
            )
        label_index = names.index(label_column)
        header = True
    elif label_column is not None:
        if not -n_fields <= label_column < n_fields:
            raise DataError(
                f"{path}: unknown label column {label_column}: the file has {n_fields} columns "
                f"(a label column index counts from 0: 0..{n_fields - 1}, or -{n_fields}..-1 "
                "from the end)"
            )
        label_index = label_column % n_fields
    else:
        label_index = None
    feature_index = [j for j in range(n_fields) if j != label_index]
    if not feature_index:
        raise DataError(f"{path}: no feature columns besides the label column")
    if header is None:
        header = not all(_is_number(first[j]) for j in feature_index)
    names = [name.strip() for name in first] if header else None
    return _Layout(n_fields, label_index, feature_index, names)


def _is_header(path, delimiter: str, first: list[str], first_line: int, layout: _Layout,
               note) -> bool:
    """Whether ``first``, a row of numeric features ending on line ``first_line``, is a header
    all the same: over numeric labels, or pandas' default names over decimals (see load_csv)."""
    label = first[layout.label_index] if layout.label_index is not None else None
    if label is not None and not _is_number(label):
        if _numeric_column(path, delimiter, layout.label_index, first_line):
            return True  # a name over numeric labels (a string label would not be alone)
    if not _default_names(first, layout):
        return False
    shown = _shown(first)
    if _integer_rows(path, delimiter, layout, first_line):
        raise DataError(
            f"{path}: the first row ({shown}) may be a header (pandas' default column names) or "
            "a row of data, as the other rows hold integers too; say which (--csv-header yes/no, "
            "header=True/False)"
        )
    if note is not None:
        note(
            f"{path}: the first row ({shown}) is read as a header: pandas' default column "
            "names over rows of decimals (--csv-header no, header=False, reads it as data)"
        )
    return True


def _numeric_column(path, delimiter: str, j: int, skiprows: int) -> bool:
    """Whether field ``j`` of every row after line ``skiprows`` is a number (and there is a row)."""
    try:
        column = _loadtxt(
            path, dtype=np.float64, ndmin=1, delimiter=delimiter, usecols=[j], skiprows=skiprows
        )
    except ValueError:
        return False  # a string label, or a ragged row (reported when the table is read)
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({_reason(exc)})") from None
    return column.size > 0


def _default_names(first: list[str], layout: _Layout) -> bool:
    """Whether ``first`` is pandas' default column names: the integers 0, 1, 2, ... written in
    order, in all its fields or in its feature fields beside a label column's name."""
    if first == [str(i) for i in range(len(first))]:
        return True
    if layout.label_index is None or _is_number(first[layout.label_index]):
        return False
    return [first[j] for j in layout.feature_index] == [str(i) for i in range(len(layout.feature_index))]


_INTEGER = re.compile(r"\s*[+-]?\d+\s*")


def _integer_rows(path, delimiter: str, layout: _Layout, first_line: int) -> bool:
    """Whether every feature field after line ``first_line`` is written as an integer.

    Stops at the first that is not: in a file of decimals, the first row after the header.
    """
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            for row in reader:
                if reader.line_num <= first_line or not row:
                    continue
                if not all(_INTEGER.fullmatch(row[j]) for j in layout.feature_index if j < len(row)):
                    return False
        except csv.Error as exc:
            raise DataError(f"{path}: row {reader.line_num}: malformed row ({exc})") from None
    return True


def _shown(fields: list[str]) -> str:
    """A row as messages quote it: its fields, or the first three and the last of many."""
    return ",".join(fields if len(fields) <= 6 else [*fields[:3], "...", fields[-1]])


def _read_table(path, delimiter: str, layout: _Layout):
    """Features ``X`` (float64) and the raw label column (None without one)."""
    options = {"delimiter": delimiter, "skiprows": layout.skiprows}
    try:
        table = _loadtxt(path, dtype=np.float64, ndmin=2, **options)
    except ValueError:
        table = None  # find the precise problem (or string labels) below
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({_reason(exc)})") from None
    if table is None:
        _scan_delimited(path, delimiter, layout)
        # Only the label column holds non-numbers: string labels.
        try:
            X = _loadtxt(path, dtype=np.float64, ndmin=2, usecols=layout.feature_index, **options)
            y_raw = None
            if layout.label_index is not None:
                y_raw = _loadtxt(path, dtype=str, ndmin=1, usecols=[layout.label_index], **options)
        except (ValueError, OSError, UnicodeDecodeError, EOFError) as exc:
            # What the scan accepts and np.loadtxt does not (Python's float() is more lenient).
            raise DataError(f"{path}: cannot read ({_reason(exc)})") from None
        return X, y_raw
    if table.shape[0] == 0:
        raise DataError(f"{path}: no data rows")
    if table.shape[1] != layout.n_fields:  # defensive: loadtxt already checks row lengths
        raise DataError(f"{path}: expected {layout.n_fields} fields per row, found {table.shape[1]}")
    y_raw = table[:, layout.label_index] if layout.label_index is not None else None
    return table[:, layout.feature_index], y_raw


def _scan_delimited(path, delimiter: str, layout: _Layout) -> None:
    """Raise DataError at the first ragged row or non-numeric feature field, if there is one."""
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter=delimiter)
        seen = 0
        try:
            for row in reader:
                if not row:
                    continue
                seen += 1
                if seen == 1 and layout.names:
                    continue
                if len(row) != layout.n_fields:
                    raise DataError(
                        f"{path}: row {reader.line_num}: expected {layout.n_fields} fields, "
                        f"found {len(row)}"
                    )
                for j in layout.feature_index:
                    if not _is_number(row[j]):
                        raise DataError(
                            f"{path}: row {reader.line_num}, {layout.column(j)}: "
                            f"{row[j]!r} is not a number"
                        )
        except csv.Error as exc:
            raise DataError(f"{path}: row {reader.line_num}: malformed row ({exc})") from None


def _file_row(path, delimiter: str, record: int) -> int:
    """The 1-based row (line) of the file where non-empty record ``record`` (0-based) ends."""
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter=delimiter)
        seen = 0
        for row in reader:
            if row:
                if seen == record:
                    return reader.line_num
                seen += 1
    return record + 1  # not reached: the record was read before


# ----------------------------------------------------------------------------- svmlight


def load_svmlight(
    path,
    *,
    dtype=np.float64,
    n_features: int | None = None,
    zero_based: str | bool = "auto",
    note: Callable[[str], None] | None = None,
):
    """svmlight / libsvm text as a scipy.sparse CSR ``X`` (never densified: an RCV1 file would
    need hundreds of GB dense) and labels ``y``.

    Parameters
    ----------
    path : str or path
        The file (plain, or ``.gz`` / ``.bz2`` as scikit-learn reads them).
    dtype : float32 or float64
        dtype of the returned ``X``.
    n_features : int or None
        The number of features: a file may not mention the last ones (they are zero), so fewer
        are padded with zero columns; more is an error.
    zero_based : {"auto", True, False}
        Whether feature indices start at 0. "auto" (scikit-learn's rule) reads them as one-based
        when no feature has index 0, calls ``note`` to say so, and refuses to pad such a file to
        ``n_features``: a zero-based file whose first feature is always zero looks the same.
    note : callable or None
        Called with a one-line message when "auto" had to guess one-based indices.
    """
    from sklearn.datasets import load_svmlight_file

    if zero_based not in ("auto", True, False):
        raise DataError(f"zero_based must be 'auto', True or False, got {zero_based!r}")
    path = _readable(path)
    source = _as_file(path) if isinstance(path, _Buffered) else os.fspath(path)
    try:
        X, y = load_svmlight_file(source, zero_based=zero_based is not False, dtype=np.float64)
    except (ValueError, OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"{path}: not a readable svmlight/libsvm file ({_reason(exc)})") from None
    if X.shape[0] == 0:
        raise DataError(f"{path}: no data rows")
    guessed = zero_based == "auto" and (X.nnz == 0 or X.indices.min() > 0)
    if guessed:
        X = X[:, 1:]  # one-based: index 0 is unused
    count = X.shape[1]
    X = _svmlight_width(path, X, n_features, guessed)
    if guessed and note is not None:
        note(
            f"{path}: no feature has index 0, so feature indices are read as one-based "
            f"({count} features)"
        )
    return X.tocsr().astype(_check_dtype(dtype), copy=False), _as_labels(y)


def _svmlight_width(path, X, n_features: int | None, guessed: bool):
    """``X`` padded with zero columns to ``n_features``, when that is unambiguous."""
    import scipy.sparse as sp

    count = X.shape[1]
    if n_features is None or count == n_features:
        return X
    if count > n_features:
        raise DataError(f"{path}: {count} features, expected {n_features}")
    if guessed:
        raise DataError(
            f"{path}: {count} features read as one-based (no feature has index 0), "
            f"{n_features} expected: if the file is zero-based its first feature is always zero; "
            "say which (--zero-based yes/no, zero_based=True/False)"
        )
    return sp.hstack([X, sp.csr_matrix((X.shape[0], n_features - count))], format="csr")


# ----------------------------------------------------------------------------- IDX (MNIST)


def read_idx(path) -> np.ndarray:
    """One IDX file (plain or ``.gz``) as an array of its stored shape and native-endian dtype."""
    try:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read ({_reason(exc)})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    if data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (unknown element type code 0x{data[2]:02X})")
    ndim = data[3]
    if ndim < 1 or len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    # Python integers: a damaged header's sizes cannot overflow into a plausible byte count.
    expected = math.prod(shape) * dtype.itemsize
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
    if images.size == 0:
        raise DataError(f"{images_path}: no pixels (images of shape {images.shape})")
    X = images.reshape(len(images), -1).astype(_check_dtype(dtype))
    if images.dtype == np.uint8:
        X /= X.dtype.type(255)
    return X, _as_labels(labels)


def _reason(exc: BaseException) -> str:
    """A one-line reason from an exception (first line only)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
