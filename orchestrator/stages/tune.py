"""`kind: tune`: a search whose trials run on Ray Tune (Optuna sampling, ASHA or PBT), each trial a
trainable of the catalog; its best trial's model may be registered. The search itself is
orchestrator/tune_stage.py; this module is what the rest of the orchestrator asks about such a stage,
what each trial may reserve on this machine, and what the study keeps of its run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from orchestrator.pbt import describe as describe_pbt
from orchestrator.pbt import is_pbt
from orchestrator.pbt import run_params as pbt_params
from orchestrator.spec.gpu_packing import trials_per_gpu
from orchestrator.spec.gpu_packing import packing_problem
from orchestrator.spec.schema import ResourcesSpec, TuneStage, describe_entry
from orchestrator.spec.tune_section import _parse_tune_stage
from orchestrator.stage_outputs import IMPORTANCE_OUTPUTS, TUNE_STAGE_OUTPUTS, produced_outputs
from orchestrator.stages.base import Runner, StageError, StageKind
from orchestrator.study_state import BestTrial, StageState


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
        """On a resume (or `retrying` a failed stage) Tune restores the experiment from its folder and runs
        what had not finished; a retry also runs the failed trials again."""
        from orchestrator.registry import register_best
        from orchestrator.tune_stage import run_tune_stage
        from trainables import catalog

        runner.start_ray()
        tracker = runner.tracker
        resources = trial_resources_here(stage, runner.address)
        if resources != stage.resources:  # the CPU fallback: the spec stays as written, the trials ask for no GPU
            tracker.set_tags(parent, {"gensearch.fallback": "cpu: no GPU on this machine, trials ran with gpu 0"})
            stage = dataclasses.replace(stage, resources=resources)
        stage_state = runner.state.stage(stage.name)
        stage_state.trial_cpu, stage_state.trial_gpu = float(stage.resources.cpu), float(stage.resources.gpu)
        # PBT decides on complete generations, in Tune's own asynchronous way (orchestrator/pbt_tune.py).
        window = reproducible_window(stage) if runner.spec.reproducible and not is_pbt(stage) else None
        outcome = run_tune_stage(stage=stage, inputs=inputs, storage=runner.output / "tune", tracker=tracker,
                                 parent_run_id=parent, resume=runner.resume, retry_failed=retrying,
                                 study_seed=runner.spec.seed, window=window)
        best = outcome.best
        stage_state.best, stage_state.output = best, str(outcome.experiment_dir)
        stage_state.trials, stage_state.failed_trials = outcome.trials, outcome.failed_trials
        stage_state.outputs = produced_outputs(TUNE_STAGE_OUTPUTS, outcome.experiment_dir)
        runner.save()
        # A stage with several metrics: every metric of the chosen epoch, not only the champion's objective.
        chosen = {f"best_{k}": v for k, v in best.metrics.items()} if stage.multi_objective else {}
        tracker.log_metrics(parent, {**chosen, f"best_{best.metric}": best.value, "trials": outcome.trials,
                                     "failed_trials": outcome.failed_trials})
        tracker.set_tags(parent, {"gensearch.best_trial_id": best.trial_id,
                                  "gensearch.best_child_run_id": best.child_run_id,
                                  **(champion_tags(best) if stage.multi_objective else {})})
        for name, output in stage_state.outputs.items():
            if name not in IMPORTANCE_OUTPUTS:
                tracker.log_file(parent, Path(output.path))
        if stage.register is not None:
            print(f"[{stage.name}] registering the best model as {stage.register.name} @{stage.register.alias}",
                  flush=True)
            registered = register_best(tracker, catalog.trainable(stage.trainable), best, stage.register,
                                       stage.name, report=runner.output / "report.md")
            stage_state.registered = registered
            tracker.set_tags(parent, {"gensearch.registered": f"{registered.name} v{registered.version}"})
        if stage.multi_objective:
            from orchestrator.champion import searched_values

            print(f"[{stage.name}] champion: trial {best.trial_id}, epoch {best.epoch}: "
                  f"{searched_values(stage, best.metrics)}"
                  + ("" if best.rule_met else " (no epoch met the champion rule: the closest one)"), flush=True)
        else:
            print(f"[{stage.name}] best trial {best.trial_id}: {best.metric}={best.value:.4g}", flush=True)

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


def champion_tags(best: BestTrial) -> dict[str, str]:
    """The parent run's tags naming a two-objective stage's champion: trial, epoch, and whether it met the rule."""
    return {"gensearch.champion_trial_id": best.trial_id, "gensearch.champion_epoch": str(best.epoch),
            "gensearch.champion_rule_met": str(bool(best.rule_met)).lower()}


def reproducible_window(stage: TuneStage) -> int:
    """How many trials run at once in reproducible mode: `max_concurrent_trials`, else as many as this
    machine's Ray fits (said once, since the study then depends on the machine's size)."""
    import math

    import ray

    if stage.max_concurrent_trials:
        return stage.max_concurrent_trials
    available = ray.cluster_resources()
    fits = [math.floor(available.get(kind, 0.0) / need + 1e-9)
            for kind, need in (("CPU", stage.resources.cpu), ("GPU", stage.resources.gpu)) if need > 0]
    window = max(1, min([*fits, stage.total_trials]))
    print(f"[{stage.name}] {window} trial(s) at a time: what this machine fits; set max_concurrent_trials for a "
          f"study that is the same on any machine", flush=True)
    return window


def trial_resources_here(stage: TuneStage, address: str | None) -> ResourcesSpec:
    """On a fixed local Ray, a trial asking for more than exists would wait forever: say so now,
    and refuse a GPU packing whose trials' declared memory cannot fit this machine's smallest GPU.
    Returns the resources the trials will get: the stage's own, or with `gpu: 0` when the stage
    allows `fallback: cpu` and this machine has no GPU. A cluster (--address) may autoscale, so
    its resources are not judged here."""
    import ray

    resources = stage.resources
    if address:
        return resources
    available = ray.cluster_resources()
    if resources.gpu > 0 and available.get("GPU", 0.0) == 0:
        if resources.fallback != "cpu":
            raise StageError(stage.name, f"resources.gpu: each trial asks for {resources.gpu:g} GPU but this "
                                         f"machine's Ray has no GPU; add `fallback: cpu` to the stage's resources "
                                         f"to run its trials on CPU here, set gpu: 0, or join a cluster with "
                                         f"--address")
        print(f"[{stage.name}] no GPU on this machine: running its trials on CPU (resources.fallback: cpu)",
              flush=True)
        resources = dataclasses.replace(resources, gpu=0.0)
    for kind, need in (("CPU", resources.cpu), ("GPU", resources.gpu)):
        have = available.get(kind, 0.0)
        if need > have:
            raise StageError(stage.name, f"resources.{kind.lower()}: each trial asks for {need:g} {kind} but "
                                         f"this machine's Ray has {have:g}; lower it or join a cluster with "
                                         f"--address")
    if resources.gpu > 0 and resources.gpu_memory_gb is not None:
        smallest = smallest_gpu()
        if smallest is not None:
            memory_gb, name = smallest
            problem = packing_problem(resources.gpu, resources.gpu_memory_gb, memory_gb,
                                      device=f"the smallest GPU here: {name}")
            if problem:
                raise StageError(stage.name, f"resources: {problem}")
    return resources


def smallest_gpu() -> tuple[float, str] | None:
    """(memory in GB, `cuda:I NAME`) of the CUDA device with the least memory that torch sees here, or None.

    GB as torch counts them (2**30 bytes), rounded down to 0.1: a card sold as "40GB" shows a little under 40."""
    import math

    import torch

    if not torch.cuda.is_available():
        return None
    devices = [(torch.cuda.get_device_properties(i), i) for i in range(torch.cuda.device_count())]
    if not devices:
        return None
    properties, index = min(devices, key=lambda pair: pair[0].total_memory)
    return math.floor(properties.total_memory / 2**30 * 10) / 10, f"cuda:{index} {properties.name}"
