"""Fixtures shared by the OOD trainables' tests."""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_limits


@pytest.fixture(scope="module")
def one_thread_module():
    """`one_thread` (tests/trainables/conftest.py) for a whole module, so module-scoped fixtures that train
    a model once (leave_out, conditional_nn) run single-threaded too."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(previous)
