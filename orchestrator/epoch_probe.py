"""Time one epoch of a trainable in seconds, through its own `run(config, reporter)`.

The probe runs the trainable with its epoch's training images capped low (the setting its definition's
`EpochCost` names), stops it at the first report, and scales the training part by the images a real
epoch reads. Evaluation is timed at the configured sizes, so nothing is guessed about how it scales.
`fit` tells the reporter how long training and evaluation took (`Reporter.timed`); the rest, before the
first epoch, is the trial's setup (data, models, reference features).

Trials that run side by side slow each other down (memory bandwidth and caches are shared even when each
has its own core: about 1.3x for two DCGANs on two cores), so `probe_side_by_side` times as many probes at
once, in separate processes, as the stage will run trials at once.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainables.checkpoint import Checkpoint, StepFiles
from trainables.data import first_data_root
from trainables.definitions import TrainableDef
from trainables.reporter import Reporter

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
        self.checkpoint: Checkpoint | None = None

    def timed(self, phase: str, seconds: float) -> None:
        self.phases[phase] = seconds
        self.evaluated_at = time.perf_counter()

    def report(self, metrics: Mapping[str, float], checkpoint: Checkpoint | None = None,
               files: StepFiles | None = None) -> None:
        self.reported_at = time.perf_counter()
        self.checkpoint = checkpoint
        raise _ProbeDone

    def restore(self) -> Checkpoint | None:
        return None


def probe_epoch(definition: TrainableDef, config: Any, threads: int) -> tuple[EpochTiming, Checkpoint | None]:
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


_start_together: Any = None  # the barrier of the side-by-side probes, set in each probe process


def _join(barrier: Any) -> None:
    global _start_together
    _start_together = barrier


def _probe_in_a_process(trainable: str, config: Any, threads: int,
                        data_root: Path | None) -> tuple[EpochTiming, Checkpoint | None]:
    from trainables import catalog

    definition = catalog.trainable(trainable)
    _start_together.wait()  # every probe imported and ready: their epochs overlap as parallel trials' do
    with first_data_root(data_root):
        return probe_epoch(definition, config, threads)


def probe_side_by_side(definition: TrainableDef, config: Any, threads: int, parallel: int,
                       data_root: Path | None = None) -> tuple[EpochTiming, Checkpoint | None]:
    """`probe_epoch` run `parallel` times at once in fresh processes (one alone: here); the slowest probe's
    timing, since a stage's wall time waits for its slowest slot, and the first probe's checkpoint.
    `data_root`: the launcher's --data-root, searched first by the probes (here and in those processes)."""
    if parallel <= 1:
        with first_data_root(data_root):
            return probe_epoch(definition, config, threads)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(parallel)
    with ProcessPoolExecutor(parallel, mp_context=context, initializer=_join, initargs=(barrier,)) as pool:
        results = list(pool.map(_probe_in_a_process, [definition.name] * parallel, [config] * parallel,
                                [threads] * parallel, [data_root] * parallel))
    slowest = max((timing for timing, _ in results), key=lambda timing: timing.epoch_s)
    return slowest, results[0][1]
