"""The table printed (and saved as `summary.md`) when a study ends."""

from __future__ import annotations

from pathlib import Path

from orchestrator.spec import StudySpec
from orchestrator.stages import kind_of
from orchestrator.study_state import StudyState
from orchestrator.tracking import TrackingTarget


def _short(run_id: str | None) -> str:
    return run_id or "-"


def summary_lines(spec: StudySpec, state: StudyState, output: Path, target: TrackingTarget) -> list[str]:
    header = ("stage", "status", "best trial", "best metric", "parent run", "best child run", "registered", "wall")
    rows = []
    for stage in spec.stages:
        s, kind = state.stage(stage.name), kind_of(stage)
        best = s.best
        metric = kind.best_cell(stage, s)
        registered = f"{s.registered.name} v{s.registered.version} @{s.registered.alias}" if s.registered else "-"
        trials = f" ({s.trials - s.failed_trials}/{s.trials} {kind.trial_verdict})" if s.trials else ""
        rows.append((stage.name, s.status + trials, best.trial_id if best else "-", metric, _short(s.parent_run_id),
                     _short(best.child_run_id if best else None), registered, f"{s.wall_s:.0f}s"))
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [f"Study {spec.name!r}: experiment {state.experiment_id} in {target.uri}", ""]
    lines.append("  ".join(str(cell).ljust(width) for cell, width in zip(header, widths)).rstrip())
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.append("")
    lines += detail_lines(spec, state)
    for stage in spec.stages:
        s = state.stage(stage.name)
        if s.output:
            lines.append(f"  {stage.name}: {s.output}")
        if s.best and s.best.checkpoint and s.best.checkpoint != s.output:
            lines.append(f"  {stage.name} best checkpoint: {s.best.checkpoint}")
    lines += ["", f"Open this study in MLflow:  {target.ui_command()}"]
    if target.embedded:
        lines.append(f"  then browse {target.ui_url(state.experiment_id)} (the runs of experiment "
                     f"{spec.tracking.experiment!r})")
    return lines


def detail_lines(spec: StudySpec, state: StudyState) -> list[str]:
    """What the table has no room for, each stage's kind saying what (a job's metrics; how a best trial
    compares with its baselines, e.g. GASTeN's fine-tuned generator against the step-1 generator)."""
    lines = []
    for stage in spec.stages:
        lines += kind_of(stage).detail_lines(stage, state.stage(stage.name))
    return lines + ([""] if lines else [])


def write_summary(lines: list[str], output: Path) -> Path | None:
    """`<output>/summary.md`; None (nothing written) when a file there is not gensearch's."""
    from orchestrator.study_folder import write_owned

    return write_owned(output, "summary.md", "```\n" + "\n".join(lines) + "\n```\n")
