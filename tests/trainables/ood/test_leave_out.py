"""The leave-out ensemble: the class partition, the entropy margin loss by hand, the ensemble's class
distribution and OOD score, the validation choice of T and epsilon, training on tiny MNIST and the
detector rebuilt from its checkpoint."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables.config import build_config
from trainables.ood.leave_out import (LEAVE_OUT, LeaveOutConfig, LeaveOutDetector, LeaveOutEnsemble, build_model,
                                      choose_temperature_epsilon, class_groups, detector_from_state, entropy,
                                      leave_out_auroc, leave_out_loss, margin_loss, member_scores, train)
from trainables.reporter import ListReporter

NEG = -1e4  # a logit whose probability is 0 in float32


@pytest.fixture(scope="module")
def trained(one_thread_module) -> ListReporter:
    reporter = ListReporter()
    train(build_config(LeaveOutConfig, {"train_size": 1500, "val_size": 300, "groups": 5, "epochs": 2,
                                        "margin_weight": 0.5, "validation_images": 100,
                                        "temperatures": [1.0, 1000.0], "epsilons": [0.0, 0.002]}), reporter)
    return reporter


@pytest.mark.parametrize("classes,groups", [(10, 5), (10, 3), (10, 2), (7, 3), (4, 2)])
def test_class_groups_cover_every_class_exactly_once(classes, groups):
    parts = class_groups(classes, groups, seed=3)
    assert len(parts) == groups
    assert sorted(c for part in parts for c in part) == list(range(classes))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert all(list(part) == sorted(part) for part in parts)
    assert class_groups(classes, groups, seed=3) == parts  # seeded


def test_class_groups_depend_on_the_seed_and_refuse_impossible_splits():
    assert len({class_groups(10, 5, seed) for seed in range(5)}) > 1
    for classes, groups in [(10, 1), (10, 11), (3, 2)]:  # (3, 2): a member would keep one class
        with pytest.raises(ValueError):
            class_groups(classes, groups, seed=0)


def test_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, NEG, NEG], [5.0, NEG, NEG, NEG]])
    assert entropy(logits).tolist() == pytest.approx([math.log(4), math.log(2), 0.0], abs=1e-6)


def test_margin_loss_by_hand():
    uniform4 = torch.zeros(2, 4)  # H = log 4 = 1.386 each
    half = torch.tensor([[0.0, 0.0, NEG, NEG]] * 2)  # H = log 2 = 0.693 each
    # The held-out images' entropy exceeds the in-distribution one by log 2 = 0.693 >= 0.5: nothing to push.
    assert margin_loss(half, uniform4, margin=0.5).item() == 0.0
    # A margin of 1.0 is not met: 1.0 + log 2 - log 4 = 1 - log 2.
    assert margin_loss(half, uniform4, margin=1.0).item() == pytest.approx(1 - math.log(2), abs=1e-6)
    # Means over the batch: in-distribution rows of entropy 0 and log 4 average to log 2.
    mixed = torch.tensor([[9.0, NEG, NEG, NEG], [0.0, 0.0, 0.0, 0.0]])
    assert margin_loss(mixed, uniform4, margin=1.0).item() == pytest.approx(1 - math.log(2), abs=1e-6)
    # Reversed (held-out images more confident than the in-distribution ones): margin + log 4 - log 2.
    assert margin_loss(uniform4, half, margin=0.25).item() == pytest.approx(0.25 + math.log(2), abs=1e-6)
    assert margin_loss(half, uniform4[:0], margin=1.0).item() == 0.0  # no held-out image in the batch


def test_leave_out_loss_is_cross_entropy_plus_the_weighted_margin_term():
    logits_in = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2])
    logits_out = torch.tensor([[3.0, 0.0, 0.0]])
    ce = F.cross_entropy(logits_in, labels)
    term = 1.5 + entropy(logits_in).mean() - entropy(logits_out).mean()
    assert term > 0
    got = leave_out_loss(logits_in, labels, logits_out, margin=1.5, weight=0.3)
    assert got.item() == pytest.approx((ce + 0.3 * term).item(), abs=1e-6)
    # The margin term's gradient raises the held-out entropy.
    logits_out.requires_grad_(True)
    leave_out_loss(logits_in, labels, logits_out, margin=1.5, weight=0.3).backward()
    with torch.no_grad():
        assert entropy(logits_out - 0.1 * logits_out.grad) > entropy(logits_out)


def test_the_ensemble_places_each_members_softmax_on_its_own_classes():
    torch.manual_seed(0)
    groups = ((0, 3), (1, 4), (2,))
    ensemble = LeaveOutEnsemble(groups, num_classes=5).eval()
    assert [member.head.out_features for member in ensemble.members] == [3, 3, 4]
    assert ensemble.local[0].tolist() == [-1, 0, 1, -1, 2]  # member 0 knows 1, 2, 4
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        probs = ensemble(x)
        expected = torch.zeros(6, 5)
        for member, group in zip(ensemble.members, groups):
            kept = [c for c in range(5) if c not in group]
            expected[:, kept] += F.softmax(member(x), dim=1)
    assert torch.allclose(probs, expected / 3)
    assert torch.allclose(probs.sum(1), torch.ones(6))
    assert (probs[:, 0] <= 2 / 3 + 1e-6).all()  # class 0 is known to two of the three members
    with pytest.raises(ValueError, match="partition"):
        LeaveOutEnsemble(((0, 1), (1, 2)), num_classes=4)


def test_the_ood_score_is_the_sum_of_max_softmax_minus_entropy_over_members():
    torch.manual_seed(1)
    ensemble = LeaveOutEnsemble(((0,), (1,), (2,)), num_classes=3).eval()
    x = torch.rand(4, 1, 28, 28)
    detector = LeaveOutDetector(ensemble, temperature=2.0, epsilon=0.0, device="cpu")
    expected = np.zeros(4)
    with torch.no_grad():
        for member in ensemble.members:
            p = F.softmax(member(x).double() / 2.0, dim=1)
            expected += (p.max(1).values + (p * p.log()).sum(1)).numpy()
    assert detector.score(x) == pytest.approx(expected, abs=1e-9)
    # With epsilon > 0 each member scores its own ODIN-perturbed input, which raises its top softmax.
    perturbed = member_scores(ensemble, x, (2.0,), (0.0, 0.01), torch.device("cpu"))
    assert perturbed.shape == (1, 2, 3, 4)
    assert (perturbed[0, 1] != perturbed[0, 0]).any()
    assert LeaveOutDetector(ensemble, 2.0, 0.01, device="cpu").score(x) == pytest.approx(perturbed[0, 1].sum(0))


def test_t_and_epsilon_are_the_grid_point_with_the_best_validation_auroc_first_on_ties():
    rng = np.random.default_rng(0)
    scores_in = rng.normal(0, 1, (2, 2, 3, 50))
    scores_out = rng.normal(0, 1, (2, 2, 3, 50))
    scores_out[1, 0] -= 1.0  # T = temperatures[1], epsilon = epsilons[0] separates best
    temperature, epsilon, chosen = choose_temperature_epsilon(scores_in, scores_out, (1.0, 10.0), (0.0, 0.001))
    assert (temperature, epsilon) == (10.0, 0.0) and chosen["auroc"] > 0.7
    scores_out -= 100.0  # every point perfect: the first (lowest T, smallest epsilon) wins
    assert choose_temperature_epsilon(scores_in, scores_out, (1.0, 10.0), (0.0, 0.001))[:2] == (1.0, 0.0)


def test_leave_out_auroc_scores_each_member_on_its_own_held_out_group():
    ensemble = LeaveOutEnsemble(((0,), (1,), (2,)), num_classes=3)
    labels = np.array([0, 0, 1, 1, 2, 2])
    scores = np.array([[0.0, 0.1, 5.0, 6.0, 7.0, 8.0],  # member 0: its held-out class 0 lowest -> AUROC 1
                       [1.0, 2.0, 9.0, 9.5, 0.0, 0.5],  # member 1: class 1 highest -> AUROC 0
                       [0.0, 1.0, 2.0, 4.0, 0.5, 3.0]])  # member 2: 4 of 8 pairs ranked right -> AUROC 0.5
    assert leave_out_auroc(scores, labels, ensemble) == pytest.approx(0.5)


@pytest.mark.parametrize("changes,match", [({"groups": 1}, "groups"), ({"margin": -0.1}, "margin"),
                                           ({"temperatures": []}, "temperatures"),
                                           ({"epsilons": [-0.1]}, "epsilons"),
                                           ({"validation_ood": "kmnist"}, "test split")])
def test_config_validation(changes, match):
    with pytest.raises(ValueError, match=match):
        build_config(LeaveOutConfig, {**LEAVE_OUT.tiny_config, **changes})


def test_training_reports_every_epoch_with_the_chosen_setting(trained):
    assert [result["epoch"] for result in trained.results] == [1.0, 2.0]
    last = trained.results[-1]
    assert (last["temperature"], last["epsilon"]) in {(t, e) for t in (1.0, 1000.0) for e in (0.0, 0.002)}
    assert 0.5 < last["val_accuracy"] <= 1.0  # ten classes: chance is 0.1
    assert 0.0 <= last["val_auroc"] <= 1.0 and 0.0 <= last["val_leave_out_auroc"] <= 1.0


def test_the_checkpoint_rebuilds_the_ensemble_and_its_detector(trained):
    state = trained.last_checkpoint
    ensemble = build_model(state)
    assert ensemble.groups == class_groups(10, 5, seed=0)
    for key, tensor in state.modules["ensemble"].items():
        assert torch.equal(ensemble.state_dict()[key], tensor), key
    detector = detector_from_state(state, device="cpu")
    assert (detector.temperature, detector.epsilon) == (state.metrics["temperature"], state.metrics["epsilon"])
    x = torch.rand(5, 1, 28, 28)
    assert detector.predict(x).shape == (5,) and set(detector.predict(x)) <= set(range(10))
    assert np.isfinite(detector.score(x)).all()
    with pytest.raises(ValueError, match="not a leave_out one"):
        detector_from_state(dataclasses.replace(state, trainable="kplus1"))
