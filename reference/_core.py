"""Textbook softmax regression in NumPy: the specification every fastsoftmax kernel is tested against."""

import numpy as np
import scipy.sparse as sp


def _float_dtype(*arrays):
    """float32 when every array is float32, float64 otherwise (the fastsoftmax dtype rule)."""
    present = [a for a in arrays if a is not None]
    if present and all(np.asarray(a).dtype == np.float32 for a in present):
        return np.float32
    return np.float64


def _weights(y, sample_weight, reduction):
    """Per-sample weights in float64 (ones when none are given), normalized for 'mean'.

    The mean divides by the sum of the weights. Dividing by the largest weight first keeps the
    sum in range: all-5e-324 or all-1e308 weights give the same mean as all-ones.
    """
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if reduction != "mean" or not len(w):
        return w
    w = w / w.max()
    return w / w.sum()


def _data(X, dtype):
    """X in `dtype`: a dense array, or a scipy.sparse X kept sparse (its products are scipy's)."""
    return X.astype(dtype) if sp.issparse(X) else np.asarray(X, dtype=dtype)


def softmax(Z, *, out=None):
    """Row-wise softmax: ``exp(Z - max) / sum(exp(Z - max))``."""
    Z = np.asarray(Z, dtype=_float_dtype(Z))
    E = np.exp(Z - Z.max(axis=1, keepdims=True))
    P = E / E.sum(axis=1, keepdims=True)
    if out is not None:
        out[...] = P
        return out
    return P


def log_softmax(Z, *, out=None):
    """Row-wise log-softmax: ``Z - max - log(sum(exp(Z - max)))``."""
    Z = np.asarray(Z, dtype=_float_dtype(Z))
    shifted = Z - Z.max(axis=1, keepdims=True)
    L = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    if out is not None:
        out[...] = L
        return out
    return L


def _row_losses(Z, y, label_smoothing):
    """Cross-entropy of every row in float64, with PyTorch's label smoothing."""
    L = log_softmax(np.asarray(Z, dtype=np.float64))
    nll = -L[np.arange(len(y)), y]
    if label_smoothing == 0.0:
        return nll
    return (1.0 - label_smoothing) * nll + label_smoothing * -L.mean(axis=1)


def cross_entropy(Z, y, *, sample_weight=None, label_smoothing=0.0, reduction="mean"):
    """Weighted cross-entropy of logits Z against integer labels y."""
    y = np.asarray(y)
    w = _weights(y, sample_weight, reduction)
    # a sample of weight 0 contributes nothing, even where its loss is infinite (a masked label)
    losses = np.where(w > 0, w * _row_losses(Z, y, label_smoothing), 0.0)
    if reduction == "none":
        return losses.astype(_float_dtype(Z))
    return float(losses.sum())


def _target(y, n_classes, label_smoothing):
    """The one-hot target matrix, smoothed towards the uniform distribution."""
    Y = np.zeros((len(y), n_classes))
    Y[np.arange(len(y)), y] = 1.0
    return (1.0 - label_smoothing) * Y + label_smoothing / n_classes


def cross_entropy_grad(
    Z, y, *, sample_weight=None, label_smoothing=0.0, reduction="mean", out=None
):
    """The reduced cross-entropy and its gradient ``(P - Y) * w / sum(w)`` with respect to Z."""
    dtype = _float_dtype(Z)
    y = np.asarray(y)
    w = _weights(y, sample_weight, reduction)
    loss = cross_entropy(
        Z, y, sample_weight=sample_weight, label_smoothing=label_smoothing, reduction=reduction
    )
    P = softmax(np.asarray(Z, dtype=np.float64))
    Y = _target(y, P.shape[1], label_smoothing)
    G = ((P - Y) * w[:, None]).astype(dtype)
    if out is not None:
        out[...] = G
        return loss, out
    return loss, G


def linear_cross_entropy(
    X,
    W,
    b,
    y,
    *,
    sample_weight=None,
    label_smoothing=0.0,
    alpha=0.0,
    reduction="mean",
    return_dX=False,
):
    """Loss and gradients of the linear layer ``Z = X W^T + b`` followed by cross-entropy.

    Returns ``(loss, dW, db)``, or ``(loss, dW, db, dX)`` with ``return_dX=True``; db is None when b
    is None. The loss includes ``alpha/2 ||W||^2`` and dW includes ``alpha W``.
    """
    dtype = _float_dtype(X, W, b)
    X = _data(X, dtype)
    W = np.asarray(W, dtype=dtype)
    Z = np.asarray(X @ W.T)
    if b is not None:
        b = np.asarray(b, dtype=dtype)
        Z = Z + b
    loss, G = cross_entropy_grad(
        Z, y, sample_weight=sample_weight, label_smoothing=label_smoothing, reduction=reduction
    )
    W64 = W.astype(np.float64)
    loss += 0.5 * alpha * float((W64 * W64).sum())
    dW = (np.asarray((X.T @ G).T) + alpha * W).astype(dtype)  # G^T X, also for sparse X
    db = None if b is None else G.astype(np.float64).sum(axis=0).astype(dtype)
    if return_dX:
        return loss, dW, db, G @ W
    return loss, dW, db


def linear_softmax(X, W, b):
    """Class probabilities of the linear model: ``softmax(X W^T + b)``."""
    dtype = _float_dtype(X, W, b)
    Z = np.asarray(_data(X, dtype) @ np.asarray(W, dtype=dtype).T)
    if b is not None:
        Z = Z + np.asarray(b, dtype=dtype)
    return softmax(Z)


def linear_cross_entropy_hvp(
    X,
    W,
    b,
    y,
    S,
    s_b,
    *,
    sample_weight=None,
    label_smoothing=0.0,
    alpha=0.0,
    reduction="mean",
):
    """The Hessian of the ``linear_cross_entropy`` objective at (W, b) times the direction (S, s_b).

    ``P = softmax(X W^T + b)``, ``T = X S^T + s_b``, ``R = P * (T - rowsum(P * T))`` (the Hessian
    ``diag(p) - p p^T`` of each row's cross-entropy in its logits, applied to t),
    ``HS = (R * w)^T X / sum(w) + alpha S`` and ``Hs_b = sum_i w_i r_i / sum(w)``. Neither y nor
    label smoothing changes the Hessian (the target is constant in the logits).
    Returns ``(HS, Hs_b)``, Hs_b None when b is None.
    """
    dtype = _float_dtype(X, W, b, S, s_b)
    X = _data(X, dtype)
    Z = np.asarray(X @ np.asarray(W, dtype=dtype).T)
    T = np.asarray(X @ np.asarray(S, dtype=dtype).T)
    if b is not None:
        Z = Z + np.asarray(b, dtype=dtype)
        T = T + np.asarray(s_b, dtype=dtype)
    P = softmax(Z.astype(np.float64))
    T = T.astype(np.float64)
    R = P * (T - (P * T).sum(axis=1, keepdims=True))
    w = _weights(np.asarray(y), sample_weight, reduction)
    Rw = R * w[:, None]
    RwTX = np.asarray((X.astype(np.float64).T @ Rw).T)  # R^T X, also for sparse X
    HS = (RwTX + alpha * np.asarray(S, dtype=np.float64)).astype(dtype)
    Hs_b = None if b is None else Rw.sum(axis=0).astype(dtype)
    return HS, Hs_b
