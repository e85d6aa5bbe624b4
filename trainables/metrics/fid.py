"""Fréchet distance between two sets of features: the maths behind FID.

The maths is the standard one (Heusel et al., 2017, as in pytorch-fid, torch-fidelity and
torchmetrics): fit a Gaussian to each feature set and compute

    d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})

gensearch never uses Inception features (the machines are offline and the images are 28x28
digits): the features come from a small domain network (`trainables/feature_net.py`), so the
score is reported as `fid_mnist` and is comparable only with other `fid_mnist` values.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64.

    `scipy.linalg.sqrtm` of the (generally non-symmetric) product S1 S2 may come back with tiny
    imaginary parts from rounding, or be non-finite when the product is singular (fewer samples
    than feature dimensions). As in pytorch-fid / torch-fidelity, a non-finite result is retried
    with `eps` added to both diagonals, and the imaginary part is discarded (torchmetrics keeps
    the real part of the eigenvalue square roots the same way).
    """
    import scipy.linalg  # here, not at the top: validating a study file imports this module

    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched shapes: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():  # "singular matrix": expected with few samples, handled below
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


class FrechetDistance:
    """torchmetrics-style accumulator: `update(features, real=...)` in batches, then `compute()`.

    Keeps running sums in float64 (count, sum, sum of outer products) for each side, so memory
    does not grow with the number of images. `reset(keep_real=True)` keeps the real statistics,
    which a trainable computes once and compares with every epoch's generated images.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self, keep_real: bool = False) -> None:
        if not keep_real:
            self._real: list = [0, None, None]
        self._fake: list = [0, None, None]

    def update(self, features: torch.Tensor, real: bool) -> None:
        if features.ndim != 2:
            raise ValueError(f"features must be (N, D), got shape {tuple(features.shape)}")
        x = features.detach().to("cpu", torch.float64)
        side = self._real if real else self._fake
        if side[1] is None:
            side[1] = torch.zeros(x.shape[1], dtype=torch.float64)
            side[2] = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
        elif side[1].shape[0] != x.shape[1]:
            raise ValueError(f"features have {x.shape[1]} dimensions, earlier updates had {side[1].shape[0]}")
        side[0] += x.shape[0]
        side[1] += x.sum(0)
        side[2] += x.T @ x

    @staticmethod
    def _moments(side: list, name: str) -> tuple[np.ndarray, np.ndarray]:
        count, total, outer = side
        if count < 2:
            raise ValueError(f"FrechetDistance needs at least 2 {name} samples, got {count}")
        mean = total / count
        cov = (outer - count * torch.outer(mean, mean)) / (count - 1)
        return mean.numpy(), cov.numpy()

    def compute(self) -> float:
        mu1, sigma1 = self._moments(self._real, "real")
        mu2, sigma2 = self._moments(self._fake, "generated")
        return frechet_distance(mu1, sigma1, mu2, sigma2)
