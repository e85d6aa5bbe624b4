"""How many trials share one GPU, and whether their memory fits it: checked on the spec, before anything
starts (and again by the runner against the GPUs it finds), so a study never crashes mid-run for it.
"""

from __future__ import annotations

import math


def trials_per_gpu(gpu_fraction: float) -> int:
    """How many trials asking for `gpu_fraction` of a GPU Ray puts on one GPU (1 for whole GPUs)."""
    if gpu_fraction >= 1:
        return 1
    return math.floor(1 / gpu_fraction + 1e-9)  # 1/0.1 is 10.000000000000002, 1/(1/3) may be 2.9999999999999996


def packing_problem(gpu_fraction: float, trial_memory_gb: float | None, device_memory_gb: float | None, *,
                    device: str = "device_memory_gb") -> str | None:
    """Why trials asking for `gpu_fraction` of a GPU and `trial_memory_gb` of its memory each cannot
    share a GPU of `device_memory_gb`, or None when they fit (or when a figure is not known).

    `device` says where the GPU's size comes from; it is named in the message in parentheses."""
    if gpu_fraction <= 0 or trial_memory_gb is None or device_memory_gb is None:
        return None
    if trial_memory_gb > device_memory_gb + 1e-9:
        return (f"each trial needs {trial_memory_gb:g} GB of GPU memory (gpu_memory_gb) but a GPU has "
                f"{device_memory_gb:g} GB ({device}): it does not fit even alone on a whole GPU")
    packed = trials_per_gpu(gpu_fraction)
    if packed * trial_memory_gb <= device_memory_gb + 1e-9:
        return None
    fitting = math.floor(device_memory_gb / trial_memory_gb + 1e-9)  # >= 1: a single trial fits (checked above)
    # 1/fitting rounded down to Ray's 4 decimals, so that it packs exactly `fitting` trials (1/6 -> 0.1666).
    suggestion = "1" if fitting == 1 else f"{math.floor(10_000 / fitting) / 10_000:g}"
    return (f"{packed} trials per GPU (gpu: {gpu_fraction:g}) x {trial_memory_gb:g} GB = "
            f"{packed * trial_memory_gb:g} GB do not fit a {device_memory_gb:g} GB GPU ({device}); use gpu: "
            f"{suggestion} ({fitting} per GPU) or lower gpu_memory_gb to {device_memory_gb / packed:.3g}")
