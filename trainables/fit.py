"""The project's one training loop: epochs, checkpoint/resume, divergence guard, reporting.

Every trainable hands `fit` its modules, optimizers and two callables (train one epoch, evaluate)
instead of writing its own loop, so resume-from-checkpoint and NaN handling behave the same in
every study.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping

import torch
from torch import nn

from trainables.checkpoint import Checkpoint, StepFiles
from trainables.reporter import Reporter

EpochFn = Callable[[int], Mapping[str, float]]
FilesFn = Callable[[int], StepFiles]


class TrainingDiverged(RuntimeError):
    """A metric became NaN or infinite: the trial is failed with this reason, not silently kept."""


def fit(
    *,
    trainable: str,
    config: object,
    epochs: int,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    train_epoch: EpochFn,
    evaluate: EpochFn,
    reporter: Reporter,
    files: FilesFn | None = None,
) -> dict[str, float]:
    """Run epochs `[start, epochs)` where `start` comes from the reporter's checkpoint.

    A checkpoint written under another config (population-based training hands a trial the checkpoint of a
    better one, with changed settings) gives its weights and optimizer moments only: the optimizers keep this
    config's settings (lr, betas, ...) and the random stream stays this trial's own, from its own seed.

    Each epoch reports `{"epoch": n, **train metrics, **eval metrics}` with a checkpoint that
    holds everything needed to continue (and to rebuild the model from the folder alone), and
    `files(epoch)` (sample grids and the like, made with the modules in eval mode) when given.
    """
    state = reporter.restore()
    start, metrics = 0, {}
    if state is not None:
        own = written_under(config, state.config)
        for name, module in modules.items():
            module.load_state_dict(state.modules[name])
        for name, optimizer in optimizers.items():
            load_optimizer_state(optimizer, state.optimizers[name], keep_settings=not own)
        if own and state.rng is not None:
            torch.set_rng_state(state.rng)
        start, metrics = state.epoch, dict(state.metrics)
        if start >= epochs:
            # Finished before the interruption: publish the final result once more so the
            # runner sees a result from this attempt too.
            reporter.report(metrics)
            return metrics

    for epoch in range(start, epochs):
        for module in modules.values():
            module.train()
        started = time.perf_counter()
        train_metrics = train_epoch(epoch)
        reporter.timed("train", time.perf_counter() - started)
        for module in modules.values():
            module.eval()
        started = time.perf_counter()
        eval_metrics = evaluate(epoch)
        reporter.timed("evaluate", time.perf_counter() - started)
        metrics = {"epoch": float(epoch + 1), **train_metrics, **eval_metrics}
        bad = sorted(key for key, value in metrics.items() if not math.isfinite(value))
        if bad:
            raise TrainingDiverged(f"{trainable}: epoch {epoch + 1}: non-finite {', '.join(bad)} "
                                   f"({', '.join(f'{k}={metrics[k]}' for k in bad)}); lower the learning rate")
        step_files = files(epoch) if files is not None else None
        reporter.report(metrics, checkpoint_state(trainable, config, epoch + 1, metrics, modules, optimizers),
                        step_files)
    return metrics


def written_under(config: object, saved: Mapping | None) -> bool:
    """Whether a checkpoint's stored config is `config` but for `epochs`: a trial resuming its own checkpoint
    (also one written by a shorter run of it) continues its own random stream; only another trial's
    (a PBT exploit, other settings) does not. Lists are stored where the dataclass has tuples."""
    from trainables.config import ConfigError, build_config

    if not saved:
        return False
    try:
        stored = build_config(type(config), saved)
    except (ConfigError, TypeError, ValueError):
        return False
    if hasattr(config, "epochs"):
        stored = dataclasses.replace(stored, epochs=config.epochs)
    return stored == config


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: Mapping, keep_settings: bool = False) -> None:
    """Load an optimizer's saved state; `keep_settings`: only its moments, keeping the settings of its param
    groups (lr, betas, ...) as this optimizer was built with."""
    settings = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    if keep_settings:
        for group, own in zip(optimizer.param_groups, settings):
            group.update(own)


def checkpoint_state(
    trainable: str,
    config: object,
    epoch: int,
    metrics: Mapping[str, float],
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
) -> Checkpoint:
    return Checkpoint(
        trainable=trainable,
        config=dataclasses.asdict(config),
        epoch=epoch,
        metrics=dict(metrics),
        modules={name: module.state_dict() for name, module in modules.items()},
        optimizers={name: optimizer.state_dict() for name, optimizer in optimizers.items()},
        rng=torch.get_rng_state(),
    )
