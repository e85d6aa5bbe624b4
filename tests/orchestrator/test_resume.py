"""SIGKILL the launcher mid-search, then `--resume`: every trial once, no duplicate runs, same parent."""

from __future__ import annotations

import json
import time

import psutil
import pytest

from tests.orchestrator.study_helpers import client_for, run_launcher, run_until, study_runs, tiny_study

NUM_SAMPLES = 6


@pytest.mark.slow
def test_sigkill_then_resume_runs_every_trial_once_under_the_same_parent(tmp_path):
    spec = tiny_study(tmp_path / "tiny.yaml", num_samples=NUM_SAMPLES, epochs=3, train_size=1500)
    output = tmp_path / "out"
    killed: list[int] = []
    run_until(spec, output, r"\[classifier\] [2-9]/\d+ done", grace_s=2.5, killed=killed)
    time.sleep(1)
    assert not [pid for pid in killed if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"], \
        "processes of the killed launcher's group survived"

    client = client_for(output)
    _, parents, children = study_runs(client, "tiny")
    parent_before = parents["classifier"].info.run_id
    finished_before = {r.data.tags["gensearch.trial_id"] for r in children[parent_before]
                       if r.info.status == "FINISHED"}
    assert 2 <= len(finished_before) < NUM_SAMPLES, "the kill did not land mid-search"
    assert parents["classifier"].info.status == "RUNNING"  # killed: nobody could close it

    result = run_launcher(str(spec), "--output", str(output), "--resume")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resuming the Tune experiment" in result.stdout

    _, parents, children = study_runs(client, "tiny")
    assert parents["classifier"].info.run_id == parent_before
    assert parents["classifier"].info.status == "FINISHED"
    trials = children[parent_before]
    trial_ids = [r.data.tags["gensearch.trial_id"] for r in trials]
    assert len(trials) == NUM_SAMPLES and len(set(trial_ids)) == NUM_SAMPLES
    assert all(r.info.status == "FINISHED" for r in trials)
    assert finished_before <= set(trial_ids)
    for run in trials:
        epochs = [m.value for m in client.get_metric_history(run.info.run_id, "epoch")]
        assert epochs == sorted(set(epochs)), f"an epoch was logged twice in MLflow: {epochs}"
    # Trials finished before the kill were not trained again: Tune's own log of each has no repeated step.
    for trial_id in finished_before:
        log = output / "tune" / "classifier" / f"trial_{trial_id}" / "result.json"
        steps = [json.loads(line)["training_iteration"] for line in log.read_text().splitlines()]
        assert steps == list(range(1, len(steps) + 1)), f"trial {trial_id} re-ran after resume: steps {steps}"
    version = client.get_model_version_by_alias("tiny-classifier", "champion")
    assert version.run_id in {r.info.run_id for r in trials}
    assert sorted(parents) == ["classifier", "evaluate"]
