"""Run one `job` stage: a single plain function in the driver, logged to the stage's run.

Jobs (evaluation, prototype selection) are one-shot, so they need no Ray scheduling; their files
are written to `<output>/jobs/<stage>/` and logged as the parent run's artifacts, and the outputs their
definition declares are recorded in the study state (stage_outputs.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.seeds import with_stage_seed
from orchestrator.spec import JobStage
from orchestrator.stage_outputs import produced_outputs
from orchestrator.study_state import RecordedOutput
from orchestrator.tracking import Tracker
from trainables import catalog
from trainables.checkpoint import Checkpoint, StepFiles
from trainables.config import build_config
from trainables.data import first_data_root
from trainables.reporter import Reporter


class MlflowRunReporter(Reporter):
    """Reports straight into one MLflow run, one step per call."""

    def __init__(self, tracker: Tracker, run_id: str) -> None:
        self.tracker, self.run_id, self.step = tracker, run_id, 0
        self.last: dict[str, float] = {}

    def report(self, metrics: Mapping[str, float], checkpoint: Checkpoint | None = None,
               files: StepFiles | None = None) -> None:
        self.step += 1
        self.last.update(metrics)
        self.tracker.log_metrics(self.run_id, metrics, step=self.step)
        if files:
            self.tracker.log_files(self.run_id, files)

    def restore(self) -> Checkpoint | None:
        return None  # a job restarts from scratch on resume


@dataclass(frozen=True)
class JobOutcome:
    metrics: dict[str, float]
    outputs: dict[str, RecordedOutput]  # the declared outputs the job produced


def run_job_stage(*, stage: JobStage, inputs: Mapping[str, str], workdir: Path, tracker: Tracker,
                  run_id: str, study_seed: int = 0, data_root: Path | None = None) -> JobOutcome:
    """`study_seed`: the job's `seed` (if it has one the YAML does not fix) derives from it (seeds.py);
    `data_root`: the launcher's --data-root, searched first by the job's data code (it runs here)."""
    definition = catalog.job(stage.job)
    config = build_config(definition.config_cls,
                          with_stage_seed(definition.config_cls, {**stage.config, **inputs}, study_seed, stage.name))
    workdir.mkdir(parents=True, exist_ok=True)
    reporter = MlflowRunReporter(tracker, run_id)
    print(f"[{stage.name}] running job {stage.job} -> {workdir}", flush=True)
    with first_data_root(data_root):
        metrics = dict(definition.run(config, reporter, workdir) or reporter.last)
    tracker.log_artifacts(run_id, workdir)
    return JobOutcome(metrics, produced_outputs(definition.outputs, workdir, config))
