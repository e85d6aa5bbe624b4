"""A real tiny study through Ray Tune + Optuna + ASHA + MLflow, checked in the MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.orchestrator.study_helpers import best_history_value, client_for, run_launcher, study_runs, tiny_study

pytestmark = pytest.mark.slow  # every test here reads a real study run through Ray Tune and MLflow

NUM_SAMPLES = 4


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e")
    spec = tiny_study(folder / "tiny.yaml", num_samples=NUM_SAMPLES)
    output = folder / "out"
    result = run_launcher(str(spec), "--output", str(output))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return spec, output, result


def test_mlflow_holds_one_experiment_with_a_parent_per_stage_and_a_child_per_trial(finished_study):
    _, output, _ = finished_study
    client = client_for(output)
    experiments = [e.name for e in client.search_experiments() if e.name != "Default"]
    assert experiments == ["tiny"]
    _, parents, children = study_runs(client, "tiny")
    assert sorted(parents) == ["classifier", "evaluate"]
    assert all(run.info.status == "FINISHED" for run in parents.values())
    trials = children[parents["classifier"].info.run_id]
    assert len(trials) == NUM_SAMPLES
    assert len({run.data.tags["gensearch.trial_id"] for run in trials}) == NUM_SAMPLES
    assert parents["evaluate"].info.run_id not in children  # a job has no trials
    for run in trials:
        assert run.info.status == "FINISHED"
        assert {"lr", "nf", "epochs", "classes"} <= set(run.data.params)
        assert 1e-3 <= float(run.data.params["lr"]) <= 3e-2
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert 1 <= len(history) <= 3  # ASHA may stop a trial before max_t
        assert [m.step for m in history] == list(range(1, len(history) + 1))
        assert run.data.tags["gensearch.node_ip"]


def test_champion_alias_points_at_the_best_child_run(finished_study):
    _, output, _ = finished_study
    client = client_for(output)
    _, parents, children = study_runs(client, "tiny")
    trials = children[parents["classifier"].info.run_id]
    best_values = {run.info.run_id: best_history_value(client, run.info.run_id, "val_accuracy", "max")
                   for run in trials}
    version = client.get_model_version_by_alias("tiny-classifier", "champion")
    assert version.run_id in best_values
    assert best_values[version.run_id] == max(best_values.values())
    assert parents["classifier"].data.tags["gensearch.best_child_run_id"] == version.run_id
    assert parents["classifier"].data.metrics["best_val_accuracy"] == pytest.approx(max(best_values.values()))


def test_the_registered_model_loads_and_classifies(finished_study):
    import mlflow.pytorch
    import torch

    from orchestrator.tracking import mlflow_pointed_at
    from trainables.data import load_images

    _, output, _ = finished_study
    uri = f"sqlite:///{(output / 'mlflow.db').resolve()}"
    with mlflow_pointed_at(uri):  # not left set: later launches in this process use their own store
        model = mlflow.pytorch.load_model("models:/tiny-classifier@champion").eval()
    test = load_images("mnist", "test", classes=(7, 1), limit=200)
    with torch.no_grad():
        accuracy = (model(test.images).argmax(1) == test.labels).float().mean().item()
    assert accuracy > 0.9


def test_job_stage_consumed_the_best_checkpoint_by_reference(finished_study):
    _, output, _ = finished_study
    client = client_for(output)
    _, parents, _ = study_runs(client, "tiny")
    state = json.loads((output / "study_state.json").read_text())
    best_checkpoint = state["stages"]["classifier"]["best"]["checkpoint"]
    evaluate = parents["evaluate"]
    assert evaluate.data.params["inputs.checkpoint"] == "classifier.best"
    assert 0.9 < evaluate.data.metrics["test_accuracy"] <= 1.0
    assert evaluate.data.metrics["test_images"] == 300
    artifacts = {a.path for a in client.list_artifacts(evaluate.info.run_id)}
    assert {"confusion_matrix.png", "misclassified.png", "metrics.json"} <= artifacts
    assert (output / "tune" / "classifier").resolve() in Path(best_checkpoint).parents


def test_the_mlflow_ui_opens_on_training_runs_that_explain_themselves(finished_study):
    """The experiment's kind (MLflow 3 otherwise opens its GenAI overview), the searched space on the stage's
    run, and a registered version that says where it came from."""
    _, output, _ = finished_study
    client = client_for(output)
    experiment, parents, _ = study_runs(client, "tiny")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    params = parents["classifier"].data.params
    assert params["space.lr"] == "loguniform[0.001, 0.03]" and params["space.nf"] == "choice[1, 2]"
    version = client.get_model_version_by_alias("tiny-classifier", "champion")
    best = parents["classifier"].data
    assert version.description.startswith("Best trial of stage `classifier` in study `tiny`: **val_accuracy = "
                                          f"{best.metrics['best_val_accuracy']:.6g}** (max) at epoch ")
    assert f"trial `{best.tags['gensearch.best_trial_id']}` (run `{version.run_id}`)" in version.description
    assert version.description.endswith(f"Report: `{output.resolve() / 'report.md'}`")
    assert (output / "report.md").is_file()
    assert "study `tiny`" in client.get_registered_model("tiny-classifier").description
    # MLflow 3.17's UI opens any experiment on its GenAI overview unless asked for the model-training view
    url = f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
    assert url in (output / "summary.md").read_text() and url in (output / "report.md").read_text()


def test_parameter_importance_lands_on_the_stage_run_and_in_the_report(finished_study):
    """fANOVA over the 4 trials' lr and nf: the table and bar chart on the classifier's run, the importances
    as its metrics (summing to 1), the same line printed, the table and picture in the report."""
    _, output, result = finished_study
    client = client_for(output)
    _, parents, _ = study_runs(client, "tiny")
    run = parents["classifier"]
    assert {"importance.md", "importance.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    shares = {k.removeprefix("importance.val_accuracy."): v for k, v in run.data.metrics.items()
              if k.startswith("importance.")}
    assert set(shares) == {"lr", "nf"} and sum(shares.values()) == pytest.approx(1.0)
    printed = ", ".join(f"{name} {value:.2f}" for name, value in sorted(shares.items(), key=lambda kv: -kv[1]))
    assert f"[classifier] parameter importance (fANOVA, {NUM_SAMPLES} trials): val_accuracy: {printed}" in \
        result.stdout
    report = (output / "report.md").read_text()
    assert f"**Parameter importance** (Optuna's fANOVA over {NUM_SAMPLES} finished trials" in report
    assert f"| lr | {shares['lr']:.3f} |" in report
    assert "](report/classifier/importance.png)" in report and (output / "report/classifier/importance.png").is_file()


def test_the_study_record_names_the_tune_stages_tables_and_pictures_and_mlflow_holds_them(finished_study):
    """The tune stage's own outputs (stage_outputs.TUNE_STAGE_OUTPUTS) are recorded in study_state.json where
    they were written, and its parent run holds each of them."""
    _, output, _ = finished_study
    recorded = json.loads((output / "study_state.json").read_text())["stages"]["classifier"]["outputs"]
    folder = output / "tune" / "classifier"
    assert {name: (item["kind"], item["path"]) for name, item in recorded.items()} == {
        "trials": ("data", str(folder / "trials.csv")),
        "search_history": ("picture", str(folder / "search_history.png")),
        "parameter_sweep": ("picture", str(folder / "parameter_sweep.png")),
        "importance": ("table", str(folder / "importance.md")),
        "importance_plot": ("picture", str(folder / "importance.png"))}
    client = client_for(output)
    _, parents, _ = study_runs(client, "tiny")
    logged = {a.path for a in client.list_artifacts(parents["classifier"].info.run_id)}
    assert {Path(item["path"]).name for item in recorded.values()} <= logged


def test_summary_names_best_trial_registry_and_mlflow_ui_command(finished_study):
    _, output, result = finished_study
    summary = (output / "summary.md").read_text()
    for text in ("classifier", "evaluate", "tiny-classifier v1 @champion", "mlflow ui --backend-store-uri sqlite:///"):
        assert text in summary
        assert text in result.stdout
    assert f"{NUM_SAMPLES}/{NUM_SAMPLES} done" in result.stdout


def test_rerun_without_resume_refuses_and_changes_nothing(finished_study):
    spec, output, _ = finished_study
    client = client_for(output)
    before = len(client.search_runs([client.get_experiment_by_name("tiny").experiment_id]))
    result = run_launcher(str(spec), "--output", str(output))
    assert result.returncode == 2
    assert "--resume" in result.stderr and "Traceback" not in result.stderr
    assert len(client.search_runs([client.get_experiment_by_name("tiny").experiment_id])) == before


def test_resume_of_a_finished_study_skips_every_stage(finished_study):
    spec, output, _ = finished_study
    client = client_for(output)
    before = {r.info.run_id for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])}
    result = run_launcher(str(spec), "--output", str(output), "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[classifier] already finished: skipped" in result.stdout
    assert "[evaluate] already finished: skipped" in result.stdout
    after = {r.info.run_id for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])}
    assert after == before
    assert len(client.search_model_versions("name = 'tiny-classifier'")) == 1


def test_promote_lists_versions_and_moves_an_alias(finished_study, capsys):
    from orchestrator.promote import main as promote

    _, output, _ = finished_study
    client = client_for(output)
    champion = client.get_model_version_by_alias("tiny-classifier", "champion")
    assert promote(["--output", str(output)]) == 0
    listing = capsys.readouterr().out
    assert f"v1  run {champion.run_id}  @champion" in listing
    assert promote(["--output", str(output), "tiny-classifier", "--version", "7"]) == 2
    assert "has no version 7 (versions: 1)" in capsys.readouterr().err
    assert promote(["--output", str(output), "tiny-classifier", "--run", champion.run_id, "--alias", "staging"]) == 0
    assert client.get_model_version_by_alias("tiny-classifier", "staging").version == champion.version
