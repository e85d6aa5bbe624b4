"""The DDPM: its schedule against the closed form, q_sample's moments, the U-Net's shapes, features at
step t, a loss that falls, training through fit(), resume, rebuild, config checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.config import build_config
from trainables.data import DatasetUse
from trainables.diffusion import (
    DIFFUSION,
    DiffusionConfig,
    NoiseSchedule,
    UNet,
    build_model,
    ddpm_loss,
    extract_features,
    feature_dim,
    sample,
    schedule_from_config,
    schedule_from_state,
    train,
)
from trainables.fit import checkpoint_state
from trainables.reporter import ListReporter

torch.set_num_threads(1)

SMALL = dict(train_size=96, val_size=32, epochs=2, batch_size=32, nf=4, timesteps=20, sample_images=2,
             allow_fallback=True)


def run(reporter=None, **changes) -> ListReporter:
    reporter = reporter or ListReporter()
    train(DiffusionConfig(**{**SMALL, **changes}), reporter)
    return reporter


@pytest.fixture(scope="module")
def straight() -> ListReporter:
    """Two tiny epochs without interruption (shared: training is the slow part)."""
    return run()


def closed_form_alpha_bar(timesteps=1000, beta_start=1e-4, beta_end=0.02) -> np.ndarray:
    betas = beta_start + (beta_end - beta_start) * np.arange(timesteps, dtype=np.float64) / (timesteps - 1)
    return np.array([np.prod(1.0 - betas[:t + 1]) for t in range(timesteps)])


def test_alpha_bar_is_the_closed_form_product_of_one_minus_linear_betas():
    schedule = NoiseSchedule()  # T = 1000, betas 1e-4 .. 0.02
    expected = closed_form_alpha_bar()
    assert schedule.alpha_bar.shape == (1000,)
    assert schedule.betas[0].item() == pytest.approx(1e-4) and schedule.betas[-1].item() == pytest.approx(0.02)
    for t in (0, 499, 999):
        assert schedule.alpha_bar[t].item() == pytest.approx(expected[t], rel=1e-5), t
    assert np.allclose(schedule.alpha_bar.numpy(), expected, rtol=1e-5, atol=1e-9)
    assert schedule.alpha_bar[0].item() == pytest.approx(1 - 1e-4)
    assert torch.all(schedule.alpha_bar[1:] < schedule.alpha_bar[:-1])
    assert 3e-5 < schedule.alpha_bar[999].item() < 5e-5  # about 4.0e-5: x_999 is nearly pure noise
    assert torch.allclose(schedule.alphas, 1 - schedule.betas)
    assert schedule_from_config(DiffusionConfig(timesteps=10, beta_end=0.05)).alpha_bar.shape == (10,)


def test_q_sample_is_nearly_x0_at_t0_and_has_the_right_moments():
    schedule = NoiseSchedule()
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 1, 28, 28, generator=generator) * 2 - 1
    noise = torch.randn(x0.shape, generator=generator)
    assert torch.allclose(schedule.q_sample(x0, torch.tensor([0]), noise), x0, atol=0.05)
    # Many noisings of the same image at t = 350: per-pixel mean sqrt(ab) x0 and variance 1 - ab.
    draws = 4000
    t = torch.full((draws,), 350)
    x_t = schedule.q_sample(x0.expand(draws, -1, -1, -1), t, torch.randn(draws, 1, 28, 28, generator=generator))
    ab = schedule.alpha_bar[350].item()
    assert 0.2 < ab < 0.4  # the middle of the chain really is half signal, half noise
    assert torch.allclose(x_t.mean(0), math.sqrt(ab) * x0[0], atol=0.06)
    assert x_t.var(0).mean().item() == pytest.approx(1 - ab, rel=0.02)
    assert (x_t.var(0) - (1 - ab)).abs().max().item() < 0.12
    # One step per image, mixed.
    mixed = schedule.q_sample(torch.zeros(2, 1, 2, 2), torch.tensor([0, 999]), torch.ones(2, 1, 2, 2))
    assert mixed[0].flatten().tolist() == pytest.approx([math.sqrt(1 - schedule.alpha_bar[0].item())] * 4)
    assert mixed[1].flatten().tolist() == pytest.approx([math.sqrt(1 - schedule.alpha_bar[999].item())] * 4)
    with pytest.raises(ValueError):
        schedule.q_sample(x0, torch.tensor([1000]), noise)


def test_unet_predicts_noise_shaped_like_its_input_and_exposes_the_up_blocks():
    torch.manual_seed(0)
    model = UNet(nf=4).eval()
    x = torch.randn(3, 1, 28, 28)
    t = torch.tensor([0, 350, 999])
    with torch.no_grad():
        eps, activations = model(x, t, return_features=True)
        assert eps.shape == x.shape
        assert [tuple(a.shape) for a in activations] == [(3, 8, 7, 7), (3, 8, 14, 14), (3, 4, 28, 28)]
        assert torch.equal(model(x, t), eps)
        assert all(torch.equal(a, b) for a, b in zip(model.decoder_activations(x, t), activations))
    assert feature_dim(model) == 5 * 4 == feature_dim(UNet(nf=16)) // 4


def test_features_have_the_documented_shape_are_deterministic_and_depend_on_t():
    torch.manual_seed(0)
    model, schedule = UNet(nf=4), NoiseSchedule()
    with torch.no_grad():  # the zero-initialised output conv does not matter here, but give the rest some life
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    images = torch.rand(10, 1, 28, 28)
    features = extract_features(model, schedule, images, 350, batch_size=4, seed=5)
    assert features.shape == (10, feature_dim(model)) == (10, 20) and features.dtype == torch.float32
    assert torch.isfinite(features).all()
    assert torch.equal(extract_features(model, schedule, images, 350, batch_size=4, seed=5), features)
    # Image i gets the same noise whatever the batch size.
    assert torch.allclose(extract_features(model, schedule, images, 350, batch_size=256, seed=5), features, atol=1e-5)
    assert not torch.allclose(extract_features(model, schedule, images, 350, seed=6), features)
    assert not torch.allclose(extract_features(model, schedule, images, 50, batch_size=4, seed=5), features)
    assert extract_features(model, schedule, images[:0], 350).shape == (0, 20)
    with pytest.raises(ValueError):
        extract_features(model, schedule, images, 1000)
    # 2x2 cells: four averages per channel; on the 14x14 and 28x28 blocks the cells tile the image
    # exactly, so their mean is the global average (7x7 splits into overlapping 4x4 cells).
    cells = extract_features(model, schedule, images, 350, batch_size=4, seed=5, pool=2)
    assert cells.shape == (10, feature_dim(model, pool=2)) == (10, 80)
    assert torch.allclose(cells.view(10, 20, 4).mean(dim=2)[:, 8:], features[:, 8:], atol=1e-5)
    with pytest.raises(ValueError, match="pool"):
        extract_features(model, schedule, images, 350, pool=8)


def test_the_loss_falls_when_overfitting_one_tiny_batch():
    torch.manual_seed(0)
    model, schedule = UNet(nf=8), NoiseSchedule(timesteps=100)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    images = torch.zeros(8, 1, 28, 28)
    images[:, :, 8:20, 12:16] = 1.0  # the same bar eight times: easy to learn
    fixed_t, fixed_noise = torch.randint(0, 100, (8,)), torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        before = ddpm_loss(model, schedule, images, fixed_t, fixed_noise).item()
    assert before == pytest.approx(fixed_noise.pow(2).mean().item())  # zero-initialised output: predicts 0
    for _ in range(20):
        loss = ddpm_loss(model, schedule, images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = ddpm_loss(model, schedule, images, fixed_t, fixed_noise).item()
    assert after < 0.6 * before, (before, after)


@pytest.mark.parametrize("changes", [dict(nf=0), dict(lr=0.0), dict(val_size=0), dict(train_size=-1),
                                     dict(epochs=0), dict(batch_size=0), dict(timesteps=1), dict(beta_start=0.0),
                                     dict(beta_start=0.03), dict(beta_end=1.0), dict(sample_images=-1)])
def test_config_rejects_impossible_values(changes):
    with pytest.raises(ValueError):
        DiffusionConfig(**changes)


def test_train_reports_finite_losses_each_epoch_and_a_checkpoint(straight):
    assert [r["epoch"] for r in straight.results] == [1.0, 2.0]
    for result in straight.results:
        assert set(result) == {"epoch", "train_loss", "val_loss"}
        assert all(math.isfinite(value) for value in result.values()), result
    state = straight.last_checkpoint
    assert (state.trainable, state.epoch) == ("ddpm", 2)
    assert build_config(DiffusionConfig, state.config) == DiffusionConfig(**SMALL)
    assert straight.files["denoise.png"].startswith(b"\x89PNG")
    assert straight.files["samples.png"].startswith(b"\x89PNG")  # the last epoch only
    assert schedule_from_state(state).timesteps == 20


def test_resume_continues_at_the_next_epoch_with_the_same_model(straight):
    interrupted = run(epochs=1)
    assert [r["epoch"] for r in interrupted.results] == [1.0]
    resumed = run(ListReporter(resume_from=interrupted.last_checkpoint))
    assert [r["epoch"] for r in resumed.results] == [2.0]
    expected = straight.last_checkpoint.modules["model"]
    final = resumed.last_checkpoint.modules["model"]
    for key in expected:
        assert torch.allclose(expected[key], final[key], atol=1e-6), key
    for metric in ("train_loss", "val_loss"):
        assert resumed.results[0][metric] == pytest.approx(straight.results[-1][metric], rel=1e-5), metric


def test_build_model_round_trip_through_a_checkpoint_folder_gives_identical_outputs(tmp_path):
    torch.manual_seed(3)
    config = DiffusionConfig(nf=6)
    original = UNet(config.nf).eval()
    optimizer = torch.optim.Adam(original.parameters())
    state = checkpoint_state("ddpm", config, 1, {"val_loss": 1.0}, {"model": original}, {"model": optimizer})
    rebuilt = build_model(load_checkpoint(save_checkpoint(state, tmp_path / "ckpt")))
    assert isinstance(rebuilt, UNet) and not rebuilt.training and rebuilt.nf == 6
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.equal(rebuilt(x, t), original(x, t))


def test_sampling_gives_images_in_range_and_is_seeded():
    torch.manual_seed(0)
    model, schedule = UNet(nf=4), NoiseSchedule(timesteps=10, beta_end=0.2)
    images = sample(model, schedule, 3, torch.device("cpu"), seed=2)
    assert images.shape == (3, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    assert torch.equal(sample(model, schedule, 3, torch.device("cpu"), seed=2), images)


def test_trainable_definition_tiny_run_reports_its_declared_metrics_and_rebuilds_its_model():
    """What tests/trainables/test_contract.py checks for every catalogued trainable."""
    assert DIFFUSION.name == "ddpm" and DIFFUSION.metric("val_loss").mode == "min"
    assert DIFFUSION.metric("train_loss").mode == "min"
    config = build_config(DiffusionConfig, {**DIFFUSION.tiny_config, "allow_fallback": False})
    assert DIFFUSION.datasets(config) == (DatasetUse("mnist", ("train",)),)  # what the launcher fetches
    reporter = ListReporter()
    DIFFUSION.run(config, reporter)
    assert {metric.name for metric in DIFFUSION.metrics} <= reporter.keys()
    state = reporter.last_checkpoint
    assert state.epoch == DIFFUSION.tiny_config["epochs"]
    rebuilt = DIFFUSION.build_model(state).state_dict()
    for key, tensor in state.modules["model"].items():
        assert torch.equal(rebuilt[key], tensor), key
