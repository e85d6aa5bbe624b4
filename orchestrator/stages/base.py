"""What every stage kind answers, so the runner, the plan, the summary, the report, the data checks and the
estimate ask a stage's kind instead of testing its class.

A kind is one object in `orchestrator.stages.KINDS`, found from a spec by its `kind` attribute. The defaults
here are what a kind gets without saying more: a stage with no trials of its own, no dataset, not estimated,
whose summary shows the metrics it recorded. A kind overrides what differs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

from orchestrator.spec.fields import SectionContext
from orchestrator.spec.problems import _Problems
from orchestrator.spec.schema import ResourcesSpec
from orchestrator.study_state import StageState, StudyState
from orchestrator.tracking import Tracker

JOB_METRICS_SHOWN = 8  # a job may report dozens (evaluate_ood: method x set x metric); the rest are in MLflow


class StageError(RuntimeError):
    """A stage failed for a reason the user can act on: the launcher prints `reason` as one line."""

    def __init__(self, stage: str, reason: str) -> None:
        self.stage, self.reason = stage, reason
        super().__init__(f"stage {stage!r} failed: {reason}")


class Runner(Protocol):
    """What a kind's `run` may use of the study runner: the study, its folder, MLflow, the state it
    keeps in step (`save()` after each change a resume must see), where the datasets are (`data_root`,
    the launcher's --data-root or None) and the Ray it runs trials on (`start_ray()`, `address`)."""

    spec: Any  # StudySpec
    output: Path
    tracker: Tracker
    state: StudyState
    resume: bool
    address: str | None
    data_root: Path | None

    def save(self) -> None: ...

    def start_ray(self) -> None: ...


class StageKind:
    """One kind of stage. `name` is the YAML's `kind:` and the spec dataclass's `kind` attribute."""

    name: ClassVar[str]
    # The YAML section -> the kind's spec; problems recorded, None when the section cannot be built.
    parse: Callable[[Mapping[str, Any], str, SectionContext, _Problems], Any]
    # Its trials run on Ray: the runner starts Ray before the study when a pending stage needs it.
    uses_ray: ClassVar[bool] = False
    # Said when a failed stage is run again.
    retry_note: ClassVar[str] = "running it again"
    # What a trial that counts is called in the summary's `(ok/trials ok)` (an Optuna stage counts
    # constraint breaks: `feasible`).
    trial_verdict: ClassVar[str] = "ok"
    # The estimate times one epoch of its trials (`--dry-run --estimate`); others are named, not estimated.
    estimated: ClassVar[bool] = False

    def plan_lines(self, stage: Any, number: int) -> list[str]:
        """The `--dry-run` lines of this stage (its inputs are added after them)."""
        return [f"  {number}. {stage.name}  {self.name}"]

    def pinned_seed(self, stage: Any) -> int | None:
        """The sampler seed the YAML pins for this stage (so `--seed` does not reach its sampler), if any."""
        return None

    def parent_params(self, stage: Any) -> dict[str, Any]:
        """What the stage's MLflow parent run records about how the stage was set up."""
        return {"config": dict(stage.config), "inputs": {k: str(v) for k, v in stage.inputs.items()}}

    def run(self, stage: Any, runner: Runner, inputs: dict[str, str], parent: str, retrying: bool) -> None:
        """Run the stage under its open parent run `parent`, recording its outputs in `runner.state`; on a
        resume (`runner.resume`, or `retrying` a failed stage) it picks up what an earlier attempt left."""
        raise NotImplementedError(f"stage kind {self.name!r} does not say how it runs")

    def best_cell(self, stage: Any, state: StageState) -> str:
        """The summary table's `best metric` cell."""
        if state.best:
            return f"{state.best.metric}={state.best.value:.4g}"
        return ", ".join(f"{k}={v:.4g}" for k, v in list(state.metrics.items())[:2]) or "-"

    def detail_lines(self, stage: Any, state: StageState) -> list[str]:
        """The summary's lines under the table: what the table has no room for."""
        if not state.metrics:
            return []
        shown = ", ".join(f"{k}={v:.4g}" for k, v in list(state.metrics.items())[:JOB_METRICS_SHOWN])
        more = len(state.metrics) - JOB_METRICS_SHOWN
        return [f"  {stage.name}: {shown}" + (f", ... ({more} more in its MLflow run)" if more > 0 else "")]

    def definition(self, stage: Any) -> Any:
        """The catalog entry the stage runs (its datasets and preflight), or None for a kind that has none."""
        return None

    def trial_resources(self, stage: Any) -> ResourcesSpec | None:
        """What each trial reserves (the report's cost table), or None: the stage runs in the launcher."""
        return None

    def searched(self, stage: Any) -> tuple[str, ...] | None:
        """The settings the report lists as searched, when the spec alone says which."""
        return None
