"""GASTeN end to end on real MNIST, tiny: a DCGAN, a classifier, then the fine-tuning.

Its `generator` and `classifier` settings are required checkpoint folders: the contract test builds
them from the definition's `contract_inputs`; this file trains a more confident classifier to see the
fine-tuning work. The fid_mnist feature network is built fresh in a temporary GENSEARCH_CACHE once for
the whole module.
"""

from __future__ import annotations

import math

import pytest
import torch

from trainables import catalog, feature_net
from trainables.checkpoint import save_checkpoint
from trainables.classifier import ClassifierConfig
from trainables.classifier import train as train_classifier
from trainables.config import ConfigError, build_config, required_fields
from trainables.data import load_images
from trainables.dcgan import DCGAN, DCGANConfig, Discriminator, FidScorer, Generator, load_fid_reference
from trainables.dcgan import train as train_dcgan
from trainables.gasten import (ACD_NOISE_SEED, GASTEN, GastenConfig, continue_step1_optimizers,
                               load_frozen_classifier, load_gan, measure_acd, positive_probability, scored_samples,
                               tradeoff, tradeoff_real)
from trainables.gasten import train as train_gasten
from trainables.metrics.acd import band_share, fixed_noise
from trainables.real_ambiguous import real_ambiguous
from trainables.reporter import ListReporter

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GENSEARCH_CACHE", str(folder))
        feature_net.feature_net("cpu")  # trained here once, read from the file afterwards
        yield folder


@pytest.fixture(scope="module")
def dcgan_run(cache, tmp_path_factory):
    reporter = ListReporter()
    train_dcgan(build_config(DCGANConfig, DCGAN.tiny_config), reporter)
    return reporter, save_checkpoint(reporter.last_checkpoint, tmp_path_factory.mktemp("gan"))


@pytest.fixture(scope="module")
def classifier_checkpoint(tmp_path_factory):
    # Small but confident (3 short epochs at lr 1e-2): a near-chance classifier would already say
    # ~0.5 on everything and leave GASTeN nothing to do.
    reporter = ListReporter()
    train_classifier(ClassifierConfig(train_size=128, val_size=64, epochs=3, batch_size=16, lr=1e-2), reporter)
    return save_checkpoint(reporter.last_checkpoint, tmp_path_factory.mktemp("classifier"))


def test_feature_net_is_cached_with_its_version_and_a_stale_file_is_not_trusted(cache):
    path = cache / "feature_nets" / "mnist_v1.pt"
    assert feature_net.cache_path() == path
    saved = torch.load(path, weights_only=False)
    assert saved["version"] == feature_net.FEATURE_NET_VERSION == "mnist-cnn-v1"
    net = feature_net.feature_net("cpu")
    assert not net.training and feature_net.embed_images(net, torch.rand(5, 1, 28, 28), batch_size=2).shape == (5, 64)
    stale = cache / "stale.pt"
    torch.save({**saved, "version": "mnist-cnn-v0"}, stale)
    assert feature_net._read(stale) is None  # feature_net() would retrain and overwrite it


def test_dcgan_tiny_run_reports_finite_metrics_and_a_rebuildable_generator(dcgan_run):
    reporter, _ = dcgan_run
    assert [r["epoch"] for r in reporter.results] == [1.0]
    for name in ("fid_mnist", "g_loss", "d_loss"):
        assert math.isfinite(reporter.last(name)), name
    assert reporter.last("fid_mnist") > 0
    state = reporter.last_checkpoint
    assert state.trainable == "dcgan" and list(state.modules) == ["generator", "discriminator"]
    assert reporter.files["samples.png"].startswith(PNG)
    assert "fid_inception" not in reporter.keys()  # no Inception weights on this machine: skipped, not faked
    generator = DCGAN.build_model(state)
    images = generator(torch.randn(3, 64))
    assert images.shape == (3, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert Discriminator()(images).shape == (3,)


def test_gasten_requires_both_checkpoints_and_its_definition_names_where_a_tiny_run_gets_them():
    assert required_fields(GastenConfig) == ("generator", "classifier")
    assert "gasten" in catalog.trainable_names() and not set(required_fields(GastenConfig)) & set(GASTEN.tiny_config)

    class Named:  # an Upstream that names what is asked for instead of running it
        def trainable(self, name, **changes):
            return f"{name}{changes or ''}"

    assert GASTEN.contract_inputs(Named()) == {"generator": "dcgan", "classifier": "classifier"}
    with pytest.raises(ConfigError, match="generator: required setting is missing"):
        build_config(GastenConfig, {"classifier": "/c"})
    with pytest.raises(ConfigError, match="classifier is empty"):
        build_config(GastenConfig, {"generator": "/g", "classifier": ""})
    with pytest.raises(ConfigError, match="alpha must be >= 0"):
        build_config(GastenConfig, {"generator": "/g", "classifier": "/c", "alpha": -1})
    with pytest.raises(ConfigError, match="band must be"):
        build_config(GastenConfig, {"generator": "/g", "classifier": "/c", "band": [0.6, 0.4]})


@pytest.mark.slow  # several seconds (a subprocess or a small training run): not part of the quick loop
def test_gasten_fine_tuning_moves_the_generator_towards_the_decision_boundary(cache, dcgan_run,
                                                                              classifier_checkpoint):
    _, gan_checkpoint = dcgan_run
    cpu = torch.device("cpu")
    generator, _ = load_gan(str(gan_checkpoint), cpu)
    classifier, _ = load_frozen_classifier(str(classifier_checkpoint), cpu)
    assert not classifier.training and not any(p.requires_grad for p in classifier.parameters())
    noise = fixed_noise(2048, 64, ACD_NOISE_SEED)
    before = measure_acd(generator.eval(), classifier, noise, cpu)
    band_before = band_share(scored_samples(generator, classifier, noise, cpu)[1])

    reporter = ListReporter()
    config = GastenConfig(generator=str(gan_checkpoint), classifier=str(classifier_checkpoint), alpha=30.0,
                          train_size=256, batch_size=32, epochs=2, fid_images=64)
    train_gasten(config, reporter)

    assert [r["epoch"] for r in reporter.results] == [1.0, 2.0]
    for name in ("fid_mnist", "acd", "g_loss", "d_loss", "confusion_loss"):
        assert math.isfinite(reporter.last(name)), name
    assert all(0.0 <= r["acd"] <= 0.5 for r in reporter.results)
    state = reporter.last_checkpoint
    assert state.trainable == "gasten"
    tuned = GASTEN.build_model(state)
    assert isinstance(tuned, Generator)
    after = measure_acd(tuned, classifier, noise, torch.device("cpu"))
    assert after == pytest.approx(reporter.last("acd"))
    # The step-1 generator is scored once, on the same latents, before any fine-tuning.
    assert [r["acd_step1"] for r in reporter.results] == pytest.approx([before, before])
    assert len({r["fid_mnist_step1"] for r in reporter.results}) == 1
    for r in reporter.results:
        assert r["acd_ratio"] == pytest.approx(r["acd"] / r["acd_step1"])
        assert r["tradeoff"] == pytest.approx(r["acd_ratio"] + max(0.0, r["fid_ratio"] - config.fid_budget))
        assert r["tradeoff_real"] == pytest.approx(
            r["acd_ratio"] + max(0.0, r["fid_mnist"] / r["fid_real_ambiguous"] - 1))
    assert reporter.files["samples.png"].startswith(PNG)
    # Seeded: about 0.30 before and 0.24 after on this setting; the margin is wide.
    assert after < before - 0.02, (before, after)

    # The band share comes from the same latents as acd, for the step-1 generator and every epoch.
    assert reporter.last("band_share") == pytest.approx(band_share(scored_samples(tuned, classifier, noise, cpu)[1]))
    assert [r["band_share_step1"] for r in reporter.results] == pytest.approx([band_before, band_before])
    # The real-image yardstick: the fid_images (64) training 7s and 1s of the whole pair (not only the
    # 256 this trial trains on) closest to C = 0.5, a constant of the trial, cached under GENSEARCH_CACHE.
    fid = FidScorer(load_fid_reference("mnist", (7, 1), 64, False), 64, 64, cpu)
    direct = real_ambiguous(lambda x: positive_probability(classifier, x),
                            load_images("mnist", "train", classes=(7, 1)).images, 64, fid.fid_mnist)
    for r in reporter.results:
        assert (r["acd_real_ambiguous"], r["fid_real_ambiguous"]) == pytest.approx((direct.acd, direct.fid_mnist))
    assert len(list((cache / "real_ambiguous").glob("*.json"))) == 1


def test_tradeoff_is_confidence_left_plus_realism_lost_beyond_the_budget():
    # ACD halved, FID 20% worse: within a 1.5x budget only the ACD counts; with no budget, 0.5 + 0.2.
    assert tradeoff(acd=0.1, fid=12.0, acd_step1=0.2, fid_step1=10.0) == pytest.approx(
        {"acd_ratio": 0.5, "fid_ratio": 1.2, "tradeoff": 0.5})
    assert tradeoff(acd=0.1, fid=12.0, acd_step1=0.2, fid_step1=10.0, fid_budget=1.0)["tradeoff"] == pytest.approx(0.7)
    # FID tripled: 1.5 over the budget on top of the ACD ratio; the step-1 generator itself scores 1.
    assert tradeoff(acd=0.1, fid=30.0, acd_step1=0.2, fid_step1=10.0)["tradeoff"] == pytest.approx(2.0)
    assert tradeoff(acd=0.2, fid=10.0, acd_step1=0.2, fid_step1=10.0)["tradeoff"] == pytest.approx(1.0)


def test_tradeoff_real_charges_only_the_realism_lost_beyond_real_boundary_digits():
    # ACD a quarter of step 1's at FID 80 against real boundary digits at 100: only the ACD counts.
    assert tradeoff_real(acd=0.1, fid=80.0, acd_step1=0.4, fid_real_ambiguous=100.0) == pytest.approx(0.25)
    # FID 150 against 100: half again less realistic than real boundary digits, 0.25 + 0.5.
    assert tradeoff_real(acd=0.1, fid=150.0, acd_step1=0.4, fid_real_ambiguous=100.0) == pytest.approx(0.75)


def test_continuing_step1_optimizers_keeps_their_moments_but_this_configs_lr(dcgan_run):
    reporter, gan_checkpoint = dcgan_run
    generator, discriminator = load_gan(str(gan_checkpoint), torch.device("cpu"))
    g_optimizer = torch.optim.Adam(generator.parameters(), lr=1e-5, betas=(0.3, 0.99))
    d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-5, betas=(0.3, 0.99))
    continue_step1_optimizers(str(gan_checkpoint), g_optimizer, d_optimizer)
    saved = reporter.last_checkpoint.optimizers["generator"]["state"]
    assert saved and torch.equal(g_optimizer.state_dict()["state"][0]["exp_avg_sq"], saved[0]["exp_avg_sq"])
    for optimizer in (g_optimizer, d_optimizer):
        assert [(g["lr"], g["betas"]) for g in optimizer.param_groups] == [(1e-5, (0.3, 0.99))]


def test_positive_class_is_label_index_one():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[0.0, math.log(3.0)]]).expand(len(x), 2)  # softmax -> [0.25, 0.75]
    assert positive_probability(Fixed(), torch.zeros(2, 1, 28, 28)).tolist() == pytest.approx([0.75, 0.75])
