"""`--dry-run --estimate`: what each tune stage will cost, from one timed epoch of its trainable here.

Per tune stage: the expected trial-epochs (ASHA's rungs, trial_epochs.py), one epoch timed through the
trainable's own code (epoch_probe.py) at the first value of each searched setting, and a worker's start (a
fresh Python importing torch and the trainables and building its first optimizer: once per slot, since
trials reuse warm Ray workers). From those: the wall time with as many trials at once as the stage allows
and this machine holds, and the CPU-/GPU-hours its trials reserve. `--estimate` on a launch keeps the result
for the report (estimate_record.py). Ray's own start-up, tracking and the stages' jobs are not counted. Later stages' probes read the checkpoints of
earlier probes (untrained but of the configured shapes) where the real stages read `STAGE.best`.
"""

from __future__ import annotations

import heapq
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.epoch_probe import PROBE_IMAGES, EpochTiming, probe_side_by_side
from orchestrator.spec import StudySpec, TuneStage, representative_values, trials_per_gpu
from orchestrator.stages import kind_of
from orchestrator.trial_epochs import TrialEpochs, expected_trial_epochs


@dataclass(frozen=True)
class StageEstimate:
    """One tune stage's expected cost; `problem` says why it was not estimated."""

    name: str
    trial_epochs: TrialEpochs | None = None
    timing: EpochTiming | None = None
    start_s: float = 0.0
    parallel: int = 1
    cpu: float = 0.0
    gpu: float = 0.0
    problem: str = ""

    def trial_s(self, epochs: int) -> float:
        return self.timing.setup_s + epochs * self.timing.epoch_s

    @property
    def work_s(self) -> float:
        """Seconds of all slots together (what the reserved CPUs and GPUs are held for): each slot's worker
        start, then its trials."""
        trials = sum(count * self.trial_s(epochs) for count, epochs in self.trial_epochs.trial_lengths())
        return self.parallel * self.start_s + trials

    @property
    def wall_s(self) -> float:
        """The trials, longest first, each started on the first free slot of `parallel` (each slot's worker
        started first)."""
        slots = [self.start_s] * self.parallel
        for count, epochs in sorted(self.trial_epochs.trial_lengths(), key=lambda entry: -entry[1]):
            for _ in range(math.ceil(count - 1e-9)):
                heapq.heappush(slots, heapq.heappop(slots) + self.trial_s(epochs))
        return max(slots)

    @property
    def cpu_hours(self) -> float:
        return self.work_s * self.cpu / 3600

    @property
    def gpu_hours(self) -> float:
        return self.work_s * self.gpu / 3600


# What a Ray worker does once, before or in its first trial: import torch and the trainables, and build its
# first optimizer (torch's first one imports torch._dynamo, seconds).
WORKER_START = ("import torch\nfrom trainables import catalog\ncatalog.trainable_names()\n"
                "torch.optim.Adam([torch.zeros(1, requires_grad=True)])\n")


def worker_start_seconds() -> float:
    """Time WORKER_START in a fresh interpreter, and run it here so no probe's setup counts it again."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", WORKER_START], check=True, capture_output=True)
    seconds = time.perf_counter() - started
    exec(WORKER_START, {})  # noqa: S102 - the fixed text above
    return seconds


def parallel_trials(stage: TuneStage, cpus: int, gpus: int) -> int:
    """Trials at once: the stage's cap, and what this machine's CPUs (and GPUs, where it has any) hold."""
    limits = [stage.total_trials, stage.max_concurrent_trials or stage.total_trials]
    if stage.resources.cpu > 0:
        limits.append(math.floor(cpus / stage.resources.cpu + 1e-9))
    if stage.resources.gpu > 0 and gpus > 0:
        limits.append(gpus * trials_per_gpu(stage.resources.gpu) if stage.resources.gpu < 1
                      else math.floor(gpus / stage.resources.gpu + 1e-9))
    return max(1, min(limits))


def probe_config(stage: TuneStage, definition: Any, checkpoints: dict[str, Path]) -> Any:
    """The stage's config at the first value of each searched setting, its inputs read from earlier probes."""
    from trainables.config import build_config

    missing = [f"{name} <- {ref}" for name, ref in stage.inputs.items() if ref.stage not in checkpoints]
    if missing:
        raise LookupError(f"input {', '.join(missing)} comes from a stage that is not timed")
    space = {name: representative_values(entry)[0] for name, entry in stage.space.items()}
    inputs = {name: str(checkpoints[ref.stage]) for name, ref in stage.inputs.items()}
    return build_config(definition.config_cls, {**stage.config, **space, **inputs})


def estimate_stage(stage: TuneStage, checkpoints: dict[str, Path], folder: Path, start_s: float,
                   cpus: int, gpus: int, data_root: Path | None = None) -> StageEstimate:
    """Time one epoch of the stage's trainable (keeping its checkpoint for later stages) and cost its trials;
    `data_root`: the launcher's --data-root."""
    from trainables import catalog
    from trainables.checkpoint import save_checkpoint

    definition = catalog.trainable(stage.trainable)
    if definition.epoch_cost is None:
        return StageEstimate(stage.name, problem=f"trainable {stage.trainable} declares no epoch_cost")
    try:
        config = probe_config(stage, definition, checkpoints)
        epochs = getattr(config, "epochs")
        parallel = parallel_trials(stage, cpus, gpus)
        timing, checkpoint = probe_side_by_side(definition, config, max(1, int(stage.resources.cpu)), parallel,
                                                data_root)
    except Exception as error:  # noqa: BLE001 - a probe may fail in any way; the estimate says so and goes on
        return StageEstimate(stage.name, problem=f"{type(error).__name__}: {error}")
    if checkpoint is not None:
        checkpoints[stage.name] = save_checkpoint(checkpoint, folder / stage.name)
    asha = stage.scheduler
    trial_epochs = expected_trial_epochs(stage.total_trials, epochs, (asha.grace_period, asha.reduction_factor,
                                                                      asha.max_t) if asha else None)
    return StageEstimate(stage.name, trial_epochs, timing, start_s, parallel, stage.resources.cpu, stage.resources.gpu)


def estimate_study(spec: StudySpec, data_root: Path | None = None) -> list[StageEstimate | str]:
    """An estimate per stage whose kind the estimate times (tune); for any other stage its name (not estimated).
    `data_root`: the launcher's --data-root, searched first by the probed trainables."""
    import torch

    cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
    results: list[StageEstimate | str] = []
    start_s = None
    checkpoints: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="gensearch-estimate-") as folder:
        for stage in spec.stages:
            if not kind_of(stage).estimated:
                results.append(stage.name)
                continue
            start_s = worker_start_seconds() if start_s is None else start_s
            results.append(estimate_stage(stage, checkpoints, Path(folder), start_s, cpus, gpus, data_root))
    return results


def clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def count(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def describe_trial_epochs(trial_epochs: TrialEpochs) -> str:
    """`8 trials x 4 epochs = 32 trial-epochs` or, with ASHA, who reaches which rung and the expected total."""
    full = trial_epochs.trials * trial_epochs.epochs
    if not trial_epochs.milestones:
        epochs = f"{trial_epochs.epochs} epoch{'s' if trial_epochs.epochs != 1 else ''}"
        return f"{trial_epochs.trials} trials x {epochs} = {full} trial-epochs"
    rungs = ", ".join(f"{count(reach)} reach epoch {milestone}"
                      for milestone, reach in zip(trial_epochs.milestones, trial_epochs.reaching))
    go_on = "goes on" if trial_epochs.finishing == 1 else "go on"
    return (f"ASHA: {rungs}, {count(trial_epochs.finishing)} {go_on} to {trial_epochs.epochs} -> "
            f"{count(trial_epochs.total)} trial-epochs expected (without early stopping {full})")


def estimate_lines(spec: StudySpec, estimates: list[StageEstimate | str]) -> list[str]:
    import torch

    gpus = torch.cuda.device_count()
    lines = [f"Estimate (one epoch of each tune stage timed here on {PROBE_IMAGES} training images, scaled; "
             f"{os.cpu_count()} CPUs, {gpus or 'no'} GPU{'s' if gpus != 1 else ''}; Ray's start-up, tracking "
             f"and jobs not counted):"]
    kinds = {stage.name: stage.kind for stage in spec.stages}
    timed = [e for e in estimates if isinstance(e, StageEstimate) and not e.problem]
    for estimate in estimates:
        if isinstance(estimate, str):
            lines.append(f"  {estimate}: {kinds[estimate]} stage, not estimated")
        elif estimate.problem:
            lines.append(f"  {estimate.name}: not estimated ({estimate.problem})")
        else:
            t = estimate.timing
            lines += [
                f"  {estimate.name}: {describe_trial_epochs(estimate.trial_epochs)}",
                f"       worker start {estimate.start_s:.1f} s; per trial: setup {t.setup_s:.1f} s; "
                f"per epoch: train {t.train_s:.1f} s ({t.images} images) + evaluate {t.evaluate_s:.1f} s",
                f"       {estimate.parallel} trial{'s' if estimate.parallel != 1 else ''} at a time -> wall "
                f"{clock(estimate.wall_s)}; reserves {estimate.cpu_hours:.2f} CPU-hours, "
                f"{estimate.gpu_hours:.2f} GPU-hours" + (" (timed on CPU: no GPU here)" if estimate.gpu and not gpus
                                                         else ""),
            ]
    if timed:
        lines.append(f"  total of the {len(timed)} stage(s) estimated: "
                     f"{count(sum(e.trial_epochs.total for e in timed))} trial-epochs, wall "
                     f"{clock(sum(e.wall_s for e in timed))}, {sum(e.cpu_hours for e in timed):.2f} CPU-hours, "
                     f"{sum(e.gpu_hours for e in timed):.2f} GPU-hours")
    return lines
