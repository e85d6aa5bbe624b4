"""Fixtures shared by the trainables' tests."""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_limits


@pytest.fixture
def one_thread():
    """One torch intra-op thread and one BLAS/OpenMP thread for a test, restored afterwards. The tiny
    networks and heads here run many small ops: on a busy 2-core machine two threads only contend
    (measured 30-60x slower training in test_detectors), and one thread takes seconds either way.
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(previous)
