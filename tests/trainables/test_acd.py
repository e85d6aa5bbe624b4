"""Average confusion distance, the band share, and the fixed latent set they are measured on."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from trainables.metrics.acd import average_confusion_distance, band_share, confusion_distance, fixed_noise


def test_fixed_noise_is_identical_across_calls_and_processes_and_depends_on_the_seed():
    first = fixed_noise()
    assert first.shape == (2048, 64)
    torch.manual_seed(123)  # the global generator plays no part
    assert torch.equal(first, fixed_noise())
    assert not torch.equal(first, fixed_noise(seed=1))
    assert fixed_noise(10, 3, seed=5).shape == (10, 3)
    code = "from trainables.metrics.acd import fixed_noise; print(repr(float(fixed_noise().sum())))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert float(other.stdout) == pytest.approx(float(first.sum()), abs=0, rel=0)


def test_acd_is_zero_on_the_boundary_and_half_when_certain():
    assert average_confusion_distance(torch.full((7,), 0.5)) == 0.0
    assert average_confusion_distance(torch.zeros(5)) == 0.5
    assert average_confusion_distance(torch.ones(5)) == 0.5
    assert average_confusion_distance(torch.tensor([0.0, 1.0])) == 0.5


def test_acd_of_a_mixed_batch_matches_the_hand_computed_value():
    # |0.5-0.1| + |0.5-0.5| + |0.5-0.8| + |0.5-0.3| = 0.4 + 0 + 0.3 + 0.2 = 0.9; / 4 = 0.225
    assert average_confusion_distance(torch.tensor([0.1, 0.5, 0.8, 0.3])) == pytest.approx(0.225)
    with pytest.raises(ValueError):
        average_confusion_distance(torch.tensor([]))


def test_confusion_loss_gradient_pushes_probabilities_towards_one_half():
    p = torch.tensor([0.1, 0.9, 0.6], requires_grad=True)
    confusion_distance(p).backward()
    assert p.grad.tolist() == pytest.approx([-1 / 3, 1 / 3, 1 / 3])  # descent raises 0.1, lowers 0.9 and 0.6


def test_band_share_counts_probabilities_inside_the_band_both_ends_included():
    p = torch.tensor([0.1, 0.4, 0.45, 0.5, 0.6, 0.61, 0.9, 0.39])
    assert band_share(p) == pytest.approx(4 / 8)  # 0.4, 0.45, 0.5, 0.6 in the default [0.4, 0.6]
    assert band_share(p, (0.45, 0.55)) == pytest.approx(2 / 8)
    assert band_share(p, (0.0, 1.0)) == 1.0 and band_share(p, (0.95, 1.0)) == 0.0
    with pytest.raises(ValueError, match="band must be"):
        band_share(p, (0.6, 0.4))
    with pytest.raises(ValueError, match="at least one"):
        band_share(torch.tensor([]))
