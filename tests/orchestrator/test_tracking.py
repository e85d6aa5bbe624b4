"""The study's MLflow experiment, created or found, is marked as model training for MLflow 3's UI."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator.tracking import Tracker, resolve_target


def test_an_existing_experiment_gets_the_kind_a_users_choice_is_kept(tmp_path: Path) -> None:
    target = resolve_target(tmp_path / "out", None, None)
    client = MlflowClient(tracking_uri=target.uri)
    older = client.create_experiment("older", artifact_location=target.artifact_root)  # before the tag existed
    chosen = client.create_experiment("chosen", tags={"mlflow.experimentKind": "finetuning"})
    guessed = client.create_experiment("guessed", tags={"mlflow.experimentKind": "genai_development_inferred"})
    for name in ("older", "chosen", "guessed", "new"):
        Tracker(target, name, study=name).experiment_id
    kinds = {e.name: e.tags.get("mlflow.experimentKind") for e in client.search_experiments()}
    assert kinds["older"] == kinds["guessed"] == kinds["new"] == "custom_model_development"
    assert kinds["chosen"] == "finetuning"
    assert {older, chosen, guessed} <= {e.experiment_id for e in client.search_experiments()}
