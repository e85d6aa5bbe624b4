"""`kind: optuna`: a search run by a persistent Optuna study in the launcher process, over an objective's
conditional space (branches and their options), under constraints. The search itself is
orchestrator/optuna_stage.py; this module is what the rest of the orchestrator asks about such a stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.spec.optuna_section import _parse_optuna_stage
from orchestrator.spec.schema import BranchOption, OptunaStage, describe_entry
from orchestrator.stages.base import Runner, StageKind
from orchestrator.study_state import StageState


def describe_branches(branches: Mapping[str, Mapping[str, BranchOption]]) -> str:
    """`reducer: umap(n_neighbors int[5, 50], metric=cosine) | pca(...) | none`, one branch after another."""
    parts = []
    for branch, options in branches.items():
        described = []
        for option, settings in options.items():
            inner = [f"{k} {describe_entry(v)}" for k, v in settings.space.items()]
            inner += [f"{k}={v}" for k, v in settings.fixed.items()]
            described.append(f"{option}({', '.join(inner)})" if inner else option)
        parts.append(f"{branch}: {' | '.join(described)}")
    return "; ".join(parts)


class OptunaKind(StageKind):
    name = "optuna"
    parse = staticmethod(_parse_optuna_stage)
    retry_note = "retrying it: its failed trials run again, finished ones are kept"
    trial_verdict = "feasible"

    def plan_lines(self, stage: OptunaStage, number: int) -> list[str]:
        seed = f", seed {stage.searcher.seed}" if stage.searcher.seed is not None else ""
        return [
            f"  {number}. {stage.name}  optuna  objective={stage.objective}  metric={stage.metric} ({stage.mode})",
            f"       trials: {stage.n_trials} (Optuna {stage.searcher.sampler}{seed}), {stage.n_jobs} at a time in "
            f"this process; constraints: {'; '.join(map(str, stage.constraints)) or 'none'}",
            f"       space: {describe_branches(stage.branches)}",
        ]

    def pinned_seed(self, stage: OptunaStage) -> int | None:
        return stage.searcher.seed

    def parent_params(self, stage: OptunaStage) -> dict[str, Any]:
        return {"objective": stage.objective, "metric": stage.metric, "mode": stage.mode, "n_trials": stage.n_trials,
                "n_jobs": stage.n_jobs, "sampler": stage.searcher.sampler, "seed": stage.searcher.seed,
                "constraints": "; ".join(map(str, stage.constraints)) or "none", "config": dict(stage.config),
                "space": {branch: describe_branches({branch: options}) for branch, options in stage.branches.items()},
                "inputs": {k: str(v) for k, v in stage.inputs.items()}}

    def run(self, stage: OptunaStage, runner: Runner, inputs: dict[str, str], parent: str, retrying: bool) -> None:
        # The study resumes from its own database (optuna.db), retried or not.
        runner.run_optuna(stage, inputs, parent)  # type: ignore[attr-defined]

    def detail_lines(self, stage: OptunaStage, state: StageState) -> list[str]:
        if state.best is None:
            return []
        shown = ", ".join(f"{k}={v:.4g}" for k, v in state.best.metrics.items() if not k.endswith("_s"))
        return [f"  {stage.name} best (trial {state.best.trial_id}): {shown}",
                f"  {stage.name} best settings: " + ", ".join(f"{k}={v}" for k, v in state.best.config.items())]

    def definition(self, stage: OptunaStage) -> Any:
        from trainables import catalog

        return catalog.objective(stage.objective)
