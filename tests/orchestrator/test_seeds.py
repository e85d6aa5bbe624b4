"""The study seed and the order of parallel trials: seeds derived from the study seed, and a tune stage's
searcher told results in trial order whatever order the trials ended in (real Tune and Optuna searchers)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState
from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from orchestrator.resume_plan import ResumeRefused, resumed_seed_and_mode
from orchestrator.seeds import MAX_SEED, derive_seed, trial_seed, with_stage_seed
from orchestrator.spec import parse_study
from orchestrator.study_state import StudyState
from orchestrator.trial_order import OrderedSearch, VariantSearch
from tests.orchestrator.test_spec import valid_study


def test_seeds_are_a_function_of_study_seed_stage_and_place_and_neighbours_share_none():
    seeds = {(study, stage, index): trial_seed(study, stage, index)
             for study in (0, 1) for stage in ("a", "b") for index in range(50)}
    assert len(set(seeds.values())) == len(seeds)  # seed 1's trial 0 is not seed 0's trial 1
    assert all(0 <= seed < MAX_SEED for seed in seeds.values())
    assert trial_seed(0, "a", 3) == seeds[(0, "a", 3)]
    assert derive_seed(0, "a", "sampler") != derive_seed(0, "a", "trial", 0)


def test_a_job_gets_the_stage_seed_unless_the_file_fixes_one():
    from trainables.clustering_search import ClusteringSearchConfig

    assert with_stage_seed(ClusteringSearchConfig, {}, 7, "clustering") == {"seed": trial_seed(7, "clustering", 0)}
    assert with_stage_seed(ClusteringSearchConfig, {"seed": 3}, 7, "clustering") == {"seed": 3}


def test_the_study_seed_and_mode_default_to_0_and_reproducible():
    spec = parse_study(valid_study(), "study.yaml")
    assert (spec.seed, spec.reproducible) == (0, True)
    spec = parse_study({**valid_study(), "seed": 5, "reproducible": False}, "study.yaml")
    assert (spec.seed, spec.reproducible) == (5, False)


def test_a_resume_keeps_the_seed_it_ran_with_and_refuses_another():
    launched = parse_study({**valid_study(), "seed": 3}, "study.yaml")
    state = StudyState(study="smoke", tracking_uri="", seed=3, reproducible=True)
    assert resumed_seed_and_mode(state, launched, launched, "out", seed_given=False) == (3, True)
    with pytest.raises(ResumeRefused, match="ran with seed 3; --seed 4"):
        resumed_seed_and_mode(state, launched, parse_study({**valid_study(), "seed": 4}, "study.yaml"), "out",
                              seed_given=True)
    with pytest.raises(ResumeRefused, match="reproducible: false"):
        resumed_seed_and_mode(state, launched, parse_study({**valid_study(), "seed": 3, "reproducible": False},
                                                           "study.yaml"), "out", seed_given=False)


def told(searcher: OptunaSearch) -> list[float]:
    """The results the Optuna study behind a Tune searcher holds, by trial."""
    return [t.value for t in searcher._ot_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]


def test_a_trial_is_suggested_from_the_trials_two_places_back_told_in_trial_order():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = OptunaSearch(space={"x": tune.uniform(0, 1)}, metric="loss", mode="min",
                            sampler=optuna.samplers.RandomSampler(seed=0))
    ordered = OrderedSearch(searcher, window=2, total=4)
    assert ordered.suggest("t0") and ordered.suggest("t1")
    assert ordered.suggest("t2") is None  # two at a time
    ordered.on_trial_complete("t1", {"loss": 1.0, "x": 0})
    assert ordered.suggest("t2") is None  # t0, two places back, still runs: t1's end changes nothing
    assert told(searcher) == []
    ordered.on_trial_complete("t0", {"loss": 2.0, "x": 0})
    assert ordered.suggest("t2") is not None
    assert told(searcher) == [2.0]  # t0 only: t1 counts as running for t2, as it would had it ended last
    assert ordered.suggest("t3") is not None
    assert told(searcher) == [2.0, 1.0]
    ordered.on_trial_complete("t3", {"loss": 4.0, "x": 0})
    assert told(searcher) == [2.0, 1.0]  # t2 still runs
    ordered.on_trial_complete("t2", {"loss": 3.0, "x": 0})
    assert told(searcher) == [2.0, 1.0, 3.0, 4.0]  # all suggested: the last results are told, in order


def test_the_basic_search_hands_out_the_same_variants_for_a_seed():
    space = {"x": tune.uniform(0, 1), "n": tune.grid_search([1, 2])}
    runs = [[VariantSearch(space, 2, seed) for _ in range(2)] for seed in (0, 1)]
    drawn = [[[search.suggest(str(i)) for i in range(5)] for search in pair] for pair in runs]
    assert drawn[0][0] == drawn[0][1] and drawn[0][0] != drawn[1][0]
    assert drawn[0][0][4] == Searcher.FINISHED and sorted(v["n"] for v in drawn[0][0][:4]) == [1, 1, 2, 2]


def test_reproducible_false_keeps_tunes_own_asha_and_concurrency():
    from ray.tune.schedulers import ASHAScheduler

    from orchestrator.rung_scheduler import OrderedASHA
    from orchestrator.tune_stage import make_scheduler, make_search

    stage = parse_study(valid_study(), "study.yaml").stages[0]
    assert type(make_scheduler(stage, None)) is ASHAScheduler and isinstance(make_scheduler(stage, 2), OrderedASHA)
    assert not isinstance(make_search(stage, study_seed=0, window=None)[0], OrderedSearch)
    assert isinstance(make_search(stage, study_seed=0, window=2)[0], OrderedSearch)
