"""Fréchet distance: the closed form on known Gaussians, and the accumulator on samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.metrics.fid import FrechetDistance, frechet_distance


def test_identical_gaussians_are_at_distance_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    sigma = a @ a.T + np.eye(6)
    mu = rng.normal(size=6)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_diagonal_gaussians_match_the_hand_computed_value():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 3.0, -2.0])
    d1, d2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    # ||mu1 - mu2||^2 = 1 + 4 + 0 = 5; for diagonal S: tr = sum(d1 + d2 - 2 sqrt(d1 d2))
    #   = (1 + 4 - 4) + (4 + 1 - 4) + (9 + 0.25 - 3) = 1 + 1 + 6.25 = 8.25
    expected = 5.0 + 8.25
    assert np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2) == pytest.approx(8.25)
    assert frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(expected, rel=1e-9)


def test_mismatched_shapes_are_a_clear_error():
    with pytest.raises(ValueError, match="mismatched shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_accumulator_on_unit_gaussian_samples_approximates_squared_mean_shift():
    gen = torch.Generator().manual_seed(0)
    shift = torch.tensor([1.0, -1.0, 0.5, 0.0, 2.0, 0.0, -0.5, 1.0])  # ||m||^2 = 7.75
    real = torch.randn(20000, 8, generator=gen)
    fake = torch.randn(20000, 8, generator=gen) + shift
    metric = FrechetDistance()
    for chunk in real.split(3000):  # batched updates give the same statistics as one big one
        metric.update(chunk, real=True)
    metric.update(fake, real=False)
    assert metric.compute() == pytest.approx(float(shift @ shift), abs=0.05)


def test_reset_clears_both_sides_or_keeps_the_real_statistics():
    gen = torch.Generator().manual_seed(1)
    real, fake = torch.randn(500, 4, generator=gen), torch.randn(500, 4, generator=gen) + 3.0
    metric = FrechetDistance()
    metric.update(real, real=True)
    metric.update(fake, real=False)
    far = metric.compute()
    metric.reset(keep_real=True)
    metric.update(real, real=False)
    assert metric.compute() == pytest.approx(0.0, abs=1e-6) and far > 30
    metric.reset()
    with pytest.raises(ValueError, match="at least 2 real samples"):
        metric.compute()
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        metric.update(torch.zeros(3), real=True)
