"""The executable specification of fastsoftmax, in plain NumPy.

Every function here has the name and signature of its twin in :mod:`fastsoftmax` and is written the
way a textbook writes softmax regression (Dive into Deep Learning, chapter 3): stable softmax with
the row maximum subtracted, a one-hot target matrix, ``G = (P - Y) * w / sum(w)``, ``dW = G^T X``.
Clarity beats speed: it materializes several N x K arrays on purpose. The tests hold every kernel of
fastsoftmax to these numbers.

Conventions: X ``(n_samples, n_features)``, W ``(n_classes, n_features)``, b ``(n_classes,)`` or
None, y integer codes ``0..n_classes-1`` of shape ``(n_samples,)``, sample_weight ``(n_samples,)``.
float32 inputs give float32 results, anything else float64; the loss is a Python float.
"""

from reference._core import (
    cross_entropy,
    cross_entropy_grad,
    linear_cross_entropy,
    linear_cross_entropy_hvp,
    linear_softmax,
    log_softmax,
    softmax,
)
from reference._estimator import SoftmaxRegression

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
