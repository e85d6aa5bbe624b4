"""The one channel through which a trainable talks to whoever runs it.

A trainable never knows whether it runs under Ray Tune, in a unit test or in a notebook: it
reports metrics (and, when it has one, a `Checkpoint`) through a `Reporter`, and asks the
same reporter for the state to resume from. The Ray Tune implementation lives in
`orchestrator/tune_reporter.py`; `ListReporter` below keeps everything in memory for tests.
"""

from __future__ import annotations

import copy
import io
from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch

from trainables.checkpoint import Checkpoint, StepFiles


class Reporter(ABC):
    """Receives one result per step; may hold the checkpoint a trainable resumes from."""

    @abstractmethod
    def report(self, metrics: Mapping[str, float], checkpoint: Checkpoint | None = None,
               files: StepFiles | None = None) -> None:
        """Publish the metrics of one step, with the state needed to resume after it and the
        step's files (kept next to the checkpoint; a later step's file of the same name wins)."""

    @abstractmethod
    def restore(self) -> Checkpoint | None:
        """The checkpoint to resume from, or None for a fresh start."""

    def timed(self, phase: str, seconds: float) -> None:
        """How long one part of an epoch took ("train", "evaluate"), told by `fit`. Only the cost estimate
        (orchestrator/estimate.py) listens: it times the parts apart because only training scales with the
        number of training images."""


def clone_state(state: Checkpoint) -> Checkpoint:
    """A deep copy made the way a checkpoint file would be (its dict form through `torch.save`), so later
    in-place updates to the model cannot leak into a stored checkpoint."""
    buffer = io.BytesIO()
    torch.save(state.to_dict(), buffer)
    buffer.seek(0)
    return Checkpoint.from_dict(torch.load(buffer, weights_only=False))


class ListReporter(Reporter):
    """In-memory reporter: keeps every result and the last checkpoint.

    Pass `resume_from` to simulate a restart from a checkpoint taken by an earlier run.
    """

    def __init__(self, resume_from: Checkpoint | None = None) -> None:
        self.results: list[dict[str, float]] = []
        self.last_checkpoint: Checkpoint | None = None
        self.files: dict[str, bytes] = {}
        self._resume_from = clone_state(resume_from) if resume_from is not None else None

    def report(self, metrics: Mapping[str, float], checkpoint: Checkpoint | None = None,
               files: StepFiles | None = None) -> None:
        self.results.append(copy.deepcopy(dict(metrics)))
        if checkpoint is not None:
            self.last_checkpoint = clone_state(checkpoint)
        self.files.update(files or {})

    def restore(self) -> Checkpoint | None:
        return self._resume_from

    def last(self, metric: str) -> float:
        """The last reported value of one metric (KeyError naming it when never reported)."""
        for result in reversed(self.results):
            if metric in result:
                return result[metric]
        raise KeyError(f"metric {metric!r} was never reported (reported: {sorted(self.keys())})")

    def keys(self) -> set[str]:
        return {key for result in self.results for key in result}
