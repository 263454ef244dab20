"""The linear layer (loss + dW + db, the same with dX, predict_proba) beside the floor and peers.

One benchmark group per operation and shape (`linear_cross_entropy n=...-d=...-k=...-float32`), each
comparing floor, fastsoftmax, reference, scikit-learn and PyTorch (plain linear + cross_entropy, and
its chunked fused op for the loss) side by side (see `_impls.py`).
"""

import pytest
from _cases import CASES, IMPLEMENTATIONS, make_data, shape_id
from _harness import json_extras, run_case  # noqa: F401 (autouse fixture)

import fastsoftmax as fs

# PyTorch's chunked op (torch.nn.functional.linear_cross_entropy) is a peer of the loss only.
LOSS_IMPLEMENTATIONS = IMPLEMENTATIONS + ("torch-chunked",)


@pytest.fixture(params=CASES, ids=[shape_id(*c) for c in CASES], scope="module")
def problem(request):
    shape, dtype = request.param
    data = make_data("linear_cross_entropy", shape, dtype)
    expected = fs.linear_cross_entropy(data["X"], data["W"], data["b"], data["y"])[0]
    return shape, dtype, data, expected


@pytest.mark.parametrize("impl", LOSS_IMPLEMENTATIONS)
def test_linear_cross_entropy(benchmark, problem, impl):
    """loss, dW, db."""
    run_case(benchmark, "linear_cross_entropy", impl, *problem)


@pytest.mark.parametrize("impl", LOSS_IMPLEMENTATIONS)
def test_linear_cross_entropy_dX(benchmark, problem, impl):
    """loss, dW, db and dX (return_dX=True): the output layer of a network."""
    run_case(benchmark, "linear_cross_entropy+dX", impl, *problem)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_linear_softmax(benchmark, problem, impl):
    """predict_proba: softmax(X W^T + b)."""
    shape, dtype, data, _ = problem
    run_case(benchmark, "linear_softmax", impl, shape, dtype, data)
