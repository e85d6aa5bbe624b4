"""Writing `<output>/report.md` (with report/) from what a study left, and logging it to the study's MLflow
experiment as its one "report" run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.report.cost import total_hours
from orchestrator.report.facts import (ReportContext, gather_facts, open_store, spec_from_runs, spec_from_state,
                                       stage_runs, study_target)
from orchestrator.report.gallery import REPORT_DIR, Gallery
from orchestrator.report.page import render
from orchestrator.study_state import STATE_FILE, StudyState, load_state
from orchestrator.tracking import TAG_STUDY, Tracker, TrackingTarget, error_line

REPORT_FILE = "report.md"
REPORT_RUN_NAME = "report"
TAG_REPORT = "gensearch.report"  # the report run's marker; it has no gensearch.stage tag: it is not a stage


def find_report_run(tracker: Tracker) -> str | None:
    """The study's existing report run, so that re-running the report updates it instead of adding one."""
    runs = tracker.runs_tagged(TAG_REPORT, "true")
    return runs[0].info.run_id if runs else None


def log_report(tracker: Tracker, ctx: ReportContext, report: Path, hours: Mapping[str, float]) -> str:
    """Log report.md and report/ into the study's one "report" run (tagged gensearch.report=true, no
    gensearch.stage tag: it is not a stage). Files of an earlier report with the same names are replaced."""
    run_id = find_report_run(tracker)
    if run_id is None:
        run_id = tracker.create_run(REPORT_RUN_NAME, {TAG_STUDY: ctx.state.study, TAG_REPORT: "true"})
    tracker.log_file(run_id, report)
    tracker.log_artifacts(run_id, ctx.output / REPORT_DIR, REPORT_DIR)
    tracker.log_metrics(run_id, hours)
    tracker.close(run_id)
    return run_id


def build_context(output: Path, state: StudyState, target: TrackingTarget, tracker: Tracker | None,
                  spec: Any) -> ReportContext:
    """Everything the report needs to know besides the files: the spec (given, else the state's copy,
    else the one logged in MLflow),
    the experiment's name and each stage's facts."""
    runs = stage_runs(tracker, state) if tracker is not None else {}
    if spec is None:
        spec = spec_from_state(state, output)
    if spec is None and tracker is not None:
        spec = spec_from_runs(tracker, state, runs)
    ctx = ReportContext(output=output, state=state, target=target, spec=spec)
    ctx.experiment_name = getattr(getattr(spec, "tracking", None), "experiment", "") or ""
    if not ctx.experiment_name and tracker is not None and state.experiment_id:
        try:
            ctx.experiment_name = tracker.stored_experiment_name()
        except Exception:  # noqa: BLE001 - only a name for the header
            pass
    gather_facts(ctx, runs)
    return ctx


def write_report(output: Path, tracking_uri: str | None = None, log_to_mlflow: bool = True, *,
                 spec: Any = None) -> Path:
    """Write `<output>/report.md` and `<output>/report/`, log both to the study's MLflow experiment
    (one run named "report", reused on re-runs) and return the report's path.

    `spec` (the StudySpec) is optional: the launcher has it; otherwise it is read from the stage runs in
    MLflow. A tracking server that does not answer costs one printed line, never the report.
    Raises FileNotFoundError when `output` holds no study_state.json."""
    output = Path(output).resolve()
    state = load_state(output)
    if state is None:
        raise FileNotFoundError(f"{output} holds no {STATE_FILE}: not a study output folder")
    target = study_target(output, state, tracking_uri)
    try:
        tracker, why_not = open_store(target, state, log_to_mlflow)
    except Exception as error:  # noqa: BLE001 - MLflow missing or broken: the report stands without it
        tracker, why_not = None, error_line(error)
    if spec is not None and getattr(spec, "name", state.study) != state.study:
        spec = None
    ctx = build_context(output, state, target, tracker, spec)
    gallery = Gallery(output)
    report = gallery.manifest.claim(output / REPORT_FILE)
    if report is None:
        raise FileExistsError(f"{output / REPORT_FILE} was not written by gensearch: left alone (move it away, "
                              f"then: python -m orchestrator.report {output})")
    gallery.reset()
    report.write_text(render(ctx, gallery))
    gallery.manifest.save()
    if log_to_mlflow:
        publish(tracker, ctx, report, why_not)
    return report


def publish(tracker: Tracker | None, ctx: ReportContext, report: Path, why_not: str | None) -> None:
    """Log the report to MLflow, or print one line saying why it was not."""
    if tracker is None or not ctx.state.experiment_id:
        reason = why_not or "the study has no MLflow experiment yet"
        print(f"report not logged to MLflow: {reason}", flush=True)
        return
    try:
        log_report(tracker, ctx, report, total_hours(ctx))
    except Exception as error:  # noqa: BLE001 - the report is written; MLflow failing is one line, not a crash
        print(f"report not logged to MLflow ({ctx.target.uri}): {error_line(error)}", flush=True)
