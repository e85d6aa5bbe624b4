"""A trainable that does (almost) nothing, named in a study YAML as `benchmarks.trivial:TRIVIAL`.

For measuring the orchestrator itself (driver memory, per-trial bookkeeping) without training in the way.
It lives in its own small module, not in a benchmark script, because every Ray worker imports it: the
launcher runs from the repository root, and Ray puts the driver's working directory on its workers' path.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path

from trainables.checkpoint import Checkpoint
from trainables.definitions import Metric, TrainableDef
from trainables.reporter import Reporter


@dataclasses.dataclass(frozen=True)
class TrivialConfig:
    x: float = 0.5
    steps: int = 1
    sleep_s: float = 0.0


def run(config: TrivialConfig, reporter: Reporter) -> Mapping[str, float]:
    """Reports `score` = -(x - 0.3)^2 at each step; a checkpoint (the stage's best result needs one) only at
    the last step, so the disk traffic stays what the orchestrator adds."""
    metrics = {"score": -(config.x - 0.3) ** 2}
    for step in range(1, config.steps + 1):
        time.sleep(config.sleep_s)
        metrics = {"score": -(config.x - 0.3) ** 2, "step": float(step)}
        last = step == config.steps
        checkpoint = Checkpoint(trainable="trivial", config=dataclasses.asdict(config), epoch=step,
                                metrics=metrics) if last else None
        reporter.report(metrics, checkpoint)
    return metrics


TRIVIAL = TrainableDef(
    name="trivial", config_cls=TrivialConfig, run=run,
    metrics=(Metric("score", higher_is_better=True, description="-(x - 0.3)^2"),
             Metric("step", higher_is_better=True, description="the step reached")),
    description="does nothing but report: for measuring the orchestrator", tiny_config={"steps": 1})


def trivial_study(path: Path, trials: int, name: str | None = None) -> Path:
    """A one-stage study of `trials` trivial trials, 2 at a time, 1 CPU each, TPE seeded: what the benchmarks
    that measure the orchestrator itself launch."""
    import yaml

    stage = {"name": "trivial", "kind": "tune", "trainable": "benchmarks.trivial:TRIVIAL", "config": {"steps": 1},
             "space": {"x": {"type": "uniform", "low": 0.0, "high": 1.0}}, "metric": "score",
             "num_samples": trials, "max_concurrent_trials": 2,
             "searcher": {"type": "optuna", "sampler": "tpe", "seed": 0}, "resources": {"cpu": 1}}
    path.write_text(yaml.safe_dump({"study": name or f"trivial{trials}", "stages": [stage]}, sort_keys=False))
    return path
