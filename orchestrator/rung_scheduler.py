"""ASHA whose early stopping does not depend on which trial reached a rung first.

Tune's ASHA (Ray 2.60, `_Bracket.on_result`) stops a trial at a rung when its result is below the
rung's cutoff over every result recorded there so far: a trial compared before or after a rival
reached the rung gets a different verdict, so two runs of one study stop different trials. Tune also
does not save a scheduler's state with the experiment, so a resumed stage starts with empty rungs.

`OrderedASHA` decides trial i at a rung against every trial before it in suggestion order (0 .. i-1),
with ASHA's cutoff percentile, once each of them has either reached that rung or ended. A trial that
arrives while an earlier one is still below the rung is held in place until it is: Tune leaves it
running but gives it no next step (its process waits inside `tune.report`), so nothing is saved or
restored, and with `OrderedSearch` (trial_order.py) the earlier trials started first, so the wait is
rare and short. Which trials an earlier one is compared with, and so whether it reaches a rung, does
not depend on timing: every decision is the same in every run, and the second trial at a rung is
compared with the first as in Tune's own ASHA (only trial 0 always runs to the next rung).

On resume the rungs are rebuilt from each trial's own results (result.json). A trial killed while held
at a rung resumes past it (its decision is not made again); holds last seconds, so that is rare.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ray.air.constants import EXPR_RESULT_FILE
from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.schedulers.async_hyperband import _Bracket

from orchestrator.trial_order import suggestion_place

HOLD = "HOLD"  # not one of Tune's decisions: the bracket's word for "an earlier trial is not at this rung yet"


class _OrderedBracket(_Bracket):
    """ASHA's bracket (its rungs and cutoff) whose decision for a trial at a rung reads only the trials
    `earlier(trial)` names, and only once `ended` says each of them that has no value there has ended."""

    def __init__(self, min_t: int, max_t: int, reduction_factor: float,
                 earlier: Callable[[str], list[str]], ended: Callable[[str], bool]) -> None:
        super().__init__(min_t, max_t, reduction_factor, s=0, stop_last_trials=True)
        self.earlier, self.ended = earlier, ended
        self.waiting: dict[str, tuple[float, float]] = {}  # held trial id -> (milestone, its value there)

    def on_result(self, trial: Any, cur_iter: int, cur_rew: float | None) -> str:
        return self.decide(trial.trial_id, cur_iter, cur_rew, record_only=False)

    def decide(self, trial_id: str, cur_iter: float, cur_rew: float | None, record_only: bool) -> str:
        """Record the result at the highest rung it reached and has no value at yet (as ASHA does), then
        judge it there (`record_only`: never): STOP when below the rung's cutoff over the earlier trials'
        values, HOLD while an earlier trial may still bring a value to the rung."""
        for milestone, recorded in self._rungs:  # highest rung first
            if cur_iter < milestone or trial_id in recorded:
                continue
            if cur_rew is None:
                return TrialScheduler.CONTINUE
            recorded[trial_id] = cur_rew
            if record_only:
                return TrialScheduler.CONTINUE
            self.waiting[trial_id] = (milestone, cur_rew)
            return self.judge(trial_id)
        return TrialScheduler.CONTINUE

    def judge(self, trial_id: str) -> str:
        """The verdict on a waiting trial: HOLD (still waiting), or CONTINUE / STOP (no longer waiting)."""
        milestone, value = self.waiting[trial_id]
        recorded = dict(self._rungs)[milestone]
        before = self.earlier(trial_id)
        if any(other not in recorded and not self.ended(other) for other in before):
            return HOLD
        del self.waiting[trial_id]
        cutoff = self.cutoff({other: recorded[other] for other in before if other in recorded})
        return TrialScheduler.STOP if cutoff is not None and value < cutoff else TrialScheduler.CONTINUE


class OrderedASHA(AsyncHyperBandScheduler):
    """ASHA with one bracket whose decision for a trial reads every trial before it in suggestion order,
    holding the trial in place while one of those is still short of the rung (see the module's docstring)."""

    def __init__(self, *, time_attr: str = "training_iteration", max_t: int, grace_period: int,
                 reduction_factor: float, metric: str | None = None, mode: str | None = None) -> None:
        super().__init__(time_attr=time_attr, metric=metric, mode=mode, max_t=max_t, grace_period=grace_period,
                         reduction_factor=reduction_factor, brackets=1)
        self.places: dict[str, int] = {}  # trial id -> place in suggestion order
        self.finished: set[str] = set()  # trial ids that ended (completed, stopped, errored, removed)
        self.held: dict[str, Trial] = {}  # trial id -> a trial held at a rung, running without a next step
        self._brackets = [_OrderedBracket(grace_period, max_t, reduction_factor, self.earlier, self.finished.__contains__)]

    @property
    def bracket(self) -> _OrderedBracket:
        return self._brackets[0]

    def earlier(self, trial_id: str) -> list[str]:
        place = self.places[trial_id]
        return [other for other, where in self.places.items() if where < place]

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        self.places[trial.trial_id] = suggestion_place(trial)
        for result in past_results(trial):  # a restored trial: Tune kept its results, not our rungs
            self.record(trial.trial_id, result)
        if trial.status in (Trial.TERMINATED, Trial.ERROR):
            self.finished.add(trial.trial_id)

    def record(self, trial_id: str, result: dict) -> None:
        """Put a result on the rung it reached, without judging it (one from before a restore, or a last one)."""
        if self._time_attr in result and self._metric in result and result[self._metric] is not None:
            self.bracket.decide(trial_id, result[self._time_attr], self._metric_op * result[self._metric],
                                record_only=True)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == HOLD:
            self.held[trial.trial_id] = trial
            action = TrialScheduler.NOOP
        self.release(tune_controller)
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self.record(trial.trial_id, result)
        self.on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self.on_trial_remove(tune_controller, trial)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        """The trial ended, however: held trials waiting for it may have their verdict now."""
        self._trial_info.pop(trial.trial_id, None)
        self.finished.add(trial.trial_id)
        self.held.pop(trial.trial_id, None)
        self.bracket.waiting.pop(trial.trial_id, None)
        self.release(tune_controller)

    def release(self, tune_controller: Any) -> None:
        """Give every held trial whose earlier trials are now at its rung (or ended) its verdict, in
        suggestion order: the next step (CONTINUE) or the end (STOP)."""
        controller = getattr(tune_controller, "_tune_controller", tune_controller)  # Tune hands schedulers a wrapper
        for trial_id in sorted(self.held, key=self.places.__getitem__):
            if trial_id not in self.held:  # released meanwhile, by a stop below
                continue
            verdict = self.bracket.judge(trial_id)
            if verdict == HOLD:
                continue
            trial = self.held.pop(trial_id)
            if verdict == TrialScheduler.STOP:
                self._num_stopped += 1
                # As Tune marks a result it stops on at once. Assigned, not updated in place: Tune caches the
                # trial's metadata for its experiment snapshot until the attribute is set.
                trial.run_metadata.last_result = {**trial.last_result, "done": True}
                controller.stop_trial(trial)
            elif trial.is_saving:  # Tune acts on a saving trial's decision when the save is done
                controller._cached_trial_decisions[trial.trial_id] = verdict
            else:
                controller._schedule_trial_train(trial)


def past_results(trial: Any) -> Iterator[dict]:
    """The results a trial reported before this run of the stage, from its result.json (none for a new trial)."""
    for where in ("path", "local_path"):
        try:
            folder = getattr(trial, where, None)
        except RuntimeError:  # a new trial: Tune names its folder only when it starts
            return
        if not folder or not (Path(folder) / EXPR_RESULT_FILE).is_file():
            continue
        with (Path(folder) / EXPR_RESULT_FILE).open() as handle:
            for line in handle:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:  # a line cut by the kill
                    continue
        return
