"""fastsoftmax: fused, tiled, parallel softmax regression for the CPU.

The functional API (same names and signatures as the pure-NumPy ``reference`` package)::

    softmax, log_softmax, cross_entropy, cross_entropy_grad, linear_cross_entropy, linear_softmax,
    linear_cross_entropy_hvp

and the scikit-learn estimator :class:`SoftmaxRegression` built on it.
"""

from fastsoftmax.functional import (
    cross_entropy,
    cross_entropy_grad,
    linear_cross_entropy,
    linear_cross_entropy_hvp,
    linear_softmax,
    log_softmax,
    softmax,
)

__all__ = [
    "SoftmaxRegression",
    "cross_entropy",
    "cross_entropy_grad",
    "linear_cross_entropy",
    "linear_cross_entropy_hvp",
    "linear_softmax",
    "log_softmax",
    "softmax",
]


def _package_version() -> str:
    """The installed distribution's version (pyproject.toml holds the one copy of it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fastsoftmax")
    except PackageNotFoundError:  # a source tree on sys.path, never installed
        return "0+unknown"


def __getattr__(name: str):
    # PEP 562: what is slow to load comes on first use, so that the functional API alone starts
    # fast. The estimator imports scikit-learn (0.85 s); the version scans the installed
    # distributions' metadata (up to tens of ms on a cold file cache).
    if name == "SoftmaxRegression":
        from fastsoftmax.estimator import SoftmaxRegression

        return SoftmaxRegression
    if name == "__version__":
        globals()["__version__"] = _package_version()  # later reads skip __getattr__
        return globals()["__version__"]
    raise AttributeError(f"module 'fastsoftmax' has no attribute {name!r}")
