"""MLflow glue: where a study is tracked, its experiment, and its per-stage parent runs.

Everything goes through an explicit `MlflowClient` and explicit run ids rather than MLflow's
global "active run", because trial results arrive in Tune callbacks, out of order, from many
trials at once. Swapping the embedded SQLite store for a server is only a different URI.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


TAG_STUDY = "gensearch.study"
TAG_STAGE = "gensearch.stage"
TAG_KIND = "gensearch.kind"
TAG_TRIAL = "gensearch.trial_id"
TAG_STATUS = "gensearch.status"
TAG_REASON = "gensearch.failure_reason"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
# The experiment's kind for MLflow's UI: model training, not a GenAI app (traces, tokens). MLflow 3.17's own
# UI decides by its GenAI / Model training switch instead (see TrackingTarget.ui_url); the tag tells other
# MLflow UIs and tools.
TAG_EXPERIMENT_KIND, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# An earlier attempt of a stage, set aside by --restart-from or the retry of an edited failed stage: kept,
# never deleted, and no longer counted as the stage's runs.
TAG_SUPERSEDED = "gensearch.superseded"
TAG_SUPERSEDED_REASON = "gensearch.superseded_reason"
MAX_PARAM_LENGTH = 6000
PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached; raised before any trial starts."""


class TrackingLost(TrackingUnavailable):
    """The tracking server stopped answering mid-study. Raised instead of a stage failure, because the
    stage did not fail: its trials and Tune's record of their results are kept, and `--resume` copies
    into MLflow whatever it missed once the server is back."""


# MLflow's client retries a refused or timed-out request 7 times with backoff factor 2 and waits up to
# 120 s per attempt: a server that dies mid-study freezes the driver (and with it Tune's event loop) for
# minutes per call before anything is said. The launcher uses these instead unless the user set them:
# a blip of a few seconds is still ridden out, an outage is noticed in about 10 s.
# MLflow also prints two "View run ... at: URL" lines whenever a run on a server ends: two per trial,
# burying the launcher's own one line per trial.
CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def apply_client_defaults(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set CLIENT_DEFAULTS in `environ` (the process environment by default) where the user has not;
    returns what was set."""
    environ = os.environ if environ is None else environ
    applied = {key: value for key, value in CLIENT_DEFAULTS.items() if key not in environ}
    environ.update(applied)
    return applied


@dataclass(frozen=True)
class TrackingTarget:
    uri: str
    artifact_root: str | None  # only for the embedded store; a server decides its own
    embedded: bool

    def ui_command(self) -> str:
        """The exact command that opens this store in the MLflow UI."""
        if self.embedded:
            return f"mlflow ui --backend-store-uri {self.uri} --default-artifact-root {self.artifact_root} --port 5000"
        return f"open {self.uri} in a browser (the tracking server's own UI)"

    def ui_url(self, experiment_id: str) -> str:
        """The experiment's runs in the MLflow UI that `ui_command` starts (or the server's own UI).

        MLflow 3.17's UI opens an experiment on its GenAI overview whatever the experiment's kind tag
        says, unless the page is asked for the model-training view (`workflowType=machine_learning`)."""
        base = "http://127.0.0.1:5000" if self.embedded else self.uri.rstrip("/")
        return f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///PATH` URI (relative or absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0] or ".")


def resolve_target(output: Path, cli_uri: str | None, spec_uri: str | None) -> TrackingTarget:
    """--tracking-uri beats MLFLOW_TRACKING_URI beats the study's `tracking.uri` beats embedded SQLite.

    A SQLite store given by URI keeps its artifacts in `mlartifacts/` beside the database, as the
    embedded one does: MLflow's own default would be `./mlruns` of whatever folder the command was typed in."""
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or spec_uri
    database = sqlite_file(uri) if uri else None
    if database is not None:
        return TrackingTarget(uri=uri, artifact_root=(database.resolve().parent / "mlartifacts").as_uri(),
                              embedded=False)
    if uri:
        return TrackingTarget(uri=uri, artifact_root=None, embedded=False)
    output = output.resolve()
    return TrackingTarget(uri=f"sqlite:///{output / 'mlflow.db'}", artifact_root=(output / "mlartifacts").as_uri(),
                          embedded=True)


def local_store_problem(target: TrackingTarget) -> str | None:
    """Why a SQLite store named by URI cannot be used (its folder missing, not a folder, not writable), or
    None. The embedded store's folder is the output folder, checked on its own; a server has its own check."""
    database = sqlite_file(target.uri)
    if database is None or target.embedded:
        return None
    from orchestrator.study_folder import blocking_file, write_problem

    folder = database.parent
    blocking = blocking_file(folder)
    if blocking is not None:
        return f"tracking URI {target.uri}: {blocking} is a file, not a folder"
    if not folder.is_dir():
        return f"tracking URI {target.uri}: the folder {folder} does not exist; create it or pick another URI"
    if database.exists() and not database.is_file():
        return f"tracking URI {target.uri}: {database} is not a file"
    if database.exists() and not os.access(database, os.W_OK):
        return f"tracking URI {target.uri}: cannot write {database}"
    problem = write_problem(folder)  # SQLite writes its journal beside the database
    return f"tracking URI {target.uri}: {problem}" if problem else None


def unreachable_reason(target: TrackingTarget, timeout_s: float = 5.0) -> str | None:
    """Why a tracking server does not answer its health endpoint right now, or None when it does (or when
    the store is not a server: a local SQLite file has no outage to detect)."""
    if not target.uri.startswith(("http://", "https://")):
        return None
    url = target.uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - user-given URI
            if response.status == 200:
                return None
            return f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as error:
        return str(getattr(error, "reason", error))


def tracking_outage(target: TrackingTarget, error: BaseException) -> str | None:
    """One line naming the server when `error` came from a tracking server that has stopped answering;
    None when the server answers (then `error` is a real failure, to be reported as such).

    Called after an MLflow call failed: by then the client has spent its retries, so a server that still
    does not answer is down, not slow."""
    if isinstance(error, TrackingUnavailable):
        return str(error)
    reason = unreachable_reason(target, timeout_s=3.0)
    if reason is None:
        return None
    return f"MLflow tracking server {target.uri} stopped answering ({reason})"


def check_reachable(target: TrackingTarget, timeout_s: float = 5.0) -> None:
    """Fail in seconds, with a sentence, when a tracking server does not answer.

    MLflow's own client retries for minutes before raising; we ask the server's health endpoint
    once, before Ray or any trial starts, so a dead server costs nothing.
    """
    reason = unreachable_reason(target, timeout_s)
    if reason is None:
        return
    raise TrackingUnavailable(
        f"MLflow tracking server {target.uri} is unreachable ({reason}); start it, or pass another "
        f"--tracking-uri (omit it to use the embedded SQLite store). Nothing was run."
    )


def last_line(text: object, default: str) -> str:
    """The last non-empty line of an error text: where Python and Ray put the actual reason."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else default


def error_line(error: BaseException) -> str:
    """`Type: last line of its message`: an error as one line of a run's reason or a printed note."""
    text = last_line(error, "")
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def flatten_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """MLflow params are flat strings; nested mappings become dotted keys."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        else:
            text = json.dumps(value) if isinstance(value, (list, tuple, bool)) or value is None else str(value)
            flat[name] = text[:MAX_PARAM_LENGTH]
    return flat


def numeric_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """Keep finite numbers only: MLflow rejects the rest, and NaN is reported as a failure reason instead."""
    return {key: float(value) for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


@contextlib.contextmanager
def without_progress_bar() -> Iterator[None]:
    """MLflow's artifact progress bars off within the block (MLflow reads only its environment variable for
    them); the environment is as it was afterwards."""
    previous = os.environ.get(PROGRESS_BAR_ENV)
    os.environ[PROGRESS_BAR_ENV] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(PROGRESS_BAR_ENV, None)
        else:
            os.environ[PROGRESS_BAR_ENV] = previous


@contextlib.contextmanager
def mlflow_pointed_at(uri: str) -> Iterator[None]:
    """MLflow's fluent API (`log_model`, `register_model`, `load_model`) pointed at `uri` within the block.
    MLflow's `set_tracking_uri`/`set_registry_uri` also write MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI into
    the environment for child processes; afterwards both, and MLflow's own settings, are as they were, so a
    later launch in the same process (a test, a notebook) is not sent to this store."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    variables = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    environment = {name: os.environ.get(name) for name in variables}
    settings = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = settings
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Tracker:
    """One study's view of an MLflow store: the only code that talks to MLflow's tracking API (the model
    registry's, in registry.py, is the other door)."""

    def __init__(self, target: TrackingTarget, experiment: str, study: str, experiment_id: str | None = None) -> None:
        """`experiment_id`: the experiment's id when it is known already (a study's state records it), so a
        reader such as the report never creates one."""
        self.target = target
        self.experiment_name = experiment
        self.study = study
        self._client = None
        self._experiment_id = experiment_id

    @property
    def client(self):
        """The MlflowClient, made on first use: importing MLflow takes about a second, which the
        launcher spends in a thread while Ray boots rather than before it (see StudyRunner.run)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.target.uri, registry_uri=self.target.uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment_name)
            if found is not None:
                self._experiment_id = found.experiment_id
                kind = found.tags.get(TAG_EXPERIMENT_KIND, "")
                if not kind or kind.endswith("_inferred") or kind == "no_inferred_type":  # not a user's choice
                    self.client.set_experiment_tag(found.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
            else:
                self._experiment_id = self.client.create_experiment(
                    self.experiment_name, artifact_location=self.target.artifact_root,
                    tags={TAG_STUDY: self.study, TAG_EXPERIMENT_KIND: EXPERIMENT_KIND},
                )
        return self._experiment_id

    def stored_experiment_name(self) -> str:
        """The experiment's name as the store has it (a study launched with another `tracking.experiment`)."""
        return self.client.get_experiment(self.experiment_id).name

    def create_run(self, name: str, tags: Mapping[str, str]) -> str:
        """A run of the study that is neither a stage nor a trial (the report, a comparison of seeds)."""
        return self.client.create_run(self.experiment_id, run_name=name, tags=dict(tags)).info.run_id

    def close(self, run_id: str) -> None:
        """End such a run: FINISHED, without the status tags of a stage's or trial's run (see `finish`)."""
        self.client.set_terminated(run_id, status="FINISHED")

    def runs_tagged(self, tag: str, value: str, max_results: int = 10) -> list[Any]:
        """The experiment's runs whose `tag` is `value`, oldest first."""
        return self.client.search_runs([self.experiment_id], filter_string=f"tags.`{tag}` = '{value}'",
                                       max_results=max_results, order_by=["attributes.start_time ASC"])

    def start_parent(self, stage: str, kind: str, params: Mapping[str, Any], run_id: str | None = None) -> str:
        """The stage's parent run: reused (set back to RUNNING) when resuming, else created."""
        if run_id is not None:
            self.reopen(run_id, status_tag="resumed")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=stage, tags={
            TAG_STUDY: self.study, TAG_STAGE: stage, TAG_KIND: kind, TAG_STATUS: "running"})
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten_params(params)
        existing = self.client.get_run(run_id).data.params
        new = [Param(k, v) for k, v in flat.items() if k not in existing]
        for start in range(0, len(new), 100):
            self.client.log_batch(run_id, params=new[start:start + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int = 0) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        values = [Metric(k, v, timestamp, step) for k, v in numeric_metrics(metrics).items()]
        if values:
            self.client.log_batch(run_id, metrics=values)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def finish(self, run_id: str, status: str = "FINISHED", reason: str | None = None,
               clear_reason: bool = False) -> None:
        """Close a run for good: FINISHED, FAILED (with the reason as a tag) or KILLED. `clear_reason`: the
        run carries the reason of an earlier stop (an interrupt, a failure since retried), which is no longer true."""
        if clear_reason:
            self.client.delete_tag(run_id, TAG_REASON)
        tags = {TAG_STATUS: status.lower()}
        if reason:
            tags[TAG_REASON] = reason[:5000]
        self.set_tags(run_id, tags)
        self.client.set_terminated(run_id, status=status)

    def reopen(self, run_id: str, status_tag: str = "running") -> None:
        """A closed run (killed by an interrupt, failed) that runs again: RUNNING, without the old stop's reason."""
        if TAG_REASON in self.client.get_run(run_id).data.tags:
            self.client.delete_tag(run_id, TAG_REASON)
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, TAG_STATUS, status_tag)

    def run(self, run_id: str) -> Any:
        """One run as MLflow holds it (`info.status`, `data.metrics`, `data.tags`, `data.params`)."""
        return self.client.get_run(run_id)

    def logged_steps(self, run_id: str, metric: str) -> set[int]:
        """The steps at which a run holds a value of `metric`: what a re-run or a backfill must not log again."""
        return {entry.step for entry in self.client.get_metric_history(run_id, metric)}

    def delete_run(self, run_id: str) -> None:
        """Remove a run that stands for nothing (a trial Tune never recorded); MLflow keeps it as deleted."""
        self.client.delete_run(run_id)

    def supersede(self, run_id: str, reason: str) -> None:
        """Set an earlier attempt's run aside (kept, never deleted); one left RUNNING by a dead launcher is closed."""
        self.set_tags(run_id, {TAG_SUPERSEDED: "true", TAG_SUPERSEDED_REASON: reason})
        if self.client.get_run(run_id).info.status == "RUNNING":
            self.finish(run_id, "KILLED", f"superseded: {reason}")

    def supersede_version(self, name: str, version: str, reason: str) -> None:
        """Tag a registered model version of an earlier attempt as set aside, with the reason (never deleted)."""
        for key, value in ((TAG_SUPERSEDED, "true"), (TAG_SUPERSEDED_REASON, reason)):
            self.client.set_model_version_tag(name, version, key, value)

    def children(self, parent_run_id: str) -> dict[str, Any]:
        """Child runs of a parent, by trial id (deleted and superseded runs excluded)."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}'", max_results=5000)
        return {run.data.tags.get(TAG_TRIAL): run for run in runs
                if run.data.tags.get(TAG_TRIAL) and run.data.tags.get(TAG_SUPERSEDED) != "true"}

    def create_child(self, parent_run_id: str, stage: str, trial_id: str, params: Mapping[str, Any]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=f"{stage}-{trial_id}", tags={
            TAG_PARENT: parent_run_id, TAG_STUDY: self.study, TAG_STAGE: stage, TAG_KIND: "trial",
            TAG_TRIAL: trial_id, TAG_STATUS: "running"})
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_files(self, run_id: str, files: Mapping[str, bytes]) -> None:
        """In-memory files as artifacts of a run (MLflow logs paths: they go through a scratch folder)."""
        import tempfile

        from trainables.checkpoint import save_step_files

        with tempfile.TemporaryDirectory(prefix="gensearch-files-") as folder:
            save_step_files(files, folder)
            self.log_step_files(run_id, folder)

    def log_step_files(self, run_id: str, checkpoint_folder: str | Path) -> None:
        """A checkpoint's step files (e.g. samples.png) as artifacts; a later step's file replaces its namesake."""
        from trainables.checkpoint import step_files

        for path in step_files(checkpoint_folder):
            self.client.log_artifact(run_id, str(path))

    def log_file(self, run_id: str, path: Path) -> None:
        self.client.log_artifact(run_id, str(path))

    def artifact_names(self, run_id: str) -> list[str]:
        """The files (not folders) at the top of a run's artifacts."""
        return [entry.path for entry in self.client.list_artifacts(run_id) if not entry.is_dir]

    def artifact_file(self, run: Any, name: str, scratch: Path) -> Path:
        """A run's artifact as a local file: read in place from a local artifact store (the embedded one),
        else downloaded into `scratch` without MLflow's progress bar (noise in the launcher's output)."""
        if run.info.artifact_uri.startswith("file://"):
            from urllib.parse import unquote, urlparse

            local = Path(unquote(urlparse(run.info.artifact_uri).path)) / name
            if local.is_file():
                return local
        with without_progress_bar():
            return Path(self.client.download_artifacts(run.info.run_id, name, str(scratch)))

    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str | None = None) -> None:
        if folder.is_dir() and any(folder.iterdir()):
            self.client.log_artifacts(run_id, str(folder), artifact_path)
