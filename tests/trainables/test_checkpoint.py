"""The typed checkpoint: its round trip through `state.pt`, the dict form every earlier gensearch wrote, and
models rebuilt at the size their checkpoint's config names."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from trainables.checkpoint import STATE_FILE, Checkpoint, load_checkpoint, save_checkpoint
from trainables.classifier import Classifier, ClassifierConfig
from trainables.dcgan import DCGANConfig, Discriminator, Generator, build_model, discriminator_from_checkpoint
from trainables.diffusion import DiffusionConfig, UNet
from trainables.diffusion import build_model as build_unet
from trainables.fit import checkpoint_state
from trainables.ood.kplus1 import KPlus1Config, stage1_vae
from trainables.ood.kplus1 import build_model as build_kplus1
from trainables.reporter import ListReporter, clone_state
from trainables.vae import VAE, VAEConfig
from trainables.vae import build_model as build_vae


def trained_state() -> Checkpoint:
    """A checkpoint as `fit` writes one, after one real Adam step (so the optimizer has moments)."""
    model = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return checkpoint_state("classifier", ClassifierConfig(nf=2), 3, {"val_accuracy": 0.75}, {"model": model},
                            {"model": optimizer})


def assert_same(loaded: Checkpoint, saved: Checkpoint) -> None:
    assert (loaded.trainable, loaded.epoch, loaded.config, loaded.metrics) == (
        saved.trainable, saved.epoch, saved.config, saved.metrics)
    assert set(loaded.modules) == set(saved.modules)
    for name, weights in saved.modules.items():
        assert set(loaded.modules[name]) == set(weights)
        for key, tensor in weights.items():
            assert torch.equal(loaded.modules[name][key], tensor), (name, key)
    for name, optimizer in saved.optimizers.items():
        assert loaded.optimizers[name]["param_groups"] == optimizer["param_groups"]
        for index, moments in optimizer["state"].items():
            for key, tensor in moments.items():
                assert torch.equal(loaded.optimizers[name]["state"][index][key], tensor), (name, index, key)
    assert (loaded.rng is None) == (saved.rng is None)
    if saved.rng is not None:
        assert torch.equal(loaded.rng, saved.rng)


def test_a_checkpoint_round_trips_through_its_folder(tmp_path):
    state = trained_state()
    loaded = load_checkpoint(save_checkpoint(state, tmp_path / "ckpt"))
    assert isinstance(loaded, Checkpoint)
    assert_same(loaded, state)
    assert loaded.config["nf"] == 2 and loaded.optimizers["model"]["state"][0]["exp_avg"].shape == (2, 3)
    assert loaded.extras == {}


def test_state_pt_holds_the_plain_dict_earlier_gensearch_versions_read(tmp_path):
    bank = torch.randint(0, 255, (4, 1, 28, 28), dtype=torch.uint8)
    state = dataclasses.replace(trained_state(), extras={"bank": bank, "threshold": 0.5})
    raw = torch.load(save_checkpoint(state, tmp_path) / STATE_FILE, weights_only=False)
    assert type(raw) is dict
    assert set(raw) == {"trainable", "config", "epoch", "metrics", "modules", "optimizers", "rng", "bank", "threshold"}
    assert (raw["trainable"], raw["epoch"], raw["config"]["nf"]) == ("classifier", 3, 2)
    assert torch.equal(raw["bank"], bank) and raw["threshold"] == 0.5


def test_a_checkpoint_written_in_the_old_dict_form_loads_typed(tmp_path):
    model = nn.Linear(2, 1)
    old = {"trainable": "classifier", "config": {"nf": 2, "classes": [7, 1]}, "epoch": 4,
           "metrics": {"val_accuracy": 0.9}, "modules": {"model": model.state_dict()}, "optimizers": {},
           "rng": torch.get_rng_state()}
    (tmp_path / "fit").mkdir()
    torch.save(old, tmp_path / "fit" / STATE_FILE)
    loaded = load_checkpoint(tmp_path / "fit")
    assert isinstance(loaded, Checkpoint)
    assert_same(loaded, Checkpoint(**old))
    assert loaded.config["classes"] == [7, 1] and loaded.extras == {}

    # odin and ddpm_timestep wrote no modules, generator_nn its bank beside the named keys
    bank = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    (tmp_path / "bank").mkdir()
    torch.save({"trainable": "generator_nn", "config": {"latent_dim": 4}, "epoch": 1, "metrics": {"threshold": 0.2},
                "bank": bank, "bank_labels": torch.tensor([0, 1, 2]), "threshold": 0.2}, tmp_path / "bank" / STATE_FILE)
    loaded = load_checkpoint(tmp_path / "bank")
    assert (loaded.modules, loaded.optimizers, loaded.rng) == ({}, {}, None)
    assert set(loaded.extras) == {"bank", "bank_labels", "threshold"} and torch.equal(loaded.extras["bank"], bank)
    assert set(load_checkpoint(save_checkpoint(loaded, tmp_path / "again")).extras) == set(loaded.extras)


def test_a_state_without_its_trainable_or_clashing_extras_is_refused(tmp_path):
    torch.save({"epoch": 1}, tmp_path / STATE_FILE)
    with pytest.raises(ValueError, match=rf"{STATE_FILE}: a checkpoint state without trainable"):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a gensearch checkpoint"):
        load_checkpoint(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"extras \['epoch'\] are named like Checkpoint fields"):
        Checkpoint(trainable="odin", epoch=1, extras={"epoch": 2})


def test_the_reporter_keeps_a_copy_that_later_training_cannot_change():
    state = trained_state()
    reporter = ListReporter(resume_from=state)
    reporter.report({"val_accuracy": 0.75}, checkpoint=state)
    before = state.modules["model"]["weight"].clone()
    state.modules["model"]["weight"].add_(1.0)  # a state dict shares the live model's tensors
    for kept in (reporter.last_checkpoint, reporter.restore(), clone_state(state)):
        assert isinstance(kept, Checkpoint)
    assert torch.equal(reporter.last_checkpoint.modules["model"]["weight"], before)
    assert torch.equal(reporter.restore().modules["model"]["weight"], before)


def test_models_are_rebuilt_at_the_size_their_config_names(tmp_path):
    gan = DCGANConfig(z_dim=8, ngf=16, ndf=4)
    generator, discriminator = Generator(gan.z_dim, gan.ngf), Discriminator(gan.ndf)
    state = load_checkpoint(save_checkpoint(
        checkpoint_state("dcgan", gan, 1, {}, {"generator": generator, "discriminator": discriminator}, {}),
        tmp_path / "dcgan"))
    rebuilt = build_model(state)
    assert (rebuilt.z_dim, rebuilt.ngf, rebuilt.training) == (8, 16, False)
    assert discriminator_from_checkpoint(state).net[0].out_channels == 4
    # The config decides, not the weights: a config naming another width does not load them.
    with pytest.raises(RuntimeError, match="size mismatch"):
        build_model(dataclasses.replace(state, config={**state.config, "ngf": 8}))
    # A gasten checkpoint's config names only the dcgan folder it started from: its size comes off the weights.
    gasten = dataclasses.replace(state, trainable="gasten", config={"generator": str(tmp_path / "gone")})
    assert (build_model(gasten).z_dim, build_model(gasten).ngf) == (8, 16)

    vae = VAEConfig(latent_dim=3, nf=4)
    rebuilt_vae = build_vae(checkpoint_state("vae", vae, 1, {}, {"model": VAE(3, 4)}, {}))
    assert (rebuilt_vae.latent_dim, rebuilt_vae.nf) == (3, 4)

    ddpm = DiffusionConfig(nf=4, timesteps=10)
    assert build_unet(checkpoint_state("ddpm", ddpm, 1, {}, {"model": UNet(4)}, {})).nf == 4

    kplus1 = KPlus1Config(classes=(7, 1, 3), nf=2, latent_dim=5)
    stage1 = VAE(kplus1.vae_config().latent_dim, kplus1.vae_config().nf)
    state = checkpoint_state("kplus1", kplus1, 1, {}, {"vae": stage1, "classifier": Classifier(2, 4)}, {})
    assert build_kplus1(state).head.out_features == 4  # three classes and the unknown one
    assert stage1_vae(state).latent_dim == 5
