"""The real-image yardstick: which real images are picked, their ACD, and the on-disk cache."""

from __future__ import annotations

import json

import pytest
import torch

from trainables.real_ambiguous import (RealAmbiguous, cache_key, cache_path, cached_real_ambiguous,
                                       least_confident, real_ambiguous)


class ReadsTheFirstPixel(torch.nn.Module):
    """A toy binary classifier with known outputs: C(x) is the image's top-left pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x[:, 0, 0, 0].clamp(1e-6, 1 - 1e-6)
        logit = self.scale * torch.log(p / (1 - p))
        return torch.stack([torch.zeros_like(logit), logit], dim=1)  # softmax(...)[:, 1] == p


def constant_images(values: list[float]) -> torch.Tensor:
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 1, 28, 28).clone()


def positive(classifier: torch.nn.Module):
    return lambda batch: torch.softmax(classifier(batch), dim=1)[:, 1]


def test_the_n_images_closest_to_one_half_are_picked_and_their_acd_is_the_hand_computed_one():
    values = [0.1, 0.45, 0.9, 0.52, 0.5, 0.7, 0.38]
    # |0.5 - C|: 0.4, 0.05, 0.4, 0.02, 0.0, 0.2, 0.12 -> the three smallest are images 4, 3 and 1.
    seen = []

    def fid(images: torch.Tensor) -> float:
        seen.append(images)
        return 7.5

    result = real_ambiguous(positive(ReadsTheFirstPixel()), constant_images(values), 3, fid, batch_size=2)
    assert result == RealAmbiguous(acd=pytest.approx((0.0 + 0.02 + 0.05) / 3), fid_mnist=7.5, images=3)
    assert len(seen) == 1 and seen[0][:, 0, 0, 0].tolist() == pytest.approx([0.5, 0.52, 0.45])
    assert result.metrics() == {"acd_real_ambiguous": result.acd, "fid_real_ambiguous": 7.5}


def test_ties_go_to_the_lower_index_and_n_beyond_the_set_takes_every_image():
    assert least_confident(torch.tensor([0.9, 0.4, 0.6, 0.5]), 3).tolist() == [3, 1, 2]  # 0.4 and 0.6 tie
    assert sorted(least_confident(torch.tensor([0.9, 0.1]), 5).tolist()) == [0, 1]
    with pytest.raises(ValueError, match="n must be >= 1"):
        least_confident(torch.tensor([0.5]), 0)
    everything = real_ambiguous(positive(ReadsTheFirstPixel()), constant_images([0.2, 0.9]), 10, lambda x: 1.0)
    assert everything.images == 2 and everything.acd == pytest.approx((0.3 + 0.4) / 2)


def test_the_cache_is_keyed_by_the_weights_and_settings_and_a_broken_file_is_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("GENSEARCH_CACHE", str(tmp_path))
    classifier = ReadsTheFirstPixel()
    key = cache_key(classifier, {"images": 1000, "classes": [7, 1]})
    assert key == cache_key(ReadsTheFirstPixel(), {"classes": [7, 1], "images": 1000})  # same weights, same key
    assert key != cache_key(classifier, {"images": 999, "classes": [7, 1]})
    with torch.no_grad():
        classifier.scale.fill_(2.0)
    assert key != cache_key(classifier, {"images": 1000, "classes": [7, 1]})

    calls = []

    def compute() -> RealAmbiguous:
        calls.append(1)
        return RealAmbiguous(acd=0.25, fid_mnist=60.0, images=1000)

    first = cached_real_ambiguous(key, compute)
    assert cached_real_ambiguous(key, compute) == first == RealAmbiguous(0.25, 60.0, 1000) and len(calls) == 1
    assert cache_path(key).parent == tmp_path / "real_ambiguous"
    cache_path(key).write_text("{not json")
    assert cached_real_ambiguous(key, compute) == first and len(calls) == 2
    assert cached_real_ambiguous(None, compute) == first and len(calls) == 3  # no key: never cached
    assert json.loads(cache_path(key).read_text()) == {"acd": 0.25, "fid_mnist": 60.0, "images": 1000}
