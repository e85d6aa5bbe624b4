"""The human-readable plan `--dry-run` prints: what would run, how many trials, on what."""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.pbt import describe as describe_pbt
from orchestrator.pbt import is_pbt
from orchestrator.spec import (BranchOption, JobStage, OptunaStage, ResourcesSpec, StudySpec, TuneStage,
                               describe_entry, trials_per_gpu)
from orchestrator.tracking import TrackingTarget


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


def describe_metrics(stage: TuneStage) -> str:
    """`val_accuracy (max)`; for several metrics `[acd (min), fid_mnist (min)], champion: minimize acd where ...`."""
    if not stage.multi_objective:
        return f"{stage.metric} ({stage.mode})"
    return "[" + ", ".join(f"{m} ({mode})" for m, mode in stage.objectives) + f"], champion: {stage.champion}"


def pinned_seed_notes(spec: StudySpec) -> list[str]:
    """A stage whose YAML pins its sampler's seed keeps it whatever the study seed: say so, since `--seed` is
    then not a seed of everything."""
    pinned = [stage.name for stage in spec.stages
              if isinstance(stage, (TuneStage, OptunaStage)) and stage.searcher.seed is not None]
    if not pinned:
        return []
    return [f"  note: {', '.join(pinned)} pin their sampler's seed in the file; --seed changes their trials' seeds "
            f"but not their samplers (drop `searcher.seed` to derive it from the study seed)"]


def plan_lines(spec: StudySpec, output: str, target: TrackingTarget) -> list[str]:
    lines = [f"Study {spec.name!r} from {spec.source}: {len(spec.stages)} stage(s), output {output}"]
    if spec.description:
        lines.append(f"  {spec.description}")
    if spec.profiles:
        others = [name for name in spec.profiles if name != spec.profile]
        lines.append(f"  profile: {spec.profile}" + (f" (also offered: {', '.join(others)}; pick with --profile)"
                                                      if others else ""))
    lines.append(f"  seed {spec.seed}; " + ("reproducible: the same seed, machine and thread count give the same study"
                                            if spec.reproducible else
                                            "reproducible: false (asynchronous: slots never wait, results depend on "
                                            "timing)"))
    lines += pinned_seed_notes(spec)
    for number, stage in enumerate(spec.stages, 1):
        if isinstance(stage, TuneStage):
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
            lines += [
                f"  {number}. {stage.name}  tune  trainable={stage.trainable}  metric={describe_metrics(stage)}",
                f"       trials: {stage.total_trials} ({searcher}{seed}){at_once}; {asha}",
                f"       resources per trial: {describe_resources(stage.resources)}; max_failures={stage.max_failures}",
            ]
            if stage.space:
                lines.append("       space: " + "; ".join(f"{k} {describe_entry(v)}" for k, v in stage.space.items()))
            if stage.register:
                lines.append(f"       registers the best model as {stage.register.name} @{stage.register.alias}")
        elif isinstance(stage, OptunaStage):
            seed = f", seed {stage.searcher.seed}" if stage.searcher.seed is not None else ""
            lines += [
                f"  {number}. {stage.name}  optuna  objective={stage.objective}  metric={stage.metric} ({stage.mode})",
                f"       trials: {stage.n_trials} (Optuna {stage.searcher.sampler}{seed}), {stage.n_jobs} at a time in "
                f"this process; constraints: {'; '.join(map(str, stage.constraints)) or 'none'}",
                f"       space: {describe_branches(stage.branches)}",
            ]
        elif isinstance(stage, JobStage):
            lines.append(f"  {number}. {stage.name}  job   job={stage.job}")
        if stage.inputs:
            lines.append("       inputs: " + ", ".join(f"{k} <- {v}" for k, v in stage.inputs.items()))
    lines.append(f"Tracking: {target.uri}{' (embedded)' if target.embedded else ''}")
    return lines
