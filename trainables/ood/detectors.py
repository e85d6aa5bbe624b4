"""OOD detectors built on a trained classifier, and the loop that scores them against OOD sets.

A detector maps images to one score each, HIGHER for inputs it believes are in-distribution
(the convention of `trainables.ood.metrics`). The two here need nothing but the classifier:

- `MaxSoftmax`: the maximum softmax probability (Hendrycks & Gimpel, ICLR 2017), the baseline
  every OOD paper reports.
- `Odin`: ODIN (Liang, Li & Srikant, ICLR 2018): temperature-scaled softmax after a small input
  perturbation that raises the top class's probability. The perturbation helps in-distribution
  inputs more than OOD ones, which widens the gap between their scores.

Detectors never change the classifier for good: they switch it to eval mode (BatchNorm must use
its running statistics, or a batch's score would depend on the other images in it) and ODIN
freezes its parameters only while scoring, restoring both afterwards.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables.classifier import evaluate
from trainables.data import ImageSet
from trainables.device import resolve_device
from trainables.ood.metrics import ood_metrics


class Detector(ABC):
    """Fit on in-distribution training data (may do nothing), then score batches: higher = more in-distribution.

    `fit` exists so detectors that need statistics of the training set (Mahalanobis, k-NN on
    features, ...) share this interface; the softmax-based ones here need none.
    """

    name: str = "detector"

    def fit(self, train: ImageSet) -> None:
        """Learn whatever the detector needs from in-distribution training images; nothing by default."""

    @abstractmethod
    def score(self, images: torch.Tensor) -> np.ndarray:
        """(N,) float64 scores of (N, 1, 28, 28) images; higher means more in-distribution."""


def check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (N, C, H, W) tensor, got {shape}")


def check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


@contextlib.contextmanager
def scoring_mode(model: nn.Module, freeze: bool) -> Iterator[None]:
    """Eval mode (and, with `freeze`, requires_grad off) for the duration; the caller's state comes back."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    if freeze:
        for parameter, _ in flags:
            parameter.requires_grad_(False)
    try:
        yield
    finally:
        model.train(was_training)
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def _max_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """In float64: in float32 a confident classifier's top probability rounds to exactly 1.0 for
    many inputs, and those ties throw away the ranking that AUROC measures."""
    return F.softmax(logits.double() / temperature, dim=1).max(dim=1).values


def odin_direction(model: nn.Module, x: torch.Tensor, temperature: float) -> torch.Tensor:
    """sign(grad_x -log max_c softmax(model(x) / T)_c): ODIN moves x by -epsilon times this.

    It does not depend on epsilon, so a search over epsilon (the leave-out ensemble's validation grid)
    computes it once per temperature. The caller keeps `model` in eval mode (`scoring_mode`).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        log_probs = F.log_softmax(model(x) / temperature, dim=1)
        # Minus the log-probability of the predicted class, summed: each image's gradient only
        # depends on its own term (eval-mode BatchNorm does not mix images).
        loss = -log_probs.max(dim=1).values.sum()
        (grad,) = torch.autograd.grad(loss, x)
    return grad.sign()


class MaxSoftmax(Detector):
    """Score = max_c softmax(f(x))_c: a classifier is less confident on what it was not trained on."""

    name = "max_softmax"

    def __init__(self, classifier: nn.Module, device: str = "auto", batch_size: int = 512) -> None:
        check_batch_size(batch_size)
        self.device = resolve_device(device)
        self.classifier = classifier.to(self.device)  # nn.Module.to moves the caller's module in place
        self.batch_size = batch_size

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> np.ndarray:
        check_images(images)
        parts = []
        with scoring_mode(self.classifier, freeze=False):
            for batch in images.split(self.batch_size):
                parts.append(_max_softmax(self.classifier(batch.to(self.device))).cpu())
        return torch.cat(parts).numpy() if parts else np.empty(0)


class Odin(Detector):
    """ODIN: x' = x - epsilon * sign(-grad_x log max_c softmax(f(x)/T)_c); score = max_c softmax(f(x')/T)_c.

    Defaults T = 1000 and epsilon = 0.002 are within the paper's grid (T in {1, ..., 1000},
    epsilon in [0, 0.004]); the paper tunes epsilon per OOD set, which a search can do too.
    The classifier is in eval mode with its parameters frozen while scoring, and only the input
    gets a gradient. x' is NOT clamped to [0, 1]: the paper does not clamp either, and the
    perturbation (at most epsilon per pixel) is part of the method, not an image to be valid.
    The original code also divides the gradient sign by the per-channel normalisation std; the
    images here are not normalised, so there is nothing to divide by.
    With epsilon = 0 and temperature = 1 the scores are exactly MaxSoftmax's.
    """

    name = "odin"

    def __init__(self, classifier: nn.Module, temperature: float = 1000.0, epsilon: float = 0.002,
                 device: str = "auto", batch_size: int = 256) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        check_batch_size(batch_size)
        self.device = resolve_device(device)
        self.classifier = classifier.to(self.device)  # nn.Module.to moves the caller's module in place
        self.temperature = float(temperature)
        self.epsilon = float(epsilon)
        self.batch_size = batch_size

    def _perturb(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.epsilon * odin_direction(self.classifier, x, self.temperature)).detach()

    def score(self, images: torch.Tensor) -> np.ndarray:
        check_images(images)
        parts = []
        with scoring_mode(self.classifier, freeze=True):
            for batch in images.split(self.batch_size):
                x = batch.to(self.device)
                if self.epsilon > 0:
                    x = self._perturb(x)
                with torch.no_grad():
                    parts.append(_max_softmax(self.classifier(x), self.temperature).cpu())
        return torch.cat(parts).numpy() if parts else np.empty(0)


def classifier_accuracy(classifier: nn.Module, data: ImageSet, device: str = "auto") -> float:
    """Top-1 accuracy on `data`: reported next to OOD numbers, since a detector built on a poor
    classifier is not evidence about the detector."""
    if len(data) == 0:
        raise ValueError("classifier_accuracy needs at least one image")
    target = resolve_device(device)
    with scoring_mode(classifier.to(target), freeze=False):
        return float(evaluate(classifier, data, target)["accuracy"])


def evaluate_detector(detector: Detector, in_images: torch.Tensor,
                      out_sets: Mapping[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """`ood_metrics` of `detector` for each OOD set against the same in-distribution images.

    The in-distribution images are scored once and shared by every set, so the sets' numbers
    differ only by their OOD side.
    """
    if not out_sets:
        raise ValueError("evaluate_detector needs at least one OOD set")
    scores_in = detector.score(in_images)
    return {name: ood_metrics(scores_in, detector.score(images)) for name, images in out_sets.items()}
