"""Ray Tune's OptunaSearch, with a trial that ASHA stopped early told to Optuna as stopped, not complete.

Ray 2.60's OptunaSearch tells Optuna every trial that ends with a result as COMPLETE with the value(s)
of its last result, so a trial ASHA stopped after 1 of 10 epochs enters Optuna's history as if that
epoch-1 value were what the whole budget gives (measured: see the README, "Writing a study"). With
two objectives that is worse than a poor value: an early epoch that is cheap on one metric (a
generator that has barely moved keeps its FID) can sit on Optuna's Pareto front and steer the sampler.

Here such a trial is told PRUNED. With one objective it keeps every step it reported as an
intermediate value (Ray's own reports lack the last one), and Optuna's TPE ranks PRUNED trials behind
every COMPLETE one, by the step they reached and then by their last value. Optuna keeps no intermediate
values for several objectives; its TPE then ranks PRUNED trials, all alike, behind every COMPLETE one.

The searcher is pickled with Tune's experiment state and restored on `--resume` (Ray's `save` and
`restore` copy the whole instance, the budget included), so it lives in a module, not a closure.
"""

from __future__ import annotations

import math
from typing import Any

from optuna.samplers import BaseSampler
from optuna.trial import TrialState
from ray.air.constants import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch


class BudgetAwareOptunaSearch(OptunaSearch):
    """OptunaSearch over one metric or several; a trial that ends before `budget` steps (ASHA's max_t;
    None: no early stopping) is told PRUNED."""

    def __init__(self, *, sampler: BaseSampler, metric: str | list[str], mode: str | list[str],
                 budget: int | None) -> None:
        super().__init__(sampler=sampler, metric=metric, mode=mode)
        self._budget = budget

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """Tune hands every searcher its own one metric (the scheduler's); this one keeps the objectives
        it was built with, which may be several or another metric than ASHA's."""
        return super().set_search_properties(None, None, config, **spec)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if error or not result or trial_id in self._completed_trials or not self.stopped_early(result):
            super().on_trial_complete(trial_id, result, error)
            return
        ot_trial = self._ot_trials[trial_id]
        if not isinstance(self.metric, list):
            value, step = result.get(self.metric), result.get(TRAINING_ITERATION)
            if isinstance(value, (int, float)) and math.isfinite(value) and step is not None:
                ot_trial.report(float(value), int(step))  # Optuna ignores a step already reported
        self._ot_study.tell(ot_trial, None, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)

    def stopped_early(self, result: dict) -> bool:
        """A trial whose last result came before the budget was stopped early (by ASHA: a trainable that
        runs fewer epochs than max_t on its own looks the same, and is told PRUNED too)."""
        return self._budget is not None and int(result.get(TRAINING_ITERATION, 0)) < self._budget
