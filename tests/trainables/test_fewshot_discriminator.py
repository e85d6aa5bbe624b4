"""The few-shot job's `discriminator` feature source: a DCGAN discriminator's penultimate activations.

The DCGAN is trained here for one short epoch on 512 MNIST images (`train_gan_epoch`, no FID), then
saved the way `fit` saves a dcgan result; the job runs on a small pool and test subset.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from trainables import catalog
from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.classifier import Classifier, ClassifierConfig
from trainables.config import build_config
from trainables.data import load_images
from trainables.dcgan import DCGANConfig, Discriminator, Generator, train_gan_epoch
from trainables.evaluate_fewshot import FewShotJobConfig, feature_sources
from trainables.fit import checkpoint_state
from trainables.gasten import GastenConfig
from trainables.reporter import ListReporter

NDF = 8


pytestmark = pytest.mark.usefixtures("one_thread")


def gan_state(trainable: str = "dcgan", epochs: int = 1) -> dict:
    torch.manual_seed(0)
    generator, discriminator = Generator(16, ngf=8), Discriminator(NDF)
    if epochs:
        images = load_images("mnist", "train", limit=512, seed=0).images
        betas = (0.5, 0.999)
        g_optimizer = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=betas)
        d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=betas)
        for epoch in range(epochs):
            train_gan_epoch(generator=generator, discriminator=discriminator, g_optimizer=g_optimizer,
                            d_optimizer=d_optimizer, images=images, batch_size=64, order_seed=epoch,
                            device=torch.device("cpu"))
    config = (DCGANConfig(z_dim=16, ngf=8, ndf=NDF, epochs=max(epochs, 1)) if trainable == "dcgan"
              else GastenConfig(generator="/g", classifier="/c"))
    return checkpoint_state(trainable, config, 1, {}, {"generator": generator, "discriminator": discriminator}, {})


@pytest.fixture(scope="module")
def dcgan_folder(tmp_path_factory) -> str:
    return str(save_checkpoint(gan_state(), tmp_path_factory.mktemp("dcgan")))


def test_embed_is_the_flattened_input_of_the_final_linear():
    torch.manual_seed(0)
    critic = Discriminator(ndf=4).eval()
    images = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        features = critic.embed(images)
        assert features.shape == (5, 2 * 4 * 7 * 7)
        assert torch.equal(critic.net[-1](features).squeeze(1), critic(images))


def test_discriminator_source_gives_the_checkpoints_eval_mode_features(dcgan_folder, tmp_path):
    sources = feature_sources(FewShotJobConfig(discriminator=dcgan_folder, pixels=False, device="cpu"))
    assert [name for name, _, _ in sources] == ["discriminator"]
    name, described, extract = sources[0]
    assert described == "penultimate layer of a dcgan discriminator (784 features, trained without labels)"
    images = load_images("mnist", "test", limit=20, seed=1).images
    features = extract(images)
    critic = Discriminator(NDF)
    critic.load_state_dict(load_checkpoint(dcgan_folder).modules["discriminator"])
    with torch.no_grad():
        expected = critic.eval().embed(images).numpy()
    assert isinstance(features, np.ndarray) and features.shape == (20, 784)
    np.testing.assert_allclose(features, expected, atol=1e-5)
    np.testing.assert_allclose(extract(images[:3]), features[:3], atol=1e-5)  # a batch does not change an image

    gasten = str(save_checkpoint(gan_state("gasten", epochs=0), tmp_path / "gasten"))  # a gasten result has one too
    assert feature_sources(FewShotJobConfig(discriminator=gasten, pixels=False))[0][1].startswith(
        "penultimate layer of a gasten discriminator")
    classifier = save_checkpoint(checkpoint_state("classifier", ClassifierConfig(), 1, {},
                                                  {"model": Classifier()}, {}), tmp_path / "classifier")
    with pytest.raises(ValueError, match=r"^discriminator: .* 'classifier' checkpoint without a discriminator"):
        feature_sources(FewShotJobConfig(discriminator=str(classifier)))


def test_fewshot_job_curves_discriminator_features_beside_pixels(dcgan_folder, tmp_path):
    job = catalog.job("fewshot")
    assert build_config(job.config_cls, {"discriminator": "/d", "pixels": False}).discriminator == "/d"
    config = build_config(job.config_cls, {"discriminator": dcgan_folder, "shots": [2, 16], "repeats": 2,
                                           "heads": ["lin"], "train_pool": 1000, "test_images": 500, "device": "cpu"})
    metrics = job.run(config, ListReporter(), tmp_path)
    table = pd.read_parquet(tmp_path / "fewshot.parquet")
    assert sorted(set(table.features)) == ["discriminator", "pixels"]
    assert list(metrics)[:2] == ["pixels.lin.k16", "discriminator.lin.k16"]  # the headline first
    assert metrics["discriminator.lin.k16"] > 0.4  # ten digits: chance is 0.1
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert "- discriminator: penultimate layer of a dcgan discriminator" in (tmp_path / "fewshot.md").read_text()
