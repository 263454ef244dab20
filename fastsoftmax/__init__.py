"""fastsoftmax: fused, tiled, parallel softmax regression for the CPU.

The functional API (same names and signatures as the pure-NumPy ``reference`` package)::

    softmax, log_softmax, cross_entropy, cross_entropy_grad, linear_cross_entropy, linear_softmax

and the scikit-learn estimator :class:`SoftmaxRegression` built on it.
"""

from fastsoftmax.estimator import SoftmaxRegression
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
