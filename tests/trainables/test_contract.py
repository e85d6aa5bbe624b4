"""The contract every catalogued trainable, job and objective keeps, and the trainables/orchestrator boundary.

Every entry of the catalog runs here for real, on its definition's `tiny_config`, with the earlier stages'
results its `contract_inputs` asks for made by really running those entries (tests/trainables/contract_runs.py).
"""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from tests.trainables.contract_runs import ContractRuns
from tests.trainables.threads import single_threaded
from trainables import catalog
from trainables.checkpoint import load_checkpoint
from trainables.classifier import CLASSIFIER, Classifier
from trainables.config import build_config
from trainables.data import DatasetUse
from trainables.definitions import SHOWN_KINDS

REPO = Path(__file__).resolve().parents[2]

# Cases that take more than a few seconds on 2 busy cores (measured; see the module's --durations).
SLOW = {"gasten", "evaluate_gasten"}


def cases(names: list[str]) -> list:
    return [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in names]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> ContractRuns:
    """One tiny run per catalog entry for the whole module: an entry's case and its consumers' share it."""
    return ContractRuns(tmp_path_factory.mktemp("contract"))


def assert_reports_every_declared_metric(definition, metrics: Mapping[str, float]) -> None:
    declared = {metric.name for metric in definition.metrics if not metric.optional}
    assert declared <= set(metrics), f"never reported: {sorted(declared - set(metrics))}"
    for metric in definition.metrics:
        if metric.name in metrics:
            assert math.isfinite(metrics[metric.name]), metric.name


def assert_checks_pass_on_its_own_tiny_config(definition, config) -> None:
    """What the launcher asks of a stage before anything starts holds for the config the entry just ran."""
    if definition.preflight is not None:
        definition.preflight(config)
    if definition.datasets is not None:
        assert all(isinstance(use, DatasetUse) for use in definition.datasets(config))


@pytest.mark.parametrize("name", cases(catalog.trainable_names()))
def test_trainable_reports_every_declared_metric_and_a_rebuildable_checkpoint(name, runs):
    definition = catalog.trainable(name)
    run = runs.trainable_run(name)
    reporter = run.reporter
    assert_reports_every_declared_metric(definition, {key: reporter.last(key) for key in reporter.keys()})
    assert_checks_pass_on_its_own_tiny_config(definition, run.config)
    state = reporter.last_checkpoint
    assert (state.trainable, state.epoch) == (name, definition.tiny_config.get("epochs", state.epoch))
    assert build_config(definition.config_cls, state.config) == run.config
    if definition.build_model is not None:
        rebuilt = definition.build_model(load_checkpoint(run.folder)).state_dict()
        # The rebuilt model is one of the checkpointed modules, tensor for tensor.
        source = [module for module, tensors in state.modules.items() if set(tensors) == set(rebuilt)]
        assert len(source) == 1, f"no single module of {sorted(state.modules)} matches the rebuilt model"
        for key, tensor in state.modules[source[0]].items():
            assert torch.equal(rebuilt[key], tensor), key


@pytest.mark.parametrize("classes,num_classes", [((7, 1), 2), ((), 10)], ids=["7-vs-1", "all-ten"])
def test_classifier_model_rebuilt_from_checkpoint_gives_logits_per_class(classes, num_classes, runs):
    # 7 vs 1 is the tiny config; the all-ten classifier is the one evaluate_ood and fewshot read.
    changes = {} if classes == (7, 1) else {"classes": list(classes)}
    state = runs.trainable_run("classifier", **changes).reporter.last_checkpoint
    model = CLASSIFIER.build_model(state)
    assert not model.training
    assert isinstance(model, Classifier)
    images = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        logits = model(images)
    assert logits.shape == (4, num_classes)
    for key, tensor in state.modules["model"].items():
        assert torch.equal(model.state_dict()[key], tensor), key


@pytest.mark.parametrize("name", cases(catalog.objective_names()))
def test_objective_scores_a_trial_writes_its_best_result_and_reuses_what_it_prepared(name, runs):
    definition = catalog.objective(name)
    run = runs.objective_run(name)
    assert set(run.picks) == set(definition.branches), "tiny_picks must pick one option in every branch"
    assert_reports_every_declared_metric(definition, run.metrics)
    assert_checks_pass_on_its_own_tiny_config(definition, run.config)
    assert any(path.is_file() for path in Path(run.folder).rglob("*")), "finalize wrote no best result"
    # A resumed stage prepares again in the same folder: it gets the same data back and redoes nothing there.
    cached = {path: path.stat().st_mtime_ns for path in run.workdir.rglob("*")}
    with single_threaded():
        again = definition.prepare(run.config, run.workdir)
    assert {path: path.stat().st_mtime_ns for path in run.workdir.rglob("*")} == cached
    if definition.describe_data is not None:
        described = definition.describe_data(run.data)
        assert all(math.isfinite(value) for value in described.values()), described
        assert definition.describe_data(again) == described


@pytest.mark.parametrize("name", cases(catalog.job_names()))
def test_job_writes_its_files_and_reports_every_declared_metric(name, runs):
    definition = catalog.job(name)
    run = runs.job_run(name)
    assert run.reporter.results, f"{name} reported nothing"
    assert_reports_every_declared_metric(definition, run.reporter.results[-1])
    if run.returned is not None:
        assert dict(run.returned) == run.reporter.results[-1]
    assert_checks_pass_on_its_own_tiny_config(definition, run.config)
    assert any(path.is_file() for path in run.workdir.rglob("*")), f"{name} wrote no file into its folder"
    # every file the report would show is written (data files may depend on the settings)
    assert [output_name for output_name, output in definition.outputs.items()
            if output.path and output.kind in SHOWN_KINDS and not (run.workdir / output.path).exists()] == []


def test_evaluate_classifier_writes_its_pictures_and_the_metrics_of_the_real_test_split(runs):
    run = runs.job_run("evaluate_classifier")
    workdir, reporter, definition = run.workdir, run.reporter, catalog.job("evaluate_classifier")
    assert {"confusion_matrix.png", "misclassified.png", "metrics.json"} <= {p.name for p in workdir.iterdir()}
    assert {output.path for output in definition.outputs.values()} == {p.name for p in workdir.iterdir()}
    assert 0.0 <= reporter.last("test_accuracy") <= 1.0
    assert reporter.last("test_images") == run.config.limit == 200
    written = json.loads((workdir / "metrics.json").read_text())
    assert written["test_images"] == 200 and written["test_accuracy"] == reporter.last("test_accuracy")
    assert {"test_accuracy_class_7", "test_accuracy_class_1"} <= set(written)
    assert written["source"].startswith("MNIST test from "), written["source"]  # the real test split
    for picture in ("confusion_matrix.png", "misclassified.png"):
        assert (workdir / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", picture


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


@pytest.mark.slow  # several seconds (a subprocess or a small training run): not part of the quick loop
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
