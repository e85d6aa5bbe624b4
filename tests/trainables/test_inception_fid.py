"""Inception FID through torchmetrics: found only where the weights are, and the same maths as ours.

The real Inception weights cannot be downloaded here, so the library path is exercised with a small
stand-in feature network; its result must equal our own Fréchet maths on the same features.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.metrics.fid import FrechetDistance
from trainables.metrics.inception_fid import WEIGHTS_ENV, InceptionFid, find_inception_weights, to_rgb


class TinyFeatures(nn.Module):
    """A fixed random projection of the pixels to 8 features: a stand-in for Inception."""

    def __init__(self) -> None:
        super().__init__()
        self.project = nn.Linear(3 * 28 * 28, 8)
        nn.init.normal_(self.project.weight, generator=torch.Generator().manual_seed(0))
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(images.float().flatten(1))


def test_torchmetrics_fid_equals_our_frechet_maths_on_the_same_features():
    real = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    fake = (torch.rand(150, 1, 28, 28, generator=torch.Generator().manual_seed(2)) * 0.8 + 0.1)
    features = TinyFeatures()
    library = InceptionFid(real, torch.device("cpu"), feature=features, batch_size=64)
    ours = FrechetDistance()
    ours.update(features(to_rgb(real)), real=True)
    ours.update(features(to_rgb(fake)), real=False)
    assert library(fake) == pytest.approx(ours.compute(), rel=1e-3)
    assert library(real) == pytest.approx(0.0, abs=1e-3)  # real statistics are kept between calls
    assert library(fake) == pytest.approx(ours.compute(), rel=1e-3)


def test_weights_are_found_only_where_they_are(tmp_path, monkeypatch):
    monkeypatch.setenv("GENSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert find_inception_weights() is None  # dcgan and gasten then skip fid_inception
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"not really weights")
    monkeypatch.setenv(WEIGHTS_ENV, str(weights))
    assert find_inception_weights() == weights
    assert find_inception_weights(str(weights)) == weights
    with pytest.raises(FileNotFoundError, match="inception_weights: /nowhere.pth does not exist"):
        find_inception_weights("/nowhere.pth")
    with pytest.raises(ValueError, match="needs the Inception weights"):
        InceptionFid(torch.rand(4, 1, 28, 28), torch.device("cpu"))
