"""GASTeN as a study, tiny: classifier -> DCGAN -> fine-tuning through Ray Tune + MLflow, checked in MLflow.

The quick profile of search_spaces/gasten_mnist.yaml takes ~10 minutes; this runs the same three
trainables, wired by reference the same way, at toy sizes, and checks what a researcher opens
afterwards: per-trial sample grids and curves, the stage's Pareto plot, the registered models
and the summary's step-1 comparison.
"""

from __future__ import annotations

import pytest
import yaml

from tests.orchestrator.study_helpers import client_for, run_launcher, study_runs

pytestmark = pytest.mark.slow  # every test here reads a real study run through Ray Tune and MLflow

TINY = {
    "study": "tinygasten",
    "stages": [
        {"name": "classifier", "kind": "tune", "trainable": "classifier",
         "config": {"classes": [7, 1], "train_size": 300, "val_size": 100, "epochs": 2, "batch_size": 16,
                    "lr": 1e-2},
         "metric": "val_accuracy"},
        {"name": "gan", "kind": "tune", "trainable": "dcgan",
         "config": {"classes": [7, 1], "train_size": 256, "epochs": 1, "batch_size": 32, "fid_images": 64},
         "metric": "fid_mnist"},
        {"name": "gasten", "kind": "tune", "trainable": "gasten",
         "inputs": {"generator": "gan.best", "classifier": "classifier.best"},
         "config": {"train_size": 256, "epochs": 2, "batch_size": 32, "fid_images": 64, "acd_images": 256},
         "space": {"alpha": {"type": "uniform", "low": 5, "high": 30}},
         "metric": "tradeoff", "num_samples": 2, "max_concurrent_trials": 2,
         "searcher": {"type": "optuna", "sampler": "random", "seed": 0}, "resources": {"cpu": 1}},
    ],
}


@pytest.fixture(scope="module")
def gasten_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gasten")
    spec = folder / "tinygasten.yaml"
    spec.write_text(yaml.safe_dump(TINY, sort_keys=False))
    output = folder / "out"
    result = run_launcher(str(spec), "--output", str(output))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output, result


def artifact_names(client, run_id: str) -> set[str]:
    return {item.path for item in client.list_artifacts(run_id)}


def test_every_gasten_trial_run_holds_its_samples_and_curves(gasten_study):
    output, _ = gasten_study
    client = client_for(output)
    _, parents, children = study_runs(client, "tinygasten")
    assert sorted(parents) == ["classifier", "gan", "gasten"]
    trials = children[parents["gasten"].info.run_id]
    assert len(trials) == 2
    for run in trials:
        assert {"samples.png", "curves.png"} <= artifact_names(client, run.info.run_id)
        metrics = run.data.metrics
        assert {"fid_mnist", "acd", "tradeoff", "acd_step1", "fid_mnist_step1"} <= set(metrics)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "acd")] == [1, 2]
    (gan_trial,) = children[parents["gan"].info.run_id]
    assert {"samples.png", "curves.png"} <= artifact_names(client, gan_trial.info.run_id)
    assert {"pareto.png", "search_history.png", "parameter_sweep.png", "trials.csv"} <= artifact_names(
        client, parents["gasten"].info.run_id)
    assert "pareto.png" not in artifact_names(client, parents["gan"].info.run_id)  # dcgan declares no rival metrics


def test_the_generator_and_the_classifier_are_registered_from_their_best_trials(gasten_study):
    output, _ = gasten_study
    client = client_for(output)
    _, parents, _ = study_runs(client, "tinygasten")
    for stage in ("classifier", "gan", "gasten"):
        version = client.get_model_version_by_alias(f"tinygasten-{stage}", "champion")
        assert version.run_id == parents[stage].data.tags["gensearch.best_child_run_id"]


def test_the_summary_compares_the_best_generator_with_the_step1_generator(gasten_study):
    output, result = gasten_study
    summary = (output / "summary.md").read_text()
    line = next(line for line in summary.splitlines() if line.strip().startswith("gasten best (trial"))
    assert "fid_mnist " in line and " vs fid_mnist_step1 " in line and "acd " in line and " vs acd_step1 " in line
    assert line in result.stdout
