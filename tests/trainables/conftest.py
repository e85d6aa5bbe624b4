"""Fixtures shared by the trainables' tests."""

from __future__ import annotations

import pytest

from tests.trainables.threads import single_threaded


@pytest.fixture
def one_thread():
    """One thread for a test (tests/trainables/threads.py says why).
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    with single_threaded():
        yield
