"""One conditional generator and a siamese similarity: parameter growth with the number of classes, each
class's reproduction of an image, the siamese network and the selective threshold on toy data, training on tiny MNIST and the
detector rebuilt from its checkpoint."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from trainables.config import build_config
from trainables.ood.conditional_nn import (CONDITIONAL_NN, ConditionalNNConfig, ConditionalVAE, MostSimilarDetector,
                                           SiameseNet, detector_from_state, parameter_count, reproductions, train)
from trainables.ood.generator_nn import dequantize, selective_metrics, threshold_at_tpr
from trainables.reporter import ListReporter
from trainables.vae import VAE


def bars(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Toy two-class images: class 0 a horizontal bar, class 1 a vertical one, jittered by a few pixels, noisy."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 2
    images = 0.1 * torch.rand(count, 1, 28, 28, generator=generator)
    where = torch.randint(10, 16, (count,), generator=generator)  # jittered around the middle
    for i in range(count):
        if labels[i] == 0:
            images[i, 0, where[i]:where[i] + 3, 4:24] = 1.0
        else:
            images[i, 0, 4:24, where[i]:where[i] + 3] = 1.0
    return images, labels


def test_the_conditional_generator_grows_by_two_embeddings_per_class_the_per_class_one_by_a_vae():
    shared = parameter_count(VAE(8, 32))
    counts = {k: parameter_count(ConditionalVAE(k, 8, 32)) for k in (2, 10, 11, 100)}
    assert counts[11] - counts[10] == 2 * 256
    assert counts[10] == shared + 2 * 256 * 10
    assert counts[100] < 1.1 * counts[10] < 10 * shared  # generator_nn at K = 10: 10 VAEs of `shared` each


def test_the_conditional_vae_is_the_plain_vae_plus_class_embeddings():
    torch.manual_seed(0)
    cvae = ConditionalVAE(3, latent_dim=4, nf=8).eval()
    z = torch.randn(2, 4)
    with torch.no_grad():
        assert not torch.allclose(cvae.decode(z, torch.tensor([0, 0])), cvae.decode(z, torch.tensor([1, 1])))
        cvae.decoder_class.weight.zero_()  # without the class, the decoder is the VAE's own
        assert torch.allclose(cvae.decode(z, torch.tensor([0, 2])), cvae.vae.decode(z))
        recon, mu, logvar = cvae(torch.rand(2, 1, 28, 28), torch.tensor([2, 1]))
    assert recon.shape == (2, 1, 28, 28) and mu.shape == logvar.shape == (2, 4)


def test_each_class_reproduces_an_image_by_its_pixel_nearest_bank_image():
    generator = torch.Generator().manual_seed(0)
    bank = torch.rand(12, 1, 28, 28, generator=generator)
    bank_labels = torch.tensor([2, 0, 1, 2, 0, 1, 1, 2, 0, 0, 1, 2])
    images = torch.rand(5, 1, 28, 28, generator=generator)
    images[0] = bank[4]  # an exact copy of a class-0 bank image
    found = reproductions(images, bank, bank_labels, 3, torch.device("cpu"), batch_size=2)
    assert found.shape == (5, 3)
    for i in range(5):
        for c in range(3):
            own = torch.nonzero(bank_labels == c).squeeze(1)
            distances = (bank[own] - images[i]).flatten(1).norm(dim=1)
            assert found[i, c] == own[distances.argmin()]
    assert found[0, 0] == 4
    with pytest.raises(ValueError, match="no image of class"):
        reproductions(images, bank, torch.zeros(12, dtype=torch.long), 3, torch.device("cpu"))


def test_the_similarity_is_highest_for_identical_images_and_falls_with_any_difference():
    torch.manual_seed(0)
    siamese = SiameseNet(embed_dim=4, nf=2).eval()
    a = torch.rand(3, 1, 28, 28)
    b = a.clone()
    b[:, :, 10:14, 10:14] += 0.5
    with torch.no_grad():
        assert torch.allclose(siamese(a, a), siamese.bias.expand(3))
        assert (siamese(a, b) < siamese(a, a)).all()
        assert torch.allclose(siamese(a, b), siamese(b, a))  # symmetric


def test_the_siamese_network_learns_which_toy_images_share_a_class(one_thread):
    torch.manual_seed(0)
    images, labels = bars(256, seed=0)
    siamese = SiameseNet(embed_dim=8, nf=4)
    optimizer = torch.optim.Adam(siamese.parameters(), lr=2e-2)
    generator = torch.Generator().manual_seed(1)
    for _ in range(200):
        a, b = torch.randint(256, (64,), generator=generator), torch.randint(256, (64,), generator=generator)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            siamese(images[a], images[b]), (labels[a] == labels[b]).float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    siamese.eval()
    test, test_labels = bars(100, seed=2)
    first, second = torch.arange(50), torch.randperm(100, generator=generator)[:50]
    with torch.no_grad():
        logits = siamese(test[first], test[second])
    same = test_labels[first] == test_labels[second]
    assert 0.2 < same.float().mean() < 0.8
    assert ((logits > 0) == same).float().mean() > 0.9
    # The detector classifies by the most similar reproduction: a bank of toy bars labels new bars.
    bank, bank_labels = bars(40, seed=3)
    detector = MostSimilarDetector(siamese, bank, bank_labels, device="cpu")
    assert (detector.predict(test) == test_labels.numpy()).mean() > 0.9
    similarities = detector.similarities(test[:3])
    pairs = reproductions(test[:3], bank, bank_labels, 2, torch.device("cpu"))
    with torch.no_grad():
        direct = torch.stack([siamese(test[:3], bank[pairs[:, c]]) for c in range(2)], dim=1)
    assert similarities.shape == (3, 2) and torch.allclose(similarities, direct.double(), atol=1e-5)
    assert detector.score(test[:3]) == pytest.approx(similarities.max(1).values.numpy())


def test_the_selective_threshold_on_toy_scores_accepts_the_target_share_and_rejects_what_scores_lower():
    rng = np.random.default_rng(0)
    scores_val = rng.normal(2.0, 1.0, 400)
    threshold = threshold_at_tpr(scores_val, 0.9)
    assert (scores_val >= threshold).mean() >= 0.9 > (scores_val > threshold).mean() - 1 / 400
    far = rng.normal(-3.0, 1.0, 400)  # an OOD set the similarity ranks far lower
    assert (far >= threshold).mean() < 0.05
    predictions, labels = np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])
    chosen = selective_metrics(np.array([2.5, 3.0, -1.0, 2.2]) >= 2.0, predictions, labels)
    assert chosen["selective_accuracy"] == 1.0 and chosen["reject_rate"] == 0.25 and chosen["accuracy"] == 0.75


@pytest.fixture(scope="module")
def tiny(one_thread_module) -> ListReporter:
    reporter = ListReporter()
    train(build_config(ConditionalNNConfig, dict(CONDITIONAL_NN.tiny_config)), reporter)
    return reporter


def test_training_reports_once_with_its_costs_and_the_threshold_at_the_target_rate(tiny):
    assert len(tiny.results) == 1
    metrics = tiny.results[0]
    assert metrics["generator_params"] == parameter_count(ConditionalVAE(10, 8, 32))
    assert metrics["similarity_params"] == parameter_count(SiameseNet(32, 8))
    assert metrics["train_seconds"] > 0
    assert metrics["val_reject_rate"] <= 1 - 0.95 + 1e-9  # at least target_tpr of the validation images accepted


def test_checkpoint_rebuilds_the_detector_with_the_same_threshold(tiny):
    state = tiny.last_checkpoint
    assert state.extras["bank"].dtype == torch.uint8 and len(state.extras["bank"]) == 10 * 50
    detector = detector_from_state(state, device="cpu")
    assert detector.threshold == state.extras["threshold"] == tiny.results[0]["threshold"]
    x = dequantize(state.extras["bank"][:4])
    assert detector.predict(x).shape == (4,)
    with pytest.raises(ValueError, match="not a conditional_nn one"):
        detector_from_state(dataclasses.replace(state, trainable="generator_nn"))
