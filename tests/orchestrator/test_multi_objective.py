"""A two-objective tune stage through the launcher (Ray Tune + Optuna's multi-objective TPE + MLflow), on a
toy trainable whose loss falls and cost rises with every epoch: the front and the champion that land in
MLflow are checked against a computation of our own from the trials' MLflow metric histories."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.orchestrator import toy_trainables as toy
from tests.orchestrator.study_helpers import client_for, launcher_env, run_launcher, study_runs
from trainables.checkpoint import load_checkpoint

NUM_SAMPLES, EPOCHS = 4, 4


def two_objective_study(path: Path, *, name: str = "toymo", scheduler: dict | None = None,
                        sleep_s: float = 0.0, num_samples: int = NUM_SAMPLES) -> Path:
    stage = {
        "name": "search", "kind": "tune", "trainable": toy.NAME,
        "config": {"epochs": EPOCHS, "sleep_s": sleep_s},
        "space": {"x": {"type": "uniform", "low": 0.0, "high": 1.0}},
        "metric": ["loss", "cost"], "mode": ["min", "min"],
        "champion": {"minimize": "loss", "where": {"cost": {"max": "budget"}}},
        "num_samples": num_samples, "max_concurrent_trials": 2,
        "searcher": {"type": "optuna", "sampler": "tpe", "seed": 0}, "resources": {"cpu": 1},
        "register": {"name": f"{name}-model"},
    }
    if scheduler:
        stage["scheduler"] = scheduler
    path.write_text(yaml.safe_dump({"study": name, "stages": [stage]}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multi_objective")
    spec = two_objective_study(folder / "toymo.yaml")
    output = folder / "out"
    result = run_launcher(str(spec), "--output", str(output), env=toy.with_path(launcher_env()))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = client_for(output)
    _, parents, children = study_runs(client, "toymo")
    return output, result, client, parents["search"], children[parents["search"].info.run_id]


def histories(client, runs) -> dict[tuple[str, int], dict[str, float]]:
    """(trial, step) -> every metric MLflow holds for that step of that trial."""
    points: dict[tuple[str, int], dict[str, float]] = {}
    for run in runs:
        trial = run.data.tags["gensearch.trial_id"]
        for name in ("loss", "cost", "budget", "ref_loss", "ref_cost"):
            for entry in client.get_metric_history(run.info.run_id, name):
                points.setdefault((trial, entry.step), {})[name] = entry.value
    return points


@pytest.mark.slow  # one tiny study through the launcher: ~1 min on 2 busy cores
def test_the_champion_and_the_front_match_our_own_reading_of_the_mlflow_histories(finished):
    output, _, client, parent, runs = finished
    points = histories(client, runs)
    assert len(runs) == NUM_SAMPLES and len(points) == NUM_SAMPLES * EPOCHS  # no scheduler: every epoch of every trial
    feasible = {key: values for key, values in points.items() if values["cost"] <= values["budget"]}
    # Lowest loss among the points that meet the rule; a tie would go to the later epoch.
    (trial, epoch), chosen = min(feasible.items(), key=lambda item: (item[1]["loss"], -item[0][1]))
    assert parent.data.tags["gensearch.champion_trial_id"] == trial
    assert parent.data.tags["gensearch.champion_epoch"] == str(epoch)
    assert parent.data.tags["gensearch.champion_rule_met"] == "true"
    assert parent.data.metrics["best_loss"] == pytest.approx(chosen["loss"])
    assert parent.data.metrics["best_cost"] == pytest.approx(chosen["cost"])

    front = {key for key, a in points.items()
             if not any(b["loss"] <= a["loss"] and b["cost"] <= a["cost"] and (b["loss"], b["cost"]) != (a["loss"], a["cost"])
                        for b in points.values())}
    local = Path(client.download_artifacts(parent.info.run_id, "pareto_front.csv", str(output / "fetched")))
    rows = list(csv.DictReader(local.open()))
    assert {(row["trial"], int(row["epoch"])) for row in rows} == front
    assert [float(row["loss"]) for row in rows] == sorted(float(row["loss"]) for row in rows)  # best first
    for row in rows:
        key = (row["trial"], int(row["epoch"]))
        assert row["feasible"] == str(key in feasible)
        assert row["chosen"] == str(key == (trial, epoch))
        assert row["on_front"] == "True"  # the champion is on the front here: the rule bounds a searched metric
    assert 1 < len(front) < len(points)  # a real front: some epochs are beaten on both metrics
    assert (trial, epoch) in front

    on_front = {t for t, _ in front}
    for run in runs:
        assert (run.data.tags.get("gensearch.pareto_front") == "true") == (run.data.tags["gensearch.trial_id"] in on_front)
    assert {"pareto.png", "pareto_front.csv", "trials.csv"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}


@pytest.mark.slow  # one tiny study through the launcher: ~1 min on 2 busy cores
def test_the_best_checkpoint_and_the_registered_model_are_that_epochs(finished):
    import mlflow.pytorch

    from orchestrator.tracking import mlflow_pointed_at

    output, _, client, parent, runs = finished
    trial, epoch = parent.data.tags["gensearch.champion_trial_id"], int(parent.data.tags["gensearch.champion_epoch"])
    assert epoch < EPOCHS  # the toy's budget admits no fourth epoch: the champion is not its trial's last epoch
    best = json.loads((output / "study_state.json").read_text())["stages"]["search"]["best"]
    assert (best["trial_id"], best["epoch"], best["metric"], best["rule_met"]) == (trial, epoch, "loss", True)
    assert f"trial_{trial}" in best["checkpoint"]
    assert load_checkpoint(best["checkpoint"]).epoch == epoch
    version = client.get_model_version_by_alias("toymo-model", "champion")
    assert version.run_id == next(r.info.run_id for r in runs if r.data.tags["gensearch.trial_id"] == trial)
    assert version.tags["gensearch.epoch"] == str(epoch)
    uri = f"sqlite:///{(output / 'mlflow.db').resolve()}"
    with mlflow_pointed_at(uri):  # not left set: later launches in this process use their own store
        model = mlflow.pytorch.load_model("models:/toymo-model@champion")
    assert torch.equal(model.weight, torch.full((1, 1), float(epoch)))  # the toy's weight is its epoch


@pytest.mark.slow  # one tiny study through the launcher: ~1 min on 2 busy cores
def test_summary_report_and_progress_lines_name_the_champion_and_the_reference(finished):
    output, result, client, parent, runs = finished
    trial, epoch = parent.data.tags["gensearch.champion_trial_id"], parent.data.tags["gensearch.champion_epoch"]
    best = json.loads((output / "study_state.json").read_text())["stages"]["search"]["best"]["metrics"]
    beaten = best["loss"] <= toy.REFERENCE["ref_loss"] and best["cost"] <= toy.REFERENCE["ref_cost"]
    line = next(line for line in result.stdout.splitlines() if line.startswith("  search champion"))
    assert line.startswith(f"  search champion (trial {trial}, epoch {epoch}): loss {best['loss']:.4g}, "
                           f"cost {best['cost']:.4g} - beats reference (loss 0.3, cost 0.8): ")
    assert line.endswith("yes" if beaten else "no")
    assert f"[search] {NUM_SAMPLES}/{NUM_SAMPLES} done" in result.stdout
    assert "metrics [loss (min), cost (min)], champion: minimize loss where cost <= budget" in result.stdout
    report = (output / "report.md").read_text()
    assert "Champion rule: **minimize loss where cost <= budget**" in report
    assert "**Pareto front**" in report and "| trial | epoch | loss | cost | budget | feasible | chosen | on_front |" in report
    assert report.index("**Pareto front**") < report.index("pareto.png")


@pytest.mark.slow
def test_sigkill_then_resume_keeps_the_searchers_objectives_and_its_pruned_trials(tmp_path):
    import pickle

    from optuna.trial import TrialState

    from tests.orchestrator.study_helpers import run_until

    # Every trial lasts at least 2 epochs x 2 s, longer than the kill's grace: the kill lands mid-search
    # however fast the warm, reused workers start the next trials.
    asha = {"type": "asha", "max_t": EPOCHS, "grace_period": 2, "reduction_factor": 2}
    spec = two_objective_study(tmp_path / "toymo.yaml", name="toyresume", scheduler=asha, sleep_s=2.0)
    output, env = tmp_path / "out", toy.with_path(launcher_env())
    run_until(spec, output, r"\[search\] [12]/\d+ done", grace_s=2.5, env=env)
    client = client_for(output)
    _, parents, children = study_runs(client, "toyresume")
    parent = parents["search"].info.run_id
    assert parents["search"].info.status == "RUNNING"  # killed mid-search

    result = run_launcher(str(spec), "--output", str(output), "--resume", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resuming the Tune experiment" in result.stdout
    _, parents, children = study_runs(client, "toyresume")
    assert parents["search"].info.run_id == parent and parents["search"].info.status == "FINISHED"
    runs = {run.data.tags["gensearch.trial_id"]: run for run in children[parent]}
    assert len(runs) == NUM_SAMPLES and all(run.info.status == "FINISHED" for run in runs.values())
    assert parents["search"].data.tags["gensearch.champion_trial_id"] in runs
    assert "pareto_front.csv" in {a.path for a in client.list_artifacts(parent)}

    experiment = output / "tune" / "search"
    newest = max(experiment.glob("searcher-state-*.pkl"))  # the last session's, as Tune picks it (by name)
    searcher = pickle.loads(newest.read_bytes())  # the BudgetAwareOptunaSearch's own state, as Tune saved it
    assert (searcher["_metric"], searcher["_mode"], searcher["_budget"]) == (["loss", "cost"], ["min", "min"], EPOCHS)
    history = searcher["_ot_study"].trials
    assert len(history) == NUM_SAMPLES  # one Optuna trial per Tune trial, none asked twice after the resume
    for trial_id, ot_trial in searcher["_ot_trials"].items():
        log = (experiment / f"trial_{trial_id}" / "result.json").read_text().splitlines()
        steps = json.loads(log[-1])["training_iteration"]
        expected = TrialState.COMPLETE if steps == EPOCHS else TrialState.PRUNED
        assert history[ot_trial.number].state == expected, f"trial {trial_id} ran {steps} of {EPOCHS} epochs"
