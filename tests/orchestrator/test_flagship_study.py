"""The flagship study, search_spaces/gasten_mnist.yaml, end to end at toy sizes.

The test loads the shipped YAML and shrinks only sizes (images, epochs, trials), so the stage chain
and every by-reference wiring (classifier -> gan -> gasten -> clustering -> prototypes ->
boundary_ood -> evaluation) are the ones users run. It is killed once mid-study and resumed, then
checked where a researcher looks: MLflow (one parent per stage, a child per trial, no duplicates,
three registry aliases), the evaluation's tables, and report.md.
"""

from __future__ import annotations

import copy
import json
import re

import pandas as pd
import pytest
import yaml

from tests.orchestrator.study_helpers import REPO, client_for, run_launcher, run_until, study_runs

SHIPPED = REPO / "search_spaces" / "gasten_mnist.yaml"
TOY_TRAIN = {"data": {"train_size": 300}, "val_size": 100, "batch_size": 32}
SHRINK = {  # stage -> top-level keys replaced; "config" entries (and `data:` ones) are merged into the shipped config
    "classifier": {"config": {**TOY_TRAIN, "epochs": 1, "lr": 3e-3, "nf": 1}, "space": None, "searcher": None,
                   "num_samples": 1},
    "classifier_test": {"config": {"limit": 300}},
    "gan": {"config": {"data": {"train_size": 256}, "epochs": 1, "fid_images": 64, "batch_size": 32, "lr": 3e-4},
            "space": None, "searcher": None, "num_samples": 1, "scheduler": None},
    "gasten": {"config": {"data": {"train_size": 256}, "epochs": 1, "fid_images": 64, "acd_images": 256,
                          "batch_size": 32},
               "space": {"alpha": {"type": "uniform", "low": 5, "high": 30}}, "num_samples": 2, "scheduler": None},
    "clustering": {"config": {"images": 2000, "band": [0.1, 0.9]}, "n_trials": 4, "n_jobs": 1,
                   "space": {"reducer": {"pca": {"n_components": {"type": "int", "low": 2, "high": 4}}},
                             "clusterer": {"gmm": {"n_components": {"type": "int", "low": 2, "high": 4}}}}},
    "prototypes": {"config": {"k": 3}},
    "boundary_ood": {"config": {**TOY_TRAIN, "epochs": 1, "outliers": 300}, "num_samples": 2},
    "evaluation": {"config": {"shots": [1, 4], "fewshot_repeats": 2, "train_pool": 500, "test_images": 300,
                              "curve_repeats": 2, "ood_images": 200}},
}


def miniature(path, name: str = "miniflag"):
    study = yaml.safe_load(SHIPPED.read_text())
    study["study"], study["profiles"] = name, {}
    for stage in study["stages"]:
        for key, value in copy.deepcopy(SHRINK[stage["name"]]).items():
            if key == "config":
                config = stage.setdefault("config", {})
                for name, setting in value.items():
                    config[name] = {**config.get(name, {}), **setting} if name == "data" else setting
            elif value is None:
                stage.pop(key, None)
            else:
                stage[key] = value
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_every_shipped_stage_is_shrunk():
    """A stage added to the shipped YAML must get toy sizes here, or this test would run it at full size."""
    stages = [stage["name"] for stage in yaml.safe_load(SHIPPED.read_text())["stages"]]
    assert stages == list(SHRINK)
    assert stages[-3:] == ["prototypes", "boundary_ood", "evaluation"]


@pytest.fixture(scope="module")
def flagship(tmp_path_factory):
    """The miniature study, SIGKILLed once its clustering stage has begun, resumed and SIGKILLed again in
    the middle of its evaluation job, then resumed to the end."""
    folder = tmp_path_factory.mktemp("flagship")
    spec = miniature(folder / "miniflag.yaml")
    output = folder / "out"
    before = run_until(spec, output, r"^\[clustering\]", timeout=400)
    middle = run_until(spec, output, r"^\[evaluation\] 2/3", timeout=400, extra_args=("--resume",))
    resumed = run_launcher(str(spec), "--output", str(output), "--resume", timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    return output, "".join(before), "".join(middle), resumed.stdout


@pytest.mark.slow
def test_resume_skips_the_stages_finished_before_each_kill(flagship):
    output, before, middle, after = flagship
    for stage in ("classifier", "gan", "gasten"):
        assert re.search(rf"\[{stage}\] .*done", before), f"{stage} had not finished before the first kill"
        assert f"[{stage}] already finished: skipped" in middle
    for stage in ("classifier", "gan", "gasten", "clustering", "prototypes", "boundary_ood"):
        assert f"[{stage}] already finished: skipped" in after
    assert "[evaluation] 3/3" in after


@pytest.mark.slow
def test_mlflow_holds_one_parent_per_stage_a_child_per_trial_and_three_aliases(flagship):
    output, *_ = flagship
    client = client_for(output)
    _, parents, children = study_runs(client, "miniflag")
    assert sorted(parents) == sorted(SHRINK)
    assert all(run.info.status == "FINISHED" for run in parents.values())
    trials = {"classifier": 1, "gan": 1, "gasten": 2, "clustering": 4, "boundary_ood": 2}
    for stage, count in trials.items():
        runs = children[parents[stage].info.run_id]
        ids = [run.data.tags["gensearch.trial_id"] for run in runs]
        assert len(runs) == count == len(set(ids)), f"{stage}: {ids}"
    registered = {stage["name"]: stage["register"] for stage in yaml.safe_load(SHIPPED.read_text())["stages"]
                  if "register" in stage}
    assert set(registered) == {"classifier", "gan", "gasten", "boundary_ood"}  # the generator is gasten's
    for stage, entry in registered.items():
        version = client.get_model_version_by_alias(entry["name"], entry["alias"])
        assert version.run_id in {run.info.run_id for run in children[parents[stage].info.run_id]}


@pytest.mark.slow
def test_the_evaluation_measures_features_prototypes_and_ood(flagship):
    output, *_ = flagship
    folder = output / "jobs" / "evaluation"
    fewshot = pd.read_parquet(folder / "fewshot" / "fewshot.parquet")
    assert sorted(set(fewshot.features)) == ["classifier", "discriminator", "pixels"]
    assert set(fewshot.k) == {1, 4}
    curve = pd.read_parquet(folder / "prototype_curve" / "prototype_curve.parquet")
    assert {"prototypes", "random_generated", "real"} <= set(curve.source)
    table = pd.read_parquet(folder / "ood" / "ood_table.parquet")
    assert {"max_softmax", "odin", "kplus1_boundary"} <= set(table.method)
    assert set(table.ood_set) == {"fashion_mnist", "kmnist", "uniform_noise"}
    assert table.auroc.between(0, 1).all()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert list(metrics)[0] == "fewshot.classifier.lin.k16" or "fewshot.classifier.lin.k4" in metrics


@pytest.mark.slow
def test_the_report_is_written_from_this_runs_numbers(flagship):
    output, *_, after = flagship
    report = (output / "report.md").read_text()
    state = json.loads((output / "study_state.json").read_text())
    for stage, entry in state["stages"].items():
        assert f"{stage}" in report
        if entry.get("best"):
            assert entry["best"]["trial_id"] in report
    for link in re.findall(r"\]\(([^)]+\.png)\)", report):
        assert (output / link).exists(), link
    assert "report.md" in after
