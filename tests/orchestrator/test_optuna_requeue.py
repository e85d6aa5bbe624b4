"""A stop that lands between creating an Optuna trial's MLflow child run and recording the run in the trial.

The resumed trial must adopt that run (tagged with its number) instead of leaving an empty KILLED run beside
the one it creates: a killed-and-resumed study then holds one FINISHED child per trial, as an uninterrupted one.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from orchestrator.optuna_stage import CHILD_RUN, POSITION, requeue_unfinished_trials
from orchestrator.spec import OptunaStage
from orchestrator.tracking import Tracker, resolve_target


def stopped_study(tmp_path, position: bool):
    """An Optuna study with trial 0 complete and trial 1 cut off after its child run was created."""
    tracker = Tracker(resolve_target(tmp_path / "out", None, None), "requeue", study="requeue")
    parent = tracker.start_parent("bowl", "optuna", {})
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    done = study.ask({"a": optuna.distributions.FloatDistribution(0, 1)})
    done.set_user_attr(CHILD_RUN, tracker.create_child(parent, "bowl", "0", done.params))
    study.tell(done, 1.0)
    tracker.finish(done.user_attrs[CHILD_RUN])
    cut = study.ask({"a": optuna.distributions.FloatDistribution(0, 1)})
    if position:
        cut.set_user_attr(POSITION, 1)
    orphan = tracker.create_child(parent, "bowl", "1", cut.params)  # ... and the stop came here
    return study, storage, tracker, parent, orphan


def test_a_trial_kept_in_place_adopts_the_run_its_cut_off_attempt_created(tmp_path):
    study, storage, tracker, parent, orphan = stopped_study(tmp_path, position=True)
    stage = OptunaStage(name="bowl", objective="x", metric="m", mode="min")
    resumed = requeue_unfinished_trials(study, stage, tracker, parent, keep_drawn=True, storage=storage)
    assert [t.number for t in resumed] == [1]
    assert study.trials[1].user_attrs[CHILD_RUN] == orphan
    assert tracker.client.get_run(orphan).info.status == "RUNNING"  # left for the re-run to reopen and finish


def test_a_trial_queued_again_carries_the_run_its_cut_off_attempt_created(tmp_path):
    study, storage, tracker, parent, orphan = stopped_study(tmp_path, position=False)
    stage = OptunaStage(name="bowl", objective="x", metric="m", mode="min")
    assert requeue_unfinished_trials(study, stage, tracker, parent) == []
    queued = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert [t.user_attrs[CHILD_RUN] for t in queued] == [orphan]
    assert tracker.client.get_run(orphan).info.status == "RUNNING"


def test_a_run_no_trial_can_claim_is_closed_killed(tmp_path):
    study, storage, tracker, parent, orphan = stopped_study(tmp_path, position=False)
    stray = tracker.create_child(parent, "bowl", "7", {})  # no trial 7 exists
    stage = OptunaStage(name="bowl", objective="x", metric="m", mode="min")
    requeue_unfinished_trials(study, stage, tracker, parent)
    assert tracker.client.get_run(stray).info.status == "KILLED"
    assert tracker.client.get_run(orphan).info.status == "RUNNING"
