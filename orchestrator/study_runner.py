"""Run a validated study stage by stage, keeping the study state and MLflow in step.

A stage is `running` from the moment its parent run exists until it is `finished` (or `failed`);
`--resume` skips finished stages, reuses the parent run of an unfinished one and lets Tune pick
up its trials where they stopped; a failed stage is retried the same way, its failed trials too.
Whatever happens, no run is left in RUNNING: a failure marks the stage's run FAILED with the reason,
an interrupt marks it and its trials in flight KILLED, both resumable.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from orchestrator.spec import Stage, StudySpec
from orchestrator.stage_outputs import reference_path
from orchestrator.stages import kind_of
from orchestrator.stages.base import StageError
from orchestrator.study_state import StudyState, save_state
from orchestrator.tracking import Tracker, TrackingLost, error_line, tracking_outage

TUNE_DEFAULTS = {
    # Tune saves its experiment state at most this often; small, so a kill loses little bookkeeping.
    "TUNE_GLOBAL_CHECKPOINT_S": "1",
    # Let Ctrl-C reach us (to mark runs KILLED) instead of Tune swallowing it.
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
    # Frequent snapshots are what we want (every checkpoint is resumable); Tune warns about them.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Our own one-line-per-trial progress replaces Tune's tables and banners.
    "RAY_AIR_NEW_OUTPUT": "0",
}


def apply_tune_defaults() -> None:
    """Set TUNE_DEFAULTS in the launcher's environment where the user has not. Tune's driver reads them when a
    stage runs; the launcher calls this once, before the study starts (importing this module changes nothing)."""
    for key, value in TUNE_DEFAULTS.items():
        os.environ.setdefault(key, value)


def resolve_inputs(stage: Stage, state: StudyState, stages: Sequence[Stage] = ()) -> dict[str, str]:
    """`gan.best` -> the best checkpoint folder of stage `gan` (a job stage: its output folder);
    `prototypes.clustering` -> the output `clustering` stage `prototypes` recorded (stage_outputs.py; `stages`,
    the study's, trace it in a state from before outputs were recorded)."""
    resolved = {}
    for name, reference in stage.inputs.items():
        source = state.stage(reference.stage)
        if source.status != "finished":
            raise StageError(stage.name, f"input {name} <- {reference}: stage {reference.stage!r} has not finished")
        try:
            resolved[name] = reference_path(reference.stage, reference.selector, state, stages)
        except LookupError as error:
            raise StageError(stage.name, f"input {name} <- {reference}: {error}") from None
    return resolved


class StudyRunner:
    def __init__(self, spec: StudySpec, output: Path, tracker: Tracker, state: StudyState, *, resume: bool,
                 address: str | None, data_root: Path | None = None, verbose: bool = False) -> None:
        """`data_root`: the launcher's --data-root, handed to the trials (Ray workers) in their environment and
        to the stages run here (jobs, Optuna objectives) as an argument."""
        self.spec, self.output, self.tracker, self.state = spec, output, tracker, state
        self.resume, self.address, self.data_root, self.verbose = resume, address, data_root, verbose
        self._ray_started = False

    def save(self) -> None:
        save_state(self.output, self.state)

    def run(self) -> None:
        pending = [s for s in self.spec.stages if self.state.stage(s.name).status != "finished"]
        if any(kind_of(stage).uses_ray for stage in pending):
            # Importing MLflow (~1 s), creating an embedded store (~1.5 s of schema migrations) and
            # booting Ray (~3 s, mostly waiting for its processes) are independent: side by side. If
            # the thread fails in any way, the line after the join does the same work again and raises.
            store = threading.Thread(target=lambda: self.tracker.experiment_id, name="mlflow-store")
            store.start()
            try:
                self.start_ray()
            finally:
                store.join()
        self.state.experiment_id = self.tracker.experiment_id
        self.save()
        try:
            for stage in self.spec.stages:
                if self.state.stage(stage.name).status == "finished":
                    print(f"[{stage.name}] already finished: skipped", flush=True)
                    continue
                self.run_stage(stage)
        finally:
            self.stop_ray()

    def run_stage(self, stage: Stage) -> None:
        stage_state = self.state.stage(stage.name)
        resuming = stage_state.parent_run_id is not None
        retrying = stage_state.status == "failed"  # unchanged since (an edited one was set aside: see resume_plan)
        kind = kind_of(stage)
        if retrying:
            print(f"[{stage.name}] failed last time: {kind.retry_note}", flush=True)
        inputs = resolve_inputs(stage, self.state, self.spec.stages)
        params = {**kind.parent_params(stage), **({"profile": self.spec.profile} if self.spec.profile else {}),
                  "study_seed": self.spec.seed, "reproducible": self.spec.reproducible}
        parent = self.tracker.start_parent(stage.name, stage.kind, params, stage_state.parent_run_id)
        stage_state.parent_run_id, stage_state.status = parent, "running"
        stage_state.kind = stage.kind
        self.save()
        spec_path = Path(self.spec.source)
        if spec_path.is_file() and not resuming:
            self.tracker.log_file(parent, spec_path)
        started = time.monotonic()
        try:
            kind.run(stage, self, inputs, parent, retrying)
        except KeyboardInterrupt:
            stage_state.wall_s += time.monotonic() - started
            self.save()
            reason = "interrupted by the user; continue with --resume"
            for run in self.tracker.children(parent).values():  # the trials in flight
                if run.info.status == "RUNNING":
                    self.tracker.finish(run.info.run_id, "KILLED", reason)
            self.tracker.finish(parent, "KILLED", reason)
            raise
        except Exception as error:  # noqa: BLE001 - any failure must close the run with its reason
            stage_state.wall_s += time.monotonic() - started
            outage = tracking_outage(self.tracker.target, error)
            if outage is not None:  # MLflow cannot be told anything: the stage stays `running`, resumable
                self.save()
                raise TrackingLost(f"{outage} during stage {stage.name!r}") from error
            stage_state.status = "failed"
            self.save()
            reason = error.reason if isinstance(error, StageError) else error_line(error)
            self.tracker.finish(parent, "FAILED", reason)
            raise StageError(stage.name, reason) from error
        stage_state.status = "finished"
        stage_state.wall_s += time.monotonic() - started
        self.tracker.log_metrics(parent, {"wall_s": stage_state.wall_s})
        self.save()
        self.tracker.finish(parent, "FINISHED")

    def start_ray(self) -> None:
        import ray

        from orchestrator.data import worker_env

        if self._ray_started or ray.is_initialized():
            return
        print(f"Starting Ray ({'joining ' + self.address if self.address else 'local'})...", flush=True)
        env_vars = worker_env(self.data_root)
        runtime_env = {"env_vars": env_vars} if env_vars else None
        if not self.verbose:  # our per-trial line names the reason and the trial's error file instead
            logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
        # "local", not None: with None Ray joins the last cluster `ray start` made on this machine (or
        # $RAY_ADDRESS), and a run meant to be private would land on someone else's cluster.
        ray.init(address=self.address or "local", include_dashboard=False, log_to_driver=self.verbose,
                 logging_level=logging.INFO if self.verbose else logging.WARNING, runtime_env=runtime_env)
        self._ray_started = True

    def stop_ray(self) -> None:
        if self._ray_started:
            import ray

            ray.shutdown()  # only the Ray this process started (or its connection to a cluster)
            self._ray_started = False
