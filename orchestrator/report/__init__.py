"""`report.md`: one study on one page, for a researcher with five minutes.

    python -m orchestrator.report runs/smoke

The summary table the launcher prints says *what* finished; the report adds what it cost (reserved
CPU- and GPU-hours per stage), what each stage found (best trial, its settings, its registered
model) and the pictures worth looking at, copied under `<output>/report/` with relative links so the
report plus that folder can be zipped and opened anywhere. It is also logged to the study's MLflow
experiment as one run named "report" (re-running the report reuses that run).

Everything is read from what the study left on disk (`study_state.json`, the stage folders); the
study spec comes from the caller, else the copy the launcher keeps in the output folder, else the
stage runs in MLflow (the spec YAML and params logged there); where none is found the report says
what it had to assume. Per-trial resources recorded in the state (what the trials actually got,
after a CPU fallback) beat the spec's.

One module per concern: `facts` (what is known about each stage, and from where), `formatting`,
`gallery` (pictures copied beside the report), `cost`, `stage_sections` (a section per stage kind),
`page` (the whole markdown page), `write` (report.md and its MLflow run) and `cli`.
"""

from orchestrator.report.cli import EXAMPLES, build_parser, main
from orchestrator.report.cost import (NOT_UTILISATION, StageCost, cost_lines, driver_cost, resources_cell, stage_cost,
                                      total_hours, trials_cell, tune_cost)
from orchestrator.report.facts import (KIND_FOLDERS, ReportContext, StageFacts, facts_from_run,
                                       facts_from_spec, gather_facts, local_path, open_store,
                                       spec_from_runs, spec_from_state, stage_folder, stage_order, stage_runs,
                                       study_target, trial_seconds, varying_config_keys, with_recorded_resources,
                                       with_run_tags)
from orchestrator.report.formatting import MAX_SETTING_CHARS, format_settings, numeric_items
from orchestrator.report.gallery import CAPTIONS, REPORT_DIR, Gallery
from orchestrator.report.page import footer_lines, header_lines, render, stage_glance
from orchestrator.report.stage_sections import (HEADLINE_METRICS, MAX_FRONT_ROWS, MAX_GRIDS, MAX_TABLE_LINES,
                                                PARETO_FRONT_FILE, best_lines, champion_lines,
                                                gallery_lines, headline_lines, importance_lines, job_section,
                                                markdown_file_lines, optuna_section, output_groups, output_lines,
                                                outputs_of, pareto_front_lines, recorded_metrics, registered_lines,
                                                stage_lines, step_images, text_file_lines, tune_section)
from orchestrator.report.write import (REPORT_FILE, REPORT_RUN_NAME, TAG_REPORT, build_context, find_report_run,
                                       log_report, publish, write_report)

__all__ = [
    "best_lines", "build_context", "build_parser", "CAPTIONS", "champion_lines", "cost_lines",
    "driver_cost", "EXAMPLES", "facts_from_run", "facts_from_spec", "find_report_run", "footer_lines",
    "format_settings", "Gallery", "gallery_lines", "gather_facts", "header_lines", "headline_lines",
    "HEADLINE_METRICS", "importance_lines", "job_section", "KIND_FOLDERS", "local_path", "log_report", "main",
    "markdown_file_lines", "MAX_FRONT_ROWS", "MAX_GRIDS", "MAX_SETTING_CHARS", "MAX_TABLE_LINES", "NOT_UTILISATION",
    "numeric_items", "open_store", "optuna_section", "output_groups", "output_lines", "outputs_of",
    "PARETO_FRONT_FILE", "pareto_front_lines", "publish", "recorded_metrics", "registered_lines", "render",
    "REPORT_DIR", "REPORT_FILE", "REPORT_RUN_NAME", "ReportContext", "resources_cell", "spec_from_runs",
    "spec_from_state", "stage_cost", "stage_folder", "stage_glance", "stage_lines", "stage_order", "stage_runs",
    "StageCost", "StageFacts", "step_images", "study_target", "TAG_REPORT", "text_file_lines", "total_hours",
    "trial_seconds", "trials_cell", "tune_cost", "tune_section", "varying_config_keys",
    "with_recorded_resources", "with_run_tags", "write_report",
]
