"""Run a validated study stage by stage, keeping the study state and MLflow in step.

A stage is `running` from the moment its parent run exists until it is `finished` (or `failed`);
`--resume` skips finished stages, reuses the parent run of an unfinished one and lets Tune pick
up its trials where they stopped; a failed stage is retried the same way, its failed trials too.
Whatever happens, no run is left in RUNNING: a failure marks the stage's run FAILED with the reason,
an interrupt marks it and its trials in flight KILLED, both resumable.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from orchestrator.pbt import is_pbt
from orchestrator.spec import JobStage, OptunaStage, ResourcesSpec, Stage, StudySpec, TuneStage, packing_problem
from orchestrator.stage_outputs import declared_outputs, produced_outputs, reference_path
from orchestrator.stages import kind_of
from orchestrator.study_state import BestTrial, StudyState, save_state
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


class StageError(RuntimeError):
    def __init__(self, stage: str, reason: str) -> None:
        self.stage, self.reason = stage, reason
        super().__init__(f"stage {stage!r} failed: {reason}")


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


def champion_tags(best: BestTrial) -> dict[str, str]:
    """The parent run's tags naming a two-objective stage's champion: trial, epoch, and whether it met the rule."""
    return {"gensearch.champion_trial_id": best.trial_id, "gensearch.champion_epoch": str(best.epoch),
            "gensearch.champion_rule_met": str(bool(best.rule_met)).lower()}


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

    def run_tune(self, stage: TuneStage, inputs: dict[str, str], parent: str, retrying: bool) -> None:
        from orchestrator.registry import register_best
        from orchestrator.tune_stage import run_tune_stage
        from trainables import catalog

        self.start_ray()
        resources = self.check_trial_fits(stage)
        if resources != stage.resources:  # the CPU fallback: the spec stays as written, the trials ask for no GPU
            self.tracker.set_tags(parent, {"gensearch.fallback": "cpu: no GPU on this machine, trials ran with gpu 0"})
            stage = dataclasses.replace(stage, resources=resources)
        stage_state = self.state.stage(stage.name)
        stage_state.trial_cpu, stage_state.trial_gpu = float(stage.resources.cpu), float(stage.resources.gpu)
        # PBT decides on complete generations, in Tune's own asynchronous way (orchestrator/pbt_tune.py).
        window = self.reproducible_window(stage) if self.spec.reproducible and not is_pbt(stage) else None
        outcome = run_tune_stage(stage=stage, inputs=inputs, storage=self.output / "tune", tracker=self.tracker,
                                 parent_run_id=parent, resume=self.resume, retry_failed=retrying,
                                 study_seed=self.spec.seed, window=window)
        best = outcome.best
        stage_state.best, stage_state.output = best, str(outcome.experiment_dir)
        stage_state.trials, stage_state.failed_trials = outcome.trials, outcome.failed_trials
        self.save()
        # A stage with several metrics: every metric of the chosen epoch, not only the champion's objective.
        chosen = {f"best_{k}": v for k, v in best.metrics.items()} if stage.multi_objective else {}
        self.tracker.log_metrics(parent, {**chosen, f"best_{best.metric}": best.value, "trials": outcome.trials,
                                          "failed_trials": outcome.failed_trials})
        self.tracker.set_tags(parent, {"gensearch.best_trial_id": best.trial_id,
                                       "gensearch.best_child_run_id": best.child_run_id,
                                       **(champion_tags(best) if stage.multi_objective else {})})
        for name in ("trials.csv", "search_history.png", "parameter_sweep.png", "pareto.png", "pareto_front.csv"):
            path = outcome.experiment_dir / name
            if path.is_file():
                self.tracker.log_file(parent, path)
        if stage.register is not None:
            print(f"[{stage.name}] registering the best model as {stage.register.name} @{stage.register.alias}",
                  flush=True)
            registered = register_best(self.tracker, catalog.trainable(stage.trainable), best, stage.register,
                                       stage.name, report=self.output / "report.md")
            stage_state.registered = registered
            self.tracker.set_tags(parent, {"gensearch.registered": f"{registered.name} v{registered.version}"})
        if stage.multi_objective:
            from orchestrator.champion import searched_values

            print(f"[{stage.name}] champion: trial {best.trial_id}, epoch {best.epoch}: "
                  f"{searched_values(stage, best.metrics)}"
                  + ("" if best.rule_met else " (no epoch met the champion rule: the closest one)"), flush=True)
        else:
            print(f"[{stage.name}] best trial {best.trial_id}: {best.metric}={best.value:.4g}", flush=True)

    def reproducible_window(self, stage: TuneStage) -> int:
        """How many trials run at once in reproducible mode: `max_concurrent_trials`, else as many as this
        machine's Ray fits (said once, since the study then depends on the machine's size)."""
        import math

        import ray

        if stage.max_concurrent_trials:
            return stage.max_concurrent_trials
        available = ray.cluster_resources()
        fits = [math.floor(available.get(kind, 0.0) / need + 1e-9)
                for kind, need in (("CPU", stage.resources.cpu), ("GPU", stage.resources.gpu)) if need > 0]
        window = max(1, min([*fits, stage.total_trials]))
        print(f"[{stage.name}] {window} trial(s) at a time: what this machine fits; set max_concurrent_trials for a "
              f"study that is the same on any machine", flush=True)
        return window

    def run_optuna(self, stage: OptunaStage, inputs: dict[str, str], parent: str) -> None:
        from orchestrator.optuna_stage import run_optuna_stage

        outcome = run_optuna_stage(stage=stage, inputs=inputs, workdir=self.output / "optuna" / stage.name,
                                   tracker=self.tracker, parent_run_id=parent,
                                   study_name=f"{self.spec.name}.{stage.name}", study_seed=self.spec.seed,
                                   reproducible=self.spec.reproducible, data_root=self.data_root)
        best = outcome.best
        stage_state = self.state.stage(stage.name)
        stage_state.best, stage_state.output = best, str(outcome.workdir)
        stage_state.outputs = produced_outputs(declared_outputs(stage), Path(best.checkpoint))
        stage_state.trials, stage_state.failed_trials = outcome.trials, outcome.infeasible
        self.save()
        self.tracker.log_metrics(parent, {**{f"best_{k}": v for k, v in best.metrics.items()},
                                          "trials": outcome.trials, "infeasible_trials": outcome.infeasible})
        self.tracker.set_tags(parent, {"gensearch.best_trial_id": best.trial_id,
                                       "gensearch.best_child_run_id": best.child_run_id or ""})
        for name in ("trials.csv", "search_history.png"):
            path = outcome.workdir / name
            if path.is_file():
                self.tracker.log_file(parent, path)
        self.tracker.log_artifacts(parent, Path(best.checkpoint), "best")
        others = ", ".join(f"{k}={v:.3g}" for k, v in best.metrics.items() if k != best.metric and not k.endswith("_s"))
        print(f"[{stage.name}] best trial {best.trial_id}: {best.metric}={best.value:.4g} ({others})", flush=True)

    def run_job(self, stage: JobStage, inputs: dict[str, str], parent: str) -> None:
        from orchestrator.job_stage import run_job_stage

        workdir = self.output / "jobs" / stage.name
        outcome = run_job_stage(stage=stage, inputs=inputs, workdir=workdir, tracker=self.tracker, run_id=parent,
                                study_seed=self.spec.seed, data_root=self.data_root)
        metrics = outcome.metrics
        stage_state = self.state.stage(stage.name)
        stage_state.metrics, stage_state.output = {k: float(v) for k, v in metrics.items()}, str(workdir)
        stage_state.outputs = outcome.outputs
        print(f"[{stage.name}] " + ", ".join(f"{k}={v:.4g}" for k, v in list(metrics.items())[:4]), flush=True)

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

    def check_trial_fits(self, stage: TuneStage) -> ResourcesSpec:
        """On a fixed local Ray, a trial asking for more than exists would wait forever: say so now,
        and refuse a GPU packing whose trials' declared memory cannot fit this machine's smallest GPU.
        Returns the resources the trials will get: the stage's own, or with `gpu: 0` when the stage
        allows `fallback: cpu` and this machine has no GPU. A cluster (--address) may autoscale, so
        its resources are not judged here."""
        import ray

        resources = stage.resources
        if self.address:
            return resources
        available = ray.cluster_resources()
        if resources.gpu > 0 and available.get("GPU", 0.0) == 0:
            if resources.fallback != "cpu":
                raise StageError(stage.name, f"resources.gpu: each trial asks for {resources.gpu:g} GPU but this "
                                             f"machine's Ray has no GPU; add `fallback: cpu` to the stage's resources "
                                             f"to run its trials on CPU here, set gpu: 0, or join a cluster with "
                                             f"--address")
            print(f"[{stage.name}] no GPU on this machine: running its trials on CPU (resources.fallback: cpu)",
                  flush=True)
            resources = dataclasses.replace(resources, gpu=0.0)
        for kind, need in (("CPU", resources.cpu), ("GPU", resources.gpu)):
            have = available.get(kind, 0.0)
            if need > have:
                raise StageError(stage.name, f"resources.{kind.lower()}: each trial asks for {need:g} {kind} but "
                                             f"this machine's Ray has {have:g}; lower it or join a cluster with "
                                             f"--address")
        if resources.gpu > 0 and resources.gpu_memory_gb is not None:
            smallest = smallest_gpu()
            if smallest is not None:
                memory_gb, name = smallest
                problem = packing_problem(resources.gpu, resources.gpu_memory_gb, memory_gb,
                                          device=f"the smallest GPU here: {name}")
                if problem:
                    raise StageError(stage.name, f"resources: {problem}")
        return resources

    def stop_ray(self) -> None:
        if self._ray_started:
            import ray

            ray.shutdown()  # only the Ray this process started (or its connection to a cluster)
            self._ray_started = False


def smallest_gpu() -> tuple[float, str] | None:
    """(memory in GB, `cuda:I NAME`) of the CUDA device with the least memory that torch sees here, or None.

    GB as torch counts them (2**30 bytes), rounded down to 0.1: a card sold as "40GB" shows a little under 40."""
    import math

    import torch

    if not torch.cuda.is_available():
        return None
    devices = [(torch.cuda.get_device_properties(i), i) for i in range(torch.cuda.device_count())]
    if not devices:
        return None
    properties, index = min(devices, key=lambda pair: pair[0].total_memory)
    return math.floor(properties.total_memory / 2**30 * 10) / 10, f"cuda:{index} {properties.name}"

