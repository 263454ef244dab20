"""Row-wise operations on given N x K logits: softmax, and cross-entropy with its gradient.

The floor is one read and one write of the N x K array (`np.copyto` into a preallocated output).
One benchmark group per operation and shape (`softmax n=...-k=...-float32`).
"""

import pytest
from _cases import CASES, IMPLEMENTATIONS, make_data, shape_id
from _harness import json_extras, run_case  # noqa: F401 (autouse fixture)

import fastsoftmax as fs


@pytest.fixture(params=CASES, ids=[shape_id(*c, op="softmax") for c in CASES], scope="module")
def logits(request):
    shape, dtype = request.param
    data = make_data("softmax", shape, dtype)
    expected = fs.cross_entropy_grad(data["Z"], data["y"])[0]
    return shape, dtype, data, expected


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_softmax(benchmark, logits, impl):
    shape, dtype, data, _ = logits
    run_case(benchmark, "softmax", impl, shape, dtype, data)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_cross_entropy_grad(benchmark, logits, impl):
    """Mean loss and its gradient with respect to the logits."""
    run_case(benchmark, "cross_entropy_grad", impl, *logits)
