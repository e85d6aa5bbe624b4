"""The real-image yardstick for GASTeN: the real digits its classifier finds hardest to decide.

A generator that is "ambiguous yet realistic" needs something to be compared with. Real boundary
digits are that: among the classifier's own training images of its pair, the N with the smallest
|0.5 - C(x)|. Their ACD (mean |0.5 - C(x)| over those N) is how ambiguous real data gets at that
size, and their fid_mnist (against the same real test statistics as the generator's fid_mnist, with
N = fid_images, so both sides are scored alike) is the realism cost that ambiguity carries even
for real images. A fine-tuned generator that reaches ACD <= acd_real_ambiguous at fid_mnist <=
fid_real_ambiguous is more ambiguous than, and at least as realistic as, real boundary digits.

It depends only on the classifier's weights, the pair's training images, N and the FID reference,
so it is cached on disk under that key (`cached_real_ambiguous`), next to the fid_mnist feature
network: ranking ~13,000 training images costs a few seconds of CPU, which every trial of a stage
would otherwise pay again for the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.data import cache_dir

from trainables.metrics.acd import average_confusion_distance

CACHE_VERSION = 1  # part of every cache key: bump when the way the yardstick is computed changes


@dataclass(frozen=True)
class RealAmbiguous:
    acd: float  # mean |0.5 - C(x)| over the picked images
    fid_mnist: float  # their fid_mnist against the generator's real reference statistics
    images: int  # how many were picked (N, or every image when fewer exist)

    def metrics(self) -> dict[str, float]:
        return {"acd_real_ambiguous": self.acd, "fid_real_ambiguous": self.fid_mnist}


def least_confident(probabilities: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the `n` probabilities closest to 0.5, closest first; ties go to the lower index."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    distance = (0.5 - probabilities.detach().double()).abs()
    return torch.sort(distance, stable=True).indices[:n]


@torch.no_grad()
def real_ambiguous(score: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, n: int,
                   fid_mnist: Callable[[torch.Tensor], float], batch_size: int = 2048) -> RealAmbiguous:
    """The yardstick over `images` (N, 1, 28, 28): pick the `n` with C(x) closest to 0.5, score them.

    `score` maps a batch of images to C(x) (GASTeN passes the frozen classifier's positive-class
    probability); `fid_mnist` maps images to their fid_mnist (GASTeN passes its FidScorer's).
    """
    probabilities = torch.cat([score(images[start:start + batch_size]).cpu()
                               for start in range(0, len(images), batch_size)])
    picked = least_confident(probabilities, n)
    return RealAmbiguous(acd=average_confusion_distance(probabilities[picked]),
                         fid_mnist=fid_mnist(images[picked]), images=len(picked))


def cache_key(classifier: nn.Module, settings: Mapping[str, Any]) -> str:
    """A digest of the classifier's weights and the settings that fix the yardstick (N, data, FID reference)."""
    digest = hashlib.sha256(json.dumps({"version": CACHE_VERSION, **settings}, sort_keys=True).encode())
    for name, tensor in sorted(classifier.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_path(key: str) -> Path:
    return cache_dir().parent / "real_ambiguous" / f"{key}.json"


def cached_real_ambiguous(key: str | None, compute: Callable[[], RealAmbiguous]) -> RealAmbiguous:
    """The yardstick stored under `key`, computed (and stored) on first use; `key=None` never caches.

    Two trials starting at once may both compute it; each writes a private temporary file and
    renames it into place, and both write the same numbers.
    """
    if key is None:
        return compute()
    path = cache_path(key)
    try:
        return RealAmbiguous(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):  # absent, half-written by a crash, or of another layout
        pass
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(asdict(result)))
    os.replace(tmp, path)
    return result
