"""The project's only dataset code: where the 28x28 image sets live and how they are read.

Trainables and jobs ask for `load_images("mnist", "train", classes=(7, 1))` and never see paths,
so a study runs unchanged on a laptop, a cluster node or CI, as long as one of `data_roots()`
holds the files. The gzipped IDX files are read with numpy rather than torchvision because the
shared copy is read-only and torchvision insists on extracting next to the archives.

Every archive is checked against torchvision's published MD5 before use: the shared files were
partly rebuilt by hand, and a silently corrupt pixel file would only show up as a strange
accuracy curve days later.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist", "kmnist")
_SPLITS: tuple[str, ...] = ("train", "test")

# Monkeypatched by tests to isolate them from the real shared/ folder beside the repo.
_REPO_ROOT = Path(__file__).resolve().parents[1]

_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}
_TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "kmnist": "KMNIST"}
_PREFIXES = {"train": "train", "test": "t10k"}
_IMAGES, _LABELS = "images-idx3-ubyte", "labels-idx1-ubyte"

# The checksums in torchvision's `resources` lists, so a cache filled by torchvision passes too.
_MD5 = {
    ("MNIST", "train-images-idx3-ubyte.gz"): "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    ("MNIST", "train-labels-idx1-ubyte.gz"): "d53e105ee54ea40749a09fcbcd1e9432",
    ("MNIST", "t10k-images-idx3-ubyte.gz"): "9fb629c4189551a2d022fa330f9573f3",
    ("MNIST", "t10k-labels-idx1-ubyte.gz"): "ec29112dd5afa0611ce80d1b7f02629c",
    ("FashionMNIST", "train-images-idx3-ubyte.gz"): "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    ("FashionMNIST", "train-labels-idx1-ubyte.gz"): "25c81989df183df01b3e8a0aad5dffbe",
    ("FashionMNIST", "t10k-images-idx3-ubyte.gz"): "bef4ecab320f06d8554ea6380940ec79",
    ("FashionMNIST", "t10k-labels-idx1-ubyte.gz"): "bb300cfdad3c16e7a12a480ee83cd310",
    ("KMNIST", "train-images-idx3-ubyte.gz"): "bdb82020997e1d708af4cf47b453dcf7",
    ("KMNIST", "train-labels-idx1-ubyte.gz"): "e144d726b3acfaa3e44228e80efcd344",
    ("KMNIST", "t10k-images-idx3-ubyte.gz"): "5c965bf0a639b31b8f53240b1b52f4d7",
    ("KMNIST", "t10k-labels-idx1-ubyte.gz"): "7320c461ea6c1c855c0b718fb2a4b134",
}

_DIGITS_TRAIN = 1500  # of scikit-learn's 1797 digits; a fixed cut keeps fallback runs comparable
_DIGITS_SOURCE = "scikit-learn digits {split} (fallback for MNIST, upsampled 8x8 -> 28x28)"

# (resolved path, size, mtime_ns) of archives whose MD5 matched: hashing 26 MB on every trial
# start would cost more than parsing, and a replaced file changes size or mtime.
_VERIFIED: set[tuple[str, int, int]] = set()


class DatasetNotFoundError(FileNotFoundError):
    """No root holds the requested files; the one-line message names every root tried and the fix.

    It takes a single message argument so it survives pickling (Ray ships errors between
    processes), which OSError's multi-argument form would not.
    """


@dataclass(frozen=True)
class ImageSet:
    """Images, contiguous labels, and what those labels meant originally.

    Labels are always 0..len(classes)-1 so a classifier head of size len(classes) fits any subset;
    `classes` maps them back to the dataset's own ids for reports.
    """

    images: torch.Tensor  # float32, (N, 1, 28, 28), values in [0, 1]
    labels: torch.Tensor  # int64, (N,), index into `classes`
    classes: tuple[int, ...]
    source: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def cache_dir() -> Path:
    """Where `download=True` puts files; a data root too, so a downloaded set is found next time."""
    base = os.environ.get("GENSEARCH_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "gensearch") / "data"


def data_roots(data_root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Candidate roots in search order; missing ones are kept so an error can name them all."""
    candidates: list[Path] = []
    if data_root is not None:
        candidates.append(Path(data_root).expanduser())
    if env := os.environ.get("GENSEARCH_DATA"):
        candidates.append(Path(env).expanduser())
    candidates.append(_REPO_ROOT / ".." / "shared" / "data")
    candidates.append(Path.cwd() / ".." / "shared" / "data")
    candidates.append(cache_dir())
    roots: list[Path] = []
    for candidate in candidates:
        resolved = candidate.resolve()
        if resolved not in roots:
            roots.append(resolved)
    return roots


def locate(name: str, split: str, data_root: str | os.PathLike[str] | None = None) -> Path:
    """The `raw` folder holding this split's images and labels, searched in `data_roots` order.

    Cheap on purpose (no hashing): trainables call it as a preflight before any trial starts.
    """
    _check_name(name)
    _check_split(split)
    roots = data_roots(data_root)
    for root in roots:
        raw = root / _FOLDERS[name] / "raw"
        if _split_files(raw, split):
            return raw
    raise DatasetNotFoundError(_not_found_message(name, split, roots))


def require_training_data(config: Any) -> None:
    """A trainable's `preflight`: fail before any trial starts when `config.dataset`'s training split
    is missing, unless the config allows the digits fallback."""
    if not config.allow_fallback:
        locate(config.dataset, "train")


def load_images(
    name: str,
    split: str = "train",
    *,
    classes: Sequence[int] | None = None,
    limit: int | None = None,
    data_root: str | os.PathLike[str] | None = None,
    allow_fallback: bool = False,
    download: bool = False,
    seed: int = 0,
) -> ImageSet:
    """One split as float tensors, optionally reduced to some classes and a seeded random subset.

    The digits fallback exists so smoke tests and demos run on a machine without MNIST; it is
    opt-in because its 8x8 upsampled digits would make real results meaningless.
    """
    _check_name(name)
    _check_split(split)
    wanted = _check_classes(classes)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit <= 0):
        raise ValueError(f"limit must be a positive integer, got {limit!r}")

    try:
        raw = locate(name, split, data_root)
    except DatasetNotFoundError as missing:
        raw, why = _download(name, split) if download else (None, "")
        if raw is None:
            if allow_fallback and name == "mnist":
                images, labels = _digits(split)
                return _select(images, labels, wanted, limit, seed, _DIGITS_SOURCE.format(split=split))
            note = f" Download into {cache_dir()} failed: {why}" if download else ""
            raise DatasetNotFoundError(f"{missing}{note}") from None

    files = _split_files(raw, split)
    if files is None:  # removed between locate() and now
        raise DatasetNotFoundError(_not_found_message(name, split, [raw.parents[1]]))
    images, labels = (_read_idx(path, _FOLDERS[name]) for path in files)
    if len(images) != len(labels):
        raise RuntimeError(f"{raw}: {len(images)} images but {len(labels)} labels for the {split} split")
    return _select(images, labels, wanted, limit, seed, f"{_TITLES[name]} {split} from {raw}")


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of: {', '.join(_SPLITS)}")


def _check_classes(classes: Sequence[int] | None) -> tuple[int, ...]:
    if classes is None:
        return tuple(range(10))
    checked: list[int] = []
    for value in classes:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= 9:
            raise ValueError(f"classes must be integers 0..9, got {value!r}")
        if int(value) in checked:
            raise ValueError(f"classes lists {int(value)} twice")
        checked.append(int(value))
    if len(checked) < 2:
        raise ValueError(f"classes needs at least 2 distinct classes, got {tuple(checked)}")
    return tuple(checked)


def _split_files(raw: Path, split: str) -> tuple[Path, Path] | None:
    """(images, labels) in `raw`, each the gz archive if present, else torchvision's extraction."""
    found: list[Path] = []
    for kind in (_IMAGES, _LABELS):
        plain = raw / f"{_PREFIXES[split]}-{kind}"
        archive = plain.with_name(plain.name + ".gz")
        if archive.is_file():
            found.append(archive)
        elif plain.is_file():
            found.append(plain)
        else:
            return None
    return found[0], found[1]


def _not_found_message(name: str, split: str, roots: Sequence[Path]) -> str:
    folder, prefix = _FOLDERS[name], _PREFIXES[split]
    fixes = ["pass --data-root", f"set GENSEARCH_DATA to a folder holding {folder}/raw"]
    if name == "mnist":
        fixes.append("use allow_fallback=True for scikit-learn's 8x8 digits")
    fixes.append("use download=True with internet access")
    return (
        f"{_TITLES[name]} {split} split not found: looked for {folder}/raw/{prefix}-{_IMAGES}.gz "
        f"and {prefix}-{_LABELS}.gz under {', '.join(str(root) for root in roots)}. "
        f"Fix: {', '.join(fixes[:-1])}, or {fixes[-1]}."
    )


def _verify(path: Path, folder: str) -> None:
    """Raise if a known archive's MD5 differs; extracted files have no published checksum."""
    expected = _MD5.get((folder, path.name))
    if expected is None:
        return
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise RuntimeError(
            f"MD5 checksum mismatch for {path}: got {digest.hexdigest()}, expected {expected}. "
            "The file is corrupt or truncated; replace it with a fresh copy."
        )
    _VERIFIED.add(key)


def _read_idx(path: Path, folder: str) -> np.ndarray:
    _verify(path, folder)
    stat = path.stat()
    return _parse_idx(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _parse_idx(path: str, size: int, mtime_ns: int) -> np.ndarray:
    """uint8 array (read-only, shared by callers); size and mtime are key parts so edits invalidate."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    magic, count = (int(v) for v in np.frombuffer(data, ">i4", count=2))
    if magic == 2051:
        rows, cols = (int(v) for v in np.frombuffer(data, ">i4", count=2, offset=8))
        shape, offset = (count, rows, cols), 16
        if (rows, cols) != (28, 28):
            raise RuntimeError(f"{path}: expected 28x28 images, header says {rows}x{cols}")
    elif magic == 2049:
        shape, offset = (count,), 8
    else:
        raise RuntimeError(f"{path}: not an IDX image/label file (magic {magic})")
    if len(data) - offset != int(np.prod(shape)):
        raise RuntimeError(f"{path}: header promises {count} items but the data has another size")
    array = np.frombuffer(data, np.uint8, offset=offset).reshape(shape)
    array.setflags(write=False)
    return array


@functools.lru_cache(maxsize=2)
def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # only needed on the fallback path

    bunch = load_digits()
    small = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    part = slice(0, _DIGITS_TRAIN) if split == "train" else slice(_DIGITS_TRAIN, None)
    array, labels = images[part, 0].numpy(), bunch.target[part].astype(np.int64)
    array.setflags(write=False)
    labels.setflags(write=False)
    return array, labels


def _download(name: str, split: str) -> tuple[Path | None, str]:
    """Let torchvision fetch into the cache; only works with internet, so failure is expected."""
    try:
        import torchvision.datasets

        dataset_cls = getattr(torchvision.datasets, _FOLDERS[name])
        dataset_cls(str(cache_dir()), train=split == "train", download=True)
        raw = cache_dir() / _FOLDERS[name] / "raw"
        if _split_files(raw, split):
            return raw, ""
        return None, f"no {split} files in {raw} afterwards"
    except Exception as error:  # any failure means "not available"; the caller reports it
        return None, " ".join(f"{type(error).__name__}: {error}".split())


def _select(
    images: np.ndarray, labels: np.ndarray, classes: tuple[int, ...], limit: int | None, seed: int, source: str
) -> ImageSet:
    """Filter to `classes`, relabel to their positions, then take a seeded sorted subset."""
    keep = np.flatnonzero(np.isin(labels, classes))
    if limit is not None and limit < len(keep):
        chosen = np.random.default_rng(seed).choice(len(keep), size=limit, replace=False)
        keep = keep[np.sort(chosen)]
    relabel = np.full(256, -1, dtype=np.int64)
    relabel[list(classes)] = np.arange(len(classes))
    picked = images[keep]
    pixels = picked.astype(np.float32) / 255.0 if picked.dtype == np.uint8 else picked.astype(np.float32)
    return ImageSet(
        images=torch.from_numpy(pixels).unsqueeze(1),
        labels=torch.from_numpy(relabel[labels[keep]]),
        classes=classes,
        source=source,
    )
