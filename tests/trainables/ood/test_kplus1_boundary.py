"""K+1 with a GAN's (GASTeN's boundary) images as the outliers: where they come from, the band, training,
resuming, and evaluate_ood scoring the result; the VAE-shell default is left as it was.

The generator and classifier checkpoints are tiny untrained networks with seeded weights written
the way `fit` writes them (the classifier's head is sharpened and centred so C(x) of the generated
images spreads over ~[0.2, 0.8]); the K+1 classifier trains on a few hundred real 7s and 1s.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from tests.trainables.test_ambiguous import generator_and_classifier, generator_checkpoint
from trainables import catalog
from trainables.ambiguous import load_generator
from trainables.checkpoint import save_checkpoint
from trainables.config import build_config
from trainables.dcgan import Generator, generate
from trainables.gasten import load_frozen_classifier, positive_probability
from trainables.ood import kplus1
from trainables.ood.evaluate import EvaluateOodConfig, methods
from trainables.ood.kplus1 import KPLUS1, KPlus1Config, KPlus1Detector, describe, generator_outliers, train
from trainables.reporter import ListReporter

Z_DIM = 8
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[str, str]:
    """(gasten generator folder, 7-vs-1 classifier folder)."""
    return generator_and_classifier(tmp_path_factory)


def scores_of(classifier: str, images: torch.Tensor) -> np.ndarray:
    model, _ = load_frozen_classifier(classifier, CPU)
    with torch.no_grad():
        return positive_probability(model, images).numpy()


def test_outliers_are_the_generators_images_for_seeded_latents(folders):
    generator = folders[0]
    first = generator_outliers(generator, 40, seed=3, device="cpu")
    torch.manual_seed(123)  # the latents come from a private generator: the global one does not matter
    again = generator_outliers(generator, 40, seed=3, device="cpu")
    other = generator_outliers(generator, 40, seed=4, device="cpu")
    assert first.shape == (40, 1, 28, 28) and first.dtype == torch.float32
    assert torch.equal(first, again) and not torch.equal(first, other)
    expected = generate(load_generator(generator, CPU),
                        torch.randn(40, Z_DIM, generator=torch.Generator().manual_seed(3)), CPU)
    assert torch.equal(first, expected)
    assert first.std(0).mean() > 0.01  # really 40 different images


def test_band_keeps_only_images_whose_score_lies_in_it_the_same_ones_every_time(folders, capsys):
    generator, classifier = folders
    band = (0.45, 0.55)
    kept = generator_outliers(generator, 30, seed=5, device="cpu", classifier=classifier, band=band, chunk=64)
    assert kept.shape == (30, 1, 28, 28)
    scores = scores_of(classifier, kept)
    assert ((scores >= band[0] - 1e-6) & (scores <= band[1] + 1e-6)).all()
    unfiltered = scores_of(classifier, generator_outliers(generator, 300, seed=5, device="cpu"))
    assert (unfiltered < band[0]).any() and (unfiltered > band[1]).any()  # the band really removes images
    again = generator_outliers(generator, 30, seed=5, device="cpu", classifier=classifier, band=band, chunk=64)
    assert torch.equal(kept, again)
    assert capsys.readouterr().out == ""

    # Capped: fewer than asked are used, with a note; none at all is an error naming the setting.
    few = generator_outliers(generator, 1000, seed=5, device="cpu", classifier=classifier, band=band,
                             candidates=100, chunk=64)
    assert 0 < len(few) < 100 and "training with" in capsys.readouterr().out
    with pytest.raises(ValueError, match="outlier_band: none of the 64 images"):
        generator_outliers(generator, 10, seed=5, device="cpu", classifier=classifier, band=(0.999, 1.0),
                           candidates=64)


def test_outliers_from_must_be_a_generator_checkpoint(folders, tmp_path):
    with pytest.raises(ValueError, match=r"^outliers_from: .* 'classifier' checkpoint without a generator"):
        generator_outliers(folders[1], 5, seed=0, device="cpu")
    with pytest.raises(ValueError, match=r"^outliers_from: .* not a checkpoint folder"):
        generator_outliers(str(tmp_path), 5, seed=0, device="cpu")
    dcgan = generator_checkpoint(tmp_path / "dcgan", trainable="dcgan")
    assert generator_outliers(dcgan, 5, seed=0, device="cpu").shape == (5, 1, 28, 28)


@pytest.mark.parametrize("changes,message", [
    ({"outlier_band": [0.4, 0.6], "classifier": "/c"}, "outlier_band filters the images of outliers_from"),
    ({"outliers_from": "/g", "outlier_band": [0.4, 0.6]}, "outlier_band needs classifier"),
    ({"outliers_from": "/g", "classifier": "/c"}, "classifier is only used"),
    ({"outliers_from": "/g", "classifier": "/c", "outlier_band": [0.6, 0.4]}, "outlier_band: band must be"),
    ({"outliers_from": "/g", "classifier": "/c", "outlier_band": [0.4]}, "outlier_band: band must be"),
    ({"outlier_candidates": -1}, "outlier_candidates"),
    ({"classes": [7]}, "classes"), ({"classes": [7, 7]}, "classes"), ({"classes": [7, 10]}, "classes"),
])
def test_config_refuses_incoherent_boundary_settings(changes, message):
    with pytest.raises(ValueError, match=message):
        build_config(KPlus1Config, changes)


BOUNDARY = {"classes": [7, 1], "train_size": 256, "val_size": 64, "outliers": 128, "epochs": 1,
            "outlier_band": [0.4, 0.6], "outlier_candidates": 2000}


def boundary_run(folders, reporter=None, **changes) -> ListReporter:
    reporter = reporter or ListReporter()
    generator, classifier = folders
    train(build_config(KPlus1Config, {**BOUNDARY, "outliers_from": generator, "classifier": classifier, **changes}),
          reporter)
    return reporter


@pytest.fixture(scope="module")
def boundary(folders) -> ListReporter:
    return boundary_run(folders)


def test_boundary_variant_trains_no_vae_and_resumes_onto_the_same_outliers(folders, boundary, monkeypatch):
    state = boundary.last_checkpoint
    assert set(state.modules) == {"classifier"}  # no VAE
    assert {"val_auroc", "val_accuracy", "train_loss"} <= boundary.keys() and "vae_val_loss" not in boundary.keys()
    assert all(math.isfinite(v) for v in boundary.results[-1].values())
    assert boundary.last("val_accuracy") > 0.8  # 7 vs 1 is easy, even in one epoch on 256 images
    model = kplus1.build_model(state)
    with torch.no_grad():
        assert model(torch.rand(3, 1, 28, 28)).shape == (3, 3)  # "7", "1" and "unknown"

    def no_vae(*args, **kwargs):
        raise AssertionError("the boundary variant trains no VAE")

    monkeypatch.setattr(kplus1, "train_vae_epoch", no_vae)
    straight = boundary_run(folders, epochs=2)
    resumed = boundary_run(folders, ListReporter(resume_from=state), epochs=2)
    assert straight.results[0] == pytest.approx(boundary.results[0])
    assert resumed.results[0] == pytest.approx(straight.results[1])


def test_labels_follow_the_classifiers_convention(folders, boundary):
    """Output 0 is the first of `classes` (7), output 1 the second (1), as in the study's classifier."""
    from trainables.data import load_images

    detector = KPlus1Detector(kplus1.build_model(boundary.last_checkpoint), device="cpu")
    test = load_images("mnist", "test", classes=(7, 1), limit=200, seed=0)
    predicted = detector.predict(test.images)
    assert set(np.unique(predicted)) <= {0, 1}
    assert (predicted == test.labels.numpy()).mean() > 0.8
    sevens = load_images("mnist", "test", classes=(7, 3), limit=100, seed=0)  # label 0 = 7 here too
    assert (detector.predict(sevens.images[sevens.labels == 0]) == 0).mean() > 0.8


def test_evaluate_ood_scores_the_boundary_model_under_its_own_name(folders, boundary, tmp_path):
    kplus1_folder = str(save_checkpoint(boundary.last_checkpoint, tmp_path / "kplus1"))
    config = EvaluateOodConfig(classifier=folders[1], kplus1=kplus1_folder, kplus1_name="kplus1_boundary",
                               test_sets=("uniform_noise",), images=60, device="cpu")
    found = {method.name: method for method in methods(config)}
    assert set(found) == {"max_softmax", "odin", "kplus1_boundary"}
    assert found["kplus1_boundary"].settings == ("outliers=gasten generator, n=128, band=[0.4, 0.6], ood_weight=1, "
                                                 "classes=7/1")
    job = catalog.job("evaluate_ood")
    metrics = job.run(config, ListReporter(), tmp_path)
    table = pd.read_parquet(tmp_path / "ood_table.parquet")
    assert list(table.method) == ["max_softmax", "odin", "kplus1_boundary"]
    assert 0.0 <= metrics["kplus1_boundary.uniform_noise.auroc"] <= 1.0
    assert metrics["kplus1_boundary.id_accuracy"] > 0.8
    assert "| kplus1_boundary | uniform_noise |" in (tmp_path / "ood_table.md").read_text()

    # A K+1 model of other classes than the classifier's is refused: one test split scores both.
    other = dataclasses.replace(boundary.last_checkpoint, config={**boundary.last_checkpoint.config, "classes": [5, 3]})
    with pytest.raises(ValueError, match="^kplus1: .* classes"):
        methods(EvaluateOodConfig(classifier=folders[1], kplus1=str(save_checkpoint(other, tmp_path / "other"))))
    for name in ("", "odin", "kplus1.boundary"):
        with pytest.raises(ValueError, match="kplus1_name"):
            EvaluateOodConfig(classifier=folders[1], kplus1_name=name)


@pytest.mark.slow  # several seconds (a subprocess or a small training run): not part of the quick loop
def test_default_vae_shell_path_is_unchanged():
    """The defaults: no classes (all ten), VAE-shell outliers, the settings string as before."""
    defaults = KPlus1Config()
    assert (defaults.classes, defaults.outliers_from, defaults.outlier_band, defaults.classifier,
            defaults.outlier_candidates) == ((), "", (), "", 0)
    reporter = ListReporter()
    train(build_config(KPlus1Config, {**KPLUS1.tiny_config, "outliers": 64}), reporter)
    state = reporter.last_checkpoint
    assert set(state.modules) == {"vae", "classifier"} and "vae_val_loss" in reporter.keys()
    assert kplus1.build_model(state).head.out_features == 11
    assert describe(state) == "ood_weight=1, shell_radius=3, latent_dim=8"
