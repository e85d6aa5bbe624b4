"""A study on a real two-node Ray cluster (two `ray start` processes on this machine, 1 CPU each) logging to a
real `mlflow server`: the trials run on both nodes, and every trial, its metrics and the registered model are
in the server, although the trials' nodes never talk to it (the driver logs what Ray streams back)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.orchestrator.cluster_helpers import classifier_study, shared_cluster_and_server
from tests.orchestrator.study_helpers import REPO, launcher, study_runs

pytestmark = pytest.mark.slow  # every test here reads a real study run through Ray Tune and MLflow

NUM_SAMPLES = 4


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    """One head + one worker (1 CPU each) and one MLflow server (shared with test_faults when both run)."""
    return shared_cluster_and_server(request.config, tmp_path_factory)


def test_trials_run_on_both_nodes_and_everything_lands_in_the_tracking_server(cluster, tmp_path):
    ray_cluster, server = cluster
    spec = classifier_study(tmp_path / "multinode.yaml", "multinode", num_samples=NUM_SAMPLES)
    output = tmp_path / "out"
    result = subprocess.run(launcher(str(spec), "--output", str(output), "--address", ray_cluster.address,
                                     "--tracking-uri", server.uri),
                            cwd=REPO, capture_output=True, text=True, timeout=300, env=ray_cluster.launcher_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Starting Ray (joining {ray_cluster.address})" in result.stdout
    assert "View run" not in result.stdout  # MLflow's per-run URL lines are off: one line per trial is ours

    client = server.client()
    _, parents, children = study_runs(client, "multinode")
    assert parents["classifier"].info.status == "FINISHED"
    trials = children[parents["classifier"].info.run_id]
    assert sorted(r.data.tags["gensearch.trial_id"] for r in trials) == sorted(
        p.name.removeprefix("trial_") for p in (output / "tune" / "classifier").glob("trial_*"))
    assert len(trials) == NUM_SAMPLES
    assert all(r.info.status == "FINISHED" for r in trials)

    nodes = {r.data.tags["gensearch.node_id"] for r in trials}
    worker = next(w for w in ray_cluster.workers if w.alive())  # test_faults may have replaced the first
    assert nodes == {ray_cluster.head.node_id, worker.node_id}, "the trials did not use both nodes"
    for run in trials:
        trial_dir = output / "tune" / "classifier" / f"trial_{run.data.tags['gensearch.trial_id']}"
        tune_results = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == [r["training_iteration"] for r in tune_results]  # all of them, once
        assert run.data.tags["gensearch.node_id"] == tune_results[-1]["node_id"]

    version = client.get_model_version_by_alias("multinode-classifier", "champion")
    assert version.run_id in {r.info.run_id for r in trials}
    # The model went through the server's artifact proxy into the server's artifact folder.
    assert any((server.root / "artifacts").rglob("MLmodel")), "no model files in the server's artifact store"
    assert not (output / "mlflow.db").exists()
