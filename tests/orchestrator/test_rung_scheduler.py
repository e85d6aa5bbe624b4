"""OrderedASHA: a trial is judged at a rung against every trial before it in suggestion order, held in place
while one of those is still short of the rung, so that which trials stop does not depend on timing."""

from __future__ import annotations

import pytest
from ray import tune
from ray.tune.schedulers import TrialScheduler

from orchestrator.rung_scheduler import HOLD, _OrderedBracket, OrderedASHA
from orchestrator.trial_order import OrderedSearch, VariantSearch


def bracket_over(places: dict[str, int], ended: set[str]) -> _OrderedBracket:
    """Rungs at 1 and 2 (max_t 4, reduction factor 2): ASHA's cutoff is the median of the values compared."""
    def earlier(trial_id: str) -> list[str]:
        return [other for other, place in places.items() if place < places[trial_id]]

    return _OrderedBracket(1, 4, 2, earlier, ended.__contains__)


def test_the_first_trial_always_goes_on_and_a_later_one_is_cut_at_the_median_of_those_before_it():
    places = {"a": 0, "b": 1, "c": 2, "d": 3}
    bracket = bracket_over(places, set())
    assert bracket.decide("a", 1, 3.0, record_only=False) == TrialScheduler.CONTINUE
    assert bracket.decide("b", 1, 1.0, record_only=False) == TrialScheduler.STOP  # below 3.0 (higher is better)
    assert bracket.decide("c", 1, 2.5, record_only=False) == TrialScheduler.CONTINUE  # median of 3.0, 1.0 is 2.0
    assert bracket.decide("d", 1, 2.4, record_only=False) == TrialScheduler.STOP  # median of 3.0, 1.0, 2.5 is 2.5
    assert bracket.decide("d", 1, 2.4, record_only=False) == TrialScheduler.CONTINUE  # recorded there already


def test_a_trial_ahead_of_an_earlier_one_waits_for_it_and_an_ended_one_is_not_waited_for():
    places = {"a": 0, "b": 1, "c": 2}
    ended: set[str] = set()
    bracket = bracket_over(places, ended)
    assert bracket.decide("b", 1, 1.0, record_only=False) == HOLD  # "a" is not at rung 1 yet
    assert bracket.judge("b") == HOLD
    assert bracket.decide("a", 1, 3.0, record_only=False) == TrialScheduler.CONTINUE
    assert bracket.judge("b") == TrialScheduler.STOP  # the same verdict as had "a" arrived first
    assert bracket.decide("c", 2, 5.0, record_only=False) == HOLD  # "a" may still reach rung 2
    ended.update({"a", "b"})  # ... it ended short of it, as did "b" (stopped at rung 1): nothing to compare with
    assert bracket.judge("c") == TrialScheduler.CONTINUE
    assert bracket.waiting == {}


def test_record_only_records_without_judging():
    bracket = bracket_over({"a": 0, "b": 1}, set())
    assert bracket.decide("b", 2, 1.0, record_only=True) == TrialScheduler.CONTINUE
    assert dict(bracket._rungs)[2] == {"b": 1.0} and bracket.waiting == {}


@pytest.fixture(scope="module")
def ray_here():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def racing_trial():
    """Reports `x` every epoch, a good `x` slowly (3 s an epoch) and a bad one fast, so a later, worse trial
    can reach a rung before an earlier one. Made here so that Ray ships it by value (a worker cannot import
    this folder's modules)."""

    def trial(config):
        import time as time_here

        from ray import tune as tune_here

        for _ in range(4):
            time_here.sleep(3.0 if config["x"] > 0.5 else 0.05)
            tune_here.report({"score": config["x"]})

    return trial


@pytest.mark.slow  # one small Tune run
def test_under_tune_a_later_trial_that_reaches_the_rung_first_is_held_and_then_stopped_against_the_earlier_one(
        ray_here, tmp_path):
    # Trial 0 is good and slow, trial 1 bad and fast: trial 1 reaches rung 1 first (unless its start lags by
    # seconds). Tune's ASHA (and an ordered ASHA that never waits) would let it go on past an empty rung; here
    # it waits for trial 0 and stops there, as it does when trial 0 is there first.
    search = VariantSearch({"x": tune.grid_search([0.9, 0.1])}, num_samples=1, seed=0)
    scheduler = OrderedASHA(max_t=4, grace_period=1, reduction_factor=2)
    tuner = tune.Tuner(racing_trial(), tune_config=tune.TuneConfig(
        metric="score", mode="max", num_samples=2, search_alg=OrderedSearch(search, window=2, total=2),
        scheduler=scheduler), run_config=tune.RunConfig(storage_path=str(tmp_path), name="race", verbose=0))
    results = {result.config["x"]: result for result in tuner.fit()}
    assert results[0.1].metrics["training_iteration"] == 1  # held at rung 1, then stopped there
    assert results[0.9].metrics["training_iteration"] == 4
    assert scheduler.held == {} and scheduler.bracket.waiting == {}
