"""The table printed (and saved as `summary.md`) when a study ends."""

from __future__ import annotations

from pathlib import Path

from orchestrator.champion import describe_champion, searched_values
from orchestrator.spec import JobStage, OptunaStage, StudySpec, TuneStage
from orchestrator.study_state import StudyState
from orchestrator.tracking import TrackingTarget


JOB_METRICS_SHOWN = 8  # a job may report dozens (evaluate_ood: method x set x metric); the rest are in MLflow


def _short(run_id: str | None) -> str:
    return run_id or "-"


def summary_lines(spec: StudySpec, state: StudyState, output: Path, target: TrackingTarget) -> list[str]:
    header = ("stage", "status", "best trial", "best metric", "parent run", "best child run", "registered", "wall")
    rows = []
    for stage in spec.stages:
        s = state.stage(stage.name)
        best = s.best
        if best and isinstance(stage, TuneStage) and stage.multi_objective:
            metric = searched_values(stage, best.metrics)
        elif best:
            metric = f"{best.metric}={best.value:.4g}"
        else:
            metric = ", ".join(f"{k}={v:.4g}" for k, v in list(s.metrics.items())[:2]) or "-"
        registered = f"{s.registered.name} v{s.registered.version} @{s.registered.alias}" if s.registered else "-"
        verdict = "feasible" if isinstance(stage, OptunaStage) else "ok"  # an optuna stage counts constraint breaks
        trials = f" ({s.trials - s.failed_trials}/{s.trials} {verdict})" if s.trials else ""
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
    """What the table has no room for: a job's metrics, and how a best trial compares with its
    baselines (GASTeN: fid_mnist and acd of the fine-tuned generator vs the step-1 generator)."""
    from trainables import catalog

    lines = []
    for stage in spec.stages:
        s = state.stage(stage.name)
        if isinstance(stage, JobStage) and s.metrics:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in list(s.metrics.items())[:JOB_METRICS_SHOWN])
            more = len(s.metrics) - JOB_METRICS_SHOWN
            lines.append(f"  {stage.name}: {shown}" + (f", ... ({more} more in its MLflow run)" if more > 0 else ""))
        if isinstance(stage, OptunaStage) and s.best is not None:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in s.best.metrics.items() if not k.endswith("_s"))
            lines.append(f"  {stage.name} best (trial {s.best.trial_id}): {shown}")
            lines.append(f"  {stage.name} best settings: " + ", ".join(f"{k}={v}" for k, v in s.best.config.items()))
        if not isinstance(stage, TuneStage) or s.best is None or not s.best.metrics:
            continue
        if stage.multi_objective:
            lines.append(f"  {stage.name} {describe_champion(stage, s.best)}")
        try:
            baselines = catalog.trainable(stage.trainable).baselines
        except catalog.UnknownEntryError:
            continue
        pairs = []
        for metric, baseline in baselines.items():
            value, start = s.best.metrics.get(metric), s.best.metrics.get(baseline)
            if value is not None and start is not None:
                ratio = f" ({value / start:.2f}x)" if start else ""
                pairs.append(f"{metric} {value:.4g} vs {baseline} {start:.4g}{ratio}")
        if pairs:
            epoch = f", epoch {s.best.epoch}" if s.best.epoch else ""
            lines.append(f"  {stage.name} best (trial {s.best.trial_id}{epoch}): " + "; ".join(pairs))
    return lines + ([""] if lines else [])


def write_summary(lines: list[str], output: Path) -> Path | None:
    """`<output>/summary.md`; None (nothing written) when a file there is not gensearch's."""
    from orchestrator.study_folder import write_owned

    return write_owned(output, "summary.md", "```\n" + "\n".join(lines) + "\n```\n")
