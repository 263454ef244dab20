"""The thread-count context managers restore what they change, also on errors."""

import numba
import pytest
from _reliability import blas_threads

from fastsoftmax._threads import effective_n_jobs, numba_threads, thread_limits

MAX = numba.config.NUMBA_NUM_THREADS


@pytest.mark.parametrize(
    ("n_jobs", "expected"),
    [(None, None), (1, 1), (MAX + 5, MAX), (-1, MAX), (-MAX - 3, 1)],
)
def test_effective_n_jobs(n_jobs, expected):
    assert effective_n_jobs(n_jobs) == expected


@pytest.mark.parametrize(
    ("n_jobs", "error"), [(0, ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_effective_n_jobs_rejects(n_jobs, error):
    with pytest.raises(error):
        effective_n_jobs(n_jobs)


def test_thread_limits_sets_and_restores_on_error():
    before = (numba.get_num_threads(), blas_threads())
    with pytest.raises(RuntimeError), thread_limits(1) as n_threads:
        assert n_threads == 1
        assert numba.get_num_threads() == 1
        assert {n_threads for *_, n_threads in blas_threads()} == {1}
        raise RuntimeError
    assert (numba.get_num_threads(), blas_threads()) == before


def test_numba_threads_never_raises_the_count():
    before = numba.get_num_threads()
    with numba_threads(MAX + 1):
        assert numba.get_num_threads() == before
    with numba_threads(1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
