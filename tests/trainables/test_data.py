"""trainables.data against the real files in shared/data, plus isolated roots for the failure paths."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from trainables import data
from trainables import data_roots as data_roots_module
from tests.trainables.mirror_helpers import copy_dataset, flip_byte, leftovers, serve_mirror
from trainables.data import DATASETS, DatasetNotFoundError, ImageSet, data_roots, load_images, locate

SHARED = Path(data.__file__).resolve().parents[1].parent / "shared" / "data"
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Every root data_roots() can produce points into tmp_path, and none of them holds data."""
    paths = {name: tmp_path / name for name in ("empty", "env", "cache", "repo", "cwd/work")}
    for path in paths.values():
        path.mkdir(parents=True)
    monkeypatch.setenv("GENSEARCH_DATA", str(paths["env"]))
    monkeypatch.setenv("GENSEARCH_CACHE", str(paths["cache"]))
    monkeypatch.setattr(data_roots_module, "_REPO_ROOT", paths["repo"])
    monkeypatch.chdir(paths["cwd/work"])
    return paths


def expected_roots(paths: dict[str, Path]) -> list[Path]:
    return [
        paths["empty"].resolve(),
        paths["env"].resolve(),
        (paths["repo"].parent / "shared" / "data").resolve(),
        (paths["cwd/work"].parent / "shared" / "data").resolve(),
        (paths["cache"] / "data").resolve(),
    ]


def copy_split(root: Path, folder: str, prefix: str) -> Path:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        shutil.copyfile(SHARED / folder / "raw" / f"{prefix}-{kind}.gz", raw / f"{prefix}-{kind}.gz")
    return raw


@pytest.mark.slow  # several seconds (a subprocess or a small training run): not part of the quick loop
def test_mnist_train_matches_published_counts() -> None:
    train = load_images("mnist", "train")
    assert isinstance(train, ImageSet)
    assert len(train) == 60000
    assert train.images.shape == (60000, 1, 28, 28)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert train.images.min().item() == 0.0 and train.images.max().item() == 1.0
    assert torch.bincount(train.labels, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert train.classes == tuple(range(10))
    assert "MNIST train" in train.source and "MNIST/raw" in train.source


def test_repeated_loads_return_independent_tensors() -> None:
    first = load_images("mnist", "test")
    first.images.zero_()
    second = load_images("mnist", "test")
    assert second.images.max().item() == 1.0


def test_classes_are_filtered_and_relabelled_in_given_order() -> None:
    subset = load_images("mnist", "test", classes=(7, 1))
    assert subset.classes == (7, 1)
    assert sorted(subset.labels.unique().tolist()) == [0, 1]
    assert (subset.labels == 0).sum().item() == 1028  # sevens in MNIST t10k
    assert (subset.labels == 1).sum().item() == 1135  # ones in MNIST t10k
    assert len(subset) == 1028 + 1135


def test_fashion_mnist_and_kmnist_test_splits() -> None:
    fashion = load_images("fashion_mnist", "test")
    assert len(fashion) == 10000
    assert torch.bincount(fashion.labels).tolist() == [1000] * 10
    kmnist = load_images("kmnist", "test")
    assert len(kmnist) == 10000 and kmnist.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(kmnist.labels).tolist() == [1000] * 10
    with pytest.raises(DatasetNotFoundError, match="KMNIST train"):
        load_images("kmnist", "train")


def test_locate_returns_raw_folder() -> None:
    assert locate("fashion_mnist", "train") == (SHARED / "FashionMNIST" / "raw").resolve()


def test_limit_is_a_seeded_sorted_subset() -> None:
    first = load_images("mnist", "test", limit=100, seed=0)
    again = load_images("mnist", "test", limit=100, seed=0)
    other = load_images("mnist", "test", limit=100, seed=1)
    assert len(first) == 100
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.images, other.images)
    # Order preserved: the subset's images appear in the full split in the same order.
    full = load_images("mnist", "test").images.flatten(1)
    positions = [int(torch.nonzero((full == row).all(dim=1))[0]) for row in first.images.flatten(1)[:10]]
    assert positions == sorted(positions)
    assert len(load_images("mnist", "test", classes=(0, 1), limit=50_000)) == 980 + 1135


def test_data_roots_order_and_dedup(isolated: dict[str, Path]) -> None:
    assert data_roots(isolated["empty"]) == expected_roots(isolated)
    assert data_roots(isolated["env"]) == expected_roots(isolated)[1:]


def test_missing_dataset_names_every_root(isolated: dict[str, Path]) -> None:
    with pytest.raises(DatasetNotFoundError) as caught:
        load_images("mnist", "train", data_root=isolated["empty"])
    message = str(caught.value)
    assert "\n" not in message
    assert "MNIST train" in message
    for root in expected_roots(isolated):
        assert str(root) in message
    assert "--data-root" in message and "GENSEARCH_DATA" in message and "allow_fallback" in message
    assert "python -m orchestrator.data fetch mnist --to DIR" in message
    assert isinstance(caught.value, FileNotFoundError)
    assert str(pickle.loads(pickle.dumps(caught.value))) == message


def test_digits_fallback_only_for_mnist(isolated: dict[str, Path]) -> None:
    train = load_images("mnist", "train", data_root=isolated["empty"], allow_fallback=True)
    assert len(train) == 1500 and train.images.shape == (1500, 1, 28, 28)
    assert train.images.dtype == torch.float32
    assert 0.0 <= train.images.min().item() and train.images.max().item() <= 1.0
    assert train.images.max().item() > 0.9
    assert "digits" in train.source
    test = load_images("mnist", "test", data_root=isolated["empty"], allow_fallback=True)
    assert len(test) == 1797 - 1500
    pair = load_images("mnist", "test", data_root=isolated["empty"], allow_fallback=True, classes=(7, 1), limit=20)
    assert len(pair) == 20 and set(pair.labels.tolist()) <= {0, 1} and pair.classes == (7, 1)
    with pytest.raises(DatasetNotFoundError):
        load_images("fashion_mnist", "train", data_root=isolated["empty"], allow_fallback=True)


def test_corrupted_archive_fails_checksum(isolated: dict[str, Path]) -> None:
    raw = copy_split(isolated["empty"], "MNIST", "t10k")
    flip_byte(raw / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(RuntimeError, match="(?i)md5|checksum"):
        load_images("mnist", "test", data_root=isolated["empty"])


def test_checksum_cache_notices_a_replaced_file(isolated: dict[str, Path]) -> None:
    raw = copy_split(isolated["empty"], "MNIST", "t10k")
    assert len(load_images("mnist", "test", data_root=isolated["empty"])) == 10000
    images = raw / "t10k-images-idx3-ubyte.gz"
    flip_byte(images, mtime_ns=images.stat().st_mtime_ns + 1_000_000_000)
    with pytest.raises(RuntimeError, match="MD5"):
        load_images("mnist", "test", data_root=isolated["empty"])


def test_verified_archives_are_not_hashed_again(isolated: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    copy_split(isolated["empty"], "MNIST", "t10k")
    hashed: list[int] = []
    real_md5 = data.hashlib.md5

    def counting_md5(*args: object, **kwargs: object) -> object:
        hashed.append(1)
        return real_md5(*args, **kwargs)

    monkeypatch.setattr(data.hashlib, "md5", counting_md5)
    load_images("mnist", "test", data_root=isolated["empty"])
    assert len(hashed) == 2  # images and labels
    load_images("mnist", "test", data_root=isolated["empty"], classes=(3, 4))
    assert len(hashed) == 2


def test_extracted_files_are_read_too(isolated: dict[str, Path]) -> None:
    raw = isolated["empty"] / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        with gzip.open(SHARED / "MNIST" / "raw" / f"t10k-{kind}.gz") as packed:
            (raw / f"t10k-{kind}").write_bytes(packed.read())
    extracted = load_images("mnist", "test", data_root=isolated["empty"])
    original = load_images("mnist", "test", data_root=SHARED)
    assert torch.equal(extracted.images, original.images) and torch.equal(extracted.labels, original.labels)


def test_fetch_fills_the_cache_from_a_mirror_once(isolated: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    with serve_mirror(SHARED) as mirror:
        monkeypatch.setenv(data.MIRROR_ENV, mirror.url)
        with pytest.raises(DatasetNotFoundError):
            locate("mnist", "test")
        raw = data.fetch("mnist", say=lines.append)
        again: list[str] = []
        data.fetch("mnist", say=again.append)
    assert raw == isolated["cache"] / "data" / "MNIST" / "raw"
    files = sorted(name for folder, name in data._MD5 if folder == "MNIST")
    assert sorted(mirror.requests) == sorted(f"/MNIST/raw/{name}" for name in files)  # each file once
    assert len(lines) == 4 and all(line.endswith("MD5 ok") and mirror.url in line for line in lines)
    assert all("already in" in line for line in again) and len(again) == 4
    assert leftovers(isolated["cache"]) == []
    assert locate("mnist", "test") == raw.resolve()
    assert len(load_images("mnist", "test")) == 10000
    assert {Path(path).name for path in json.loads(data.verified_record().read_text())} == set(files)


@pytest.mark.parametrize("damage", ["corrupt", "cut off"])
def test_a_bad_download_is_refused_and_nothing_is_left(damage: str, isolated: dict[str, Path],
                                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    raw = copy_dataset(tmp_path / "mirror")
    with serve_mirror(tmp_path / "mirror") as mirror:
        if damage == "corrupt":
            flip_byte(raw / "t10k-images-idx3-ubyte.gz")
        else:
            mirror.cut.add("t10k-images-idx3-ubyte.gz")
        monkeypatch.setenv(data.MIRROR_ENV, mirror.url)
        with pytest.raises(data.DownloadError) as caught:
            data.fetch("mnist", say=lambda line: None)
    message = str(caught.value)
    assert "\n" not in message and "t10k-images-idx3-ubyte.gz" in message and mirror.url in message
    assert ("MD5 checksum mismatch" if damage == "corrupt" else "truncated") in message
    assert leftovers(isolated["cache"]) == []  # the two train files before it are complete and verified
    assert not (isolated["cache"] / "data" / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").exists()


def test_fetch_takes_only_the_splits_asked_for(isolated: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    with serve_mirror(SHARED) as mirror:  # the shared copy has the KMNIST test split only
        monkeypatch.setenv(data.MIRROR_ENV, mirror.url)
        data.fetch("kmnist", splits=("test",), say=lambda line: None)
    assert sorted(mirror.requests) == ["/KMNIST/raw/t10k-images-idx3-ubyte.gz", "/KMNIST/raw/t10k-labels-idx1-ubyte.gz"]
    assert len(load_images("kmnist", "test")) == 10000


def test_an_unreachable_mirror_is_one_line(isolated: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    with serve_mirror(isolated["empty"]) as mirror:
        closed = mirror.url  # the server stops at the end of the block: its port then refuses connections
    monkeypatch.setenv(data.MIRROR_ENV, closed)
    with pytest.raises(data.DownloadError, match="refused") as caught:
        data.fetch("kmnist", say=lambda line: None)
    assert "\n" not in str(caught.value)
    assert not (isolated["cache"] / "data" / "KMNIST").exists()


def test_verified_archives_are_remembered_across_processes(isolated: dict[str, Path],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    copy_split(isolated["empty"], "MNIST", "t10k")
    load_images("mnist", "test", data_root=isolated["empty"])
    monkeypatch.setattr(data, "_VERIFIED", set())  # what a new process starts with
    monkeypatch.setattr(data.hashlib, "md5", None)  # hashing again would fail
    assert len(load_images("mnist", "test", data_root=isolated["empty"])) == 10000


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"name": "cifar10"}, "mnist, fashion_mnist, kmnist"),
        ({"split": "val"}, "'val'; expected one of: train, test"),
        ({"classes": (7, 7)}, "7 twice"),
        ({"classes": (7,)}, "at least 2"),
        ({"classes": (7, 10)}, r"0..9 \(the classes of MNIST\), got 10"),
        ({"classes": (7, "1")}, "'1'"),
        ({"limit": 0}, "limit"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], fragment: str) -> None:
    args = {"name": "mnist", "split": "test", **kwargs}
    with pytest.raises(ValueError, match=fragment):
        load_images(**args)  # type: ignore[arg-type]


def test_locate_rejects_unknown_names() -> None:
    with pytest.raises(ValueError) as caught:
        locate("cifar10", "train")
    assert all(name in str(caught.value) for name in DATASETS)
