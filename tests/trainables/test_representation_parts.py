"""The representation studies' parts past the models: the diffusion-step trial (scores one t of a DDPM
trained once, never retrains it) and the few-shot job (curves of the chosen features beside pixels)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from trainables import catalog
from trainables.checkpoint import save_checkpoint
from trainables.config import build_config
from trainables.diffusion import DIFFUSION
from trainables.diffusion_timestep import DDPM_TIMESTEP, TimestepConfig
from trainables.reporter import ListReporter
from trainables.vae import VAE_TRAINABLE

TRIAL = {"pool_size": 300, "val_images": 200, "fewshot_k": 4, "fewshot_repeats": 2}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny DDPM (T = 50) and a tiny VAE, saved as their stages would."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("models")
        ddpm = ListReporter()
        DIFFUSION.run(build_config(DIFFUSION.config_cls, {**DIFFUSION.tiny_config, "train_size": 600, "val_size": 300,
                                                          "sample_images": 0}), ddpm)
        vae = ListReporter()
        VAE_TRAINABLE.run(build_config(VAE_TRAINABLE.config_cls, VAE_TRAINABLE.tiny_config), vae)
        yield {"ddpm": str(save_checkpoint(ddpm.last_checkpoint, root / "ddpm")),
               "vae": str(save_checkpoint(vae.last_checkpoint, root / "vae"))}
    finally:
        torch.set_num_threads(previous)


def run_trial(ddpm: str, **settings) -> ListReporter:
    reporter = ListReporter()
    DDPM_TIMESTEP.run(build_config(TimestepConfig, {"ddpm": ddpm, **TRIAL, **settings}), reporter)
    return reporter


def test_a_timestep_trial_scores_its_t_once_and_keeps_the_setting_as_its_checkpoint(folders):
    trial = run_trial(folders["ddpm"], t=20)
    (result,) = trial.results
    assert 0.1 < result["val_fewshot_lin"] <= 1.0  # 10 classes: better than chance even from a tiny DDPM
    state = trial.last_checkpoint
    assert state.trainable == "ddpm_timestep" and state.config["t"] == 20
    assert state.config["ddpm"] == folders["ddpm"]
    assert not state.modules  # the setting, not another copy of the model
    # Deterministic: the same t scores the same; another t sees other features.
    assert run_trial(folders["ddpm"], t=20).results == trial.results


def test_a_timestep_past_the_chain_or_a_wrong_checkpoint_fails_clearly(folders):
    with pytest.raises(ValueError, match=r"past the DDPM's chain \(steps 0..49\)"):
        run_trial(folders["ddpm"], t=50)
    with pytest.raises(ValueError, match="not a ddpm one"):
        run_trial(folders["vae"], t=1)
    with pytest.raises(ValueError, match="ddpm is empty"):
        TimestepConfig(ddpm="")


def test_fewshot_job_draws_every_curve_beside_the_pixel_baseline(folders, tmp_path):
    trial = run_trial(folders["ddpm"], t=10, pool=2)
    chosen = save_checkpoint(trial.last_checkpoint, tmp_path / "timestep")
    job = catalog.job("fewshot")
    reporter = ListReporter()
    config = build_config(job.config_cls, {"vae": folders["vae"], "diffusion": str(chosen), "shots": [2, 16],
                                           "repeats": 2, "heads": ["lin"], "train_pool": 500, "test_images": 300})
    metrics = job.run(config, reporter, tmp_path)
    table = pd.read_parquet(tmp_path / "fewshot.parquet")
    assert sorted(set(table.features)) == ["diffusion", "pixels", "vae"]
    assert sorted(metrics) == sorted(f"{f}.lin.k{k}" for f in ("diffusion", "pixels", "vae") for k in (2, 16))
    assert all(0.0 <= value <= 1.0 for value in metrics.values())
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics == reporter.results[-1]
    assert (tmp_path / "fewshot_curves.png").read_bytes()[:4] == b"\x89PNG"
    text = (tmp_path / "fewshot.md").read_text()
    assert "| pixels | lin |" in text and "DDPM decoder features at t=10, 2x2 average pooling" in text and "latent_dim=" in text


def test_fewshot_job_refuses_a_ddpm_checkpoint_where_a_timestep_result_belongs(folders, tmp_path):
    job = catalog.job("fewshot")
    config = build_config(job.config_cls, {"diffusion": folders["ddpm"], "shots": [2], "repeats": 1,
                                           "train_pool": 100, "test_images": 50})
    with pytest.raises(ValueError, match="not a ddpm_timestep one"):
        job.run(config, ListReporter(), tmp_path)
    with pytest.raises(ValueError, match="no feature set"):
        build_config(job.config_cls, {"pixels": False})
