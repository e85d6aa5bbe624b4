"""Generator-based safer classification: the threshold rule, selective metrics, the nearest-bank
detector, training on tiny MNIST and the detector rebuilt from its checkpoint."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from trainables.config import build_config
from trainables.ood.generator_nn import (GENERATOR_NN, GeneratorNNConfig, NearestGeneratedDetector, dequantize,
                                         detector_from_state, quantize, selective_metrics, threshold_at_tpr, train)
from trainables.ood.metrics import ood_metrics
from trainables.ood.sets import ood_set
from trainables.reporter import ListReporter

TINY = dict(GENERATOR_NN.tiny_config)


@pytest.fixture(scope="module")
def tiny() -> ListReporter:
    torch.set_num_threads(1)
    reporter = ListReporter()
    train(build_config(GeneratorNNConfig, TINY), reporter)
    return reporter


def test_threshold_at_tpr_accepts_at_least_the_target_share_and_no_more_than_it_must():
    scores = np.arange(100, dtype=float)  # 0..99
    t = threshold_at_tpr(scores, 0.95)
    assert t == 5.0 and (scores >= t).mean() == 0.95
    # 0.07 * 100 is 7.000000000000001 in floats: still exactly 7 accepted, not 8.
    assert (scores >= threshold_at_tpr(scores, 0.07)).sum() == 7
    assert threshold_at_tpr(scores, 1.0) == 0.0
    # Not reachable exactly: round up to the next count (10 of 11 for 0.9 of 11 = 9.9).
    eleven = np.arange(11, dtype=float)
    assert (eleven >= threshold_at_tpr(eleven, 0.9)).sum() == 10


def test_threshold_at_tpr_with_ties_accepts_the_whole_tie():
    scores = np.array([1.0, 2.0, 2.0, 2.0, 3.0])
    assert threshold_at_tpr(scores, 0.5) == 2.0  # 3 of 5 needed; the tie makes it 4 accepted


@pytest.mark.parametrize("scores,tpr", [(np.array([]), 0.9), (np.array([1.0, np.nan]), 0.9),
                                        (np.array([1.0, 2.0]), 0.0), (np.array([1.0, 2.0]), 1.5)])
def test_threshold_at_tpr_rejects_bad_input(scores, tpr):
    with pytest.raises(ValueError):
        threshold_at_tpr(scores, tpr)


def test_the_threshold_matches_the_tpr_convention_of_fpr_at_95_tpr():
    """At the chosen threshold the accepted share of OOD scores is the metric's FPR@95TPR."""
    rng = np.random.default_rng(0)
    scores_in, scores_out = rng.normal(1.0, 1.0, 1000), rng.normal(-1.0, 1.0, 1000)
    t = threshold_at_tpr(scores_in, 0.95)
    assert (scores_out >= t).mean() == pytest.approx(ood_metrics(scores_in, scores_out)["fpr_at_95_tpr"])


def test_selective_metrics_by_hand():
    accepted = np.array([True, True, True, False, False])
    predictions = np.array([0, 1, 1, 2, 0])
    labels = np.array([0, 1, 0, 2, 1])
    got = selective_metrics(accepted, predictions, labels)
    assert got["reject_rate"] == pytest.approx(0.4)
    assert got["coverage"] == pytest.approx(0.6)
    assert got["selective_accuracy"] == pytest.approx(2 / 3)
    assert got["accuracy"] == pytest.approx(3 / 5)
    nothing = selective_metrics(np.zeros(2, dtype=bool), np.array([0, 1]), np.array([0, 1]))
    assert nothing["reject_rate"] == 1.0 and math.isnan(nothing["selective_accuracy"])
    with pytest.raises(ValueError, match="boolean"):
        selective_metrics(np.array([1, 0]), np.array([0, 1]), np.array([0, 1]))


def test_detector_classifies_by_nearest_bank_image_and_scores_minus_its_distance():
    bank = torch.zeros(3, 1, 2, 2)
    bank[1] += 0.5
    bank[2] += 1.0
    detector = NearestGeneratedDetector(bank, torch.tensor([7, 8, 9]), threshold=-0.5, device="cpu")
    queries = torch.stack([torch.full((1, 2, 2), 0.1), torch.full((1, 2, 2), 0.9), torch.full((1, 2, 2), 0.5)])
    np.testing.assert_array_equal(detector.predict(queries), [7, 9, 8])
    # Distances: 4 pixels off by 0.1 -> 0.2; off by 0.1 -> 0.2; exact -> 0.
    np.testing.assert_allclose(detector.score(queries), [-0.2, -0.2, 0.0], atol=1e-6)  # float32 pixels
    far = torch.full((1, 1, 2, 2), 5.0)
    assert detector.accepts(far).tolist() == [False]
    assert detector.accepts(queries).all()


def test_detector_rejects_mismatched_inputs():
    detector = NearestGeneratedDetector(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]), device="cpu")
    with pytest.raises(ValueError, match="bank holds"):
        detector.score(torch.zeros(1, 1, 3, 3))
    with pytest.raises(ValueError, match="no threshold"):
        detector.accepts(torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="empty"):
        NearestGeneratedDetector(torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long))


def test_identical_in_and_out_data_scores_chance():
    bank = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    detector = NearestGeneratedDetector(bank, torch.arange(20) % 2, device="cpu")
    images = torch.rand(50, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    scores = detector.score(images)
    assert ood_metrics(scores, scores)["auroc"] == pytest.approx(0.5, abs=1e-12)


def test_quantize_round_trips_the_stored_resolution():
    pixels = torch.randint(0, 256, (5, 1, 3, 3), dtype=torch.uint8)
    assert torch.equal(quantize(dequantize(pixels)), pixels)
    assert quantize(torch.tensor([-1.0, 2.0])).tolist() == [0, 255]


@pytest.mark.parametrize("changes,match", [({"target_tpr": 0.0}, "target_tpr"), ({"samples_per_class": 0}, ">= 1"),
                                           ({"validation_ood": "fashion_mnist"}, "test split"),
                                           ({"train_size": -1}, "train_size")])
def test_config_validation(changes, match):
    with pytest.raises(ValueError, match=match):
        GeneratorNNConfig(**changes)


def test_training_reports_once_with_the_threshold_at_the_target_rate(tiny):
    assert len(tiny.results) == 1
    metrics = tiny.results[0]
    assert set(metrics) >= {"val_auroc", "val_accuracy", "val_reject_rate", "val_selective_accuracy", "threshold"}
    assert all(math.isfinite(v) for v in metrics.values())
    # In-sample by construction: the threshold accepts at least 95% of the validation images.
    assert 0.0 <= metrics["val_reject_rate"] <= 0.05 + 1e-9
    # One VAE step per class draws grey blobs, not digits: accuracy is about chance and grey noise lies
    # nearer the blobs than digits do (val_auroc near 0). The quick study measures trained banks; the
    # next test checks the detector itself on a bank of known quality.
    assert 0.0 <= metrics["val_auroc"] <= 1.0 and 0.0 <= metrics["val_accuracy"] <= 1.0


def test_a_bank_of_real_digits_classifies_mnist_by_nearest_neighbour():
    """The detector's classification path on a bank whose quality is known: pixel-space 1-NN on MNIST."""
    from trainables.data import load_images

    bank = load_images("mnist", "train", limit=2000, seed=0)
    queries = load_images("mnist", "test", limit=300, seed=0)
    detector = NearestGeneratedDetector(bank.images, bank.labels, device="cpu")
    accuracy = (detector.predict(queries.images) == queries.labels.numpy()).mean()
    assert accuracy > 0.85  # 1-NN with 2,000 references is about 0.9
    for noise in ("gaussian_noise", "uniform_noise"):
        auroc = ood_metrics(detector.score(queries.images), detector.score(ood_set(noise, 300, seed=0)))["auroc"]
        assert auroc > 0.99, noise


def test_checkpoint_rebuilds_the_detector_with_the_same_scores_and_threshold(tiny):
    state = tiny.last_checkpoint
    assert state.extras["bank"].dtype == torch.uint8
    assert state.extras["bank"].shape == (10 * TINY["samples_per_class"], 1, 28, 28)
    detector = detector_from_state(state, device="cpu")
    assert detector.threshold == tiny.results[0]["threshold"]
    noise = ood_set("gaussian_noise", count=20, seed=3)
    assert detector.score(noise).shape == (20,)
    assert detector.accepts(noise).dtype == bool
    # The threshold was picked on the validation images as stored in the checkpoint's bank: the rebuilt
    # detector accepts exactly the share the report says.
    from trainables.classifier import split_train_val
    from trainables.data import load_images

    config = build_config(GeneratorNNConfig, TINY)
    _, val_set = split_train_val(load_images("mnist", "train", seed=config.seed), config)
    assert 1.0 - detector.accepts(val_set.images).mean() == pytest.approx(tiny.results[0]["val_reject_rate"])
    with pytest.raises(ValueError, match="not a generator_nn"):
        detector_from_state(dataclasses.replace(state, trainable="kplus1"))


def test_resume_from_the_final_checkpoint_republishes_its_result(tiny):
    again = ListReporter(resume_from=tiny.last_checkpoint)
    train(build_config(GeneratorNNConfig, TINY), again)
    assert again.results == tiny.results
