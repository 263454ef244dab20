"""fastsoftmax: fused, tiled, parallel softmax regression for the CPU.

The functional API (same names and signatures as the pure-NumPy ``reference`` package)::

    softmax, log_softmax, cross_entropy, cross_entropy_grad, linear_cross_entropy, linear_softmax

and the scikit-learn estimator :class:`SoftmaxRegression` built on it.
"""

from fastsoftmax.functional import (
    cross_entropy,
    cross_entropy_grad,
    linear_cross_entropy,
    linear_softmax,
    log_softmax,
    softmax,
)

__version__ = "0.1.0"

__all__ = [
    "SoftmaxRegression",
    "cross_entropy",
    "cross_entropy_grad",
    "linear_cross_entropy",
    "linear_softmax",
    "log_softmax",
    "softmax",
]


def __getattr__(name: str):
    # The estimator imports scikit-learn (0.85 s): load it on first use so that the functional API
    # alone starts fast (PEP 562).
    if name == "SoftmaxRegression":
        from fastsoftmax.estimator import SoftmaxRegression

        return SoftmaxRegression
    raise AttributeError(f"module 'fastsoftmax' has no attribute {name!r}")
