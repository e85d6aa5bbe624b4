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
from orchestrator.tracking import TAG_STUDY, TrackingTarget, error_line

REPORT_FILE = "report.md"
REPORT_RUN_NAME = "report"
TAG_REPORT = "gensearch.report"  # the report run's marker; it has no gensearch.stage tag: it is not a stage


def find_report_run(client: Any, experiment_id: str) -> str | None:
    """The study's existing report run, so that re-running the report updates it instead of adding one."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_REPORT}` = 'true'", max_results=10,
                              order_by=["attributes.start_time ASC"])
    return runs[0].info.run_id if runs else None


def log_report(ctx: ReportContext, report: Path, hours: Mapping[str, float]) -> str:
    """Log report.md and report/ into the study's one "report" run (tagged gensearch.report=true, no
    gensearch.stage tag: it is not a stage). Files of an earlier report with the same names are replaced."""
    from orchestrator.tracking import Tracker

    tracker = Tracker(ctx.target, ctx.experiment_name or ctx.state.study, ctx.state.study)
    client = tracker.client
    run_id = find_report_run(client, ctx.state.experiment_id)
    if run_id is None:
        run_id = client.create_run(ctx.state.experiment_id, run_name=REPORT_RUN_NAME,
                                   tags={TAG_STUDY: ctx.state.study, TAG_REPORT: "true"}).info.run_id
    client.log_artifact(run_id, str(report))
    tracker.log_artifacts(run_id, ctx.output / REPORT_DIR, REPORT_DIR)
    tracker.log_metrics(run_id, hours)
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def build_context(output: Path, state: StudyState, target: TrackingTarget, client: Any, spec: Any) -> ReportContext:
    """Everything the report needs to know besides the files: the spec (given, else the state's copy,
    else the one logged in MLflow),
    the experiment's name and each stage's facts."""
    runs = stage_runs(client, state) if client is not None else {}
    if spec is None:
        spec = spec_from_state(state, output)
    if spec is None and client is not None:
        spec = spec_from_runs(client, state, runs)
    ctx = ReportContext(output=output, state=state, target=target, spec=spec)
    ctx.experiment_name = getattr(getattr(spec, "tracking", None), "experiment", "") or ""
    if not ctx.experiment_name and client is not None and state.experiment_id:
        try:
            ctx.experiment_name = client.get_experiment(state.experiment_id).name
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
        client, why_not = open_store(target, log_to_mlflow)
    except Exception as error:  # noqa: BLE001 - MLflow missing or broken: the report stands without it
        client, why_not = None, error_line(error)
    if spec is not None and getattr(spec, "name", state.study) != state.study:
        spec = None
    ctx = build_context(output, state, target, client, spec)
    gallery = Gallery(output)
    report = gallery.manifest.claim(output / REPORT_FILE)
    if report is None:
        raise FileExistsError(f"{output / REPORT_FILE} was not written by gensearch: left alone (move it away, "
                              f"then: python -m orchestrator.report {output})")
    gallery.reset()
    report.write_text(render(ctx, gallery))
    gallery.manifest.save()
    if log_to_mlflow:
        publish(client, ctx, report, why_not)
    return report


def publish(client: Any, ctx: ReportContext, report: Path, why_not: str | None) -> None:
    """Log the report to MLflow, or print one line saying why it was not."""
    if client is None or not ctx.state.experiment_id:
        reason = why_not or "the study has no MLflow experiment yet"
        print(f"report not logged to MLflow: {reason}", flush=True)
        return
    try:
        log_report(ctx, report, total_hours(ctx))
    except Exception as error:  # noqa: BLE001 - the report is written; MLflow failing is one line, not a crash
        print(f"report not logged to MLflow ({ctx.target.uri}): {error_line(error)}", flush=True)
