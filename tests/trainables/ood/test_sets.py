"""Named OOD sets: the MNIST-like test splits from shared/data, seeded noise, folders, torchvision."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainables import data
from trainables.ood.sets import NOISE_SETS, ood_set

SHARED = Path(data.__file__).resolve().parents[1].parent / "shared" / "data"


def check_images(images: torch.Tensor, count: int) -> None:
    assert images.shape == (count, 1, 28, 28)
    assert images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "kmnist"])
def test_dataset_sets_are_seeded_subsets_of_the_test_split(name):
    first = ood_set(name, count=300, seed=3, data_root=SHARED)
    check_images(first, 300)
    assert first.std() > 0.2  # real images: mostly black background, bright strokes
    assert torch.equal(first, ood_set(name, count=300, seed=3, data_root=SHARED))
    assert not torch.equal(first, ood_set(name, count=300, seed=4, data_root=SHARED))


def test_dataset_sets_come_from_the_test_split():
    assert torch.equal(ood_set("fashion_mnist", count=50, seed=2, data_root=SHARED),
                       data.load_images("fashion_mnist", "test", limit=50, seed=2, data_root=SHARED).images)


@pytest.mark.parametrize(("name", "mean"), [("uniform_noise", 0.5), ("gaussian_noise", 0.5)])
def test_noise_sets_are_seeded_and_in_range(name, mean):
    images = ood_set(name, count=1000, seed=0)
    check_images(images, 1000)
    assert float(images.mean()) == pytest.approx(mean, abs=0.01)
    assert torch.equal(images, ood_set(name, count=1000, seed=0))
    assert not torch.equal(images, ood_set(name, count=1000, seed=1))


def test_noise_sets_have_their_own_spread():
    uniform, gaussian = (ood_set(name, count=500) for name in NOISE_SETS)
    assert float(uniform.std()) == pytest.approx(1 / 12 ** 0.5, abs=0.01)  # U[0, 1): std 0.289
    # N(0.5, 0.25^2) clipped at 2 std on each side: std a little under 0.25, 4.6% of pixels at 0 or 1.
    assert 0.22 < float(gaussian.std()) < 0.25
    assert float(((gaussian == 0) | (gaussian == 1)).float().mean()) == pytest.approx(0.0455, abs=0.005)


def test_noise_does_not_touch_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ood_set("uniform_noise", count=10, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_folder_of_images_is_loaded_as_grayscale_28x28(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    Image.new("L", (28, 28), color=255).save(tmp_path / "white.png")
    Image.new("RGB", (64, 40), color=(0, 0, 0)).save(tmp_path / "black.PNG")
    Image.new("RGB", (10, 10), color=(255, 0, 0)).save(tmp_path / "sub" / "red.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    images = ood_set(f"folder:{tmp_path}")
    check_images(images, 3)
    # Sorted by path: black.PNG, sub/red.jpg, white.png; pure red is 76/255 in PIL's "L" conversion.
    means = [float(image.mean()) for image in images]
    assert means[0] == 0.0 and means[2] == 1.0
    assert means[1] == pytest.approx(76 / 255, abs=2 / 255)
    two = ood_set(f"folder:{tmp_path}", count=2, seed=0)
    check_images(two, 2)
    assert torch.equal(two, ood_set(f"folder:{tmp_path}", count=2, seed=0))


def test_missing_or_empty_folder_is_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ood_set(f"folder:{tmp_path / 'nowhere'}")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*holds no"):
        ood_set(f"folder:{tmp_path}")


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="unknown OOD set 'cifar'.*kmnist.*uniform_noise.*folder:.*torchvision:"):
        ood_set("cifar")


@pytest.mark.parametrize("count", [0, -3, 2.5, True])
def test_count_must_be_a_positive_integer(count):
    with pytest.raises(ValueError, match="count must be a positive integer"):
        ood_set("uniform_noise", count=count)


def test_unknown_torchvision_class():
    with pytest.raises(ValueError, match="torchvision.datasets has no dataset class 'NoSuchThing'"):
        ood_set("torchvision:NoSuchThing")


def test_missing_torchvision_dataset_never_downloads(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=f"torchvision.datasets.CIFAR10 test split not found under {tmp_path}"):
        ood_set(f"torchvision:CIFAR10:{tmp_path}")
    assert list(tmp_path.iterdir()) == []  # nothing was fetched or created


def test_torchvision_class_needing_more_arguments_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="EMNIST cannot be built as EMNIST.*folder:"):
        ood_set(f"torchvision:EMNIST:{tmp_path}")


def test_torchvision_mnist_matches_the_project_reader(tmp_path: Path):
    # torchvision wants the four extracted files to exist but reads only the test pair here,
    # so the (large) training files are empty placeholders.
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(SHARED / "MNIST" / "raw" / f"{name}.gz", "rb") as source, (raw / name).open("wb") as target:
            shutil.copyfileobj(source, target)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (raw / name).touch()
    images = ood_set(f"torchvision:MNIST:{tmp_path}", count=20, seed=7)
    check_images(images, 20)
    expected = ood_set("mnist", count=20, seed=7, data_root=SHARED)  # same subset rule, same pixels
    np.testing.assert_array_equal(images.numpy(), expected.numpy())
