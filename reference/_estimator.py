"""Softmax regression trained by full-batch gradient descent, as the textbook writes it.

The model and loop of Dive into Deep Learning, section 3.6 ("Implementation of Softmax Regression
from Scratch"), with the gradient of the mean cross-entropy written out by hand instead of autograd:
``Z = X W^T + b``, ``P = softmax(Z)``, the one-hot matrix ``Y``, ``G = (P - Y) / n``,
``dW = G^T X + alpha W``, ``db = sum_i G_i``, then ``W -= lr * dW`` and ``b -= lr * db``.
It is the specification of ``fastsoftmax.SoftmaxRegression(solver="gd")``: from the same start,
the two agree after every step. Clarity beats speed: several n_samples x n_classes arrays are
built on purpose.
"""

import numpy as np


def _softmax(Z):
    """Row-wise softmax, with the row maximum subtracted so that exp cannot overflow."""
    Z_exp = np.exp(Z - Z.max(axis=1, keepdims=True))
    return Z_exp / Z_exp.sum(axis=1, keepdims=True)


def _one_hot(y, n_classes):
    Y = np.zeros((len(y), n_classes))
    Y[np.arange(len(y)), y] = 1.0
    return Y


class SoftmaxRegression:
    """Textbook softmax regression: weighted mean cross-entropy + ``alpha/2 ||W||^2``, full-batch
    gradient descent with a fixed learning rate for ``max_iter`` steps.

    Same conventions as fastsoftmax: ``coef_`` of shape (n_classes, n_features), ``intercept_`` of
    shape (n_classes,), float32 data trains in float32, anything else in float64. ``loss_curve_[k]``
    is the objective at the weights step k + 1 starts from.
    """

    def __init__(self, *, learning_rate=0.1, max_iter=100, alpha=0.0, fit_intercept=True):
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.alpha = alpha
        self.fit_intercept = fit_intercept

    def fit(self, X, y, sample_weight=None, *, coef_init=None, intercept_init=None):
        X = np.asarray(X)
        dtype = np.float32 if X.dtype == np.float32 else np.float64
        X = X.astype(dtype)
        self.classes_, y = np.unique(y, return_inverse=True)
        n_samples, n_features = X.shape
        n_classes = len(self.classes_)
        w = np.ones(n_samples) if sample_weight is None else np.asarray(sample_weight, float)

        W = np.zeros((n_classes, n_features), dtype)
        b = np.zeros(n_classes, dtype)
        if coef_init is not None:
            W[...] = coef_init
        if intercept_init is not None:
            b[...] = intercept_init

        Y = _one_hot(y, n_classes)
        self.loss_curve_ = []
        for _ in range(self.max_iter):
            Z = X @ W.T + b
            P = _softmax(Z.astype(np.float64))
            cross_entropy = -np.log(P[np.arange(n_samples), y])
            loss = (w * cross_entropy).sum() / w.sum()
            loss += self.alpha / 2 * (W.astype(np.float64) ** 2).sum()
            self.loss_curve_.append(float(loss))

            G = ((P - Y) * (w / w.sum())[:, None]).astype(dtype)
            dW = G.T @ X + self.alpha * W
            W = W - self.learning_rate * dW
            if self.fit_intercept:
                db = G.astype(np.float64).sum(axis=0).astype(dtype)
                b = b - self.learning_rate * db

        self.coef_, self.intercept_ = W, b
        self.n_iter_ = self.max_iter
        return self

    def decision_function(self, X):
        return np.asarray(X) @ self.coef_.T + self.intercept_

    def predict_proba(self, X):
        return _softmax(self.decision_function(X))

    def predict(self, X):
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]
