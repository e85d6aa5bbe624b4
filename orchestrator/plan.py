"""The human-readable plan `--dry-run` prints: what would run, how many trials, on what."""

from __future__ import annotations

from orchestrator.spec import StudySpec
from orchestrator.stages import kind_of
from orchestrator.tracking import TrackingTarget


def pinned_seed_notes(spec: StudySpec) -> list[str]:
    """A stage whose YAML pins its sampler's seed keeps it whatever the study seed: say so, since `--seed` is
    then not a seed of everything."""
    pinned = [stage.name for stage in spec.stages if kind_of(stage).pinned_seed(stage) is not None]
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
        lines += kind_of(stage).plan_lines(stage, number)
        if stage.inputs:
            lines.append("       inputs: " + ", ".join(f"{k} <- {v}" for k, v in stage.inputs.items()))
    lines.append(f"Tracking: {target.uri}{' (embedded)' if target.embedded else ''}")
    return lines
