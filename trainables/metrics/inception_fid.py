"""Standard FID on Inception-v3 features, through torchmetrics, for machines that have the weights.

gensearch's own `fid_mnist` (`trainables/metrics/fid.py`) works offline everywhere. Papers report
Inception FID, so when torch-fidelity's Inception weights file is on this machine (nothing is ever
downloaded at run time) the DCGAN and GASTeN trainables also report `fid_inception`, computed by
torchmetrics' `FrechetInceptionDistance` — the library implementation, not ours. Grayscale 28x28
images are repeated to three channels; torchmetrics resizes them to 299x299 itself. On a CPU this
costs about a minute per 1000 images, so it is meant for GPU runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from trainables.data import cache_dir

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's name for the FID Inception
WEIGHTS_ENV = "GENSEARCH_INCEPTION_WEIGHTS"


def weights_candidates(configured: str = "") -> list[Path]:
    """Where the weights are looked for, in order: the config, $GENSEARCH_INCEPTION_WEIGHTS, gensearch's
    cache (`<cache>/weights/`), then torch hub's checkpoint folder (where torch-fidelity downloads)."""
    candidates = [Path(configured)] if configured else []
    if os.environ.get(WEIGHTS_ENV):
        candidates.append(Path(os.environ[WEIGHTS_ENV]))
    candidates.append(cache_dir().parent / "weights" / WEIGHTS_FILE)
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE)
    return candidates


def find_inception_weights(configured: str = "") -> Path | None:
    """The first weights file that exists; None means fid_inception is skipped. A configured path that
    does not exist is an error: the user asked for it by name."""
    if configured and not Path(configured).is_file():
        raise FileNotFoundError(f"inception_weights: {configured} does not exist (torch-fidelity's {WEIGHTS_FILE})")
    return next((path for path in weights_candidates(configured) if path.is_file()), None)


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) grayscale in [0, 1] -> (N, 3, H, W), as Inception expects three channels."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class InceptionFid:
    """FID of generated images against a fixed real set: real statistics once, fake ones per call.

    `feature` replaces Inception with another network (tests use a tiny one); with `feature=None`
    the Inception weights file `weights` is required.
    """

    def __init__(self, real: torch.Tensor, device: torch.device, weights: Path | None = None,
                 feature: nn.Module | None = None, batch_size: int = 100) -> None:
        try:
            from torchmetrics.image.fid import FrechetInceptionDistance
        except ImportError as error:  # pragma: no cover - both are dependencies of gensearch
            raise RuntimeError(f"fid_inception needs torchmetrics and torch-fidelity ({error}); "
                               "reinstall gensearch with pip install -e .") from error
        if feature is None and weights is None:
            raise ValueError("InceptionFid needs the Inception weights file (or a stand-in `feature` network)")
        self.batch_size, self.device = batch_size, device
        self.metric = FrechetInceptionDistance(
            feature=feature if feature is not None else 2048, reset_real_features=False, normalize=True,
            input_img_size=(3, *real.shape[-2:]) if feature is not None else (3, 299, 299),
            feature_extractor_weights_path=str(weights) if weights else None).to(device)
        self._update(real, real=True)

    def _update(self, images: torch.Tensor, real: bool) -> None:
        for start in range(0, len(images), self.batch_size):
            self.metric.update(to_rgb(images[start:start + self.batch_size]).to(self.device), real=real)

    @torch.no_grad()
    def __call__(self, fake: torch.Tensor) -> float:
        self.metric.reset()  # forgets the generated images only (reset_real_features=False)
        self._update(fake, real=False)
        return float(self.metric.compute())
