"""The OOD study's searchable ODIN trainable and its evaluation job, on a classifier trained here."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from trainables import catalog
from trainables.checkpoint import save_checkpoint
from trainables.classifier import CLASSIFIER
from trainables.config import build_config
from trainables.ood.odin_search import ODIN
from trainables.reporter import ListReporter


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    """A 10-class MNIST classifier, 2 epochs on 2000 images, saved as the classifier stage would."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads only contend on a busy 2-core machine
    try:
        reporter = ListReporter()
        CLASSIFIER.run(build_config(CLASSIFIER.config_cls, {"classes": [], "train_size": 2000, "val_size": 500,
                                                            "epochs": 2, "batch_size": 32}), reporter)
    finally:
        torch.set_num_threads(previous)
    return str(save_checkpoint(reporter.last_checkpoint, tmp_path_factory.mktemp("classifier")))


def run_odin(folder: str, **settings) -> ListReporter:
    reporter = ListReporter()
    ODIN.run(build_config(ODIN.config_cls, {"classifier": folder, "validation_images": 300, **settings}), reporter)
    return reporter


def test_odin_trainable_reports_every_declared_metric_once_with_its_setting_as_checkpoint(classifier_folder):
    reporter = run_odin(classifier_folder, temperature=10.0, epsilon=0.001)
    assert len(reporter.results) == 1
    assert {m.name for m in ODIN.metrics} <= reporter.keys()
    assert 0.5 < reporter.last("val_auroc") <= 1.0  # a trained classifier separates digits from Gaussian noise
    state = reporter.last_checkpoint
    assert state.trainable == "odin" and state.config["temperature"] == 10.0


def test_odin_validation_never_uses_a_test_set(classifier_folder):
    with pytest.raises(ValueError, match="classifier"):
        build_config(ODIN.config_cls, {"classifier": ""})
    # a different validation set gives a different score: the setting is really scored on it
    noise = run_odin(classifier_folder, validation_ood="uniform_noise").last("val_auroc")
    gauss = run_odin(classifier_folder, validation_ood="gaussian_noise").last("val_auroc")
    assert noise != gauss


def test_evaluate_ood_writes_the_table_for_every_method_and_set(classifier_folder, tmp_path):
    odin = run_odin(classifier_folder, temperature=100.0, epsilon=0.0)
    odin_folder = save_checkpoint(odin.last_checkpoint, tmp_path / "odin")
    job = catalog.job("evaluate_ood")
    reporter = ListReporter()
    config = build_config(job.config_cls, {"classifier": classifier_folder, "odin": str(odin_folder),
                                           "test_sets": ["fashion_mnist", "uniform_noise"], "images": 300})
    metrics = job.run(config, reporter, tmp_path)
    table = pd.read_parquet(tmp_path / "ood_table.parquet")
    assert sorted(zip(table.method, table.ood_set)) == sorted(
        (m, s) for m in ("max_softmax", "odin") for s in ("fashion_mnist", "uniform_noise"))
    assert {"auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr", "detection_error", "id_accuracy"} <= set(table.columns)
    assert table.loc[table.method == "odin", "settings"].iloc[0] == "T=100, epsilon=0"
    assert 0.5 < metrics["max_softmax.fashion_mnist.auroc"] <= 1.0
    assert metrics["max_softmax.id_accuracy"] == metrics["odin.id_accuracy"] > 0.8  # one classifier, one accuracy
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics == reporter.results[-1]
    assert (tmp_path / "roc_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "| odin | uniform_noise |" in (tmp_path / "ood_table.md").read_text()


def tiny_checkpoint(name: str, folder, **changes) -> str:
    definition = catalog.trainable(name)
    reporter = ListReporter()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        definition.run(build_config(definition.config_cls, {**definition.tiny_config, **changes}), reporter)
    finally:
        torch.set_num_threads(previous)
    return str(save_checkpoint(reporter.last_checkpoint, folder))


@pytest.mark.slow  # several seconds (a subprocess or a small training run): not part of the quick loop
def test_evaluate_ood_adds_the_leave_out_ensemble_and_the_conditional_generator_with_its_costs(classifier_folder,
                                                                                             tmp_path):
    leave_out = tiny_checkpoint("leave_out", tmp_path / "leave_out")
    conditional = tiny_checkpoint("conditional_nn", tmp_path / "conditional_nn")
    per_class = tiny_checkpoint("generator_nn", tmp_path / "generator_nn")
    job = catalog.job("evaluate_ood")
    config = build_config(job.config_cls, {"classifier": classifier_folder, "leave_out": leave_out,
                                           "generator_nn": per_class, "conditional_nn": conditional,
                                           "test_sets": ["kmnist"], "images": 200})
    workdir = tmp_path / "work"
    workdir.mkdir()
    metrics = job.run(config, ListReporter(), workdir)
    table = pd.read_parquet(workdir / "ood_table.parquet")
    assert list(table.method) == ["max_softmax", "odin", "generator_nn", "leave_out", "conditional_nn"]
    assert table.loc[table.method == "leave_out", "settings"].iloc[0].startswith("N=2, margin=0.4, beta=0.1")
    for name in ("auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr", "detection_error"):
        assert 0.0 <= metrics[f"leave_out.kmnist.{name}"] <= 1.0
    assert list(pd.read_parquet(workdir / "selective.parquet").method) == ["generator_nn", "conditional_nn"]
    costs = pd.read_parquet(workdir / "costs.parquet").set_index("method")
    assert list(costs.index) == ["generator_nn", "conditional_nn"]
    assert metrics["conditional_nn.generator_params"] == costs.generator_params["conditional_nn"] > 1e6
    # one conditional generator against one per class, as the trainables reported it
    assert metrics["conditional_nn.generator_params"] < metrics["generator_nn.generator_params"] / 5
    assert metrics["conditional_nn.similarity_params"] > 0 and metrics["conditional_nn.train_seconds"] > 0
    assert "| conditional_nn | 1,6" in (workdir / "ood_table.md").read_text()  # 1.69 M parameters, thousands marked


@pytest.mark.slow  # several seconds (a subprocess or a small training run): not part of the quick loop
def test_evaluate_ood_refuses_a_method_trained_on_other_data_than_the_classifier(classifier_folder, tmp_path):
    leave_out = tiny_checkpoint("leave_out", tmp_path / "leave_out", dataset="fashion_mnist")
    job = catalog.job("evaluate_ood")
    config = build_config(job.config_cls, {"classifier": classifier_folder, "leave_out": leave_out,
                                           "test_sets": ["kmnist"], "images": 50})
    with pytest.raises(ValueError, match="leave_out: trained on fashion_mnist"):
        job.run(config, ListReporter(), tmp_path)
