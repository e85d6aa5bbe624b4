"""The project's only dataset code: where the 28x28 image sets live and how they are read.

Trainables and jobs ask for `load_images("mnist", "train", classes=(7, 1))` and never see paths,
so a study runs unchanged on a laptop, a cluster node or CI, as long as one of `data_roots()`
(trainables/data_roots.py) holds the files. The gzipped IDX files are read with numpy rather than torchvision because the
shared copy is read-only and torchvision insists on extracting next to the archives.

Every archive is checked against torchvision's published MD5 before use: the shared files were
partly rebuilt by hand, and a silently corrupt pixel file would only show up as a strange
accuracy curve days later. A file that passed is remembered (by path, size and mtime) in
`verified.json` in the cache folder, so each archive is hashed once per machine, not once per trial.

Trainables never download: `fetch` is for the launcher (before any trial starts, see
orchestrator/data.py) and for `python -m orchestrator.data fetch`. A definition declares what it
reads with `DatasetUse`s, so the launcher knows a study's datasets before Ray starts.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainables.data_roots import LAUNCH_ROOT_ENV, cache_dir, data_roots, first_data_root  # noqa: F401

DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist", "kmnist")
_SPLITS: tuple[str, ...] = ("train", "test")

_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}
_TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "kmnist": "KMNIST"}
_PREFIXES = {"train": "train", "test": "t10k"}
_DATASET_OF_FOLDER = {folder: name for name, folder in _FOLDERS.items()}
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

_CLASS_COUNT = 10  # MNIST, Fashion-MNIST and KMNIST all have ten classes, 0..9
_DOWNLOAD_TIMEOUT_S = 30
MIRROR_ENV = "GENSEARCH_DATA_MIRROR"

_DIGITS_TRAIN = 1500  # of scikit-learn's 1797 digits; a fixed cut keeps fallback runs comparable
_DIGITS_SOURCE = "scikit-learn digits {split} (fallback for MNIST, upsampled 8x8 -> 28x28)"

# (resolved path, size, mtime_ns) of archives whose MD5 matched: hashing 26 MB on every trial
# start would cost more than parsing, and a replaced file changes size or mtime. Persisted in
# `verified_record()` for the next process.
_VERIFIED: set[tuple[str, int, int]] = set()


class DatasetNotFoundError(FileNotFoundError):
    """No root holds the requested files; the one-line message names every root tried and the fix.

    It takes a single message argument so it survives pickling (Ray ships errors between
    processes), which OSError's multi-argument form would not.
    """


class DownloadError(RuntimeError):
    """A dataset could not be fetched (no route, HTTP error, MD5 mismatch); the one-line message says
    which file from which URL and why. Nothing half-written is left behind."""


@dataclass(frozen=True)
class DatasetUse:
    """One dataset a config reads, declared by its TrainableDef/JobDef (`datasets=`), so the launcher can
    fetch it, verify its archives and check `classes` before any trial starts.

    `fallback`: the config allows scikit-learn's digits in place of a missing MNIST. `setting` names
    the config key the dataset came from ("" when the trainable reads it on its own, e.g. MNIST for
    the fid_mnist feature network), so a problem is reported at the right YAML key.
    """

    name: str
    splits: tuple[str, ...] = ("train",)
    classes: tuple[int, ...] = ()  # () means all classes
    fallback: bool = False
    setting: str = "dataset"


def training_data(config: Any) -> tuple[DatasetUse, ...]:
    """`datasets=` of a trainable that trains on `config.dataset`'s training split (its `classes`)."""
    return (DatasetUse(config.dataset, ("train",), tuple(config.classes), config.allow_fallback),)


def every_class_training_data(config: Any) -> tuple[DatasetUse, ...]:
    """`datasets=` of a trainable that trains on every class of `config.dataset`'s training split."""
    return (DatasetUse(config.dataset, fallback=config.allow_fallback),)


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


def folder_name(name: str) -> str:
    """The dataset's folder in a data root (and on a mirror): `MNIST`, `FashionMNIST`, `KMNIST`."""
    _check_name(name)
    return _FOLDERS[name]


def locate(name: str, split: str, data_root: str | os.PathLike[str] | None = None) -> Path:
    """The `raw` folder holding this split's images and labels, searched in `data_roots` order.

    Cheap on purpose (no hashing): the launcher verifies the archives once (`verify`).
    """
    _check_name(name)
    _check_split(split)
    roots = data_roots(data_root)
    for root in roots:
        raw = root / _FOLDERS[name] / "raw"
        if _split_files(raw, split):
            return raw
    raise DatasetNotFoundError(_not_found_message(name, split, roots))


def check_classes(name: str, classes: Sequence[int]) -> tuple[int, ...]:
    """`classes` as a tuple, or ValueError naming the bad index and the dataset's classes."""
    _check_name(name)
    return _check_classes(classes, _TITLES[name])


def verify(name: str, split: str, data_root: str | os.PathLike[str] | None = None) -> None:
    """MD5 of the split's archives where `locate` finds them (RuntimeError on a mismatch, DatasetNotFoundError
    when absent); cheap after the first time on a machine (`verified.json`)."""
    for path in _split_files(locate(name, split, data_root), split) or ():
        _verify(path, _FOLDERS[name])


def load_images(
    name: str,
    split: str = "train",
    *,
    classes: Sequence[int] | None = None,
    limit: int | None = None,
    data_root: str | os.PathLike[str] | None = None,
    allow_fallback: bool = False,
    seed: int = 0,
) -> ImageSet:
    """One split as float tensors, optionally reduced to some classes and a seeded random subset.

    The digits fallback exists so smoke tests and demos run on a machine without MNIST; it is
    opt-in because its 8x8 upsampled digits would make real results meaningless.
    """
    _check_name(name)
    _check_split(split)
    wanted = tuple(range(_CLASS_COUNT)) if classes is None else _check_classes(classes, _TITLES[name])
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit <= 0):
        raise ValueError(f"limit must be a positive integer, got {limit!r}")

    try:
        raw = locate(name, split, data_root)
    except DatasetNotFoundError:
        if allow_fallback and name == "mnist":
            images, labels = _digits(split)
            return _select(images, labels, wanted, limit, seed, _DIGITS_SOURCE.format(split=split))
        raise

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


def _check_classes(classes: Sequence[int], title: str) -> tuple[int, ...]:
    checked: list[int] = []
    last = _CLASS_COUNT - 1
    for value in classes:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= last:
            raise ValueError(f"classes must be integers 0..{last} (the classes of {title}), got {value!r}")
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
    fixes.append(f"launch on a machine with internet (the launcher downloads it), or fetch it on one with "
                 f"`python -m orchestrator.data fetch {name} --to DIR` and copy DIR here as a data root")
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
    key = _verified_key(path)
    if key in _VERIFIED:
        return
    if _read_verified_record().get(key[0]) == [key[1], key[2], expected]:
        _VERIFIED.add(key)
        return
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise RuntimeError(
            f"MD5 checksum mismatch for {path}: got {digest.hexdigest()}, expected {expected}. "
            f"The file is corrupt or truncated; replace it with a fresh copy (on a machine with internet, "
            f"python -m orchestrator.data fetch {_DATASET_OF_FOLDER[folder]} --to {path.parents[2]} does)."
        )
    _remember_verified(path, expected)


def _verified_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def verified_record() -> Path:
    """The file that remembers which archives passed their MD5 check on this machine."""
    return cache_dir() / "verified.json"


def _read_verified_record() -> dict[str, list[Any]]:
    try:
        record = json.loads(verified_record().read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _remember_verified(path: Path, md5: str) -> None:
    """Add one archive to the record. Written to a temporary file and renamed, so a reader never sees half
    a file; two processes writing at once may lose an entry, which only costs one more hash later. A
    read-only cache folder just means hashing again next time."""
    key = _verified_key(path)
    _VERIFIED.add(key)
    record = _read_verified_record()
    record[key[0]] = [key[1], key[2], md5]
    folder = verified_record().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile("w", dir=folder, prefix=".verified.", suffix=".part", delete=False)
    except OSError:
        return
    try:
        with handle:
            json.dump(record, handle, indent=1)
        os.replace(handle.name, verified_record())
    except OSError:
        Path(handle.name).unlink(missing_ok=True)


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


def fetch(name: str, into: str | os.PathLike[str] | None = None, *, splits: Sequence[str] = _SPLITS,
          say: Callable[[str], None] = print) -> Path:
    """Download the archives of dataset `name`'s `splits` into `into/<Folder>/raw` (default: the cache) and
    return that folder. Files already there with the right MD5 are kept; `say` gets one line per file.

    Mirrors: `$GENSEARCH_DATA_MIRROR/<Folder>/raw/<file>` when that is set (a data root's layout, e.g.
    an internal mirror behind a proxy), else torchvision's own mirror list for the dataset. Each file
    is streamed into a temporary file beside its final name, checked against its MD5 and only then
    renamed into place, so a truncated or corrupt download is never used and never left behind.
    Raises DownloadError (one line) when a file cannot be had from any mirror.
    """
    folder = folder_name(name)
    for split in splits:
        _check_split(split)
    prefixes = tuple(f"{_PREFIXES[split]}-" for split in splits)
    raw = (Path(into).expanduser() if into is not None else cache_dir()) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for (owner, filename), md5 in _MD5.items():
        if owner != folder or not filename.startswith(prefixes):
            continue
        target = raw / filename
        if target.is_file():
            try:
                _verify(target, folder)
                say(f"data: {folder}/raw/{filename}: already in {raw.parent.parent} (MD5 ok)")
                continue
            except RuntimeError:
                pass  # a bad copy: replaced below, atomically
        errors = []
        for url in _mirror_urls(folder, filename):
            started = time.monotonic()
            try:
                size = _download_file(url, target, md5)
            except (OSError, http.client.HTTPException, DownloadError) as error:  # URLError, timeouts: OSError
                reason = error if isinstance(error, (urllib.error.HTTPError, DownloadError)) else getattr(
                    error, "reason", error)
                errors.append(f"{url}: {' '.join(str(reason).split())}")
                continue
            amount = f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"
            say(f"data: {folder}/raw/{filename} <- {url}: {amount} in {time.monotonic() - started:.1f} s, MD5 ok")
            break
        else:
            for empty in (raw, raw.parent):  # leave no empty folder behind: the cache stays as it was
                if empty.is_dir() and not any(empty.iterdir()):
                    empty.rmdir()
            raise DownloadError(f"cannot download {folder}/raw/{filename}: {'; '.join(errors)}")
    return raw


def _mirror_urls(folder: str, filename: str) -> list[str]:
    if mirror := os.environ.get(MIRROR_ENV):
        return [f"{mirror.rstrip('/')}/{folder}/raw/{filename}"]
    import torchvision.datasets  # only here: its mirror lists are the ones torchvision itself downloads from

    return [f"{base}{filename}" for base in getattr(torchvision.datasets, folder).mirrors]


def _download_file(url: str, target: Path, md5: str) -> int:
    """Stream `url` into a temporary file beside `target`, check its length and MD5, rename it into place."""
    digest, size = hashlib.md5(usedforsecurity=False), 0
    handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".part", delete=False)
    try:
        with handle, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:  # noqa: S310
            promised = response.headers.get("Content-Length")
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                handle.write(chunk)
                size += len(chunk)
        if promised is not None and int(promised) != size:
            raise DownloadError(f"truncated: {size} of {promised} bytes arrived; nothing kept")
        if digest.hexdigest() != md5:
            raise DownloadError(f"MD5 checksum mismatch (got {digest.hexdigest()}, expected {md5}): the file is "
                                f"corrupt or truncated; nothing kept")
        os.chmod(handle.name, 0o644)  # a temporary file is private; a data root may be shared storage
        os.replace(handle.name, target)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    _remember_verified(target, md5)
    return size


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
