"""`kind: optuna`: a search run by a persistent Optuna study in the launcher process, over an objective's
conditional space (branches and their options), under constraints. The search itself is
orchestrator/optuna_stage.py; this module is what the rest of the orchestrator asks about such a stage,
and what the study keeps of its run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.spec.optuna_section import _parse_optuna_stage
from orchestrator.stage_outputs import declared_outputs, produced_outputs
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
        """The study resumes from its own database (optuna.db), retried or not."""
        from orchestrator.optuna_stage import run_optuna_stage

        outcome = run_optuna_stage(stage=stage, inputs=inputs, workdir=runner.output / "optuna" / stage.name,
                                   tracker=runner.tracker, parent_run_id=parent,
                                   study_name=f"{runner.spec.name}.{stage.name}", study_seed=runner.spec.seed,
                                   reproducible=runner.spec.reproducible, data_root=runner.data_root)
        best, tracker = outcome.best, runner.tracker
        stage_state = runner.state.stage(stage.name)
        stage_state.best, stage_state.output = best, str(outcome.workdir)
        stage_state.outputs = produced_outputs(declared_outputs(stage), Path(best.checkpoint))
        stage_state.trials, stage_state.failed_trials = outcome.trials, outcome.infeasible
        runner.save()
        tracker.log_metrics(parent, {**{f"best_{k}": v for k, v in best.metrics.items()},
                                     "trials": outcome.trials, "infeasible_trials": outcome.infeasible})
        tracker.set_tags(parent, {"gensearch.best_trial_id": best.trial_id,
                                  "gensearch.best_child_run_id": best.child_run_id or ""})
        for name in ("trials.csv", "search_history.png"):
            path = outcome.workdir / name
            if path.is_file():
                tracker.log_file(parent, path)
        tracker.log_artifacts(parent, Path(best.checkpoint), "best")
        others = ", ".join(f"{k}={v:.3g}" for k, v in best.metrics.items() if k != best.metric and not k.endswith("_s"))
        print(f"[{stage.name}] best trial {best.trial_id}: {best.metric}={best.value:.4g} ({others})", flush=True)

    def detail_lines(self, stage: OptunaStage, state: StageState) -> list[str]:
        if state.best is None:
            return []
        shown = ", ".join(f"{k}={v:.4g}" for k, v in state.best.metrics.items() if not k.endswith("_s"))
        return [f"  {stage.name} best (trial {state.best.trial_id}): {shown}",
                f"  {stage.name} best settings: " + ", ".join(f"{k}={v}" for k, v in state.best.config.items())]

    def definition(self, stage: OptunaStage) -> Any:
        from trainables import catalog

        return catalog.objective(stage.objective)
