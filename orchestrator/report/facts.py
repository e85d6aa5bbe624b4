"""What the report knows about each stage and where it learnt it: the state, the stage folders on disk,
the study spec (given, the launcher's copy, or the one logged in MLflow) and the stages' MLflow runs,
so the report can say what it had to assume.
"""

from __future__ import annotations

import csv
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.study_state import StageState, StudyState
from orchestrator.tracking import TAG_KIND, Tracker, TrackingTarget

KIND_FOLDERS = {"tune": "tune", "optuna": "optuna", "job": "jobs"}


@dataclass(frozen=True)
class StageFacts:
    """What the report needs about a stage beyond its StageState, and where it came from (the spec, the state,
    the stage's MLflow run, or an assumption), so the report can say what it assumed."""

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


def open_store(target: TrackingTarget, state: StudyState, log_to_mlflow: bool) -> tuple[Tracker | None, str | None]:
    """A Tracker on the study's store and experiment (never creating one), or None and why not.

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
    return Tracker(target, state.study, state.study, experiment_id=state.experiment_id or None), None


def stage_runs(tracker: Tracker, state: StudyState) -> dict[str, Any]:
    """Each stage's parent run (params and tags), by stage name; stages MLflow cannot show are left out."""
    runs = {}
    for name, stage in state.stages.items():
        if stage.parent_run_id:
            try:
                runs[name] = tracker.run(stage.parent_run_id)
            except Exception:  # noqa: BLE001 - a deleted run, a store that stopped answering: do without
                continue
    return runs


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


def spec_from_runs(tracker: Tracker, state: StudyState, runs: Mapping[str, Any]) -> Any:
    """The study spec as the launcher logged it (the YAML is an artifact of every stage run), with the
    profile the run used (a stage run's `profile` param); None when it is not there or no longer valid."""
    from orchestrator.spec import load_study

    for run in runs.values():
        try:
            yamls = [name for name in tracker.artifact_names(run.info.run_id) if name.endswith((".yaml", ".yml"))]
            if not yamls:
                continue
            with tempfile.TemporaryDirectory(prefix="gensearch-report-") as scratch:
                path = tracker.artifact_file(run, yamls[0], Path(scratch))
                spec = load_study(path, profile=run.data.params.get("profile") or None)
        except Exception:  # noqa: BLE001 - an old or foreign spec that no longer validates: do without
            continue
        if spec.name == state.study:
            return spec
    return None


def facts_from_spec(stage: Any) -> StageFacts:
    """A stage's facts as its spec declares them."""
    from orchestrator.stages import kind_of

    kind, inputs = kind_of(stage), tuple(stage.inputs)
    resources = kind.trial_resources(stage)
    if resources is None:  # the stage runs in the launcher: the cost table counts its driver CPU
        return StageFacts(stage.name, kind.name, resources_from="spec", inputs=inputs)
    return StageFacts(stage.name, kind.name, resources.cpu, resources.gpu, "spec", searched=kind.searched(stage),
                      inputs=inputs)


def facts_from_run(name: str, stage: StageState, run: Any) -> StageFacts:
    """A stage's facts from its MLflow parent run (params `resources.*`, `config.*`, `inputs.*`), or from the
    state alone when there is no run (run is None). The kind is the state's record; a state from before kinds
    were recorded has it in the run's tag `gensearch.kind`; without either it is `?`."""
    params = run.data.params if run is not None else {}
    tags = run.data.tags if run is not None else {}
    kind = stage.kind or tags.get(TAG_KIND) or "?"
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
