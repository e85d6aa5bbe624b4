"""Ambiguous images: what a GASTeN generator makes that its frozen classifier cannot decide on.

"Finding Patterns in Ambiguous Images" starts here: draw many images from a (GASTeN fine-tuned or
plain DCGAN) generator, score each with the binary classifier, C(x) = P(second class), and keep
those with C(x) inside a band around 0.5 (default [0.4, 0.6]). The kept images travel with their
scores and their classifier embeddings (the penultimate layer, `Classifier.embed`): the clustering
step groups the images in that space, because it is the space in which the classifier itself sees
them. The latents come from a private seeded generator, so one (seed, batch_size) always yields the
same set, whatever else the process has drawn.

The set is stored as one compressed .npz (`save_ambiguous` / `load_ambiguous`). Nothing here
prints: the caller reports progress.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainables.checkpoint import load_checkpoint
from trainables.dcgan import generator_from_checkpoint
from trainables.device import resolve_device
from trainables.gasten import load_frozen_classifier, positive_probability
from trainables.metrics.acd import DEFAULT_BAND, check_band, in_band

_ARRAYS = ("images", "scores", "embeddings", "generated", "band", "classes")


# eq=False: numpy arrays have no single truth value, so a generated __eq__ (and __hash__) would raise.
@dataclass(frozen=True, eq=False)
class AmbiguousSet:
    images: np.ndarray  # (N, 1, H, W) float32 in [0, 1]
    scores: np.ndarray  # (N,) float32: C(x) = P(second class of `classes`)
    embeddings: np.ndarray  # (N, D) float32: the classifier's penultimate layer (`model.embed`)
    generated: int  # how many images were generated to find these N
    band: tuple[float, float]  # the kept C(x) range, both ends included
    classes: tuple[int, ...]  # the classifier's classes, from its checkpoint config

    def __post_init__(self) -> None:
        count = len(self.scores)
        if self.images.ndim != 4 or self.images.shape[1] != 1:
            raise ValueError(f"images must be (N, 1, H, W), got shape {self.images.shape}")
        if self.scores.ndim != 1 or self.embeddings.ndim != 2:
            raise ValueError(f"scores must be (N,) and embeddings (N, D), got {self.scores.shape} and "
                             f"{self.embeddings.shape}")
        if len(self.images) != count or len(self.embeddings) != count:
            raise ValueError(f"images, scores and embeddings disagree on N: {len(self.images)}, {count}, "
                             f"{len(self.embeddings)}")
        if self.generated < count:
            raise ValueError(f"generated ({self.generated}) cannot be fewer than the images kept ({count})")
        check_band(self.band)

    def __len__(self) -> int:
        return len(self.scores)


def _distance_to_band(scores: torch.Tensor, band: tuple[float, float]) -> torch.Tensor:
    return torch.clamp(band[0] - scores, min=0) + torch.clamp(scores - band[1], min=0)


def load_generator(folder: str, device: torch.device) -> torch.nn.Module:
    """The generator of a dcgan or gasten checkpoint folder, in eval mode with gradients off."""
    state = load_checkpoint(folder)
    if "generator" not in state.modules:
        raise ValueError(f"generator: {folder} is a {state.trainable!r} checkpoint without a generator; "
                         "give a dcgan or gasten checkpoint folder")
    generator = generator_from_checkpoint(state).to(device)
    generator.requires_grad_(False)
    return generator


@torch.no_grad()
def generate_ambiguous(generator_folder: str, classifier_folder: str, images: int,
                       band: tuple[float, float] = DEFAULT_BAND, seed: int = 0, device: str = "auto",
                       batch_size: int = 1000) -> AmbiguousSet:
    """Generate `images` images and keep those with band[0] <= C(x) <= band[1].

    BatchNorm runs on its running statistics (eval mode), so an image depends on its latent alone,
    never on the rest of its batch. Raises ValueError, naming the closest score, when none is kept.
    """
    band = (float(band[0]), float(band[1]))
    check_band(band)
    if images < 1 or batch_size < 1:
        raise ValueError(f"images and batch_size must be >= 1, got {images} and {batch_size}")
    target = resolve_device(device)
    generator = load_generator(generator_folder, target)
    classifier, classifier_state = load_frozen_classifier(classifier_folder, target)
    classes = tuple(int(c) for c in classifier_state.config["classes"])
    latents = torch.Generator().manual_seed(seed)  # on the CPU: the same latents on every device

    kept_images, kept_scores, kept_embeddings = [], [], []
    closest, closest_distance = math.nan, math.inf
    for start in range(0, images, batch_size):
        z = torch.randn(min(batch_size, images - start), generator.z_dim, generator=latents)
        batch = generator(z.to(target))
        scores = positive_probability(classifier, batch)
        keep = in_band(scores, band)
        distance = _distance_to_band(scores, band)
        nearest = int(distance.argmin())
        if float(distance[nearest]) < closest_distance:
            closest, closest_distance = float(scores[nearest]), float(distance[nearest])
        if keep.any():
            batch = batch[keep]
            kept_images.append(batch.cpu())
            kept_scores.append(scores[keep].cpu())
            kept_embeddings.append(classifier.embed(batch).flatten(1).cpu())
    if not kept_scores:
        raise ValueError(f"none of the {images} generated images has C(x) in [{band[0]:g}, {band[1]:g}] "
                         f"(closest: {closest:.2f}); widen `band` or raise `images`")
    return AmbiguousSet(images=torch.cat(kept_images).float().numpy(),
                        scores=torch.cat(kept_scores).float().numpy(),
                        embeddings=torch.cat(kept_embeddings).float().numpy(),
                        generated=images, band=band, classes=classes)


def save_ambiguous(data: AmbiguousSet, path: str | os.PathLike) -> Path:
    """Write `data` as one compressed .npz, atomically (a crash never leaves a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:  # a file object: np.savez would append ".npz" to a bare name
        np.savez_compressed(handle, images=data.images.astype(np.float32), scores=data.scores.astype(np.float32),
                            embeddings=data.embeddings.astype(np.float32), generated=np.int64(data.generated),
                            band=np.asarray(data.band, dtype=np.float64),
                            classes=np.asarray(data.classes, dtype=np.int64))
    os.replace(tmp, path)
    return path


def load_ambiguous(path: str | os.PathLike) -> AmbiguousSet:
    """Read a set written by `save_ambiguous`; the error names the file and what it lacks."""
    with np.load(path, allow_pickle=False) as stored:
        missing = [name for name in _ARRAYS if name not in stored.files]
        if missing:
            raise ValueError(f"{path}: not an ambiguous-image set (missing {', '.join(missing)})")
        band = stored["band"].tolist()
        return AmbiguousSet(images=stored["images"], scores=stored["scores"], embeddings=stored["embeddings"],
                            generated=int(stored["generated"]), band=(band[0], band[1]),
                            classes=tuple(int(c) for c in stored["classes"]))
