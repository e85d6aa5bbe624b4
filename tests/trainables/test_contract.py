"""The contract every catalogued trainable and job keeps, and the trainables/orchestrator boundary."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainables import catalog
from trainables.checkpoint import save_checkpoint
from trainables.classifier import CLASSIFIER, Classifier
from trainables.config import build_config, field_names, required_fields
from trainables.reporter import ListReporter

REPO = Path(__file__).resolve().parents[2]


# Trainables whose required settings are checkpoint folders of earlier stages: the contract test cannot
# build those inputs from `tiny_config` alone, so the named test file covers them instead.
COVERED_ELSEWHERE = {"gasten": "tests/trainables/test_gasten.py",
                     "ddpm_timestep": "tests/trainables/test_representation_parts.py",
                     "odin": "tests/trainables/ood/test_ood_study_parts.py"}


def tiny_values(definition: catalog.TrainableDef) -> dict:
    """`tiny_config`, on the real dataset only: a missing MNIST must fail here, not fall back to digits."""
    values = dict(definition.tiny_config)
    if "allow_fallback" in field_names(definition.config_cls):
        values["allow_fallback"] = False
    return values


def tiny_run(definition: catalog.TrainableDef) -> ListReporter:
    reporter = ListReporter()
    definition.run(build_config(definition.config_cls, tiny_values(definition)), reporter)
    return reporter


@pytest.mark.parametrize("name", catalog.trainable_names())
def test_trainable_reports_every_declared_metric_and_a_rebuildable_checkpoint(name):
    definition = catalog.trainable(name)
    if required_fields(definition.config_cls):
        assert name in COVERED_ELSEWHERE, (
            f"{name} has required settings {required_fields(definition.config_cls)}: build them here or name "
            f"the test file that covers it in COVERED_ELSEWHERE")
        assert (REPO / COVERED_ELSEWHERE[name]).is_file(), COVERED_ELSEWHERE[name]
        pytest.skip(f"{name} needs inputs from earlier stages; covered by {COVERED_ELSEWHERE[name]}")
    reporter = tiny_run(definition)
    declared = {metric.name for metric in definition.metrics if not metric.optional}
    assert declared <= reporter.keys(), f"never reported: {sorted(declared - reporter.keys())}"
    for metric in definition.metrics:
        if metric.name in reporter.keys():
            assert math.isfinite(reporter.last(metric.name)), metric.name
    state = reporter.last_checkpoint
    assert state is not None
    assert (state["trainable"], state["epoch"]) == (name, definition.tiny_config.get("epochs", state["epoch"]))
    assert build_config(definition.config_cls, state["config"]) == build_config(definition.config_cls,
                                                                               tiny_values(definition))
    if definition.build_model is not None:
        rebuilt = definition.build_model(state).state_dict()
        # The rebuilt model is one of the checkpointed modules, tensor for tensor.
        source = [module for module, tensors in state["modules"].items() if set(tensors) == set(rebuilt)]
        assert len(source) == 1, f"no single module of {sorted(state['modules'])} matches the rebuilt model"
        for key, tensor in state["modules"][source[0]].items():
            assert torch.equal(rebuilt[key], tensor), key


@pytest.mark.parametrize("classes,num_classes", [((7, 1), 2), ((), 10)], ids=["7-vs-1", "all-ten"])
def test_classifier_model_rebuilt_from_checkpoint_gives_logits_per_class(classes, num_classes):
    reporter = ListReporter()
    CLASSIFIER.run(build_config(CLASSIFIER.config_cls, {**tiny_values(CLASSIFIER), "classes": list(classes)}),
                   reporter)
    state = reporter.last_checkpoint
    model = CLASSIFIER.build_model(state)
    assert not model.training
    assert isinstance(model, Classifier)
    images = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        logits = model(images)
    assert logits.shape == (4, num_classes)
    for key, tensor in state["modules"]["model"].items():
        assert torch.equal(model.state_dict()[key], tensor), key


def test_every_job_has_a_run_test_here():
    assert catalog.job_names() == ["evaluate_classifier", "evaluate_gasten", "evaluate_ood", "fewshot",
                                   "prototype_curve", "prototypes"], (
        "a new job needs its inputs built here (evaluate_ood: tests/trainables/ood/test_ood_study_parts.py, "
        "fewshot: tests/trainables/test_representation_parts.py, prototype_curve: "
        "tests/trainables/test_prototype_curve.py, evaluate_gasten: tests/orchestrator/test_flagship_study.py)")


def test_prototypes_job_reports_every_declared_metric(tmp_path):
    from tests.trainables.test_prototypes import synthetic_result
    from trainables.prototypes import save_clustering_result

    folder = save_clustering_result(tmp_path / "clustering", synthetic_result())
    definition = catalog.job("prototypes")
    reporter = ListReporter()
    definition.run(build_config(definition.config_cls, {"clustering": str(folder), "k": 2}), reporter, tmp_path)
    for metric in definition.metrics:
        assert math.isfinite(reporter.last(metric.name)), metric.name
    assert [name for name, output in definition.outputs.items()
            if output.path and not (tmp_path / output.path).exists()] == []  # every declared file is written


@pytest.mark.parametrize("name", ["evaluate_classifier"])
def test_job_writes_its_files_and_reports_its_metrics(name, tmp_path):
    checkpoint = save_checkpoint(tiny_run(CLASSIFIER).last_checkpoint, tmp_path / "ckpt")
    definition = catalog.job(name)
    reporter = ListReporter()
    workdir = tmp_path / "work"
    workdir.mkdir()
    definition.run(build_config(definition.config_cls, {"checkpoint": str(checkpoint), "limit": 200}), reporter,
                   workdir)
    assert {"confusion_matrix.png", "misclassified.png", "metrics.json"} <= {p.name for p in workdir.iterdir()}
    assert {output.path for output in definition.outputs.values()} == {p.name for p in workdir.iterdir()}
    assert 0.0 <= reporter.last("test_accuracy") <= 1.0
    assert reporter.last("test_images") == 200
    written = json.loads((workdir / "metrics.json").read_text())
    assert written["test_images"] == 200 and written["test_accuracy"] == reporter.last("test_accuracy")
    assert {"test_accuracy_class_7", "test_accuracy_class_1"} <= set(written)
    assert written["source"].startswith("MNIST test from "), written["source"]  # the real test split
    for picture in ("confusion_matrix.png", "misclassified.png"):
        assert (workdir / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", picture
    for metric in definition.metrics:
        assert math.isfinite(reporter.last(metric.name))


def forbidden_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("ray", "optuna", "mlflow")]
    return found


def test_trainables_source_never_imports_orchestration_libraries():
    files = sorted((REPO / "trainables").rglob("*.py"))
    assert len(files) >= 8
    assert [hit for path in files for hit in forbidden_imports(path)] == []


def test_importing_trainables_loads_no_orchestration_library():
    code = ("import sys, trainables.catalog as c, trainables.classifier, trainables.evaluate_classifier, "
            "trainables.data; c.trainable_names(); c.job_names(); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'optuna', 'mlflow')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_catalog_resolves_module_paths_and_names_what_it_knows():
    assert catalog.trainable("trainables.classifier:CLASSIFIER") is catalog.trainable("classifier")
    with pytest.raises(catalog.UnknownEntryError, match="is a type, not a TrainableDef"):
        catalog.trainable("trainables.classifier:ClassifierConfig")
    with pytest.raises(catalog.UnknownEntryError) as error:
        catalog.trainable("gan9")
    assert f"unknown trainable 'gan9' (known: {', '.join(catalog.trainable_names())};" in str(error.value)
    assert "classifier" in catalog.trainable_names()
    with pytest.raises(catalog.UnknownEntryError, match=r"unknown job 'score' \(known: evaluate_classifier, evaluate_gasten, evaluate_ood, fewshot, "
                                                          r"prototype_curve, prototypes;"):
        catalog.job("score")
    with pytest.raises(catalog.UnknownEntryError, match="is a TrainableDef, not a JobDef"):
        catalog.job("trainables.classifier:CLASSIFIER")
    with pytest.raises(catalog.UnknownEntryError, match="cannot import"):
        catalog.job("no.such.module:JOB")
