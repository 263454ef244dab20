"""Softmax regression on data spread over a Dask cluster (``pip install "fastsoftmax[dask]"``).

:class:`SoftmaxRegression` fits on dask Arrays and DataFrames chunked along rows: the chunks stay
on the workers, every lbfgs evaluation computes each chunk's fused loss and gradient where it
lives, and the partial sums are reduced in a fixed order (docs/scaling.md). ``import fastsoftmax``
never imports this module, nor dask.
"""

from fastsoftmax.dask._estimator import SoftmaxRegression
from fastsoftmax.dask._synthetic import make_synthetic

__all__ = ["SoftmaxRegression", "make_synthetic"]
