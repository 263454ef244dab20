"""The implementations every benchmark group compares, built the same way for timing and for memory.

`build(op, impl, data)` returns `(fn, loss_of)`: `fn()` runs one call of the operation on the data
(everything a user would do per call, nothing that can be done once beforehand), `loss_of(result)`
extracts the loss, or None for operations without one, so the suite can check that every peer
computes the same quantity.

- floor: the matrix products the operation needs, into preallocated outputs (NumPy's BLAS), for
  the linear operations (2 for loss + dW + db, 3 with dX, 1 for linear_softmax); one read and one
  write of the N x K array (`np.copyto`) for the elementwise ones.
- fastsoftmax and reference: the functional API.
- scikit-learn: what its LogisticRegression runs: `LinearModelLoss(HalfMultinomialLoss)` for loss
  and gradient (n_threads=1, as LogisticRegression calls it), `HalfMultinomialLoss` for the
  elementwise operations, `LogisticRegression.predict_proba` for linear_softmax.
- torch: PyTorch CPU, `F.cross_entropy(F.linear(X, W, b), y)` and backward, with as many threads as
  cores.
- torch-chunked: PyTorch's fused chunked op, `F.linear_cross_entropy(X, W, y, linear_bias=b,
  options=torch.nn.LinearCrossEntropyOptions())` and backward (the linear loss only: it has no
  softmax, no elementwise form).
"""

from __future__ import annotations

import numpy as np
from _cases import import_torch

_SKIPS = {
    (
        "linear_cross_entropy+dX",
        "scikit-learn",
    ): "scikit-learn computes no gradient with respect to X",
} | {
    (op, "torch-chunked"): "PyTorch's chunked op computes the linear loss only"
    for op in ("linear_softmax", "softmax", "cross_entropy_grad")
}


def unsupported(op: str, impl: str) -> str | None:
    return _SKIPS.get((op, impl))


def _none(result):
    return None


def _first(result):
    return float(result[0])


def build(op: str, impl: str, data: dict):
    return _BUILDERS[impl](op, **data)


# --------------------------------------------------------------------------------------------------


def _touched(shape, dtype):
    """A preallocated output with its pages already resident: the floor's setup is not measured."""
    out = np.empty(shape, dtype=dtype)
    out.fill(0)
    return out


def _floor(op, X=None, W=None, b=None, y=None, Z=None):
    if Z is not None:
        out = _touched(Z.shape, Z.dtype)
        return (lambda: np.copyto(out, Z)), _none
    Zb = _touched((X.shape[0], W.shape[0]), X.dtype)
    if op == "linear_softmax":
        return (lambda: np.matmul(X, W.T, out=Zb)), _none
    dW = _touched(W.shape, W.dtype)
    if op == "linear_cross_entropy":

        def two_gemms():
            np.matmul(X, W.T, out=Zb)
            np.matmul(Zb.T, X, out=dW)

        return two_gemms, _none
    dX = _touched(X.shape, X.dtype)

    def three_gemms():
        np.matmul(X, W.T, out=Zb)
        np.matmul(Zb.T, X, out=dW)
        np.matmul(Zb, W, out=dX)

    return three_gemms, _none


def _functional(module):
    def builder(op, X=None, W=None, b=None, y=None, Z=None):
        if op == "softmax":
            return (lambda: module.softmax(Z)), _none
        if op == "cross_entropy_grad":
            return (lambda: module.cross_entropy_grad(Z, y)), _first
        if op == "linear_softmax":
            return (lambda: module.linear_softmax(X, W, b)), _none
        dX = op == "linear_cross_entropy+dX"
        return (lambda: module.linear_cross_entropy(X, W, b, y, return_dX=dX)), _first

    return builder


def _fastsoftmax(op, **data):
    import fastsoftmax

    if op in ("softmax", "cross_entropy_grad"):
        # Measured as a training loop calls it: into a preallocated output, as the floor writes.
        # A fresh N x K result per call would mostly measure page faults, not the softmax: on a
        # virtual machine, memory freed and touched again can fault in at a small fraction of the
        # memory bandwidth (docs/design.md, "Measured facts").
        Z = data["Z"]
        out = np.empty_like(Z)
        if op == "softmax":
            return (lambda: fastsoftmax.softmax(Z, out=out)), _none
        y = data["y"]
        return (lambda: fastsoftmax.cross_entropy_grad(Z, y, out=out)), _first
    return _functional(fastsoftmax)(op, **data)


def _reference(op, **data):
    import reference

    return _functional(reference)(op, **data)


def _sklearn(op, X=None, W=None, b=None, y=None, Z=None):
    from sklearn._loss.loss import HalfMultinomialLoss

    if op == "softmax":
        return (lambda: HalfMultinomialLoss(n_classes=Z.shape[1]).predict_proba(Z)), _none
    if op == "cross_entropy_grad":
        loss_fn = HalfMultinomialLoss(n_classes=Z.shape[1])
        yf = y.astype(Z.dtype)

        def loss_gradient():
            # per-sample losses and gradients: reduce to the mean and its gradient, as the others
            losses, grad = loss_fn.loss_gradient(yf, Z, n_threads=1)
            grad /= Z.shape[0]
            return float(losses.sum(dtype=np.float64)) / Z.shape[0], grad

        return loss_gradient, _first
    if op == "linear_softmax":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression()
        clf.coef_, clf.intercept_ = W, b
        clf.classes_ = np.arange(W.shape[0])
        clf.n_features_in_ = X.shape[1]
        return (lambda: clf.predict_proba(X)), _none
    from sklearn.linear_model._linear_loss import LinearModelLoss

    lml = LinearModelLoss(base_loss=HalfMultinomialLoss(n_classes=W.shape[0]), fit_intercept=True)
    coef = np.hstack([W, b[:, None]])
    yf = y.astype(X.dtype)
    return (lambda: lml.loss_gradient(coef, X, yf, l2_reg_strength=0.0, n_threads=1)), _first


def _torch(op, X=None, W=None, b=None, y=None, Z=None):
    torch = import_torch()
    F = torch.nn.functional
    yt = None if y is None else torch.from_numpy(y)
    if op == "softmax":
        Zt = torch.from_numpy(Z)
        return (lambda: torch.softmax(Zt, dim=1)), _none
    if op == "cross_entropy_grad":
        Zt = torch.from_numpy(Z).requires_grad_()

        def ce_grad():
            Zt.grad = None
            loss = F.cross_entropy(Zt, yt)
            loss.backward()
            return loss.item(), Zt.grad

        return ce_grad, _first
    Xt = torch.from_numpy(X)
    Wt = torch.from_numpy(W.copy())
    bt = torch.from_numpy(b.copy())
    if op == "linear_softmax":

        def predict_proba():
            with torch.no_grad():
                return torch.softmax(F.linear(Xt, Wt, bt), dim=1)

        return predict_proba, _none
    dX = op == "linear_cross_entropy+dX"
    if dX:
        Xt.requires_grad_()
    Wt.requires_grad_()
    bt.requires_grad_()

    def step():
        Wt.grad = bt.grad = Xt.grad = None
        loss = F.cross_entropy(F.linear(Xt, Wt, bt), yt)
        loss.backward()
        return (loss.item(), Wt.grad, bt.grad) + ((Xt.grad,) if dX else ())

    return step, _first


def _torch_chunked(op, X=None, W=None, b=None, y=None, Z=None):
    torch = import_torch()
    F = torch.nn.functional
    options = torch.nn.LinearCrossEntropyOptions()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    Wt = torch.from_numpy(W.copy()).requires_grad_()
    bt = torch.from_numpy(b.copy()).requires_grad_()
    dX = op == "linear_cross_entropy+dX"
    if dX:
        Xt.requires_grad_()

    def step():
        Wt.grad = bt.grad = Xt.grad = None
        loss = F.linear_cross_entropy(Xt, Wt, yt, linear_bias=bt, options=options)
        loss.backward()
        return (loss.item(), Wt.grad, bt.grad) + ((Xt.grad,) if dX else ())

    return step, _first


_BUILDERS = {
    "floor": _floor,
    "fastsoftmax": _fastsoftmax,
    "reference": _reference,
    "scikit-learn": _sklearn,
    "torch": _torch,
    "torch-chunked": _torch_chunked,
}
