"""ASHA whose early stopping does not depend on which trial reached a rung first.

Tune's ASHA (Ray 2.60, `_Bracket.on_result`) stops a trial at a rung when its result is below the
rung's cutoff over every result recorded there so far: a trial compared before or after a rival
reached the rung gets a different verdict, so two runs of one study stop different trials. Tune also
does not save a scheduler's state with the experiment, so a resumed stage starts with empty rungs.

`OrderedASHA` decides trial i at a rung against the trials at least `window` places before it in
suggestion order (0 .. i-W), and only those. With `OrderedSearch` (trial_order.py), trial i starts
after all of them ended, so the rung values it is compared with are final and the same in every
run: the same cutoff percentile as ASHA's, over a set that does not depend on timing. The first W
trials, which have nothing to be compared with, always run to the next rung (as ASHA's first trials
at an empty rung do). On resume the rungs are rebuilt from each trial's own results (result.json).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ray.air.constants import EXPR_RESULT_FILE
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.schedulers.async_hyperband import _Bracket

from orchestrator.trial_order import suggestion_place


class _OrderedBracket(_Bracket):
    """ASHA's bracket (its rungs and cutoff) with the comparison set of each decision limited by `settled`:
    settled(other, trial) says whether `other`'s rung results are final for `trial`'s decisions."""

    def __init__(self, min_t: int, max_t: int, reduction_factor: float,
                 settled: Callable[[str, str], bool]) -> None:
        super().__init__(min_t, max_t, reduction_factor, s=0, stop_last_trials=True)
        self.settled = settled

    def on_result(self, trial: Any, cur_iter: int, cur_rew: float | None) -> str:
        return self.decide(trial.trial_id, cur_iter, cur_rew, record_only=False)

    def decide(self, trial_id: str, cur_iter: float, cur_rew: float | None, record_only: bool) -> str:
        """Record the result at the highest rung it reached and has no value at yet (as ASHA does); STOP
        when it is below that rung's cutoff over the settled trials' values (`record_only`: never)."""
        for milestone, recorded in self._rungs:  # highest rung first
            if cur_iter < milestone or trial_id in recorded:
                continue
            action = TrialScheduler.CONTINUE
            if not record_only and cur_rew is not None:
                cutoff = self.cutoff({other: value for other, value in recorded.items()
                                      if self.settled(other, trial_id)})
                if cutoff is not None and cur_rew < cutoff:
                    action = TrialScheduler.STOP
            if cur_rew is not None:
                recorded[trial_id] = cur_rew
            return action
        return TrialScheduler.CONTINUE


class OrderedASHA(AsyncHyperBandScheduler):
    """ASHA with one bracket whose decision for a trial reads only the trials `window` or more places before it."""

    def __init__(self, *, window: int, time_attr: str = "training_iteration", max_t: int, grace_period: int,
                 reduction_factor: float, metric: str | None = None, mode: str | None = None) -> None:
        super().__init__(time_attr=time_attr, metric=metric, mode=mode, max_t=max_t, grace_period=grace_period,
                         reduction_factor=reduction_factor, brackets=1)
        self.window = window
        self.places: dict[str, int] = {}  # trial id -> place in suggestion order
        self._brackets = [_OrderedBracket(grace_period, max_t, reduction_factor, self.settled)]

    def settled(self, other: str, trial: str) -> bool:
        return other in self.places and self.places[other] <= self.places[trial] - self.window

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        self.places[trial.trial_id] = suggestion_place(trial)
        for result in past_results(trial):  # a restored trial: Tune kept its results, not our rungs
            if self._time_attr in result and self._metric in result and result[self._metric] is not None:
                self._brackets[0].decide(trial.trial_id, result[self._time_attr],
                                         self._metric_op * result[self._metric], record_only=True)


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
