"""Model files and output files of the ``fastsoftmax`` command, usable from Python too.

A model file is a plain ``.npz`` archive (it loads with ``allow_pickle=False``) holding
``format``, ``format_version``, ``coef (n_classes, n_features)``, ``intercept (n_classes,)``,
``classes (n_classes,)``, ``mean`` and ``scale`` (``(n_features,)``, or empty when the features
are not standardized), ``dtype``, ``n_features`` and ``info`` (a JSON object).

Output files (model, plot, predictions) are written to a temporary file in the target directory
and renamed into place only after every output is ready, so a failure never leaves a partial or
stale-looking file behind.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tempfile
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from fastsoftmax.datasets import _reason

__all__ = [
    "MODEL_FORMAT",
    "MODEL_VERSION",
    "Model",
    "ModelIOError",
    "check_distinct",
    "check_writable",
    "load_model",
    "model_bytes",
    "same_file",
    "save_model",
    "write_atomically",
]

MODEL_FORMAT = "fastsoftmax-model"
MODEL_VERSION = 1


class ModelIOError(ValueError):
    """A model file cannot be read, or an output cannot be written: the message names the file."""


class Model(NamedTuple):
    """A loaded model file: the fitted estimator and the preprocessing it expects."""

    estimator: Any
    mean: np.ndarray | None
    scale: np.ndarray | None
    dtype: np.dtype
    n_features: int
    info: dict


# ----------------------------------------------------------------------------- writing


def save_model(path, estimator, *, mean=None, scale=None, info: dict | None = None) -> None:
    """Write a fitted estimator (and standardization statistics) as a fastsoftmax ``.npz`` file.

    Parameters
    ----------
    path : str or path
        Where to write; the file is written atomically.
    estimator : SoftmaxRegression
        A fitted estimator: ``coef_ (n_classes, n_features)``, ``intercept_ (n_classes,)``,
        ``classes_ (n_classes,)``.
    mean, scale : ndarray of shape (n_features,) or None
        Standardization statistics applied to the features before the estimator: both or
        neither; ``scale`` positive, both finite.
    info : dict or None
        JSON-serializable facts about the training run (``n_iter``, if there, an int).

    Raises
    ------
    ValueError
        An argument :func:`load_model` would refuse to read back (the message names it): nothing
        is written.
    """
    write_atomically({os.fspath(path): model_bytes(estimator, mean, scale, info)})


def model_bytes(estimator, mean, scale, info) -> bytes:
    """The bytes of the model file :func:`save_model` writes (ValueError as it raises)."""
    coef = np.asarray(estimator.coef_)
    classes = np.asarray(estimator.classes_)
    if classes.dtype.kind == "O":
        classes = classes.astype(str)  # object arrays would need pickle to load
    intercept = np.asarray(estimator.intercept_).reshape(-1)
    _check_estimator(coef, intercept, classes)
    mean, scale = _statistics(mean, scale, coef.shape[1])
    buffer = io.BytesIO()
    np.savez(
        buffer,
        format=np.array(MODEL_FORMAT),
        format_version=np.array(MODEL_VERSION, dtype=np.int64),
        coef=coef,
        intercept=intercept.astype(coef.dtype),
        classes=classes,
        mean=mean,
        scale=scale,
        dtype=np.array(coef.dtype.name),
        n_features=np.array(coef.shape[1], dtype=np.int64),
        info=np.array(_info_json(info)),
    )
    return buffer.getvalue()


# What a written model must be for load_model to read it back: checked before writing, so a bad
# argument is a ValueError naming it, not a file that load_model reports as damaged.


def _check_estimator(coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray) -> None:
    if coef.ndim != 2 or coef.shape[1] < 1 or coef.dtype not in (np.float32, np.float64):
        raise ValueError(
            f"estimator.coef_ must be float32 or float64 of shape (n_classes, n_features), got "
            f"{coef.dtype} of shape {coef.shape}: is the estimator fitted?"
        )
    if classes.ndim != 1 or len(classes) != coef.shape[0] or classes.dtype.kind not in "biufU":
        raise ValueError(
            f"estimator.classes_ must be {coef.shape[0]} numbers or strings (one per row of "
            f"coef_), got {classes.dtype} of shape {classes.shape}"
        )
    if intercept.shape != (coef.shape[0],) or intercept.dtype.kind not in "biuf":
        raise ValueError(
            f"estimator.intercept_ must be {coef.shape[0]} numbers (one per class), got "
            f"{intercept.dtype} of shape {intercept.shape}"
        )
    for name, value in (("coef_", coef), ("intercept_", intercept)):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"estimator.{name} holds NaN or infinite values")


def _statistics(mean, scale, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """``mean`` and ``scale`` as float64 arrays of shape (n_features,), or both empty."""
    if mean is None and scale is None:
        return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.float64)
    if mean is None or scale is None:
        given, missing = ("mean", "scale") if scale is None else ("scale", "mean")
        raise ValueError(
            f"{given} is given but {missing} is None: standardization needs both (or neither)"
        )
    checked = []
    for name, value in (("mean", mean), ("scale", scale)):
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be an array of numbers ({_reason(exc)})") from None
        if array.shape != (n_features,):
            raise ValueError(
                f"{name} must have shape ({n_features},), one value per feature of the "
                f"estimator, got shape {array.shape}"
            )
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} holds NaN or infinite values")
        checked.append(array)
    if np.any(checked[1] <= 0):
        raise ValueError("scale holds values <= 0: the features are divided by it")
    return checked[0], checked[1]


def _info_json(info) -> str:
    if info is None:
        info = {}
    if not isinstance(info, dict):
        raise ValueError(f"info must be a dict (or None), got {type(info).__name__}")
    if type(info.get("n_iter", 0)) is not int:
        raise ValueError(f"info['n_iter'] must be an int, got {info['n_iter']!r}")
    try:
        return json.dumps(info)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"info is not JSON-serializable ({_reason(exc)})") from None


# ----------------------------------------------------------------------------- reading


def load_model(path) -> Model:
    """Read a model written by :func:`save_model`.

    Raises
    ------
    ModelIOError
        The file is missing, not a regular file, unreadable, not a fastsoftmax model, or damaged
        (a missing array, a wrong type or shape, NaN or infinite coefficients); the one-line
        message says which.
    """
    path = os.fspath(path)
    arrays = _read_model_arrays(path)
    try:
        return _model_from_arrays(path, arrays)
    except ModelIOError:
        raise
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelIOError(f"{path}: damaged fastsoftmax model file ({_reason(exc)})") from None


def _model_source(path: str):
    """``path`` if it is a regular file, its bytes if it is a pipe; else say what is wrong."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ModelIOError(f"{path}: no such model file") from None
    except OSError as exc:
        raise ModelIOError(f"{path}: cannot read the model file ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise ModelIOError(f"{path}: is a directory, not a model file")
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        kind = "a character device" if stat.S_ISCHR(mode) else "a device or socket"
        raise ModelIOError(f"{path}: not a regular file ({kind}), not a model file")
    try:
        if stat.S_ISFIFO(mode):  # a pipe can be read only once: keep its bytes
            with open(path, "rb") as f:
                data = f.read()
            return io.BytesIO(data), data[:4]
        with open(path, "rb") as f:
            return path, f.read(4)
    except OSError as exc:
        raise ModelIOError(f"{path}: cannot read the model file ({exc.strerror})") from None


def _read_model_arrays(path: str) -> dict[str, np.ndarray]:
    source, magic = _model_source(path)
    if not magic:
        raise ModelIOError(f"{path}: empty file, not a model file")
    if magic != b"PK\x03\x04":  # every .npz is a zip archive
        raise ModelIOError(f"{path}: not a fastsoftmax model file (not an .npz archive)")
    try:
        with np.load(source, allow_pickle=False) as npz:
            if "format" not in npz.files:
                raise ModelIOError(f"{path}: not a fastsoftmax model file (no format marker)")
            arrays = {name: npz[name] for name in npz.files}
    except ModelIOError:
        raise
    except Exception as exc:  # zip, zlib, pickle refusal, OSError: the file is not ours or broken
        raise ModelIOError(f"{path}: not a readable fastsoftmax model file ({_reason(exc)})") from None
    if str(arrays["format"]) != MODEL_FORMAT:
        raise ModelIOError(f"{path}: not a fastsoftmax model file (format {str(arrays['format'])!r})")
    return arrays


_MODEL_ARRAYS = ("format_version", "coef", "intercept", "classes", "mean", "scale", "dtype")
_MODEL_ARRAYS += ("n_features", "info")


def _scalar(arrays: dict, name: str, kinds: str):
    """The 0-d array ``name`` as a Python scalar, if its dtype kind is one of ``kinds``."""
    value = arrays[name]
    if value.shape != () or value.dtype.kind not in kinds:
        raise ValueError(f"{name} is {value.dtype} of shape {value.shape}, expected a scalar")
    return value.item()


def _numbers(arrays: dict, name: str, shapes: tuple) -> np.ndarray:
    """The real, finite array ``name``, if its shape is one of ``shapes``."""
    value = arrays[name]
    if value.dtype.kind not in "iuf" or value.shape not in shapes:
        expected = " or ".join(str(shape) for shape in shapes)
        raise ValueError(f"{name} is {value.dtype} of shape {value.shape}, expected {expected}")
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return value


def _model_from_arrays(path: str, arrays: dict[str, np.ndarray]) -> Model:
    missing = [name for name in _MODEL_ARRAYS if name not in arrays]
    if missing:
        raise ValueError(f"no array {', '.join(missing)}")
    version = _scalar(arrays, "format_version", "iu")
    if version > MODEL_VERSION:
        raise ModelIOError(
            f"{path}: model format version {version} is newer than this fastsoftmax "
            f"supports ({MODEL_VERSION}); upgrade fastsoftmax"
        )
    n_features = _scalar(arrays, "n_features", "iu")
    dtype = np.dtype(_scalar(arrays, "dtype", "U"))
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)) or n_features < 1:
        raise ValueError(f"dtype {dtype} and n_features {n_features}")
    classes = arrays["classes"]
    if classes.ndim != 1 or len(classes) < 1 or classes.dtype.kind not in "biufU":
        raise ValueError(f"classes is {classes.dtype} of shape {classes.shape}")
    coef = _numbers(arrays, "coef", ((len(classes), n_features),))
    intercept = _numbers(arrays, "intercept", ((len(classes),),))
    mean = _numbers(arrays, "mean", ((0,), (n_features,)))
    scale = _numbers(arrays, "scale", (mean.shape,))
    if np.any(scale <= 0):
        raise ValueError("scale holds values <= 0")
    info = json.loads(_scalar(arrays, "info", "U"))
    if not isinstance(info, dict) or type(info.get("n_iter", 0)) is not int:
        raise ValueError("info is not a JSON object with an integer n_iter")
    from fastsoftmax.estimator import SoftmaxRegression

    estimator = SoftmaxRegression()
    estimator.coef_ = coef.astype(dtype)
    estimator.intercept_ = intercept.astype(dtype)
    estimator.classes_ = classes
    estimator.n_features_in_ = n_features
    estimator.n_iter_ = info.get("n_iter", 0)
    stats = (mean, scale) if len(mean) else (None, None)
    return Model(estimator, *stats, dtype, n_features, info)


# ----------------------------------------------------------------------------- output files


def _is_stream(path: str) -> bool:
    """Whether ``path`` (followed through symlinks) is a character device or a pipe.

    Streams are written through, in place: renaming a file over ``/dev/null`` or a named pipe
    would replace the device node or the pipe with a regular file.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def check_writable(path: str, what: str) -> None:
    """Fail before any work when ``path`` cannot be written; ``what`` names it in the message.

    A regular file (or a new one) is checked through symlinks, in the directory of its real path;
    a character device or a pipe must be writable; anything else (a directory, a block device,
    a socket) is refused.
    """
    if os.path.isdir(path):
        raise ModelIOError(f"cannot write {what} to {path}: it is a directory")
    if _is_stream(path):
        if not os.access(path, os.W_OK):
            raise ModelIOError(f"cannot write {what} to {path}: permission denied")
        return
    if os.path.exists(path) and not os.path.isfile(path):
        raise ModelIOError(
            f"cannot write {what} to {path}: not a regular file, a character device or a pipe"
        )
    directory = os.path.dirname(os.path.realpath(path))
    if not os.path.isdir(directory):
        raise ModelIOError(f"cannot write {what} to {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise ModelIOError(f"cannot write {what} to {path}: directory {directory} is not writable")


def write_atomically(contents: dict[str, bytes]) -> None:
    """Write every output: files through a temporary sibling renamed into place, streams directly.

    Regular files are staged first (a symlink's target is replaced at its real path, so the link
    stays a link), then character devices and pipes are written, then every staged file is
    renamed into place: a failure before the renames leaves no output file changed.
    """
    staged: list[tuple[str, str]] = []
    umask = os.umask(0)
    os.umask(umask)
    path = ""
    try:
        streams = {p: data for p, data in contents.items() if _is_stream(p)}
        for path, data in contents.items():
            if path not in streams:
                staged.append((_stage(os.path.realpath(path), data, umask), path))
        for path, data in streams.items():
            with open(path, "wb") as f:
                f.write(data)
        for tmp, path in staged:
            os.replace(tmp, os.path.realpath(path))
    except OSError as exc:
        raise ModelIOError(f"cannot write {path}: {exc.strerror or _reason(exc)}") from None
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _stage(target: str, data: bytes, umask: int) -> str:
    """Write ``data`` to a new temporary file beside ``target``; return its path."""
    fd, tmp = tempfile.mkstemp(
        dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
    except OSError:
        os.unlink(tmp)
        raise
    return tmp


def same_file(a: str, b: str) -> bool:
    """Whether two paths name the same file: the same inode, or the same real path if not yet made."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_distinct(outputs: Sequence[tuple[str, str]], inputs: Sequence[tuple[str, str]]) -> None:
    """Refuse an output that is the same file as an input or as another output.

    ``outputs`` and ``inputs`` are ``(option, path)`` pairs, like ``("--model-out", "m.npz")``.
    A character device or a pipe overwrites nothing, so it may appear more than once
    (``/dev/null``).
    """
    files = [(name, path) for name, path in outputs if not _is_stream(path)]
    for i, (name, path) in enumerate(files):
        for other, other_path in files[:i]:
            if same_file(path, other_path):
                raise ModelIOError(f"{other} {other_path} and {name} {path} are the same file")
        for other, other_path in inputs:
            if os.path.exists(other_path) and same_file(path, other_path):
                raise ModelIOError(
                    f"{name} {path} is the same file as {other} {other_path}: "
                    "writing it would overwrite the input"
                )
