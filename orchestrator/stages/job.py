"""`kind: job`: one function of the catalog run once in the launcher process (an evaluation, the prototypes
of a clustering), with its config and the folders of earlier stages as inputs. How a job is called
(its inputs, seed and MLflow run) is orchestrator/job_stage.py; this module is what the rest of the
orchestrator asks about such a stage, and what the study keeps of its run.
"""

from __future__ import annotations

from typing import Any

from orchestrator.spec.job_section import _parse_job_stage
from orchestrator.spec.schema import JobStage
from orchestrator.stages.base import Runner, StageKind


class JobKind(StageKind):
    name = "job"
    parse = staticmethod(_parse_job_stage)

    def plan_lines(self, stage: JobStage, number: int) -> list[str]:
        return [f"  {number}. {stage.name}  job   job={stage.job}"]

    def parent_params(self, stage: JobStage) -> dict[str, Any]:
        return {"job": stage.job, **super().parent_params(stage)}

    def run(self, stage: JobStage, runner: Runner, inputs: dict[str, str], parent: str, retrying: bool) -> None:
        """A job starts afresh on a resume: it is one call, its outputs are rewritten whole."""
        from orchestrator.job_stage import run_job_stage

        workdir = runner.output / "jobs" / stage.name
        outcome = run_job_stage(stage=stage, inputs=inputs, workdir=workdir, tracker=runner.tracker, run_id=parent,
                                study_seed=runner.spec.seed, data_root=runner.data_root)
        metrics = outcome.metrics
        stage_state = runner.state.stage(stage.name)
        stage_state.metrics, stage_state.output = {k: float(v) for k, v in metrics.items()}, str(workdir)
        stage_state.outputs = outcome.outputs
        print(f"[{stage.name}] " + ", ".join(f"{k}={v:.4g}" for k, v in list(metrics.items())[:4]), flush=True)

    def definition(self, stage: JobStage) -> Any:
        from trainables import catalog

        return catalog.job(stage.job)
