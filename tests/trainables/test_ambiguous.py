"""Ambiguous images: generated from a checkpointed generator, kept by the classifier's C(x) band.

The checkpoints are tiny untrained networks with seeded weights, written the way `fit` writes
them, so the folder format is the real one and no training or dataset is needed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.ambiguous import (DEFAULT_BAND, AmbiguousSet, generate_ambiguous, load_ambiguous, load_generator,
                                  save_ambiguous)
from trainables.checkpoint import save_checkpoint
from trainables.classifier import Classifier, ClassifierConfig
from trainables.dcgan import DCGANConfig, Discriminator, Generator
from trainables.fit import checkpoint_state
from trainables.gasten import GastenConfig, load_frozen_classifier, positive_probability

Z_DIM = 8
CPU = torch.device("cpu")


def generator_checkpoint(folder, trainable: str = "gasten"):
    torch.manual_seed(1)
    generator, discriminator = Generator(Z_DIM, ngf=4), Discriminator(ndf=4)
    with torch.no_grad():  # DCGAN's N(0, 0.02) start draws near-identical grey images: vary them
        for weight in generator.parameters():
            if weight.dim() > 1:
                weight.normal_(0, 0.5)
    config = (GastenConfig(generator="/g", classifier="/c") if trainable == "gasten"
              else DCGANConfig(z_dim=Z_DIM, ngf=4, ndf=4))
    state = checkpoint_state(trainable, config, 1, {}, {"generator": generator, "discriminator": discriminator}, {})
    return str(save_checkpoint(state, folder))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return generator_and_classifier(tmp_path_factory)


def generator_and_classifier(tmp_path_factory) -> tuple[str, str]:
    """(gasten generator folder, 7-vs-1 classifier folder): C(x) of the generated images spreads over
    ~[0.2, 0.8]."""
    generator = generator_checkpoint(tmp_path_factory.mktemp("generator"))
    torch.manual_seed(2)
    model = Classifier(nf=1, num_classes=2).eval()
    with torch.no_grad():
        # An untrained head says ~0.5 to everything: sharpen it, then centre it on the generator's images.
        model.head.weight.mul_(40)
        images = load_generator(generator, CPU)(torch.randn(300, Z_DIM, generator=torch.Generator().manual_seed(9)))
        logits = model(images)
        model.head.bias[1] -= (logits[:, 1] - logits[:, 0]).median()
    classifier = save_checkpoint(
        checkpoint_state("classifier", ClassifierConfig(classes=(7, 1)), 1, {}, {"model": model}, {}),
        tmp_path_factory.mktemp("classifier"))
    return generator, str(classifier)


@pytest.fixture(scope="module")
def everything(folders) -> AmbiguousSet:
    """Every generated image (band [0, 1]): what the narrower bands must be subsets of."""
    return generate_ambiguous(*folders, images=300, band=(0.0, 1.0), seed=3, device="cpu", batch_size=64)


def test_band_keeps_exactly_the_images_whose_score_lies_in_it(folders, everything):
    assert len(everything) == everything.generated == 300
    low, high = DEFAULT_BAND
    kept = generate_ambiguous(*folders, images=300, seed=3, device="cpu", batch_size=64)
    inside = (everything.scores >= np.float32(low)) & (everything.scores <= np.float32(high))
    assert 50 < inside.sum() < 250 and len(kept) == inside.sum() and kept.generated == 300
    np.testing.assert_array_equal(kept.images, everything.images[inside])
    np.testing.assert_array_equal(kept.scores, everything.scores[inside])
    # The stored scores are C(x) of the stored images, recomputed by the classifier itself.
    classifier, _ = load_frozen_classifier(folders[1], CPU)
    with torch.no_grad():
        recomputed = positive_probability(classifier, torch.from_numpy(kept.images)).numpy()
    np.testing.assert_allclose(recomputed, kept.scores, atol=1e-6)
    assert ((recomputed >= low - 1e-6) & (recomputed <= high + 1e-6)).all()
    assert kept.band == (low, high) and kept.classes == (7, 1)
    assert kept.images.dtype == kept.scores.dtype == kept.embeddings.dtype == np.float32
    assert kept.images.shape[1:] == (1, 28, 28) and 0 <= kept.images.min() and kept.images.max() <= 1


def test_same_seed_gives_the_same_set_and_another_seed_another(folders, everything):
    again = generate_ambiguous(*folders, images=300, band=(0.0, 1.0), seed=3, device="cpu", batch_size=64)
    for name in ("images", "scores", "embeddings"):
        np.testing.assert_array_equal(getattr(again, name), getattr(everything, name), err_msg=name)
    torch.manual_seed(123)  # the latents come from a private generator: the global one does not matter
    other = generate_ambiguous(*folders, images=300, band=(0.0, 1.0), seed=4, device="cpu", batch_size=64)
    assert not np.array_equal(other.scores, everything.scores)


def test_embeddings_are_the_classifiers_penultimate_layer(folders, everything):
    classifier, _ = load_frozen_classifier(folders[1], CPU)
    assert everything.embeddings.shape == (300, 32)  # Classifier(nf=1): Linear(784, 32) before the head
    with torch.no_grad():
        expected = classifier.embed(torch.from_numpy(everything.images[:20])).numpy()
    np.testing.assert_allclose(everything.embeddings[:20], expected, atol=1e-5)


def test_a_dcgan_checkpoint_works_too_and_a_classifier_is_no_generator(folders, tmp_path):
    dcgan = generator_checkpoint(tmp_path / "dcgan", trainable="dcgan")
    data = generate_ambiguous(dcgan, folders[1], images=10, band=(0.0, 1.0), device="cpu")
    assert len(data) == 10
    with pytest.raises(ValueError, match="'classifier' checkpoint without a generator"):
        generate_ambiguous(folders[1], folders[1], images=10)
    with pytest.raises(ValueError, match="not a classifier one"):
        generate_ambiguous(folders[0], folders[0], images=10)


def test_no_image_in_the_band_is_an_error_naming_the_band_and_the_closest_score(folders, everything):
    top = float(everything.scores.max())
    band = (round(top + 0.01, 2), 1.0)
    with pytest.raises(ValueError) as error:
        generate_ambiguous(*folders, images=300, band=band, seed=3, device="cpu", batch_size=64)
    assert str(error.value) == (f"none of the 300 generated images has C(x) in [{band[0]:g}, 1] "
                                f"(closest: {top:.2f}); widen `band` or raise `images`")


@pytest.mark.parametrize("settings,message", [
    ({"band": (0.6, 0.4)}, "band must be"), ({"band": (-0.1, 0.5)}, "band must be"),
    ({"images": 0}, "images and batch_size must be >= 1"), ({"batch_size": 0}, "images and batch_size"),
])
def test_bad_settings_are_refused_before_any_work(settings, message):
    with pytest.raises(ValueError, match=message):
        generate_ambiguous("/nowhere", "/nowhere", **{"images": 10, **settings})


def test_save_and_load_round_trip_in_one_npz(everything, tmp_path):
    path = save_ambiguous(everything, tmp_path / "sets" / "ambiguous.npz")
    assert path == tmp_path / "sets" / "ambiguous.npz" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["ambiguous.npz"]  # the temporary file is gone
    loaded = load_ambiguous(path)
    for name in ("images", "scores", "embeddings"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(everything, name), err_msg=name)
        assert getattr(loaded, name).dtype == np.float32
    assert (loaded.generated, loaded.band, loaded.classes) == (300, (0.0, 1.0), (7, 1))
    np.savez_compressed(tmp_path / "other.npz", images=everything.images)
    with pytest.raises(ValueError, match="missing scores, embeddings"):
        load_ambiguous(tmp_path / "other.npz")
