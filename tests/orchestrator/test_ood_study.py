"""The OOD study, tiny: classifier -> ODIN search -> K+1 search -> generator_nn -> evaluation, through Ray
Tune + MLflow.

search_spaces/ood_mnist.yaml takes many minutes; this runs its first stages wired the same way at toy
sizes and checks what lands in MLflow: the table of every method on every test set, ROC curves,
per-metric values on the evaluation run, and the registered K+1 detector. The leave_out and
conditional_nn stages are wired like kplus1 and generator_nn (a tune stage whose best checkpoint feeds
the evaluation), so they are left out here (each stage is ~20 s of Ray start-up and trial): their
trainables and their part of the evaluation are run in tests/trainables/ood/test_ood_study_parts.py.
"""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from orchestrator.spec import load_study
from tests.orchestrator.study_helpers import REPO, client_for, run_launcher, study_runs

TINY = {
    "study": "tinyood",
    "stages": [
        {"name": "classifier", "kind": "tune", "trainable": "classifier",
         "config": {"classes": [], "train_size": 1000, "val_size": 200, "epochs": 1, "batch_size": 32},
         "metric": "val_accuracy"},
        {"name": "odin", "kind": "tune", "trainable": "odin", "inputs": {"classifier": "classifier.best"},
         "config": {"validation_images": 200},
         "space": {"temperature": {"type": "loguniform", "low": 1, "high": 1000}},
         "metric": "val_auroc", "num_samples": 2, "max_concurrent_trials": 2,
         "searcher": {"type": "optuna", "sampler": "random", "seed": 0}, "resources": {"cpu": 1}},
        {"name": "kplus1", "kind": "tune", "trainable": "kplus1",
         "config": {"train_size": 1000, "val_size": 200, "vae_epochs": 1, "outliers": 500, "epochs": 1},
         "metric": "val_auroc", "register": {"name": "tinyood-kplus1"}},
        {"name": "generator_nn", "kind": "tune", "trainable": "generator_nn",
         "config": {"train_size": 1000, "val_size": 200, "vae_epochs": 1, "samples_per_class": 50},
         "metric": "val_selective_accuracy"},
        {"name": "evaluate", "kind": "job", "job": "evaluate_ood",
         "inputs": {"classifier": "classifier.best", "odin": "odin.best", "kplus1": "kplus1.best",
                    "generator_nn": "generator_nn.best"},
         "config": {"test_sets": ["fashion_mnist", "uniform_noise"], "images": 200}},
    ],
}


def test_the_shipped_ood_study_validates_with_its_profiles():
    for profile in (None, "paper"):
        spec = load_study(REPO / "search_spaces" / "ood_mnist.yaml", profile=profile)
        assert [stage.name for stage in spec.stages] == ["classifier", "odin", "kplus1", "generator_nn", "leave_out",
                                                         "conditional_nn", "evaluate"]
        assert {spec.stage(name).config["validation_ood"]
                for name in ("odin", "kplus1", "generator_nn", "leave_out", "conditional_nn")} == {"gaussian_noise"}
        assert "gaussian_noise" not in spec.stage("evaluate").config["test_sets"]  # never tuned on a test set


@pytest.mark.slow
def test_a_tiny_ood_study_lands_its_table_curves_and_detector_in_mlflow(tmp_path):
    spec = tmp_path / "tinyood.yaml"
    spec.write_text(yaml.safe_dump(TINY, sort_keys=False))
    output = tmp_path / "out"
    result = run_launcher(str(spec), "--output", str(output))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = client_for(output)
    _, parents, children = study_runs(client, "tinyood")
    assert len(children[parents["odin"].info.run_id]) == 2
    evaluation = parents["evaluate"]
    metrics = evaluation.data.metrics
    for method in ("max_softmax", "odin", "kplus1", "generator_nn"):
        assert 0.0 <= metrics[f"{method}.id_accuracy"] <= 1.0
        for test_set in ("fashion_mnist", "uniform_noise"):
            for name in ("auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr", "detection_error"):
                assert f"{method}.{test_set}.{name}" in metrics
    # generator_nn is also a selective classifier at its validation threshold, judged on the test split.
    assert 0.0 <= metrics["generator_nn.test_reject_rate"] <= 1.0
    assert 0.0 <= metrics["generator_nn.selective_accuracy"] <= 1.0
    assert 0.0 <= metrics["generator_nn.uniform_noise.ood_accepted"] <= 1.0
    assert metrics["generator_nn.generator_params"] > 0 and metrics["generator_nn.train_seconds"] > 0
    assert {"ood_table.md", "ood_table.parquet", "selective.parquet", "costs.parquet", "roc_curves.png"} <= {
        a.path for a in client.list_artifacts(evaluation.info.run_id)}
    table = pd.read_parquet(output / "jobs" / "evaluate" / "ood_table.parquet")
    assert len(table) == 4 * 2
    selective = pd.read_parquet(output / "jobs" / "evaluate" / "selective.parquet")
    assert list(selective.method) == ["generator_nn"]
    version = client.get_model_version_by_alias("tinyood-kplus1", "champion")
    assert version.run_id in {run.info.run_id for run in children[parents["kplus1"].info.run_id]}
    assert "| kplus1 | fashion_mnist |" in result.stdout
