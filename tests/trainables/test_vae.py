"""The convolutional VAE: its loss by hand, its shapes, training through fit(), resume, rebuild."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.config import build_config
from trainables.data import DatasetUse
from trainables.fit import checkpoint_state
from trainables.reporter import ListReporter
from trainables.vae import VAE, VAE_TRAINABLE, VAEConfig, build_model, features, train, vae_loss

SMALL = dict(train_size=1000, val_size=200, epochs=3, batch_size=64, latent_dim=8, allow_fallback=False)
METRICS = {"epoch", "train_loss", "val_loss", "val_recon", "val_kl"}


def run(reporter=None, **changes) -> ListReporter:
    reporter = reporter or ListReporter()
    train(VAEConfig(**{**SMALL, **changes}), reporter)
    return reporter


@pytest.fixture(scope="module")
def straight() -> ListReporter:
    """Three epochs on 1000 MNIST images without interruption (shared: training is the slow part)."""
    return run()


def test_loss_of_a_prior_matching_posterior_is_the_pixel_cross_entropy_alone():
    x = torch.tensor([[[[0.0, 1.0]]], [[[1.0, 1.0]]]])  # two 1x1x2 "images"
    recon = torch.full_like(x, 0.5)
    mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)
    total, recon_term, kl_term = vae_loss(recon, x, mu, logvar, beta=4.0)
    assert kl_term.item() == 0.0
    assert recon_term.item() == pytest.approx(2 * math.log(2))  # 2 pixels of -log 0.5, averaged over 2 images
    assert total.item() == pytest.approx(2 * math.log(2))


def test_loss_matches_a_hand_computation():
    x = torch.tensor([[[[1.0, 0.0]]]])
    recon = torch.tensor([[[[0.8, 0.25]]]])
    mu = torch.tensor([[1.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)]])
    total, recon_term, kl_term = vae_loss(recon, x, mu, logvar, beta=0.5)
    expected_recon = -math.log(0.8) - math.log(0.75)
    # KL = -1/2 [(1 + 0 - 1 - 1) + (1 + log 2 - 0 - 2)] = 1 - log(2) / 2
    expected_kl = 1 - math.log(2) / 2
    assert recon_term.item() == pytest.approx(expected_recon, rel=1e-6)
    assert kl_term.item() == pytest.approx(expected_kl, rel=1e-6)
    assert total.item() == pytest.approx(expected_recon + 0.5 * expected_kl, rel=1e-6)
    # Averaged over the batch: the same image twice gives the same terms.
    doubled = vae_loss(recon.repeat(2, 1, 1, 1), x.repeat(2, 1, 1, 1), mu.repeat(2, 1), logvar.repeat(2, 1), 0.5)
    assert [t.item() for t in doubled] == pytest.approx([total.item(), recon_term.item(), kl_term.item()])


def test_shapes_and_decoded_range():
    torch.manual_seed(0)
    vae = VAE(latent_dim=5, nf=4)
    x = torch.rand(3, 1, 28, 28)
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (3, 5) and vae.latent_dim == 5
    images = vae.decode(torch.randn(7, 5) * 50)  # far latents still decode to valid pixels
    assert images.shape == (7, 1, 28, 28)
    assert images.min() >= 0 and images.max() <= 1
    recon, mu2, logvar2 = vae(x)
    assert recon.shape == x.shape and torch.equal(mu, mu2) and torch.equal(logvar, logvar2)
    # Given the reparameterisation noise, the forward pass is deterministic.
    noise = torch.randn(3, 5)
    assert torch.equal(vae(x, noise)[0], vae(x, noise)[0])
    assert torch.equal(vae(x, torch.zeros(3, 5))[0], vae.decode(mu))


@pytest.mark.parametrize("changes", [dict(latent_dim=0), dict(nf=0), dict(beta=-0.1), dict(lr=0.0),
                                     dict(val_size=0), dict(train_size=-1), dict(epochs=0), dict(fewshot_k=-1),
                                     dict(fewshot_repeats=0), dict(fewshot_pool=0)])
def test_config_rejects_impossible_values(changes):
    with pytest.raises(ValueError):
        VAEConfig(**changes)


def test_reports_every_metric_each_epoch_and_the_elbo_improves(straight):
    assert [r["epoch"] for r in straight.results] == [1.0, 2.0, 3.0]
    for result in straight.results:
        assert set(result) == METRICS
        assert all(math.isfinite(value) for value in result.values()), result
        assert result["val_loss"] == pytest.approx(result["val_recon"] + result["val_kl"])
        assert result["val_kl"] >= 0
    losses = [r["val_loss"] for r in straight.results]
    assert losses[0] > losses[1] > losses[2], losses
    assert losses[-1] < 0.9 * 784 * math.log(2)  # well below a constant 0.5 per pixel
    state = straight.last_checkpoint
    assert (state.trainable, state.epoch) == ("vae", 3)
    assert set(state.modules) == set(state.optimizers) == {"model"}
    assert build_config(VAEConfig, state.config) == VAEConfig(**SMALL)
    assert straight.files["samples.png"].startswith(b"\x89PNG")


@pytest.mark.slow  # several seconds (a subprocess or a small training run): not part of the quick loop
def test_resume_continues_at_the_next_epoch_with_the_same_model(straight):
    interrupted = run(epochs=2)
    assert [r["epoch"] for r in interrupted.results] == [1.0, 2.0]
    resumed = run(ListReporter(resume_from=interrupted.last_checkpoint))
    assert [r["epoch"] for r in resumed.results] == [3.0]
    expected = straight.last_checkpoint.modules["model"]
    final = resumed.last_checkpoint.modules["model"]
    for key in expected:
        assert torch.allclose(expected[key], final[key], atol=1e-6), key
    for metric in ("train_loss", "val_loss", "val_recon", "val_kl"):
        assert resumed.results[0][metric] == pytest.approx(straight.results[-1][metric], rel=1e-5), metric


def test_build_model_round_trip_through_a_checkpoint_folder_gives_identical_outputs(tmp_path):
    torch.manual_seed(3)
    config = VAEConfig(latent_dim=6, nf=8)
    original = VAE(config.latent_dim, config.nf).eval()
    optimizer = torch.optim.Adam(original.parameters())
    state = checkpoint_state("vae", config, 1, {"val_loss": 1.0}, {"model": original}, {"model": optimizer})
    rebuilt = build_model(load_checkpoint(save_checkpoint(state, tmp_path / "ckpt")))
    assert isinstance(rebuilt, VAE) and not rebuilt.training
    assert (rebuilt.latent_dim, rebuilt.nf) == (6, 8)
    x, z, noise = torch.rand(4, 1, 28, 28), torch.randn(4, 6), torch.randn(4, 6)
    with torch.no_grad():
        assert torch.equal(rebuilt.decode(z), original.decode(z))
        for a, b in zip(rebuilt(x, noise), original(x, noise)):
            assert torch.equal(a, b)


def test_trainable_definition_tiny_run_reports_its_declared_metrics_and_rebuilds_its_model():
    """What tests/trainables/test_contract.py checks for every catalogued trainable."""
    assert VAE_TRAINABLE.name == "vae" and VAE_TRAINABLE.metric("val_loss").mode == "min"
    config = build_config(VAEConfig, {**VAE_TRAINABLE.tiny_config, "allow_fallback": False})
    assert VAE_TRAINABLE.datasets(config) == (DatasetUse("mnist", ("train",)),)  # what the launcher fetches
    reporter = ListReporter()
    VAE_TRAINABLE.run(config, reporter)
    assert {metric.name for metric in VAE_TRAINABLE.metrics if not metric.optional} <= reporter.keys()
    state = reporter.last_checkpoint
    assert state.epoch == VAE_TRAINABLE.tiny_config["epochs"]
    rebuilt = VAE_TRAINABLE.build_model(state).state_dict()
    for key, tensor in state.modules["model"].items():
        assert torch.equal(rebuilt[key], tensor), key


def test_features_are_the_posterior_means():
    torch.manual_seed(0)
    vae = VAE(latent_dim=6, nf=4)
    x = torch.rand(5, 1, 28, 28)
    got = features(vae, x, torch.device("cpu"), batch_size=2)
    assert got.shape == (5, 6) and got.dtype.name == "float32"
    assert torch.allclose(torch.from_numpy(got), vae.encode(x)[0].detach(), atol=1e-6)


@pytest.mark.slow  # several seconds (a subprocess or a small training run): not part of the quick loop
def test_fewshot_k_adds_the_search_objective_and_training_makes_it_better_than_an_untrained_encoder():
    """val_fewshot_lin is reported each epoch when asked for; after training the posterior means
    classify with 8 labels per class far better than an untrained encoder's do."""
    torch.set_num_threads(1)
    reporter = run(epochs=2, fewshot_k=8, fewshot_repeats=3, fewshot_pool=1000)
    values = [result["val_fewshot_lin"] for result in reporter.results]
    assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values)
    untrained = run(epochs=1, fewshot_k=8, fewshot_repeats=3, fewshot_pool=1000, lr=1e-12)
    assert values[-1] > untrained.results[-1]["val_fewshot_lin"] + 0.05
    assert "val_fewshot_lin" not in run(epochs=1).results[-1]  # off by default: kplus1 and generator_nn pay nothing
