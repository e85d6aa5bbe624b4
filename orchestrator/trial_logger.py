"""A Ray Tune callback that mirrors every trial into an MLflow child run and prints progress.

It runs in the driver, fed by the results Tune streams back from every node, so a trial on any
node of a cluster lands in MLflow without that node needing access to the tracking store. The
callback is pickled with the Tuner's state and unpickled on `--resume`; it keeps only plain data
and reopens its MLflow client lazily. Existing child runs are looked up by trial id, so a resumed
trial continues its run instead of starting a duplicate.

A tracking server that stops answering never stops the trials: the callback says so once, skips
MLflow until the server answers its health check again, and Tune's own record of every result (each
trial's result.json) is the buffer: `tune_stage.reconcile` copies whatever MLflow lacks when the stage
ends, or on `--resume` if the server was still down then.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS

from orchestrator.tracking import Tracker, TrackingTarget, last_line, tracking_outage, unreachable_reason
from orchestrator.tune_reporter import NODE_ID

# Tune's bookkeeping keys are not the trainable's metrics; they go to tags or nowhere.
TUNE_BOOKKEEPING = set(AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_tag", "should_checkpoint", "date",
                                            NODE_ID}
HEARTBEAT_S = 30.0
# While the tracking server is down, its health endpoint is asked at most this often (a refused
# connection answers at once; a silent host costs the probe's 2 s timeout).
OUTAGE_PROBE_S = 10.0
# Logged with every result; its history tells which steps a run already has.
STEP_MARKER = "time_total_s"
T = TypeVar("T")


def _reason(trial: Any) -> str:
    message = getattr(trial, "error_message", None) or ""
    if not message and getattr(trial, "error_file", None):
        try:
            message = open(trial.error_file).read()
        except OSError:
            message = ""
    return last_line(message, "trial raised an error (see the Tune error file)")


class MlflowTrialLogger(Callback):
    # A stage with several metrics: the others shown beside `metric` in each progress line, and the
    # header's description of them. Class-level defaults, so a callback pickled before they existed
    # (an experiment resumed across an upgrade) still works.
    also_shown: tuple[str, ...] = ()
    headline: str = ""

    def __init__(self, target: TrackingTarget, experiment: str, study: str, stage: str, parent_run_id: str,
                 metric: str, mode: str, total_trials: int, max_t: int | None = None,
                 also_shown: tuple[str, ...] = (), headline: str = "") -> None:
        self.target, self.experiment, self.study, self.stage = target, experiment, study, stage
        self.parent_run_id, self.metric, self.mode, self.total_trials = parent_run_id, metric, mode, total_trials
        self.max_t = max_t  # ASHA's budget: a trial ending before it was stopped early
        # With several metrics no single "best so far" exists (the champion rule weighs them at the end).
        self.also_shown, self.headline = tuple(also_shown), headline
        self._tracker: Tracker | None = None
        self._runs: dict[str, str] = {}
        self._tagged_node: dict[str, str] = {}  # run id -> the node id its tags name
        self._last_step: dict[str, int] = {}
        self._outage_since: float | None = None  # monotonic time the tracking server stopped answering
        self._last_probe = 0.0
        # Trials counted as done, by id: a trial Tune runs again (its snapshot predates its end, or a
        # retry) is counted once, so the progress line never reads 9/8.
        self._done_ids: set[str] = set()
        self._closed: set[str] = set()  # trials whose run a stop or a failure closed: reopened if they run again
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
        self._tagged_node, self._last_step = {}, {}
        self._outage_since, self._last_probe = None, 0.0
        self._runs, self._done_ids, self._closed = {}, set(), set()
        children = self._tracking(lambda: self.tracker.children(self.parent_run_id))
        if children is not None:
            self._runs = {trial_id: run.info.run_id for trial_id, run in children.items()}
            self._done_ids = {trial_id for trial_id, run in children.items()
                              if run.info.status in ("FINISHED", "FAILED")}
            self._closed = {trial_id for trial_id, run in children.items() if run.info.status in ("FAILED", "KILLED")}
            for run in children.values():  # a resumed stage's progress lines keep the best of the finished trials
                if run.info.status == "FINISHED":
                    self._note(run.data.metrics.get(self.metric))
        print(f"[{self.stage}] {self.total_trials} trials, {self.headline or f'metric {self.metric} ({self.mode})'}"
              + (f"; resuming with {self._done} already done" if self._done else ""), flush=True)

    @property
    def _done(self) -> int:
        return min(len(self._done_ids), self.total_trials)

    def _note(self, value: Any) -> None:
        """Keep the best value of a finished trial, for the progress lines (a single-metric stage only)."""
        if isinstance(value, (int, float)) and not self.also_shown:
            better = self._best is None or (value > self._best if self.mode == "max" else value < self._best)
            self._best = value if better else self._best

    def _tracking(self, action: Callable[[], T]) -> T | None:
        """Run one piece of MLflow work; None if the tracking server is down.

        A failure while the server answers its health check is a real error and is raised. A failure
        while it does not starts an outage: one line naming the server, then MLflow is skipped (not
        retried per result, which would stall Tune's loop for the client's retries each time) until a
        probe finds the server back. Nothing is lost meanwhile: Tune keeps every result."""
        if self._outage_since is not None and not self._server_back():
            return None
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - only an outage is swallowed; the rest is re-raised
            outage = tracking_outage(self.target, error)
            if outage is None:
                raise
            self._outage_since = self._last_probe = time.monotonic()
            print(f"[{self.stage}] tracking: {outage}; the trials go on and Tune keeps every result, which "
                  f"is copied to MLflow once the server answers again", flush=True)
            return None

    def _server_back(self) -> bool:
        now = time.monotonic()
        if now - self._last_probe < OUTAGE_PROBE_S:
            return False
        self._last_probe = now
        if unreachable_reason(self.target, timeout_s=2.0) is not None:
            return False
        try:
            # A child run may have been created just before the outage without its id reaching us.
            children = self.tracker.children(self.parent_run_id)
        except Exception:  # noqa: BLE001 - answered the probe but not this: still down
            return False
        self._runs.update({trial_id: run.info.run_id for trial_id, run in children.items()})
        self._last_step = {}
        print(f"[{self.stage}] tracking: MLflow tracking server {self.target.uri} answers again after "
              f"{now - self._outage_since:.0f}s; logging resumes", flush=True)
        self._outage_since = None
        return True

    def _run_id(self, trial: Any) -> str:
        run_id = self._runs.get(trial.trial_id)
        if run_id is None:
            run_id = self.tracker.create_child(self.parent_run_id, self.stage, trial.trial_id, trial.config)
            self._runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._done_ids.discard(trial.trial_id)  # running (again)
        self._tracking(lambda: self._start_run(trial))

    def _start_run(self, trial: Any) -> None:
        run_id = self._run_id(trial)
        if trial.trial_id in self._closed:  # interrupted or failed last time, now running again
            self.tracker.reopen(run_id)
            self._closed.discard(trial.trial_id)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._tracking(lambda: self._log_result(trial, result))

    def _log_result(self, trial: Any, result: dict) -> None:
        run_id = self._run_id(trial)
        step = int(result.get("training_iteration", 0))
        if step > self._logged_through(run_id):
            metrics = {k: v for k, v in result.items() if k not in TUNE_BOOKKEEPING}
            metrics[STEP_MARKER] = result.get("time_total_s", 0.0)
            self.tracker.log_metrics(run_id, metrics, step=step)
            self._last_step[run_id] = step
        node = str(result.get(NODE_ID, ""))
        if self._tagged_node.get(run_id) != node:  # a retried trial may land on another node
            self.tracker.set_tags(run_id, {"gensearch.node_id": node, "gensearch.node_ip": result.get("node_ip", ""),
                                           "gensearch.hostname": result.get("hostname", "")})
            self._tagged_node[run_id] = node

    def _logged_through(self, run_id: str) -> int:
        """The last step already in MLflow for this run. A trial resumed from a checkpoint older than
        its last report repeats a few steps; the first record of a step is kept, not doubled."""
        if run_id not in self._last_step:
            self._last_step[run_id] = max(self.tracker.logged_steps(run_id, STEP_MARKER), default=0)
        return self._last_step[run_id]

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        """Publish the step's files (e.g. samples.png) while the trial runs: watch it in the MLflow UI."""
        path = getattr(checkpoint, "path", None)
        if not path:
            return
        self._tracking(lambda: self._publish_step_files(trial, path))

    def _publish_step_files(self, trial: Any, path: str) -> None:
        run_id = self._run_id(trial)
        try:
            self.tracker.log_step_files(run_id, path)
        except OSError:  # storage not mounted on this node: published after the stage instead
            pass

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._tracking(lambda: self.tracker.finish(self._run_id(trial), "FINISHED"))  # else: reconcile closes it
        self._done_ids.add(trial.trial_id)
        last = trial.last_result or {}
        self._note(last.get(self.metric))
        steps = last.get("training_iteration", 0)
        early = " (stopped early by ASHA)" if self.max_t and steps < self.max_t else ""
        shown = ", ".join(f"{name}={last[name]:.4g}" for name in (self.metric, *self.also_shown)
                          if isinstance(last.get(name), (int, float))) or "no metric"
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
        reason = _reason(trial)
        self._tracking(lambda: self.tracker.finish(self._run_id(trial), "FAILED", reason))
        self._done_ids.add(trial.trial_id)
        where = f" (details: {trial.path}/error.txt)" if getattr(trial, "path", None) else ""
        print(f"[{self.stage}] {self._done}/{self.total_trials} done · trial {trial.trial_id} FAILED: {reason}{where}",
              flush=True)
