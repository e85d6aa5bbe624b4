"""Named out-of-distribution image sets, all as (N, 1, 28, 28) float tensors in [0, 1].

A detector trained on MNIST is judged on how it scores images that are not MNIST. The names
here cover the usual near-OOD sets for 28x28 digits (Fashion-MNIST, KMNIST), two far-OOD noise
sets, and two escape hatches for anything else (a folder of images, a torchvision dataset class).
"mnist" is accepted too: MNIST test images against an MNIST model are an in-distribution sanity
check (AUROC near 0.5 against other MNIST images).

The three MNIST-like sets come from `trainables.data.load_images`, the project's one dataset
reader, always from their TEST split: KMNIST ships only its test split offline, and using the
test split of the other two keeps the choice the same for every set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from trainables.data import DATASETS, DatasetUse, data_roots, load_images

NOISE_SETS: tuple[str, ...] = ("uniform_noise", "gaussian_noise")
KNOWN_SETS: tuple[str, ...] = DATASETS + NOISE_SETS
FOLDER_PREFIX = "folder:"
TORCHVISION_PREFIX = "torchvision:"
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")

_GAUSSIAN_MEAN, _GAUSSIAN_STD = 0.5, 0.25


def check_validation_ood(name: str) -> None:
    """A validation OOD set must not be a dataset's test split: the final OOD evaluation reads those,
    and a setting tuned on them would be judged on what it was tuned on."""
    if name in DATASETS:
        raise ValueError(f"validation_ood {name!r} would read that dataset's test split, which the final OOD "
                         "evaluation uses; pick a noise set (uniform_noise, gaussian_noise) or a folder: of images "
                         "kept for validation")


def ood_datasets(names: tuple[str, ...], setting: str) -> tuple[DatasetUse, ...]:
    """The datasets (test splits) among OOD set `names`, for a definition's `datasets=`."""
    return tuple(DatasetUse(name, ("test",), setting=setting) for name in names if name in DATASETS)


def ood_set(name: str, count: int = 2000, seed: int = 0,
            data_root: str | os.PathLike[str] | None = None) -> torch.Tensor:
    """The images of OOD set `name`: (N, 1, 28, 28) float32 in [0, 1], reproducible from `seed`.

    Noise sets have exactly `count` images. Finite sources (datasets, folders, torchvision) give
    a seeded subset of `count` images, or all of them when they hold fewer (MNIST-like test
    splits hold 10,000).

    Names: "mnist", "fashion_mnist", "kmnist" (test splits, found through `data_root` and the
    usual roots of `trainables.data`); "uniform_noise" (U[0, 1) pixels); "gaussian_noise"
    (N(0.5, 0.25^2) pixels clipped to [0, 1]); "folder:/path" (every PNG/JPEG under the folder,
    recursively, as grayscale resized to 28x28); "torchvision:ClassName[:root]" (the test split of
    a `torchvision.datasets` class; see `_torchvision_set`).
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count <= 0:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    if name in DATASETS:
        return load_images(name, "test", limit=int(count), data_root=data_root, seed=seed).images
    if name in NOISE_SETS:
        return _noise(name, int(count), seed)
    if name.startswith(FOLDER_PREFIX):
        return _folder_set(name[len(FOLDER_PREFIX):], int(count), seed)
    if name.startswith(TORCHVISION_PREFIX):
        return _torchvision_set(name[len(TORCHVISION_PREFIX):], int(count), seed, data_root)
    raise ValueError(
        f"unknown OOD set {name!r}; known sets: {', '.join(KNOWN_SETS)}, "
        f"or '{FOLDER_PREFIX}/path/to/images', or '{TORCHVISION_PREFIX}ClassName[:root]'"
    )


def _noise(name: str, count: int, seed: int) -> torch.Tensor:
    """A private generator, so the images depend on `seed` only, not on the global torch RNG."""
    generator = torch.Generator().manual_seed(seed)
    shape = (count, 1, 28, 28)
    if name == "uniform_noise":
        return torch.rand(shape, generator=generator)
    return (_GAUSSIAN_MEAN + _GAUSSIAN_STD * torch.randn(shape, generator=generator)).clamp_(0.0, 1.0)


def _subset(total: int, count: int, seed: int) -> np.ndarray:
    """Sorted seeded indices of `count` of `total` items: the same rule as `load_images(limit=...)`."""
    if count >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=count, replace=False))


def _to_tensor(pictures: Sequence[object]) -> torch.Tensor:
    """PIL images -> (N, 1, 28, 28) float32 in [0, 1]: grayscale ("L"), then bilinear resize to 28x28."""
    from PIL import Image

    arrays = []
    for picture in pictures:
        if not isinstance(picture, Image.Image):
            picture = Image.fromarray(np.asarray(picture))
        gray = picture.convert("L")
        if gray.size != (28, 28):
            gray = gray.resize((28, 28), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(gray, dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(arrays)).unsqueeze(1)


def _folder_set(folder: str, count: int, seed: int) -> torch.Tensor:
    """Every PNG/JPEG under `folder` (recursive, sorted by path so the seeded subset is stable)."""
    from PIL import Image

    root = Path(folder).expanduser()
    if not folder or not root.is_dir():
        raise FileNotFoundError(f"OOD image folder {str(root) if folder else '(empty path)'!r} does not exist")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"OOD image folder {str(root)!r} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    pictures = []
    for index in _subset(len(paths), count, seed):
        with Image.open(paths[index]) as picture:
            picture.load()
            pictures.append(picture.copy())
    return _to_tensor(pictures)


def _torchvision_set(spec: str, count: int, seed: int,
                     data_root: str | os.PathLike[str] | None) -> torch.Tensor:
    """`torchvision.datasets.<ClassName>(root, train=False, download=False)`, converted like a folder.

    Only classes whose constructor takes (root, train=..., download=...) work: MNIST, FashionMNIST,
    KMNIST, QMNIST, CIFAR10, CIFAR100, USPS... Classes that need more arguments (EMNIST needs
    `split`, SVHN takes `split` instead of `train`) are refused with a one-line error; put their
    images in a folder instead. The root is the one after the class name, else every root of
    `trainables.data.data_roots(data_root)` is tried in order. Nothing is ever downloaded: the
    machines are offline, and a study must not silently fetch data.
    """
    import torchvision.datasets

    class_name, _, root = spec.partition(":")
    dataset_cls = getattr(torchvision.datasets, class_name, None) if class_name else None
    if not isinstance(dataset_cls, type):
        raise ValueError(f"torchvision.datasets has no dataset class {class_name!r}")
    roots = [Path(root).expanduser()] if root else data_roots(data_root)
    dataset = None
    for candidate in roots:
        try:
            dataset = dataset_cls(str(candidate), train=False, download=False)
            break
        except TypeError as error:
            raise ValueError(
                f"torchvision.datasets.{class_name} cannot be built as {class_name}(root, train=False, "
                f"download=False) ({error}); export its images to a folder and use '{FOLDER_PREFIX}/path'"
            ) from None
        except (RuntimeError, OSError):  # torchvision's "Dataset not found or corrupted"
            continue
    if dataset is None:
        raise FileNotFoundError(
            f"torchvision.datasets.{class_name} test split not found under "
            f"{', '.join(str(r) for r in roots)} (download=False: gensearch never downloads)"
        )
    if len(dataset) == 0:
        raise FileNotFoundError(f"torchvision.datasets.{class_name} under {roots} has no test images")
    return _to_tensor([dataset[int(i)][0] for i in _subset(len(dataset), count, seed)])
