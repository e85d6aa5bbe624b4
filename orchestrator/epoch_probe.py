"""Time one epoch of a trainable in seconds, through its own `run(config, reporter)`.

The probe runs the trainable with its epoch's training images capped low (the setting its definition's
`EpochCost` names), stops it at the first report, and scales the training part by the images a real
epoch reads. Evaluation is timed at the configured sizes, so nothing is guessed about how it scales.
`fit` tells the reporter how long training and evaluation took (`Reporter.timed`); the rest, before the
first epoch, is the trial's setup (data, models, reference features).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from trainables.definitions import TrainableDef
from trainables.reporter import CheckpointState, Reporter, StepFiles

PROBE_IMAGES = 512  # training images of the timed epoch: a few batches, seconds on one core


@dataclass(frozen=True)
class EpochTiming:
    """Seconds of one trial: `setup_s` once (measured at the probe's size), then per epoch `train_s`
    (scaled to `images` training images) and `evaluate_s` (evaluation and the epoch's files)."""

    setup_s: float
    train_s: float
    evaluate_s: float
    images: int
    probe_images: int

    @property
    def epoch_s(self) -> float:
        return self.train_s + self.evaluate_s


class _ProbeDone(Exception):
    """Raised from the first report: one epoch is all the probe needs."""


class ProbeReporter(Reporter):
    """Keeps the first epoch's phase times and checkpoint, then stops the trainable."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.phases: dict[str, float] = {}
        self.evaluated_at = 0.0
        self.reported_at = 0.0
        self.checkpoint: CheckpointState | None = None

    def timed(self, phase: str, seconds: float) -> None:
        self.phases[phase] = seconds
        self.evaluated_at = time.perf_counter()

    def report(self, metrics: Mapping[str, float], checkpoint: CheckpointState | None = None,
               files: StepFiles | None = None) -> None:
        self.reported_at = time.perf_counter()
        self.checkpoint = checkpoint
        raise _ProbeDone

    def restore(self) -> CheckpointState | None:
        return None


def probe_epoch(definition: TrainableDef, config: Any, threads: int) -> tuple[EpochTiming, CheckpointState | None]:
    """One epoch of `definition` at `config` with its training images capped, on `threads` CPU threads (as a
    trial with that many CPUs gets); the timing scaled to the configured epoch, and the epoch's checkpoint
    (what later stages' probes read as this stage's result)."""
    cost = definition.epoch_cost
    if cost is None:
        raise ValueError(f"trainable {definition.name!r} declares no epoch_cost")
    images = cost.images(config)
    probe_images = min(images, PROBE_IMAGES)
    share = probe_images / max(images, 1)
    shrunk = {name: max(1, round(getattr(config, name) * share)) for name in cost.also_scaled}
    probe_config = dataclasses.replace(config, **{cost.size_setting: probe_images, **shrunk})
    reporter = ProbeReporter()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        definition.run(probe_config, reporter)
    except _ProbeDone:
        pass
    finally:
        torch.set_num_threads(before)
    if "train" not in reporter.phases:
        raise RuntimeError(f"trainable {definition.name!r} reported no timed epoch (does it train through fit?)")
    train_s, evaluate_s = reporter.phases["train"], reporter.phases["evaluate"]
    setup_s = reporter.evaluated_at - reporter.started - train_s - evaluate_s
    files_s = reporter.reported_at - reporter.evaluated_at
    timing = EpochTiming(setup_s=setup_s, train_s=train_s / share,
                         evaluate_s=evaluate_s + files_s, images=images, probe_images=probe_images)
    return timing, reporter.checkpoint
