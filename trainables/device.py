"""Choosing where tensors live, so every trainable treats `device: auto` the same way."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when a GPU is visible (Ray hides GPUs a trial was not given), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but no CUDA device is visible to this process")
    return device
