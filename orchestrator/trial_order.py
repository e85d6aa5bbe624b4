"""The order of a tune stage's trials: each trial's place in it, its seed, and what the searcher knew when
it suggested the trial.

Ray Tune tells its searcher a result as soon as a trial ends, so with two trials at a time, trial 3 is
suggested from whichever of trials 0-2 happened to finish first: two runs of one study differ. Ray's
`ConcurrencyLimiter(batch=True)` fixes the history but (read in Ray 2.60's source) holds every slot
until the batch's slowest trial ends, and tells the batch in the order the trials ended. Here, with a
window of W trials (the stage's `max_concurrent_trials`):

- trial i is suggested once every trial at least W places earlier (0 .. i-W) has ended, and the
  searcher is told exactly those, in suggestion order, first; trials i-W+1 .. i-1 are still pending in
  its eyes (Optuna 5's TPE treats them all as running, whatever they reported meanwhile: constant
  liar). The searcher's history at trial i is therefore the same in every run (once every trial is
  suggested, it is told the rest in order as they end, so its saved state holds them all), and a slot
  freed by a trial that ASHA stopped early is refilled as soon as the trial W places back has ended,
  not when the whole batch has (at most W trials run at once, as before);
- `OrderedASHA` (orchestrator/rung_scheduler.py) decides trial i at a rung against trials 0 .. i-1, once
  each has reached the rung or ended (trials 0 .. i-W have ended by then; the others started earlier).

Every suggestion also gets the trial's `seed` (orchestrator/seeds.py) when the trainable has one that
the YAML neither fixes nor searches. Both wrappers keep their state in Tune's searcher snapshot, so a
resumed stage goes on exactly where the snapshot was taken.
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import numpy as np
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.variant_generator import generate_variants

from orchestrator.seeds import SEED_FIELD, trial_seed


class SeededSearch(Searcher):
    """Gives each suggestion of the wrapped searcher the trial's seed: a function of the study seed, the
    stage and the trial's place in suggestion order (None `study_seed`: no seed is given)."""

    def __init__(self, searcher: Searcher, *, stage: str, study_seed: int | None) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.stage, self.study_seed = searcher, stage, study_seed
        self.suggested = 0

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def suggest(self, trial_id: str) -> dict | str | None:
        suggestion = self.searcher.suggest(trial_id)
        if suggestion in (None, Searcher.FINISHED):
            return suggestion
        if self.study_seed is not None:
            suggestion = {**suggestion, SEED_FIELD: trial_seed(self.study_seed, self.stage, self.suggested)}
        self.suggested += 1
        return suggestion

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict:
        return {"stage": self.stage, "study_seed": self.study_seed, "suggested": self.suggested}

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


class OrderedSearch(ConcurrencyLimiter):
    """At most `window` trials at a time, each suggested from the results of the trials at least `window`
    places before it (see the module's docstring). A ConcurrencyLimiter, so that Tune keeps `window`
    trials pending, as it does for `max_concurrent_trials`."""

    def __init__(self, searcher: Searcher, window: int, total: int | None = None) -> None:
        super().__init__(searcher, max_concurrent=window)
        self.window, self.total = window, total  # total: the stage's number of trials
        self.order: dict[str, int] = {}  # trial id -> place in suggestion order
        self.ended: dict[int, tuple[str, dict | None, bool]] = {}  # place -> (trial id, result, error), untold
        self.told = 0  # the searcher knows the results of trials 0 .. told-1

    def tell_up_to(self, place: int) -> bool:
        """Tell the searcher the results of trials told .. place-1, in order; False when one still runs."""
        while self.told < place:
            if self.told not in self.ended:
                return False
            ended_id, result, error = self.ended.pop(self.told)
            self.searcher.on_trial_complete(ended_id, result=result, error=error)
            self.told += 1
        return True

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return False  # the window is the study's, not Tune's to change

    def suggest(self, trial_id: str) -> dict | str | None:
        place = len(self.order)
        if not self.tell_up_to(place - self.window + 1):
            return None  # a trial `window` places back still runs: Tune asks again later
        suggestion = self.searcher.suggest(trial_id)
        if suggestion not in (None, Searcher.FINISHED):
            self.order[trial_id] = place
            self.live_trials.add(trial_id)
        return suggestion

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        place = self.order.get(trial_id)
        if place is None or place < self.told:  # not ours, or told already (a failed trial retried since)
            return
        self.ended[place] = (trial_id, result, error)  # a retried trial's latest ending wins
        self.live_trials.discard(trial_id)
        if getattr(self, "total", None) is not None and len(self.order) >= self.total:
            self.tell_up_to(self.total)  # nothing is left to suggest: the searcher may learn every result now

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)


class VariantSearch(Searcher):
    """Tune's basic search (every grid combination, `num_samples` times, random draws for the other
    domains) as a Searcher, so that it can be wrapped like Optuna: the variants are those Tune's
    BasicVariantGenerator makes, drawn once up front from `seed` and handed out in order."""

    def __init__(self, space: dict[str, Any], num_samples: int, seed: int) -> None:
        super().__init__()
        random_state = np.random.RandomState(seed)
        self.variants = [spec["config"] for _ in range(num_samples)
                         for _, spec in generate_variants({"config": copy.deepcopy(space)}, random_state=random_state)]
        self.handed_out = 0

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the space came with the constructor

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.handed_out >= len(self.variants):
            return Searcher.FINISHED
        self.handed_out += 1
        return copy.deepcopy(self.variants[self.handed_out - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # the variants do not depend on results

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))


def suggestion_place(trial: Any) -> int:
    """A Tune trial's place in suggestion order (0-based): Tune's SearchGenerator tags each trial it creates
    `<count>_<settings>`, counting from 1, and keeps the tag through a resume."""
    tag = str(getattr(trial, "experiment_tag", "") or "")
    head = tag.split("_", 1)[0]
    if not head.isdigit():
        raise ValueError(f"trial {getattr(trial, 'trial_id', '?')}: no suggestion count in its tag {tag!r}")
    return int(head) - 1
