"""The domain feature network behind `fid_mnist`: gensearch's offline stand-in for Inception.

A `Classifier(nf=2, num_classes=10)` trained once, seeded, on a few thousand MNIST training
images of all ten digits; FID features are its penultimate layer (`model.embed`, 64 values).
It is cached at `<GENSEARCH_CACHE or ~/.cache/gensearch>/feature_nets/mnist_v1.pt` with a version
stamp: a file with another `FEATURE_NET_VERSION` is retrained, so `fid_mnist` values computed with
the same version are comparable across trials and studies. Two trials starting at once may both
train it; each writes a private temporary file and renames it into place, so neither ever reads a
half-written file (and both produce the same weights, because the training is seeded).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trainables.classifier import Classifier
from trainables.data import cache_dir, load_images

FEATURE_NET_VERSION = "mnist-cnn-v1"
NF, NUM_CLASSES = 2, 10
TRAIN_IMAGES, EPOCHS, BATCH_SIZE, LR, SEED = 4000, 2, 64, 1e-3, 0

_LOADED: dict[tuple[str, int, int], dict[str, torch.Tensor]] = {}  # (path, size, mtime) -> weights


def cache_path() -> Path:
    return cache_dir().parent / "feature_nets" / "mnist_v1.pt"


def train_feature_net(allow_fallback: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """Train the network from scratch (about 10 s on 2 CPU cores); returns (weights, data source).

    Runs inside `fork_rng` so building the net never shifts the calling trial's random stream.
    """
    data = load_images("mnist", "train", limit=TRAIN_IMAGES, seed=SEED, allow_fallback=allow_fallback)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = Classifier(NF, NUM_CLASSES)
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        model.train()
        for epoch in range(EPOCHS):
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(SEED * 100_003 + epoch))
            for start in range(0, len(order), BATCH_SIZE):
                idx = order[start:start + BATCH_SIZE]
                loss = F.cross_entropy(model(data.images[idx]), data.labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return model.state_dict(), data.source


def _read(path: Path) -> dict[str, torch.Tensor] | None:
    """The cached weights, or None when absent, unreadable or of another version."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _LOADED:
        try:
            saved = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # a corrupt or foreign file is rebuilt, not trusted
            return None
        if not isinstance(saved, dict) or saved.get("version") != FEATURE_NET_VERSION:
            return None
        _LOADED[key] = saved["state_dict"]
    return _LOADED[key]


def _write(path: Path, state_dict: dict[str, torch.Tensor], source: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    torch.save({"version": FEATURE_NET_VERSION, "state_dict": state_dict, "source": source,
                "nf": NF, "num_classes": NUM_CLASSES}, tmp)
    os.replace(tmp, path)


def feature_net(device: torch.device | str = "cpu", allow_fallback: bool = False) -> nn.Module:
    """The eval-mode feature network on `device`, trained and cached on first use.

    With `allow_fallback` and no MNIST anywhere, it is trained on scikit-learn's digits instead
    and kept in memory only, so the cached file always holds the MNIST-trained network.
    """
    path = cache_path()
    state_dict = _read(path)
    if state_dict is None:
        state_dict, source = train_feature_net(allow_fallback)
        if source.startswith("MNIST"):
            _write(path, state_dict, source)
    model = Classifier(NF, NUM_CLASSES)
    model.load_state_dict(state_dict)
    model.requires_grad_(False)
    return model.to(device).eval()


@torch.no_grad()
def embed_images(net: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """(N, 64) float32 CPU features of (N, 1, 28, 28) images in [0, 1], batch by batch."""
    device = next(net.parameters()).device
    chunks = [net.embed(images[start:start + batch_size].to(device)).float().cpu()
              for start in range(0, len(images), batch_size)]
    return torch.cat(chunks) if chunks else torch.zeros(0, 32 * NF)
