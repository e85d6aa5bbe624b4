"""OOD metrics against values counted by hand on small arrays, plus the limiting cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.ood.metrics import METRIC_KEYS, OodMetric, ood_metrics


def test_hand_computed_values_on_eight_scores():
    scores_in = np.array([0.9, 0.8, 0.7, 0.6])
    scores_out = np.array([0.65, 0.5, 0.4, 0.3])
    result = ood_metrics(scores_in, scores_out)
    assert tuple(result) == METRIC_KEYS
    # AUROC by counting (in, out) pairs where in scores higher, out of 4 * 4 = 16:
    #   0.9, 0.8, 0.7 beat all four outs (12); 0.6 beats 0.5, 0.4, 0.3 but not 0.65 (3) -> 15/16.
    assert result["auroc"] == pytest.approx(15 / 16)
    # AUPR-in (average precision, in positive), scores descending:
    #   0.9 in, 0.8 in, 0.7 in, 0.65 out, 0.6 in, ... ; precision at each in: 1, 1, 1, 4/5
    #   AP = (1 + 1 + 1 + 0.8) / 4 = 0.95.
    assert result["aupr_in"] == pytest.approx(0.95)
    # AUPR-out (out positive, -scores descending = scores ascending):
    #   0.3 out, 0.4 out, 0.5 out, 0.6 in, 0.65 out; precision at each out: 1, 1, 1, 4/5 -> 0.95.
    assert result["aupr_out"] == pytest.approx(0.95)
    # 95% of 4 ins needs all 4 (3/4 = 0.75 < 0.95): threshold 0.6 also accepts the out 0.65 -> 1/4.
    assert result["fpr_at_95_tpr"] == pytest.approx(0.25)
    # 0.5 (1 - TPR) + 0.5 FPR at each threshold: 0.9 -> .375, 0.8 -> .25, 0.7 -> .125,
    #   0.65 -> .125 + .125 = .25, 0.6 -> 0 + .125 = .125, lower ones only add FPR -> min 0.125.
    assert result["detection_error"] == pytest.approx(0.125)


def test_hand_computed_values_where_aupr_in_and_out_differ():
    result = ood_metrics(np.array([0.9, 0.8, 0.2]), np.array([0.5]))
    # Pairs: 0.9 > 0.5, 0.8 > 0.5, 0.2 < 0.5 -> 2/3.
    assert result["auroc"] == pytest.approx(2 / 3)
    # In positive, descending: 0.9 in (P=1), 0.8 in (P=1), 0.5 out, 0.2 in (P=3/4) -> (1 + 1 + .75) / 3.
    assert result["aupr_in"] == pytest.approx(11 / 12)
    # Out positive, ascending: 0.2 in, 0.5 out (P=1/2) -> 1/2.
    assert result["aupr_out"] == pytest.approx(0.5)
    # Accepting >= 95% of three ins means all three: threshold 0.2 accepts the only out -> FPR 1.
    assert result["fpr_at_95_tpr"] == pytest.approx(1.0)
    # Thresholds 0.9 -> 1/3, 0.8 -> 1/6, 0.5 -> 1/6 + 1/2, 0.2 -> 1/2 -> min 1/6.
    assert result["detection_error"] == pytest.approx(1 / 6)


def test_ties_count_half_and_share_one_threshold():
    result = ood_metrics(np.array([1.0, 0.5]), np.array([0.5, 0.0]))
    # Pairs: 1 > 0.5, 1 > 0, 0.5 = 0.5 (half), 0.5 > 0 -> 3.5 / 4.
    assert result["auroc"] == pytest.approx(0.875)
    # In positive: threshold 1 -> P=1 at R=1/2; threshold 0.5 takes the tied in and out together
    #   -> P=2/3 at R=1. AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    assert result["aupr_in"] == pytest.approx(5 / 6)
    # The tie cannot be split: accepting both ins accepts the out 0.5 too -> FPR 1/2.
    assert result["fpr_at_95_tpr"] == pytest.approx(0.5)
    # Threshold 1: .5 * .5 = .25; threshold 0.5: .5 * .5 = .25 -> 0.25.
    assert result["detection_error"] == pytest.approx(0.25)


def test_all_scores_tied_is_chance():
    result = ood_metrics(np.full(7, 0.3), np.full(5, 0.3))
    assert result["auroc"] == 0.5
    assert result["fpr_at_95_tpr"] == 1.0
    assert result["detection_error"] == 0.5


def test_perfect_separation():
    result = ood_metrics(np.array([0.7, 0.8, 0.9]), np.array([0.1, 0.2, 0.3, 0.4]))
    assert result == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr_at_95_tpr": 0.0, "detection_error": 0.0}


def test_reversed_scores():
    result = ood_metrics(np.array([0.1, 0.2, 0.3]), np.array([0.7, 0.8, 0.9]))
    assert result["auroc"] == 0.0
    assert result["fpr_at_95_tpr"] == 1.0
    assert result["detection_error"] == 0.5  # the best threshold is "reject everything"


def test_identical_distributions_are_near_chance():
    rng = np.random.default_rng(0)
    result = ood_metrics(rng.normal(size=5000), rng.normal(size=5000))
    assert abs(result["auroc"] - 0.5) < 0.03
    assert abs(result["fpr_at_95_tpr"] - 0.95) < 0.03
    assert result["detection_error"] > 0.47


def test_accepts_torch_tensors_and_lists():
    assert ood_metrics(torch.tensor([0.9, 0.8]), [0.1, 0.2])["auroc"] == 1.0


@pytest.mark.parametrize(
    ("scores_in", "scores_out", "message"),
    [
        ([], [0.1], "scores_in is empty"),
        ([0.5], [], "scores_out is empty"),
        ([0.5, np.nan], [0.1], "scores_in contains 1 non-finite"),
        ([0.5], [0.1, np.inf, -np.inf], "scores_out contains 2 non-finite"),
        (np.zeros((3, 2)), [0.1], r"scores_in must be a 1-D array of scores, got shape \(3, 2\)"),
    ],
)
def test_bad_inputs_name_the_side(scores_in, scores_out, message):
    with pytest.raises(ValueError, match=message):
        ood_metrics(scores_in, scores_out)


def test_accumulator_matches_one_call():
    rng = np.random.default_rng(1)
    scores_in, scores_out = rng.normal(1.0, size=300), rng.normal(size=200)
    metric = OodMetric()
    for chunk in np.array_split(scores_in, 4):
        metric.update(torch.from_numpy(chunk), is_in=True)
    for chunk in np.array_split(scores_out, 3):
        metric.update(chunk, is_in=False)
    assert metric.compute() == ood_metrics(scores_in, scores_out)
    metric.reset()
    with pytest.raises(ValueError, match="scores_in is empty"):
        metric.compute()


def test_accumulator_refuses_non_1d_batches():
    with pytest.raises(ValueError, match="1-D batch"):
        OodMetric().update(np.zeros((4, 10)), is_in=True)
