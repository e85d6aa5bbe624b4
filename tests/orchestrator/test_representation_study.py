"""The representation studies, tiny: a DDPM trained once -> a Tune search over its step t -> the few-shot
curves, through Ray Tune + MLflow; killed during the t search and resumed without retraining the DDPM.

search_spaces/diffusion_timestep_mnist.yaml and vae_latent_mnist.yaml take ~20 minutes each; this runs the
diffusion study's stages wired the same way at toy sizes (T = 50 steps, a 600-image DDPM).
"""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from orchestrator.spec import load_study
from tests.orchestrator.study_helpers import REPO, client_for, run_launcher, run_until, study_runs

TRIALS = 4
TINY = {
    "study": "tinyrep",
    "stages": [
        {"name": "ddpm", "kind": "tune", "trainable": "ddpm",
         "config": {"train_size": 600, "val_size": 300, "epochs": 1, "batch_size": 64, "nf": 4, "timesteps": 50,
                    "sample_images": 2},
         "metric": "val_loss", "register": {"name": "tinyrep-ddpm"}},
        {"name": "timestep", "kind": "tune", "trainable": "ddpm_timestep", "inputs": {"ddpm": "ddpm.best"},
         "config": {"pool": 2, "fewshot_k": 4, "fewshot_repeats": 2, "pool_size": 300, "val_images": 200},
         "space": {"t": {"type": "int", "low": 0, "high": 49}},
         "metric": "val_fewshot_lin", "num_samples": TRIALS, "max_concurrent_trials": 1,
         "searcher": {"type": "optuna", "sampler": "qmc", "seed": 0}},   # a space-filling sweep over t
        {"name": "fewshot", "kind": "job", "job": "fewshot", "inputs": {"diffusion": "timestep.best"},
         "config": {"shots": [2, 8], "repeats": 2, "heads": ["lin"], "train_pool": 500, "test_images": 300}},
    ],
}


def test_the_shipped_representation_studies_validate_with_their_profiles():
    for name in ("vae_latent_mnist", "diffusion_timestep_mnist"):
        for profile in (None, "paper"):
            spec = load_study(REPO / "search_spaces" / f"{name}.yaml", profile=profile)
            assert spec.stages[-1].job == "fewshot"
    diffusion = load_study(REPO / "search_spaces" / "diffusion_timestep_mnist.yaml")
    assert diffusion.stage("ddpm").num_samples == 1  # trained once
    assert diffusion.stage("timestep").inputs["ddpm"].stage == "ddpm"  # reused by reference


@pytest.mark.slow
def test_a_tiny_diffusion_study_killed_in_its_t_search_resumes_without_retraining_the_ddpm(tmp_path):
    spec = tmp_path / "tinyrep.yaml"
    spec.write_text(yaml.safe_dump(TINY, sort_keys=False))
    output = tmp_path / "out"
    run_until(spec, output, r"\[timestep\] 1/\d+ done", grace_s=2.5)  # one t trial finished
    ddpm_folder = output / "tune" / "ddpm"
    trained = {path: path.stat().st_mtime_ns for path in ddpm_folder.rglob("*.pt")}
    assert trained, "the DDPM had not saved a checkpoint before the kill"

    result = run_launcher(str(spec), "--output", str(output), "--resume")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[ddpm] already finished: skipped" in result.stdout
    assert {path: path.stat().st_mtime_ns for path in ddpm_folder.rglob("*.pt")} == trained  # not retrained

    client = client_for(output)
    _, parents, children = study_runs(client, "tinyrep")
    assert len(children[parents["ddpm"].info.run_id]) == 1
    trials = children[parents["timestep"].info.run_id]
    assert len(trials) == TRIALS == len({run.data.tags["gensearch.trial_id"] for run in trials})
    assert all(0.0 <= run.data.metrics["val_fewshot_lin"] <= 1.0 for run in trials)
    assert len({run.data.params["t"] for run in trials}) == TRIALS  # the qmc sweep never repeats a t
    artifacts = {a.path for a in client.list_artifacts(parents["timestep"].info.run_id)}
    assert {"parameter_sweep.png", "search_history.png"} <= artifacts  # accuracy against t across trials
    evaluation = parents["fewshot"]
    assert {"fewshot_curves.png", "fewshot.parquet", "fewshot.md"} <= {
        a.path for a in client.list_artifacts(evaluation.info.run_id)}
    assert {"pixels.lin.k2", "pixels.lin.k8", "diffusion.lin.k2", "diffusion.lin.k8"} <= set(evaluation.data.metrics)
    table = pd.read_parquet(output / "jobs" / "fewshot" / "fewshot.parquet")
    assert sorted(set(table.features)) == ["diffusion", "pixels"]
