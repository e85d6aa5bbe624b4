"""`kind: tune`: a search whose trials run on Ray Tune (Optuna sampling, ASHA or PBT), each trial a
trainable of the catalog; its best trial's model may be registered. The search itself is
orchestrator/tune_stage.py; this module is what the rest of the orchestrator asks about such a stage.
"""

from __future__ import annotations

from typing import Any

from orchestrator.pbt import describe as describe_pbt
from orchestrator.pbt import is_pbt
from orchestrator.pbt import run_params as pbt_params
from orchestrator.spec.gpu_packing import trials_per_gpu
from orchestrator.spec.schema import ResourcesSpec, TuneStage, describe_entry
from orchestrator.spec.tune_section import _parse_tune_stage
from orchestrator.stages.base import Runner, StageKind
from orchestrator.study_state import StageState


def describe_resources(resources: ResourcesSpec) -> str:
    """`1 CPU, 0.25 GPU (4 trials per GPU), 8 GB GPU memory each, 40 GB GPUs; fallback: cpu`."""
    text = f"{resources.cpu:g} CPU, {resources.gpu:g} GPU"
    if 0 < resources.gpu < 1:
        text += f" ({trials_per_gpu(resources.gpu)} trials per GPU)"
    if resources.gpu_memory_gb is not None:
        text += f", {resources.gpu_memory_gb:g} GB GPU memory each"
    if resources.device_memory_gb is not None:
        text += f", {resources.device_memory_gb:g} GB GPUs"
    if resources.fallback:
        text += f"; fallback: {resources.fallback} (where there is no GPU)"
    return text


class TuneKind(StageKind):
    name = "tune"
    parse = staticmethod(_parse_tune_stage)
    uses_ray = True
    retry_note = "retrying it: its failed trials run again, finished ones are kept"
    estimated = True

    def plan_lines(self, stage: TuneStage, number: int) -> list[str]:
        from orchestrator.champion import describe_metrics

        searcher = ("Optuna " + stage.searcher.sampler) if stage.searcher.type == "optuna" else "basic (random/grid)"
        seed = f", seed {stage.searcher.seed}" if stage.searcher.seed is not None else ""
        at_once = f", at most {stage.max_concurrent_trials} at once" if stage.max_concurrent_trials else ""
        asha = (f"ASHA max_t={stage.scheduler.max_t} grace={stage.scheduler.grace_period} "
                f"reduction={stage.scheduler.reduction_factor:g}") if stage.scheduler and not is_pbt(stage) \
            else "no early stopping"
        if is_pbt(stage):
            asha = describe_pbt(stage.scheduler)
        if stage.scheduler and (stage.multi_objective or stage.scheduler.metric):
            asha += " on {} ({})".format(*stage.scheduler_metric)
        lines = [
            f"  {number}. {stage.name}  tune  trainable={stage.trainable}  metric={describe_metrics(stage)}",
            f"       trials: {stage.total_trials} ({searcher}{seed}){at_once}; {asha}",
            f"       resources per trial: {describe_resources(stage.resources)}; max_failures={stage.max_failures}",
        ]
        if stage.space:
            lines.append("       space: " + "; ".join(f"{k} {describe_entry(v)}" for k, v in stage.space.items()))
        if stage.register:
            lines.append(f"       registers the best model as {stage.register.name} @{stage.register.alias}")
        return lines

    def pinned_seed(self, stage: TuneStage) -> int | None:
        return stage.searcher.seed

    def parent_params(self, stage: TuneStage) -> dict[str, Any]:
        asha = {}
        if is_pbt(stage):
            asha = pbt_params(stage.scheduler)
        elif stage.scheduler is not None:
            asha = {f"asha.{k}": getattr(stage.scheduler, k) for k in ("max_t", "grace_period", "reduction_factor")}
            if stage.multi_objective or stage.scheduler.metric:  # else: the stage's metric, as the params say
                asha["asha.metric"] = "{} ({})".format(*stage.scheduler_metric)
        objectives = {"metric": ",".join(stage.metrics), "mode": ",".join(stage.modes),
                      "champion": str(stage.champion)} if stage.multi_objective else {"metric": stage.metric,
                                                                                      "mode": stage.mode}
        return {
            "trainable": stage.trainable, **objectives, "num_samples": stage.num_samples,
            "max_concurrent_trials": stage.max_concurrent_trials, "searcher": stage.searcher.type,
            "sampler": stage.searcher.sampler, "seed": stage.searcher.seed,
            "scheduler": "asha" if stage.scheduler else "none", **asha,
            "resources.cpu": stage.resources.cpu, "resources.gpu": stage.resources.gpu,
            **{f"resources.{k}": getattr(stage.resources, k) for k in ("gpu_memory_gb", "device_memory_gb", "fallback")
               if getattr(stage.resources, k) is not None},
            "max_failures": stage.max_failures, "config": dict(stage.config),
            "space": {name: describe_entry(entry) for name, entry in stage.space.items()},  # loguniform[0.0001, 0.03]
            "inputs": {k: str(v) for k, v in stage.inputs.items()},
        }

    def run(self, stage: TuneStage, runner: Runner, inputs: dict[str, str], parent: str, retrying: bool) -> None:
        # The body stays on StudyRunner for now: it shares Ray's start and the resource checks with it.
        runner.run_tune(stage, inputs, parent, retrying)  # type: ignore[attr-defined]

    def best_cell(self, stage: TuneStage, state: StageState) -> str:
        if state.best and stage.multi_objective:
            from orchestrator.champion import searched_values

            return searched_values(stage, state.best.metrics)
        return super().best_cell(stage, state)

    def detail_lines(self, stage: TuneStage, state: StageState) -> list[str]:
        """The champion of a stage with several metrics, and how the best trial compares with its
        baselines (GASTeN: fid_mnist and acd of the fine-tuned generator vs the step-1 generator)."""
        from orchestrator.champion import describe_champion
        from trainables import catalog

        if state.best is None or not state.best.metrics:
            return []
        lines = [f"  {stage.name} {describe_champion(stage, state.best)}"] if stage.multi_objective else []
        try:
            baselines = catalog.trainable(stage.trainable).baselines
        except catalog.UnknownEntryError:
            return lines
        pairs = []
        for metric, baseline in baselines.items():
            value, start = state.best.metrics.get(metric), state.best.metrics.get(baseline)
            if value is not None and start is not None:
                ratio = f" ({value / start:.2f}x)" if start else ""
                pairs.append(f"{metric} {value:.4g} vs {baseline} {start:.4g}{ratio}")
        if pairs:
            epoch = f", epoch {state.best.epoch}" if state.best.epoch else ""
            lines.append(f"  {stage.name} best (trial {state.best.trial_id}{epoch}): " + "; ".join(pairs))
        return lines

    def definition(self, stage: TuneStage) -> Any:
        from trainables import catalog

        return catalog.trainable(stage.trainable)

    def trial_resources(self, stage: TuneStage) -> ResourcesSpec:
        return stage.resources

    def searched(self, stage: TuneStage) -> tuple[str, ...]:
        return tuple(stage.space)
