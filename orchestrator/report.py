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
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from orchestrator.estimate_record import estimate_section
from orchestrator.study_state import STATE_FILE, BestTrial, StageState, StudyState, load_state
from orchestrator.tracking import TAG_STUDY, TrackingTarget, error_line

REPORT_FILE = "report.md"
REPORT_DIR = "report"
REPORT_RUN_NAME = "report"
TAG_REPORT = "gensearch.report"  # the report run's marker; it has no gensearch.stage tag: it is not a stage

HEADLINE_METRICS = 6  # a job's first metrics (jobs put their headline first; the rest are in MLflow)
MAX_GRIDS = 6  # prototype grids, one per cluster: a few show what the clusters look like
MAX_IMAGES_PER_FOLDER = 8  # generic fallback: a job folder with many images would bury the rest
MAX_TABLE_LINES = 40  # a job's markdown table inlined; longer ones are copied and linked instead
MAX_SETTING_CHARS = 48
MAX_FRONT_ROWS = 10  # a two-objective stage's Pareto front: its best rows; the whole front is in pareto_front.csv
PARETO_FRONT_FILE = "pareto_front.csv"

KIND_FOLDERS = {"tune": "tune", "optuna": "optuna", "job": "jobs"}
TUNE_IMAGES = ("search_history.png", "parameter_sweep.png", "pareto.png")
KNOWN_JOB_FILES = ("fewshot.md", "fewshot_curves.png", "ood_table.md", "roc_curves.png", "prototype_curve.md",
                   "prototype_curve.png", "scatter.png", "confusion_matrix.png", "misclassified.png", "summary.txt")
GRID_FOLDER = "grids"
SKIPPED_FOLDERS = ("images",)  # prototypes: one small PNG per pick (dozens); the grids show them
CAPTIONS = {
    "search_history.png": "each trial's best value in start order, with the running best: did the search converge?",
    "parameter_sweep.png": "the metric against each searched setting (best trial ringed): is the optimum inside "
                           "the range or at its edge?",
    "pareto.png": "the two rival metrics over every trial and epoch, with the Pareto front, the chosen point "
                  "circled and reference points as diamonds",
    "importance.png": "each searched setting's share of the metric's variance across trials (fANOVA): which "
                      "settings mattered, which could be fixed?",
    "samples.png": "samples from the best trial's chosen checkpoint",
    "denoise.png": "denoising steps from the best trial's chosen checkpoint",
    "confusion_matrix.png": "confusion matrix on the test split",
    "misclassified.png": "misclassified test images",
    "fewshot_curves.png": "few-shot accuracy against k (log axis), one line per feature set and head",
    "roc_curves.png": "ROC curves per OOD set and method",
    "scatter.png": "the clustered images, by cluster and by C(x)",
    "prototype_curve.png": "prototype curve",
}
NOT_UTILISATION = ("CPU-h and GPU-h are **reserved** hours (what a trial asked Ray for × how long it ran), "
                   "not measured utilisation: a trial holding a CPU while waiting on I/O counts in full.")


# ---------------------------------------------------------------- what is known about each stage


@dataclass(frozen=True)
class StageFacts:
    """What the report needs about a stage beyond its StageState, and where it came from (the spec,
    the stage's MLflow run, or a guess from its folder), so the report can say what it assumed."""

    name: str
    kind: str  # tune | optuna | job | ? (unknown)
    cpu: float = 1.0  # per trial (tune stages)
    gpu: float = 0.0
    resources_from: str = "assumed"  # state (what the trials got) | spec | mlflow | assumed
    fallback_cpu: bool = False  # the stage asked for a GPU, none was there, trials ran with gpu 0
    searched: tuple[str, ...] | None = None  # the searched settings, when they can be told apart
    inputs: tuple[str, ...] = ()  # config keys that are earlier stages' results (paths): not settings
    failure_reason: str | None = None


@dataclass
class ReportContext:
    """One report being written: the study, where things are, and the notes gathered on the way."""

    output: Path
    state: StudyState
    target: TrackingTarget
    spec: Any = None  # StudySpec | None
    experiment_name: str = ""
    facts: dict[str, StageFacts] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> int:
        """A numbered note under the cost table; the same text gets the same number."""
        if text not in self.notes:
            self.notes.append(text)
        return self.notes.index(text) + 1


# ---------------------------------------------------------------- small formatting helpers


def _num(value: Any) -> str:
    """A number as a person reads it: 4 significant digits; anything else as text."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value < 600 else f"{value / 60:.1f} min"


def _cell(value: Any) -> str:
    """A markdown table cell: pipes escaped, newlines flattened."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _setting(value: Any) -> str:
    """One config value, short: a path keeps its last two parts, a long value is cut."""
    if isinstance(value, float):
        text = _num(value)
    elif isinstance(value, str) and value.startswith("/") and len(value) > MAX_SETTING_CHARS:
        text = "…/" + "/".join(Path(value).parts[-2:])
    else:
        text = json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)
    return text if len(text) <= MAX_SETTING_CHARS else text[:MAX_SETTING_CHARS - 1] + "…"


def format_settings(config: Mapping[str, Any], keys: Iterable[str] | None = None) -> str:
    """`lr=0.00638, nf=2`: the named keys of a config (all of them when `keys` is None)."""
    chosen = list(config) if keys is None else [k for k in keys if k in config]
    return ", ".join(f"{k}={_setting(config[k])}" for k in chosen) or "-"


def numeric_items(values: Mapping[str, Any]) -> list[tuple[str, float]]:
    """The finite numbers of a mapping, in order (metrics.json mixes in text such as a data source)."""
    return [(k, float(v)) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


# ---------------------------------------------------------------- finding things on disk


def local_path(recorded: str, output: Path) -> Path:
    """A path recorded in study_state.json, found again after the output folder was moved or unzipped
    elsewhere (the state holds absolute paths): rebased on `output` from its tune/optuna/jobs part."""
    path = Path(recorded)
    if not recorded or path.exists():
        return path
    parts = path.parts
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] in KIND_FOLDERS.values():
            candidate = output.joinpath(*parts[index:])
            if candidate.exists():
                return candidate
    return path


def stage_folder(output: Path, name: str, stage: StageState, kind: str) -> Path | None:
    """The stage's folder: `<output>/tune|optuna|jobs/<stage>`, else wherever the state says."""
    if kind in KIND_FOLDERS and (output / KIND_FOLDERS[kind] / name).is_dir():
        return output / KIND_FOLDERS[kind] / name
    folder = local_path(stage.output, output) if stage.output else None
    return folder if folder is not None and folder.is_dir() else None


def kind_from_folder(stage: StageState) -> str:
    """tune / optuna / job from where the stage wrote (the state does not record the kind)."""
    parent = Path(stage.output).parent.name if stage.output else ""
    return {folder: kind for kind, folder in KIND_FOLDERS.items()}.get(parent, "?")


def _last_time_total(result_json: Path) -> float | None:
    """A trial's time_total_s from Tune's result.json (one JSON object per report; the last whole
    line counts: a trial killed mid-write may leave half a line)."""
    value = None
    for line in result_json.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row.get("time_total_s"), (int, float)):
            value = float(row["time_total_s"])
    return value


def trial_seconds(folder: Path) -> tuple[dict[str, float], str]:
    """Each trial's running time (Tune's time_total_s) and where it was read.

    trials.csv holds one row per trial, written when the stage ends; a stage that was interrupted
    has none yet, and then each trial folder's result.json is read instead."""
    table = folder / "trials.csv"
    if table.is_file():
        with table.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows and "time_total_s" in rows[0]:
            seconds = {}
            for index, row in enumerate(rows):
                try:
                    seconds[row.get("trial_id") or str(index)] = float(row["time_total_s"])
                except (TypeError, ValueError):
                    continue  # a trial that failed before its first report has no time
            return seconds, "trials.csv"
    seconds = {}
    for result in sorted(folder.glob("trial_*/result.json")):
        value = _last_time_total(result)
        if value is not None:
            seconds[result.parent.name.removeprefix("trial_")] = value
    return seconds, "result.json"


def varying_config_keys(folder: Path) -> tuple[str, ...] | None:
    """The settings that differ between trials in trials.csv (`config/<key>` columns): the searched
    ones, when no spec says so. None when there is no table or a single trial."""
    table = folder / "trials.csv"
    if not table.is_file():
        return None
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if len(rows) < 2:
        return None
    keys = [k for k in rows[0] if k.startswith("config/")]
    return tuple(k.removeprefix("config/") for k in keys if len({row.get(k) for row in rows}) > 1)


# ---------------------------------------------------------------- the study spec and MLflow (read side)


def study_target(output: Path, state: StudyState, override: str | None) -> TrackingTarget:
    """Where the study is tracked: --tracking-uri, else the state's URI. The embedded store is
    recognised even when the folder was moved (the state's SQLite path is then stale) and regardless
    of $MLFLOW_TRACKING_URI, which resolve_target would prefer."""
    output = output.resolve()
    embedded = TrackingTarget(uri=f"sqlite:///{output / 'mlflow.db'}",
                              artifact_root=(output / "mlartifacts").as_uri(), embedded=True)
    uri = override or state.tracking_uri
    if uri == embedded.uri:
        return embedded
    if not override and uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists() \
            and (output / "mlflow.db").is_file():
        return embedded
    return TrackingTarget(uri=uri, artifact_root=None, embedded=False)


def open_store(target: TrackingTarget, log_to_mlflow: bool) -> tuple[Any, str | None]:
    """An MlflowClient for the study's store, or None and why not.

    A local SQLite store is always read (it is a file; it is not created when missing); a server is
    only contacted when the report is to be logged, and only after its health endpoint answers, so a
    dead server costs seconds, not MLflow's minutes of retries."""
    from orchestrator.tracking import unreachable_reason

    if target.uri.startswith("sqlite:///"):
        if not Path(target.uri.removeprefix("sqlite:///")).is_file():
            return None, f"no MLflow store at {target.uri}"
    elif not log_to_mlflow:
        return None, "--no-mlflow"
    else:
        reason = unreachable_reason(target, timeout_s=5.0)
        if reason is not None:
            return None, f"MLflow tracking server {target.uri} is unreachable ({reason})"
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=target.uri, registry_uri=target.uri), None


def stage_runs(client: Any, state: StudyState) -> dict[str, Any]:
    """Each stage's parent run (params and tags), by stage name; stages MLflow cannot show are left out."""
    runs = {}
    for name, stage in state.stages.items():
        if stage.parent_run_id:
            try:
                runs[name] = client.get_run(stage.parent_run_id)
            except Exception:  # noqa: BLE001 - a deleted run, a store that stopped answering: do without
                continue
    return runs


def artifact_file(client: Any, run: Any, name: str, scratch: Path) -> Path:
    """A run's artifact as a local file: read in place from a local artifact store (the embedded one),
    else downloaded into `scratch` without MLflow's progress bar (noise in the launcher's output)."""
    import os

    if run.info.artifact_uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        local = Path(unquote(urlparse(run.info.artifact_uri).path)) / name
        if local.is_file():
            return local
    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        return Path(client.download_artifacts(run.info.run_id, name, str(scratch)))
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous


def spec_from_state(state: StudyState, output: Path) -> Any:
    """The study spec from the copy the launcher keeps beside the results (`spec_file`, `profile` in the
    state; `<output>/study.yaml` when the folder was moved); None when there is none or it no longer
    validates."""
    from orchestrator.spec import load_study

    recorded = getattr(state, "spec_file", "") or ""
    candidates = [Path(recorded)] if recorded else []
    candidates.append(output / "study.yaml")
    for path in candidates:
        if not path.is_file():
            continue
        try:
            spec = load_study(path, profile=getattr(state, "profile", "") or None)
        except Exception:  # noqa: BLE001 - a spec that no longer validates (a renamed trainable): do without
            continue
        if spec.name == state.study:
            return spec
    return None


def spec_from_runs(client: Any, state: StudyState, runs: Mapping[str, Any]) -> Any:
    """The study spec as the launcher logged it (the YAML is an artifact of every stage run), with the
    profile the run used (a stage run's `profile` param); None when it is not there or no longer valid."""
    from orchestrator.spec import load_study

    for run in runs.values():
        try:
            yamls = [a.path for a in client.list_artifacts(run.info.run_id)
                     if not a.is_dir and a.path.endswith((".yaml", ".yml"))]
            if not yamls:
                continue
            with tempfile.TemporaryDirectory(prefix="gensearch-report-") as scratch:
                path = artifact_file(client, run, yamls[0], Path(scratch))
                spec = load_study(path, profile=run.data.params.get("profile") or None)
        except Exception:  # noqa: BLE001 - an old or foreign spec that no longer validates: do without
            continue
        if spec.name == state.study:
            return spec
    return None


def facts_from_spec(stage: Any) -> StageFacts:
    """A stage's facts as its spec declares them."""
    from orchestrator.spec import OptunaStage, TuneStage

    inputs = tuple(stage.inputs)
    if isinstance(stage, TuneStage):
        return StageFacts(stage.name, "tune", stage.resources.cpu, stage.resources.gpu, "spec",
                          searched=tuple(stage.space), inputs=inputs)
    return StageFacts(stage.name, "optuna" if isinstance(stage, OptunaStage) else "job", resources_from="spec",
                      inputs=inputs)


def facts_from_run(name: str, stage: StageState, run: Any) -> StageFacts:
    """A stage's facts from its MLflow parent run (params `resources.*`, `config.*`, `inputs.*`;
    tag `gensearch.kind`), or from its folder alone when there is no run (run is None)."""
    params = run.data.params if run is not None else {}
    tags = run.data.tags if run is not None else {}
    kind = tags.get("gensearch.kind") or kind_from_folder(stage)
    inputs = tuple(k.removeprefix("inputs.") for k in params if k.startswith("inputs."))
    fixed = {k.removeprefix("config.") for k in params if k.startswith("config.")}
    searched = None
    if kind == "tune" and stage.best is not None and params:
        searched = tuple(k for k in stage.best.config if k not in fixed and k not in inputs)
    try:
        cpu, gpu, source = float(params["resources.cpu"]), float(params["resources.gpu"]), "mlflow"
    except (KeyError, ValueError):
        cpu, gpu, source = 1.0, 0.0, "assumed"
    return StageFacts(name, kind, cpu, gpu, source, searched=searched, inputs=inputs)


def with_recorded_resources(facts: StageFacts, stage: StageState) -> StageFacts:
    """What the trials were actually given, when the state recorded it (`trial_cpu`/`trial_gpu`: after a
    CPU fallback the GPU is 0 even though the spec asks for one); older states lack the fields."""
    cpu, gpu = float(getattr(stage, "trial_cpu", 0.0) or 0.0), float(getattr(stage, "trial_gpu", 0.0) or 0.0)
    if facts.kind != "tune" or (cpu <= 0 and gpu <= 0):
        return facts
    fallback = facts.fallback_cpu or (facts.resources_from in ("spec", "mlflow") and facts.gpu > 0 and gpu == 0)
    return replace(facts, cpu=cpu, gpu=gpu, resources_from="state", fallback_cpu=fallback)


def with_run_tags(facts: StageFacts, run: Any) -> StageFacts:
    """What only the stage's run knows: the CPU fallback and the failure reason."""
    if run is None:
        return facts
    tags = run.data.tags
    return replace(facts, fallback_cpu=facts.fallback_cpu or "gensearch.fallback" in tags,
                   failure_reason=tags.get("gensearch.failure_reason"))


def stage_order(ctx: ReportContext) -> list[str]:
    """The spec's order (pending stages included); else the order stages were run in."""
    names = [stage.name for stage in ctx.spec.stages] if ctx.spec is not None else []
    return names + [name for name in ctx.state.stages if name not in names]


def gather_facts(ctx: ReportContext, runs: Mapping[str, Any]) -> None:
    """Fill ctx.facts for every stage, preferring the state's record over the spec over the MLflow run
    over the folder."""
    spec_stages = {stage.name: stage for stage in ctx.spec.stages} if ctx.spec is not None else {}
    for name in stage_order(ctx):
        stage = ctx.state.stages.get(name, StageState())
        facts = facts_from_spec(spec_stages[name]) if name in spec_stages else \
            facts_from_run(name, stage, runs.get(name))
        if facts.kind == "tune" and facts.searched is None:
            folder = stage_folder(ctx.output, name, stage, "tune")
            facts = replace(facts, searched=varying_config_keys(folder) if folder else None)
        ctx.facts[name] = with_recorded_resources(with_run_tags(facts, runs.get(name)), stage)


# ---------------------------------------------------------------- copying images next to the report


class Gallery:
    """Copies the files the report shows under `<output>/report/` and returns relative links to them,
    so report.md and report/ travel together (copies, not links: a zip keeps copies). Only files listed in
    the folder's manifest (`study_folder.Manifest`) are ever replaced or removed: anything else a user
    keeps in report/ stays, and a copy whose name is taken by such a file gets another name."""

    def __init__(self, output: Path) -> None:
        from orchestrator.study_folder import Manifest

        self.output = output
        self.root = output / REPORT_DIR
        self.manifest = Manifest(output)
        self.copied: list[Path] = []

    def reset(self) -> None:
        """Remove the pictures the previous report copied: a re-run must not keep images of a stage that changed."""
        for path in self.manifest.under(self.root):
            self.manifest.remove(path)
        for folder in sorted((p for p in self.root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                             reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
        self.root.mkdir(parents=True, exist_ok=True)

    def add(self, source: Path, *parts: str) -> str:
        """Copy `source` to report/<parts...> and return its link relative to report.md."""
        destination = self.root.joinpath(*parts)
        number = 1
        while self.manifest.claim(destination) is None:  # a user's file has that name
            destination = destination.with_name(f"{Path(parts[-1]).stem}-{number}{Path(parts[-1]).suffix}")
            number += 1
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
        self.copied.append(destination)
        return quote(destination.relative_to(self.output).as_posix())

    def image(self, source: Path, *parts: str, caption: str | None = None) -> list[str]:
        """Markdown for one image: the picture, then its file name and what it shows."""
        link = self.add(source, *parts)
        text = caption if caption is not None else CAPTIONS.get(source.name, "")
        return [f"![{source.stem}]({link})", f"*{source.name}*" + (f": {text}" if text else ""), ""]


# ---------------------------------------------------------------- cost accounting


@dataclass(frozen=True)
class StageCost:
    trial_s: float | None  # sum of the trials' time_total_s (tune); None: none recorded / not a tune stage
    cpu_h: float | None
    gpu_h: float | None
    notes: tuple[int, ...] = ()


def tune_cost(ctx: ReportContext, name: str, stage: StageState) -> StageCost:
    """Σ over trials of time_total_s × the per-trial CPU / GPU the stage asked Ray for."""
    facts = ctx.facts[name]
    folder = stage_folder(ctx.output, name, stage, "tune")
    seconds, source = trial_seconds(folder) if folder else ({}, "")
    notes = [ctx.note(f"tune stages: sum over trials of Tune's `time_total_s` (read from {source}) × the "
                      f"per-trial resources; queueing and Ray start-up are not counted")] if seconds else []
    if facts.resources_from == "assumed":
        notes.append(ctx.note("study spec not found: 1 CPU and 0 GPU per trial assumed"))
    elif facts.resources_from == "mlflow":
        notes.append(ctx.note("per-trial resources read from the stage's MLflow run (study spec not found)"))
    gpu = facts.gpu
    if facts.fallback_cpu:
        notes.append(ctx.note("no GPU on the machine: the trials ran with gpu 0 (`fallback: cpu`), "
                              "so no GPU-hours are counted"))
        gpu = 0.0
    if not seconds:
        return StageCost(None, None, None, tuple(notes))
    total = sum(seconds.values())
    return StageCost(total, total * facts.cpu / 3600, total * gpu / 3600, tuple(notes))


def driver_cost(ctx: ReportContext, stage: StageState) -> StageCost:
    """An optuna or job stage runs in the launcher's own process: its wall time × 1 CPU."""
    note = ctx.note("optuna and job stages run in the driver process: wall time × 1 CPU; Ray reserves "
                    "nothing for them, and a GPU they may use is not counted")
    return StageCost(None, stage.wall_s / 3600, 0.0, (note,))


def stage_cost(ctx: ReportContext, name: str) -> StageCost:
    stage = ctx.state.stages.get(name)
    if stage is None or stage.status == "pending":
        return StageCost(None, None, None)
    if ctx.facts[name].kind == "tune":
        return tune_cost(ctx, name, stage)
    return driver_cost(ctx, stage)


def trials_cell(kind: str, stage: StageState) -> str:
    if not stage.trials:
        return "-"
    return f"{stage.trials} ({stage.failed_trials} {'infeasible' if kind == 'optuna' else 'failed'})"


def resources_cell(facts: StageFacts) -> str:
    if facts.kind != "tune":
        return "driver, 1 CPU"
    return f"{_num(facts.cpu)} CPU, {_num(facts.gpu)} GPU / trial"


def cost_lines(ctx: ReportContext) -> list[str]:
    """The cost table (a row per stage and a total), its notes, and the reserved-not-used caveat."""
    rows, totals = [], {"wall": 0.0, "trials": 0, "failed": 0, "cpu": 0.0, "gpu": 0.0}
    for name in stage_order(ctx):
        stage, facts = ctx.state.stages.get(name, StageState()), ctx.facts[name]
        cost = stage_cost(ctx, name)
        marks = "".join(f" ({n})" for n in cost.notes)
        rows.append([f"{name}{marks}", facts.kind, stage.status, _seconds(stage.wall_s), trials_cell(facts.kind, stage),
                     resources_cell(facts), "-" if cost.trial_s is None else _seconds(cost.trial_s),
                     "-" if cost.cpu_h is None else _num(cost.cpu_h), "-" if cost.gpu_h is None else _num(cost.gpu_h)])
        totals["wall"] += stage.wall_s
        totals["trials"] += stage.trials
        totals["failed"] += stage.failed_trials
        totals["cpu"] += cost.cpu_h or 0.0
        totals["gpu"] += cost.gpu_h or 0.0
    rows.append(["**total**", "", "", _seconds(totals["wall"]),
                 f"{totals['trials']} ({totals['failed']} failed/infeasible)" if totals["trials"] else "-", "", "",
                 f"**{_num(totals['cpu'])}**", f"**{_num(totals['gpu'])}**"])
    lines = ["## Cost", ""]
    lines += _table(["stage", "kind", "status", "wall", "trials (failed)", "resources", "Σ trial time",
                     "CPU-h", "GPU-h"], rows)
    lines += ["", NOT_UTILISATION, ""]
    lines += [f"({index}) {text}  " for index, text in enumerate(ctx.notes, start=1)]
    return lines + [""]


def total_hours(ctx: ReportContext) -> dict[str, float]:
    """Reserved CPU- and GPU-hours of the whole study, logged as the report run's metrics."""
    costs = [stage_cost(ctx, name) for name in stage_order(ctx)]
    return {"reserved_cpu_hours": sum(c.cpu_h or 0.0 for c in costs),
            "reserved_gpu_hours": sum(c.gpu_h or 0.0 for c in costs)}


# ---------------------------------------------------------------- header and footer


def stage_glance(ctx: ReportContext, name: str) -> str:
    """One line per stage for the header: status, best result, registered model."""
    stage, facts = ctx.state.stages.get(name, StageState()), ctx.facts[name]
    parts = [f"**{name}** ({facts.kind}): {stage.status}"]
    if stage.best is not None:
        parts.append(f"best {stage.best.metric}={_num(stage.best.value)} (trial `{stage.best.trial_id}`)")
    elif stage.metrics:
        parts.append(", ".join(f"{k}={_num(v)}" for k, v in list(stage.metrics.items())[:2]))
    if stage.registered is not None:
        parts.append(f"`{stage.registered.name}` v{stage.registered.version} @{stage.registered.alias}")
    if facts.failure_reason:
        parts.append(f"reason: {facts.failure_reason.splitlines()[0][:200]}")
    return "- " + " · ".join(parts)


def header_lines(ctx: ReportContext) -> list[str]:
    lines = [f"# Study `{ctx.state.study}`", ""]
    description = getattr(ctx.spec, "description", "")
    if description:
        lines += [f"> {description}", ""]
    profile = getattr(ctx.spec, "profile", "")
    lines += [f"Report written {datetime.now():%Y-%m-%d %H:%M} from `{ctx.output}`"
              + (f" (profile `{profile}`)" if profile else "") + ".", ""]
    lines += ["## Stages", ""] + [stage_glance(ctx, name) for name in stage_order(ctx)] + [""]
    experiment = f"`{ctx.experiment_name}` (id {ctx.state.experiment_id})" if ctx.experiment_name \
        else f"id {ctx.state.experiment_id or '-'}"
    lines += ["## MLflow", "", f"Tracking URI `{ctx.target.uri}`, experiment {experiment}: one parent run per "
              f"stage, one child run per trial. Open it with", "", "```sh", ctx.target.ui_command(), "```", ""]
    if ctx.target.embedded:
        lines += [f"then browse <{ctx.target.ui_url(ctx.state.experiment_id)}> (the experiment's runs).", ""]
    return lines


def footer_lines(ctx: ReportContext) -> list[str]:
    """How to go further: compare trials in the MLflow UI, move a model's alias."""
    store = f"--output {ctx.output}" if ctx.target.embedded else f"--tracking-uri {ctx.target.uri}"
    registered = [s.registered for s in ctx.state.stages.values() if s.registered is not None]
    model = registered[0].name if registered else f"{ctx.state.study}-STAGE"
    version = registered[0].version if registered else "1"
    searched = [name for name in stage_order(ctx) if ctx.facts[name].kind in ("tune", "optuna")]
    example = searched[0] if searched else "STAGE"
    return ["## Next steps", "",
            "**Compare trials in the MLflow UI.** In the experiment, expand a stage's run to see its trials (child "
            f"runs), or search ``tags.`gensearch.stage` = '{example}'``; sort by the stage's metric, tick a few "
            "trials and press *Compare* for parameter–metric plots (parallel coordinates, scatter, contour) and "
            "per-epoch curves. A trial's run holds its params, its metrics per epoch (step = epoch) and files such "
            "as samples.png.", "",
            "**Promote a model.** A stage with `register:` registers its best trial's model as a new version and "
            "points the alias `champion` at it. Promotion is the human decision afterwards: list the versions (each "
            "study run that registered one added one), then move an alias:", "",
            "```sh", "# the registered models, their versions and aliases",
            f"python -m orchestrator.promote {store}",
            f"# point @champion at version {version} of {model}",
            f"python -m orchestrator.promote {store} {model} --version {version}",
            "# give the version registered from a trial's run (its run id is in the UI) another alias",
            f"python -m orchestrator.promote {store} {model} --run RUN_ID --alias staging",
            "```", "", f"Load a registered model by its URI, e.g. `models:/{model}@champion`.", ""]


# ---------------------------------------------------------------- per-stage sections


def best_lines(ctx: ReportContext, name: str, best: BestTrial) -> list[str]:
    """The best trial: id, metric, the other metrics at that step, and its (searched) settings."""
    facts = ctx.facts[name]
    epoch = f", step {best.epoch}" if best.epoch else ""
    lines = [f"**Best trial `{best.trial_id}`**{epoch}: **{best.metric} = {_num(best.value)}**", ""]
    others = [(k, v) for k, v in best.metrics.items() if k != best.metric and k != "epoch" and not k.endswith("_s")]
    if others:
        lines += ["Also at that step: " + ", ".join(f"{k}={_num(v)}" for k, v in others[:8]), ""]
    config = {k: v for k, v in best.config.items() if k not in facts.inputs}
    if facts.kind == "tune" and facts.searched:
        lines += [f"Searched settings: `{format_settings(config, facts.searched)}`", ""]
    elif config:
        lines += [f"Settings: `{format_settings(config)}`", ""]
    if best.child_run_id:
        lines += [f"MLflow run of the trial: `{best.child_run_id}`", ""]
    return lines


def registered_lines(stage: StageState) -> list[str]:
    reg = stage.registered
    if reg is None:
        return []
    return [f"**Registered model:** `{reg.name}` version {reg.version}, alias `@{reg.alias}` "
            f"(`models:/{reg.name}@{reg.alias}`)", ""]


def step_images(checkpoint: Path) -> list[Path]:
    """The PNG step files (samples.png, ...) of a trial's chosen checkpoint; when that checkpoint has
    none, those of the trial's latest checkpoint that has some."""
    from trainables.checkpoint import step_files

    pngs = [p for p in step_files(checkpoint) if p.suffix == ".png"]
    if pngs or not checkpoint.parent.is_dir():
        return pngs
    for folder in sorted(checkpoint.parent.glob("checkpoint_*"), reverse=True):
        pngs = [p for p in step_files(folder) if p.suffix == ".png"]
        if pngs:
            return pngs
    return []


def champion_lines(ctx: ReportContext, name: str, stage: StageState) -> list[str]:
    """A stage with several metrics: its champion rule, the chosen point and each reference point it beats
    or not (from the spec; without one, nothing: the front table still shows the chosen row)."""
    from orchestrator.spec import TuneStage

    spec_stage = next((s for s in ctx.spec.stages if s.name == name), None) if ctx.spec is not None else None
    if not isinstance(spec_stage, TuneStage) or not spec_stage.multi_objective or stage.best is None:
        return []
    from orchestrator.champion import describe_champion

    metrics = ", ".join(f"{m} ({mode})" for m, mode in spec_stage.objectives)
    chosen = describe_champion(spec_stage, stage.best)
    return [f"Searched metrics: {metrics}. Champion rule: **{spec_stage.champion}**, over every evaluated epoch "
            "of every trial.", "", f"{chosen[0].upper()}{chosen[1:]}.", ""]


def pareto_front_lines(path: Path) -> list[str]:
    """The first rows of pareto_front.csv (the front of a two-objective stage, best first) as a table."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if len(rows) < 2:
        return []
    header, body = rows[0], rows[1:]

    def cell(text: str) -> str:
        try:
            return _num(float(text))
        except ValueError:
            return text

    lines = [f"**Pareto front**: {len(body)} evaluated epoch(s) that no other epoch beats on every searched "
             f"metric (`{PARETO_FRONT_FILE}` in the stage's MLflow run)", ""]
    lines += _table(header, ([cell(c) for c in row] for row in body[:MAX_FRONT_ROWS]))
    if len(body) > MAX_FRONT_ROWS:
        lines.append(f"\n… and {len(body) - MAX_FRONT_ROWS} more rows in {PARETO_FRONT_FILE}.")
    return lines + [""]


def tune_section(ctx: ReportContext, name: str, stage: StageState, gallery: Gallery) -> list[str]:
    lines: list[str] = []
    if stage.best is not None:
        lines += best_lines(ctx, name, stage.best) + registered_lines(stage)
    lines += champion_lines(ctx, name, stage)
    folder = stage_folder(ctx.output, name, stage, "tune")
    if folder is not None:
        images = list(TUNE_IMAGES)
        if (folder / PARETO_FRONT_FILE).is_file():  # the front table, with its picture right after it
            lines += pareto_front_lines(folder / PARETO_FRONT_FILE)
            images.sort(key=lambda image: image != "pareto.png")
        for image in images:
            if (folder / image).is_file():
                lines += gallery.image(folder / image, name, image)
        lines += importance_lines(folder, name, gallery)
    if stage.best is not None and stage.best.checkpoint:
        step = f", step {stage.best.epoch}" if stage.best.epoch else ""
        for png in step_images(local_path(stage.best.checkpoint, ctx.output)):
            what = CAPTIONS.get(png.name, f"{png.stem} from the best trial's chosen checkpoint")
            lines += gallery.image(png, name, "best_trial", png.name,
                                   caption=f"{what} (trial {stage.best.trial_id}{step})")
    return lines


def importance_lines(folder: Path, name: str, gallery: Gallery) -> list[str]:
    """The stage's parameter importance (importance.py): its table, or the line saying why there is none,
    and its bar chart."""
    from orchestrator.importance import PLOT_FILE, TABLE_FILE

    if not (folder / TABLE_FILE).is_file():
        return []
    lines = (folder / TABLE_FILE).read_text(errors="replace").strip().splitlines() + [""]
    if (folder / PLOT_FILE).is_file():
        lines += gallery.image(folder / PLOT_FILE, name, PLOT_FILE)
    return lines


def optuna_section(ctx: ReportContext, name: str, stage: StageState, gallery: Gallery) -> list[str]:
    lines: list[str] = []
    if stage.best is not None:
        lines += best_lines(ctx, name, stage.best)
    folder = stage_folder(ctx.output, name, stage, "optuna")
    if folder is not None:
        if (folder / "search_history.png").is_file():
            lines += gallery.image(folder / "search_history.png", name, "search_history.png")
        lines += importance_lines(folder, name, gallery)
        best = folder / "best"
        for png in sorted(best.glob("*.png"))[:MAX_IMAGES_PER_FOLDER] if best.is_dir() else []:
            lines += gallery.image(png, name, "best", png.name, caption="the best trial's result")
    return lines


def headline_lines(metrics: Mapping[str, Any]) -> list[str]:
    """A job's first few metrics as a small table (jobs list their headline metrics first)."""
    items = numeric_items(metrics)
    if not items:
        return []
    lines = _table(["metric", "value"], [(k, _num(v)) for k, v in items[:HEADLINE_METRICS]])
    more = len(items) - HEADLINE_METRICS
    if more > 0:
        lines.append(f"\n… and {more} more in metrics.json and the stage's MLflow run.")
    return lines + [""]


def markdown_file_lines(path: Path, gallery: Gallery, *parts: str) -> list[str]:
    """A job's markdown table inline; a long one is copied next to the report and linked instead."""
    text = path.read_text(errors="replace").strip()
    lines = [f"**{path.name}**", ""]
    if len(text.splitlines()) <= MAX_TABLE_LINES:
        return lines + text.splitlines() + [""]
    link = gallery.add(path, *parts)
    return lines + text.splitlines()[:MAX_TABLE_LINES] + ["", f"… [the whole table]({link})", ""]


def text_file_lines(path: Path) -> list[str]:
    text = path.read_text(errors="replace").rstrip().splitlines()
    return [f"**{path.name}**", "", "```", *text[:MAX_TABLE_LINES], "```", ""]


def ordered_files(folder: Path) -> list[Path]:
    """A job folder's files worth showing: the known ones in a sensible order, then any other
    markdown tables and PNGs (the generic fallback, capped)."""
    known = [folder / name for name in KNOWN_JOB_FILES if (folder / name).is_file()]
    others = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".md", ".png") and p not in known)
    other_md = [p for p in others if p.suffix == ".md"]
    other_png = [p for p in others if p.suffix == ".png"]
    room = max(0, MAX_IMAGES_PER_FOLDER - sum(1 for p in known if p.suffix == ".png"))
    return known + other_md + other_png[:room]


def job_folder_lines(folder: Path, gallery: Gallery, parts: tuple[str, ...],
                     fallback_metrics: Mapping[str, Any] | None = None) -> list[str]:
    """One job folder (the stage's own, or one of its subfolders): headline metrics, tables, pictures,
    prototype grids."""
    metrics_file = folder / "metrics.json"
    metrics: Mapping[str, Any] = fallback_metrics or {}
    if metrics_file.is_file():
        try:
            loaded = json.loads(metrics_file.read_text())
            metrics = loaded if isinstance(loaded, dict) else metrics
        except json.JSONDecodeError:
            pass
    lines = headline_lines(metrics)
    for path in ordered_files(folder):
        if path.suffix == ".md":
            lines += markdown_file_lines(path, gallery, *parts, path.name)
        elif path.suffix == ".txt":
            lines += text_file_lines(path)
        else:
            lines += gallery.image(path, *parts, path.name)
    lines += grid_lines(folder / GRID_FOLDER, gallery, parts)
    for skipped in SKIPPED_FOLDERS:
        count = len(list((folder / skipped).glob("*.png"))) if (folder / skipped).is_dir() else 0
        if count:
            lines += [f"({count} images in `{skipped}/` are not shown here.)", ""]
    return lines


def grid_lines(grids: Path, gallery: Gallery, parts: tuple[str, ...]) -> list[str]:
    """Prototype grids (one per cluster), at most MAX_GRIDS of them."""
    if not grids.is_dir():
        return []
    pngs = sorted(grids.glob("*.png"))
    lines = []
    for png in pngs[:MAX_GRIDS]:
        lines += gallery.image(png, *parts, GRID_FOLDER, png.name, caption="prototypes of one cluster")
    if len(pngs) > MAX_GRIDS:
        lines += [f"({len(pngs) - MAX_GRIDS} more grids in `{GRID_FOLDER}/`.)", ""]
    return lines


def job_subfolders(folder: Path) -> list[Path]:
    """Subfolders with something to show (an evaluation job may write fewshot/, ood/, ... each with its
    own files); grids and per-image folders are part of their parent."""
    return [p for p in sorted(folder.iterdir())
            if p.is_dir() and not p.name.startswith(".") and p.name not in (GRID_FOLDER, *SKIPPED_FOLDERS)
            and any(q.suffix in (".md", ".png", ".json", ".txt") or q.name == GRID_FOLDER for q in p.iterdir())]


def job_section(ctx: ReportContext, name: str, stage: StageState, gallery: Gallery) -> list[str]:
    folder = stage_folder(ctx.output, name, stage, "job")
    if folder is None:
        return headline_lines(stage.metrics)
    lines = job_folder_lines(folder, gallery, (name,), stage.metrics)
    for sub in job_subfolders(folder):
        lines += [f"### {name} / {sub.name}", ""] + job_folder_lines(sub, gallery, (name, sub.name))
    return lines


def stage_lines(ctx: ReportContext, index: int, name: str, gallery: Gallery) -> list[str]:
    """A stage's section; what it holds depends on the stage's kind and the files it left."""
    stage, facts = ctx.state.stages.get(name, StageState()), ctx.facts[name]
    lines = [f"## {index}. {name} ({facts.kind}, {stage.status})", ""]
    if facts.failure_reason:
        lines += [f"**Failed:** {facts.failure_reason.splitlines()[0][:500]}", ""]
    if stage.status == "failed" and (ctx.output / "error.log").is_file():
        lines += ["The traceback is in `error.log` in the output folder; fix the cause and re-run the launcher "
                  "with `--resume`.", ""]
    if stage.status == "pending":
        return lines + ["Not started.", ""]
    body = {"tune": tune_section, "optuna": optuna_section}.get(facts.kind, job_section)(ctx, name, stage, gallery)
    return lines + (body or ["Nothing to show.", ""])


# ---------------------------------------------------------------- MLflow (write side)


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


# ---------------------------------------------------------------- entry points


def render(ctx: ReportContext, gallery: Gallery) -> str:
    """The whole report as markdown (copies the images it shows into the gallery on the way)."""
    sections = [stage_lines(ctx, index, name, gallery) for index, name in enumerate(stage_order(ctx), start=1)]
    lines = header_lines(ctx) + cost_lines(ctx) + estimate_section(ctx)
    lines += [line for section in sections for line in section]
    return "\n".join(lines + footer_lines(ctx)).rstrip() + "\n"


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


EXAMPLES = textwrap.dedent("""\
    examples:
      python -m orchestrator.report runs/smoke                      # writes runs/smoke/report.md (+ report/)
      python -m orchestrator.report runs/gasten_mnist --no-mlflow   # only the files, MLflow untouched
      python -m orchestrator.report out --tracking-uri http://HEAD:5000   # a study tracked on a server

    The report lists each stage's status, what it cost (reserved CPU-/GPU-hours), its best trial and
    settings, its registered model and its pictures (copied under OUTPUT_DIR/report/, linked relatively:
    zip report.md with report/ and it opens anywhere). It is logged to the study's MLflow experiment as
    one run named "report" (tag gensearch.report=true); running the command again updates that run.
    """)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.report",
                                     description="Write a study's report.md: stages, cost, best trials, pictures.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", metavar="OUTPUT_DIR", help="the study's output folder (holds study_state.json)")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow store to log to (default: the one in study_state.json)")
    parser.add_argument("--no-mlflow", action="store_true",
                        help="write the files only: log nothing and contact no tracking server (a local "
                             "embedded store is still read for the study's settings)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = Path(args.output)
    if not (output / STATE_FILE).is_file():
        print(f"error: {output} holds no {STATE_FILE}: pass a study's output folder (e.g. runs/smoke)",
              file=sys.stderr)
        return 2
    from orchestrator.tracking import apply_client_defaults

    apply_client_defaults()  # a server dying mid-report: seconds of retries, not minutes
    report = write_report(output, args.tracking_uri, log_to_mlflow=not args.no_mlflow)
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
