"""`kind: job`: one function of the catalog run once in the launcher process (an evaluation, the prototypes
of a clustering), with its config and the folders of earlier stages as inputs. The run itself is
orchestrator/job_stage.py; this module is what the rest of the orchestrator asks about such a stage.
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
        runner.run_job(stage, inputs, parent)  # type: ignore[attr-defined]

    def definition(self, stage: JobStage) -> Any:
        from trainables import catalog

        return catalog.job(stage.job)
