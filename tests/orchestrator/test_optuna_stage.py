"""The `optuna` stage for real: an Optuna study over the clustering objective, tracked in MLflow.

Planted data (5 Gaussian blobs in 50 dimensions, stored as an ambiguous-image set) must be found
again by the tuned pipeline; a SIGKILL mid-stage and `--resume` must end with exactly `n_trials`
completed trials and one MLflow child run per trial; a bad space is exit 2 naming the key.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from orchestrator.launch import main
from orchestrator.optuna_stage import feasible_value
from orchestrator.spec import load_study
from tests.orchestrator.study_helpers import REPO, client_for, launcher, launcher_env, run_launcher, study_runs
from trainables.ambiguous import AmbiguousSet, save_ambiguous
from trainables.prototypes import load_clustering_result

FAST_SPACE = {
    "reducer": {"pca": {"n_components": {"type": "int", "low": 2, "high": 20}}, "none": {}},
    "clusterer": {
        "hdbscan": {"min_cluster_size": {"type": "int", "low": 5, "high": 60},
                    "min_samples": {"type": "int", "low": 1, "high": 20}},
        "gmm": {"n_components": {"type": "int", "low": 2, "high": 10},
                "covariance_type": {"type": "choice", "values": ["full", "diag", "spherical"]}},
    },
}


def planted_blobs(folder: Path, n: int = 300) -> tuple[Path, np.ndarray]:
    """5 Gaussian blobs in 50-D as an ambiguous-image set (random images, scores in the band)."""
    points, truth = make_blobs(n_samples=n, n_features=50, centers=5, cluster_std=1.0, random_state=0)
    rng = np.random.default_rng(0)
    path = save_ambiguous(AmbiguousSet(
        images=rng.random((n, 1, 8, 8), dtype=np.float32), scores=rng.uniform(0.4, 0.6, n).astype(np.float32),
        embeddings=points.astype(np.float32), generated=n, band=(0.4, 0.6), classes=(7, 1)), folder / "blobs.npz")
    return path, truth


def planted_study(folder: Path, *, n_trials: int = 30, n_jobs: int = 2, space=None, name: str = "planted",
                  prototypes: bool = True) -> tuple[Path, np.ndarray]:
    data, truth = planted_blobs(folder)
    stages = [{
        "name": "clustering", "kind": "optuna", "objective": "clustering", "config": {"ambiguous": str(data)},
        "space": space or FAST_SPACE, "metric": "silhouette",
        "constraints": {"n_clusters": {"min": 2}, "noise_fraction": {"max": 0.3}},
        "n_trials": n_trials, "n_jobs": n_jobs, "searcher": {"sampler": "tpe", "seed": 0},
    }]
    if prototypes:
        stages.append({"name": "prototypes", "kind": "job", "job": "prototypes", "config": {"k": 3},
                       "inputs": {"clustering": "clustering.best"}})
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"study": name, "stages": stages}, sort_keys=False))
    return path, truth


def optuna_trials(output: Path, study: str) -> list:
    storage = f"sqlite:///{output / 'optuna' / 'clustering' / 'optuna.db'}"
    return optuna.load_study(study_name=f"{study}.clustering", storage=storage).get_trials(deepcopy=False)


@pytest.mark.slow
def test_planted_clusters_are_recovered_and_every_trial_lands_in_mlflow(tmp_path):
    spec, truth = planted_study(tmp_path, n_trials=30)
    output = tmp_path / "out"
    result = run_launcher(str(spec), "--output", str(output), timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    best = load_clustering_result(output / "optuna" / "clustering" / "best")
    assert adjusted_rand_score(truth, best.labels) >= 0.9

    completed = [t for t in optuna_trials(output, "planted") if t.state == TrialState.COMPLETE]
    assert len(completed) == 30
    client = client_for(output)
    _, parents, children = study_runs(client, "planted")
    parent = parents["clustering"]
    kids = children[parent.info.run_id]
    assert len(kids) == 30 and {r.info.status for r in kids} == {"FINISHED"}
    assert sorted(int(r.data.tags["gensearch.trial_id"]) for r in kids) == sorted(t.number for t in completed)
    assert {"silhouette", "davies_bouldin", "n_clusters", "noise_fraction"} <= set(kids[0].data.metrics)
    for name in ("best_silhouette", "best_davies_bouldin", "best_n_clusters", "best_noise_fraction"):
        assert name in parent.data.metrics
    assert parent.data.metrics["best_n_clusters"] == 5
    assert parent.data.params["space.reducer"].startswith("reducer: pca(")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "search_history.png", "best"} <= artifacts

    table = pd.read_parquet(output / "jobs" / "prototypes" / "prototypes.parquet")
    assert list(table.columns) == ["cluster", "kind", "rank", "score", "x", "y", "index", "image"]
    assert table.groupby("cluster").size().tolist() == [1 + 3 + 3] * 5
    proto_run = parents["prototypes"].info.run_id
    grids = {a.path for a in client.list_artifacts(proto_run, "grids")}
    assert len(grids) == 5
    assert "prototypes: 5 clusters" in result.stdout
    assert "clustering best (trial" in result.stdout


def _kill_after(spec: Path, output: Path, trials: int, timeout: float = 240) -> list[str]:
    process = subprocess.Popen(launcher(str(spec), "--output", str(output)), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True, env=launcher_env())
    lines, deadline = [], time.monotonic() + timeout
    try:
        for line in process.stdout:
            lines.append(line)
            done = re.search(r"\[clustering\] (\d+)/\d+ trial", line)
            if done and int(done.group(1)) >= trials:
                break
            assert time.monotonic() < deadline, "never reached the kill point:\n" + "".join(lines)
        else:
            raise AssertionError("the launcher ended before the kill point:\n" + "".join(lines))
        assert process.poll() is None
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    return lines


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume_reaches_n_trials_exactly_without_duplicate_runs(tmp_path):
    n_trials = 40
    spec, _ = planted_study(tmp_path, n_trials=n_trials, name="killed", prototypes=False)
    output = tmp_path / "out"
    _kill_after(spec, output, trials=5)
    before = [t for t in optuna_trials(output, "killed") if t.state == TrialState.COMPLETE]
    assert 3 <= len(before) < n_trials  # a trial prints its line just before Optuna records it

    result = run_launcher(str(spec), "--output", str(output), "--resume", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = optuna_trials(output, "killed")
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(completed) == n_trials
    assert {t.number for t in before} <= {t.number for t in completed}  # nothing done before was redone
    # The resumed launcher's progress lines count the trials kept from before the kill in their "best".
    first_line = next(line for line in result.stdout.splitlines() if "· best " in line)
    kept_best = max(t.value for t in before if feasible_value(t))
    assert float(first_line.rsplit("· best ", 1)[1]) >= kept_best - 1e-3, first_line

    _, parents, children = study_runs(client_for(output), "killed")
    kids = children[parents["clustering"].info.run_id]
    finished = [r for r in kids if r.info.status == "FINISHED"]
    trial_ids = [r.data.tags["gensearch.trial_id"] for r in kids]
    assert len(trial_ids) == len(set(trial_ids)), "two MLflow child runs for one trial"
    assert sorted(int(r.data.tags["gensearch.trial_id"]) for r in finished) == sorted(t.number for t in completed)
    assert not [r for r in kids if r.info.status == "RUNNING"]
    # a trial the kill cut off was queued again and re-used its child run
    retried = [t for t in completed if "gensearch.retry_of" in t.user_attrs]
    assert all(t.user_attrs["gensearch.child_run_id"] in {r.info.run_id for r in finished} for t in retried)


@pytest.mark.parametrize("edit,key,fragment", [
    (lambda s: s["space"]["reducer"].update(tsne={}), "stages[0].space.reducer.tsne", "unknown reducer 'tsne'"),
    (lambda s: s["space"]["clusterer"].update(kmeans={}), "stages[0].space.clusterer.kmeans",
     "unknown clusterer 'kmeans'"),
    (lambda s: s["space"]["clusterer"]["hdbscan"].update(min_size=5), "stages[0].space.clusterer.hdbscan.min_size",
     "has no setting 'min_size'"),
    (lambda s: s["space"]["reducer"]["pca"].update(n_components={"type": "int", "low": 0, "high": 3}),
     "stages[0].space.reducer.pca.n_components", "n_components must be >= 1, got 0"),
    (lambda s: s["space"].update(scaler={"standard": {}}), "stages[0].space.scaler", "searches no 'scaler'"),
    (lambda s: s["constraints"].update(clusters={"min": 2}), "stages[0].constraints.clusters",
     "does not report 'clusters'"),
    (lambda s: s.update(metric="accuracy"), "stages[0].metric", "does not report 'accuracy'"),
    (lambda s: s.update(n_jobs=0), "stages[0].n_jobs", "must be >= 1"),
    (lambda s: s["searcher"].update(type="basic"), "stages[0].searcher.type", "must be one of optuna, got 'basic'"),
    (lambda s: s["searcher"].update(sampler="qmc"), "stages[0].searcher.sampler",
     "must be one of tpe, random, got 'qmc'"),
    (lambda s: s.update(sampler={"type": "random"}), "stages[0].sampler", "give `searcher:` alone"),
    (lambda s: s.update(sampler={"type": "grid"}) or s.pop("searcher"), "stages[0].sampler.type",
     "must be one of tpe, random, got 'grid'"),
], ids=["reducer", "clusterer", "parameter", "range", "branch", "constraint", "metric", "n_jobs", "searcher-type",
        "searcher-sampler", "both-spellings", "old-spelling-type"])
def test_a_bad_optuna_space_is_exit_2_naming_the_key(tmp_path, capsys, edit, key, fragment):
    spec, _ = planted_study(tmp_path, prototypes=False)
    study = yaml.safe_load(spec.read_text())
    edit(study["stages"][0])
    spec.write_text(yaml.safe_dump(study, sort_keys=False))
    code = main([str(spec), "--dry-run", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{spec}: {key}: ") and fragment in lines[0], err


def test_the_older_sampler_spelling_still_works_with_one_line_saying_how_to_write_it(tmp_path, capsys):
    spec, _ = planted_study(tmp_path, prototypes=False)
    study = yaml.safe_load(spec.read_text())
    study["stages"][0]["searcher"] = {"sampler": "random", "seed": 3}
    spec.write_text(yaml.safe_dump(study, sort_keys=False))
    old = tmp_path / "old.yaml"
    del study["stages"][0]["searcher"]
    study["stages"][0]["sampler"] = {"type": "random", "seed": 3}
    old.write_text(yaml.safe_dump(study, sort_keys=False))
    assert load_study(old).stages == load_study(spec).stages and load_study(spec).stages[0].searcher.sampler == "random"
    assert load_study(spec).deprecations == ()
    assert main([str(old), "--dry-run", "--output", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"{old}: stages[0].sampler: deprecated spelling, write "
                                         "`searcher: {sampler: random, seed: 3}` (as tune stages do)"]
    assert "(Optuna random, seed 3)" in captured.out


def test_an_unbroken_planted_study_plans_cleanly(tmp_path, capsys):
    spec, _ = planted_study(tmp_path)
    assert main([str(spec), "--dry-run", "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "clustering  optuna  objective=clustering  metric=silhouette (max)" in out
    assert "reducer: pca(n_components int[2, 20]) | none" in out
