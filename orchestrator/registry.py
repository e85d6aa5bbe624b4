"""The MLflow Model Registry: the best trial's model becomes a version with an alias.

With promote.py (its command line) the one door to MLflow besides the Tracker: the registry is the store's,
not one study's (a model's versions come from many studies), and logging a model needs MLflow's own
`mlflow.pytorch.log_model` on an active run, which the Tracker's explicit-run-id calls do not cover.

The model is logged into the best trial's own child run, so the registered version's source run
*is* the trial that earned it. Registration is idempotent: re-running it for the same run (after
a resume) finds the existing version instead of adding another. The version's description says
where it came from (study, stage, metric, trial, report), so the registry page explains itself.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import mlflow.pytorch
import torch

from orchestrator.spec import RegisterSpec
from orchestrator.study_state import BestTrial, RegisteredVersion
from orchestrator.tracking import Tracker, mlflow_pointed_at, without_progress_bar
from trainables.checkpoint import load_checkpoint
from trainables.definitions import TrainableDef

# Given explicitly: letting MLflow infer requirements costs ~12 s per model.
PIP_REQUIREMENTS = [f"torch=={torch.__version__.split('+')[0]}"]


def describe_version(study: str, stage: str, best: BestTrial, mode: str, report: Path) -> str:
    """The registered version's description (markdown, shown on its page in the MLflow UI)."""
    epoch = f" at epoch {best.epoch}" if best.epoch is not None else ""
    return (f"Best trial of stage `{stage}` in study `{study}`: **{best.metric} = {best.value:.6g}** ({mode}){epoch}, "
            f"trial `{best.trial_id}` (run `{best.child_run_id}`). Report: `{report}`")


def register_best(tracker: Tracker, definition: TrainableDef, best: BestTrial, spec: RegisterSpec,
                  stage: str, report: Path) -> RegisteredVersion:
    client = tracker.client
    existing = client.search_model_versions(f"name = '{spec.name}' and run_id = '{best.child_run_id}'")
    if existing:
        version = max(existing, key=lambda v: int(v.version))
    else:
        model = definition.build_model(load_checkpoint(best.checkpoint))
        logging.getLogger("mlflow").setLevel(logging.ERROR)
        with without_progress_bar(), mlflow_pointed_at(tracker.target.uri):
            with mlflow.start_run(run_id=best.child_run_id):
                # "pickle": loads back as the same nn.Module class with mlflow.pytorch.load_model; the
                # newer "pt2" format would need a traced example input from every trainable.
                info = mlflow.pytorch.log_model(model, name="model", pip_requirements=PIP_REQUIREMENTS,
                                                serialization_format="pickle")
            version = mlflow.register_model(info.model_uri, spec.name, tags={
                "gensearch.study": tracker.study, "gensearch.stage": stage, "gensearch.trial_id": best.trial_id,
                best.metric: f"{best.value:.6g}", "gensearch.checkpoint": Path(best.checkpoint).as_posix(),
                **({"gensearch.epoch": str(best.epoch)} if best.epoch is not None else {})})
        if version.run_id != best.child_run_id:  # MLflow resolves the source run from the logged model
            raise RuntimeError(f"registered {spec.name} v{version.version} points at run {version.run_id}, "
                               f"not the best trial's run {best.child_run_id}")
    description = describe_version(tracker.study, stage, best, definition.metric(best.metric).mode, report)
    if version.description != description:
        client.update_model_version(spec.name, version.version, description=description)
    if not client.get_registered_model(spec.name).description:
        client.update_registered_model(spec.name, description=f"The best `{stage}` model of each run of study "
                                                                f"`{tracker.study}` (gensearch); the alias `{spec.alias}` marks "
                                                                f"the one in use.")
    client.set_registered_model_alias(spec.name, spec.alias, version.version)
    return RegisteredVersion(name=spec.name, version=str(version.version), alias=spec.alias,
                             run_id=best.child_run_id or "")
