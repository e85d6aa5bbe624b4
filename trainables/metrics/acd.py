"""Average confusion distance (ACD): how close a classifier's outputs on generated images are to 0.5.

GASTeN wants images the frozen binary classifier cannot decide on: ACD = mean |0.5 - p| where p
is the classifier's probability of the positive class (label index 1, i.e. the second entry of the
classifier's `classes`). 0 means every image sits on the decision boundary, 0.5 means every image
is classified with full confidence. It is measured on a fixed, seeded set of latent vectors
(`fixed_noise`) so every trial of every study is scored on the same inputs.
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
