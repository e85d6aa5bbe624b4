"""Average confusion distance (ACD): how close a classifier's outputs on generated images are to 0.5.

GASTeN wants images the frozen binary classifier cannot decide on: ACD = mean |0.5 - p| where p
is the classifier's probability of the positive class (label index 1, i.e. the second entry of the
classifier's `classes`). 0 means every image sits on the decision boundary, 0.5 means every image
is classified with full confidence. It is measured on a fixed, seeded set of latent vectors
(`fixed_noise`) so every trial of every study is scored on the same inputs.

The band share is the other side of the same scores: the share of images with C(x) inside a band
around 0.5 (default [0.4, 0.6], both ends included), the images the clustering stage keeps. ACD can
fall while every image stays outside the band; the band share says how many boundary images a
generator actually makes.
"""

from __future__ import annotations

import torch


def fixed_noise(n: int = 2048, dim: int = 64, seed: int = 0) -> torch.Tensor:
    """(n, dim) standard normal latents from a private seeded generator: identical in every process."""
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def confusion_distance(probabilities: torch.Tensor) -> torch.Tensor:
    """mean |0.5 - p| as a differentiable scalar: GASTeN's confusion loss term (times alpha)."""
    return (0.5 - probabilities).abs().mean()


def average_confusion_distance(probabilities: torch.Tensor) -> float:
    """ACD of a batch of positive-class probabilities, in [0, 0.5]."""
    if probabilities.numel() == 0:
        raise ValueError("average_confusion_distance needs at least one probability")
    return float(confusion_distance(probabilities.detach().double()))


DEFAULT_BAND = (0.4, 0.6)


def check_band(band: tuple[float, ...]) -> None:
    """A band is two probabilities, low first (a single value, low == high, is allowed)."""
    if len(band) != 2 or not 0.0 <= band[0] <= band[1] <= 1.0:
        raise ValueError(f"band must be (low, high) with 0 <= low <= high <= 1, got {tuple(band)}")


def in_band(probabilities: torch.Tensor, band: tuple[float, ...]) -> torch.Tensor:
    """Boolean mask of band[0] <= p <= band[1]."""
    return (probabilities >= band[0]) & (probabilities <= band[1])


def band_share(probabilities: torch.Tensor, band: tuple[float, ...] = DEFAULT_BAND) -> float:
    """Share of the probabilities inside `band` (both ends included), in [0, 1]."""
    check_band(band)
    if probabilities.numel() == 0:
        raise ValueError("band_share needs at least one probability")
    return float(in_band(probabilities.detach(), band).double().mean())
