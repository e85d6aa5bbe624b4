"""One torch intra-op thread and one BLAS/OpenMP thread, restored afterwards.

The tiny networks and heads of the trainables' tests run many small ops: on a busy 2-core machine two
threads only contend (measured 30-60x slower training in test_detectors), and one thread takes seconds
either way. The fixtures of tests/trainables/conftest.py and tests/trainables/ood/conftest.py wrap it, and
the contract test's shared runs (contract_runs.py) use it directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from threadpoolctl import threadpool_limits


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(previous)
