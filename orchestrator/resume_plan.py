"""What `--resume` (and `--restart-from`) may do with a study folder, decided before anything runs.

The folder keeps the study as launched (`study.yaml`); the file given now is compared with it stage by
stage (`spec_diff`), and:

- a stage that finished, or was running when the launcher stopped, must be unchanged: its trials ran
  with those settings, and continuing it with others would mix two searches in one. Otherwise nothing
  runs, and the message lists the changes and the ways forward;
- a stage that failed is retried: unchanged, its failed trials run again and its finished ones are kept;
  edited, it starts again with the edits (its earlier attempt is superseded, as with --restart-from);
- a stage that never started runs with the file's settings, edited or not;
- `--restart-from STAGE` starts STAGE and every later stage again with the file's settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.spec import StudySpec
from orchestrator.spec_diff import stage_changes
from orchestrator.study_state import StudyState
from orchestrator.supersede import SUPERSEDED_DIR



class ResumeRefused(ValueError):
    """The file given is not the study in the folder, in a way `--resume` will not paper over."""


@dataclass(frozen=True)
class ResumePlan:
    restart: dict[str, str] = field(default_factory=dict)  # stage -> why its earlier attempt is set aside
    file_changed: bool = False  # the file differs from the kept copy: the copy is replaced once accepted


def plan_resume(state: StudyState, launched: StudySpec | None, current: StudySpec, output: Path,
                restart_from: str | None = None) -> ResumePlan:
    order = [stage.name for stage in current.stages]
    if restart_from is not None and restart_from not in order:
        raise ResumeRefused(f"--restart-from {restart_from}: no such stage in {current.source} "
                            f"(stages: {', '.join(order)}). Nothing was run.")
    first_restart = order.index(restart_from) if restart_from is not None else len(order)
    launched_stages = {stage.name: stage for stage in launched.stages} if launched is not None else {}
    started = {name: stage.status for name, stage in state.stages.items() if stage.status != "pending"}

    restart, refused = {}, {}
    for name, status in started.items():
        # With --restart-from, a stage no longer in the file is set aside with the later ones.
        restarted = order.index(name) >= first_restart if name in order else restart_from is not None
        if restarted:
            restart[name] = f"--restart-from {restart_from}"
            continue
        if launched is None:  # nothing to compare with: the file is taken as it is
            continue
        if name not in order:
            changes = ["the stage is no longer in the file"]
        elif name not in launched_stages:
            changes = ["the stage was not in the study as launched"]
        else:
            changes = stage_changes(launched_stages[name], current.stage(name))
        if status == "failed" and changes:
            restart[name] = "the stage failed, then was edited: it runs again with the edited settings"
        elif changes:  # (an unchanged failed stage is retried by the runner)
            refused[name] = (status, changes)
    if launched is not None and launched.tracking.experiment != current.tracking.experiment:
        raise ResumeRefused(f"{current.source}: tracking.experiment changed ({launched.tracking.experiment!r} -> "
                            f"{current.tracking.experiment!r}); a study's runs stay in one experiment: run the "
                            f"edited file with --output NEW_DIR. Nothing was run.")
    if refused:
        raise ResumeRefused(refusal(refused, current, output, order))
    file_changed = launched is not None and (
        [s.name for s in launched.stages] != order
        or any(stage_changes(stage, current.stage(stage.name)) for stage in launched.stages if stage.name in order))
    return ResumePlan(restart=restart, file_changed=file_changed)


def refusal(refused: dict[str, tuple[str, list[str]]], current: StudySpec, output: Path, order: list[str]) -> str:
    in_file = [name for name in order if name in refused]
    earliest = in_file[0] if in_file else None
    lines = [f"{current.source} is not the study that ran in {output}: it changes stages that already ran"]
    for name, (status, changes) in refused.items():
        lines.append(f"  {name} ({status}): " + "; ".join(changes))
    lines += ["Ways forward:",
              f"  - undo the edit, then --resume: the study as launched is kept in {output / 'study.yaml'}",
              "  - --output NEW_DIR: run the edited study in a new folder"]
    if earliest is not None:
        lines.append(f"  - --resume --restart-from {earliest}: run {earliest} and every later stage again with the "
                     f"file's settings; their earlier MLflow runs are kept, tagged gensearch.superseded=true, and "
                     f"their folders move to {output / SUPERSEDED_DIR}/")
    lines.append("Nothing was run.")
    return "\n".join(lines)
