"""Fixtures shared by the OOD trainables' tests."""

from __future__ import annotations

import pytest

from tests.trainables.threads import single_threaded


@pytest.fixture(scope="module")
def one_thread_module():
    """`one_thread` (tests/trainables/conftest.py) for a whole module, so module-scoped fixtures that train
    a model once (leave_out, conditional_nn) run single-threaded too."""
    with single_threaded():
        yield
