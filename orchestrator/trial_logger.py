"""A Ray Tune callback that mirrors every trial into an MLflow child run and prints progress.

It runs in the driver, fed by the results Tune streams back from every node, so a trial on any
node of a cluster lands in MLflow without that node needing access to the tracking store. The
callback is pickled with the Tuner's state and unpickled on `--resume`; it keeps only plain data
and reopens its MLflow client lazily. Existing child runs are looked up by trial id, so a resumed
trial continues its run instead of starting a duplicate.
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS

from orchestrator.tracking import Tracker, TrackingTarget, last_line

# Tune's bookkeeping keys are not the trainable's metrics; they go to tags or nowhere.
TUNE_BOOKKEEPING = set(AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_tag", "should_checkpoint", "date"}
HEARTBEAT_S = 30.0
# Logged with every result; its history tells which steps a run already has.
_STEP_MARKER = "time_total_s"


def _reason(trial: Any) -> str:
    message = getattr(trial, "error_message", None) or ""
    if not message and getattr(trial, "error_file", None):
        try:
            message = open(trial.error_file).read()
        except OSError:
            message = ""
    return last_line(message, "trial raised an error (see the Tune error file)")


class MlflowTrialLogger(Callback):
    def __init__(self, target: TrackingTarget, experiment: str, study: str, stage: str, parent_run_id: str,
                 metric: str, mode: str, total_trials: int, max_t: int | None = None) -> None:
        self.target, self.experiment, self.study, self.stage = target, experiment, study, stage
        self.parent_run_id, self.metric, self.mode, self.total_trials = parent_run_id, metric, mode, total_trials
        self.max_t = max_t  # ASHA's budget: a trial ending before it was stopped early
        self._tracker: Tracker | None = None
        self._runs: dict[str, str] = {}
        self._node_tagged: set[str] = set()
        self._last_step: dict[str, int] = {}
        self._done = 0
        self._best: float | None = None
        self._started = self._last_heartbeat = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_tracker"] = None
        return state

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.target, self.experiment, self.study)
        return self._tracker

    def setup(self, **info: Any) -> None:
        self._started = self._last_heartbeat = time.monotonic()
        self._node_tagged, self._last_step = set(), {}
        children = self.tracker.children(self.parent_run_id)
        self._runs = {trial_id: run.info.run_id for trial_id, run in children.items()}
        self._done = sum(1 for run in children.values() if run.info.status in ("FINISHED", "FAILED"))
        print(f"[{self.stage}] {self.total_trials} trials, metric {self.metric} ({self.mode})"
              + (f"; resuming with {self._done} already done" if self._done else ""), flush=True)

    def _run_id(self, trial: Any) -> str:
        run_id = self._runs.get(trial.trial_id)
        if run_id is None:
            run_id = self.tracker.create_child(self.parent_run_id, self.stage, trial.trial_id, trial.config)
            self._runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run_id(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        run_id = self._run_id(trial)
        step = int(result.get("training_iteration", 0))
        if step > self._logged_through(run_id):
            metrics = {k: v for k, v in result.items() if k not in TUNE_BOOKKEEPING}
            metrics[_STEP_MARKER] = result.get("time_total_s", 0.0)
            self.tracker.log_metrics(run_id, metrics, step=step)
            self._last_step[run_id] = step
        if run_id not in self._node_tagged:  # once per attempt: a retried trial may land on another node
            self.tracker.set_tags(run_id, {"gensearch.node_ip": result.get("node_ip", ""),
                                           "gensearch.hostname": result.get("hostname", "")})
            self._node_tagged.add(run_id)

    def _logged_through(self, run_id: str) -> int:
        """The last step already in MLflow for this run. A trial resumed from a checkpoint older than
        its last report repeats a few steps; the first record of a step is kept, not doubled."""
        if run_id not in self._last_step:
            history = self.tracker.client.get_metric_history(run_id, _STEP_MARKER)
            self._last_step[run_id] = max((m.step for m in history), default=0)
        return self._last_step[run_id]

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        """Publish the step's files (e.g. samples.png) while the trial runs: watch it in the MLflow UI."""
        path = getattr(checkpoint, "path", None)
        if not path:
            return
        run_id = self._run_id(trial)
        try:
            self.tracker.log_step_files(run_id, path)
        except OSError:  # storage not mounted on this node: published after the stage instead
            pass

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._run_id(trial)
        self.tracker.finish(run_id, "FINISHED")
        self._done += 1
        last = trial.last_result or {}
        value = last.get(self.metric)
        if isinstance(value, (int, float)):
            better = self._best is None or (value > self._best if self.mode == "max" else value < self._best)
            self._best = value if better else self._best
        steps = last.get("training_iteration", 0)
        early = " (stopped early by ASHA)" if self.max_t and steps < self.max_t else ""
        shown = f"{self.metric}={value:.4g}" if isinstance(value, (int, float)) else "no metric"
        best = f" (best {self._best:.4g})" if self._best is not None else ""
        print(f"[{self.stage}] {self._done}/{self.total_trials} done · trial {trial.trial_id} after {steps} "
              f"step(s){early}: {shown}{best} · {time.monotonic() - self._started:.0f}s", flush=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """A heartbeat every HEARTBEAT_S while trials run, so long epochs never look like a hang."""
        now = time.monotonic()
        if now - self._last_heartbeat < HEARTBEAT_S:
            return
        self._last_heartbeat = now
        running = [t for t in trials if t.status == "RUNNING"]
        if running:
            steps = ", ".join(f"{t.trial_id}@{(t.last_result or {}).get('training_iteration', 0)}" for t in running)
            best = f", best {self.metric}={self._best:.4g}" if self._best is not None else ""
            print(f"[{self.stage}] {self._done}/{self.total_trials} done, running (trial@step): {steps}{best} · "
                  f"{now - self._started:.0f}s", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._run_id(trial)
        reason = _reason(trial)
        self.tracker.finish(run_id, "FAILED", reason)
        self._done += 1
        where = f" (details: {trial.path}/error.txt)" if getattr(trial, "path", None) else ""
        print(f"[{self.stage}] {self._done}/{self.total_trials} done · trial {trial.trial_id} FAILED: {reason}{where}",
              flush=True)
