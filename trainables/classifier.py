"""A small CNN image classifier: GASTeN's frozen judge, and gensearch's first real trainable.

Read top to bottom: the config, the two architectures, the training step, the trainable entry point.
`nf` is the width multiplier of the GASTeN paper (1, 2 or 4). With two `classes` (default 7 vs 1)
it is the binary classifier whose confusion GASTeN's generator is trained to provoke; with all ten
it is a general MNIST classifier. Validation images are carved from the training split, so a
search never looks at the test split.

Two architectures (`arch`): `cnn`, a BatchNorm/ReLU CNN with an MLP head (the default, and the
network behind the fid_mnist features), and `paper`, the GASTeN reference classifier (two linear
convolutions with max-pooling and one linear output; 129 / 293 / 729 parameters for nf 1 / 2 / 4 on
two classes). The reference is far less confident on generated images, which is what leaves the
confusion loss a gradient to follow. Both give logits per class, so every user calls them alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from trainables.checkpoint import Checkpoint
from trainables.data import ImageSet, load_images, training_data
from trainables.definitions import EpochCost, Metric, TrainableDef
from trainables.device import resolve_device
from trainables.fit import fit
from trainables.reporter import Reporter
from trainables.settings import DataSettings, RuntimeSettings


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig(DataSettings, RuntimeSettings):
    classes: tuple[int, ...] = (7, 1)  # DataSettings.classes with its own default
    val_size: int = 1000
    arch: Literal["cnn", "paper"] = "cnn"  # see the module docstring; GASTeN's studies use "paper"
    nf: int = 1
    lr: float = 1e-3
    batch_size: int = 64
    epochs: int = 5

    def __post_init__(self) -> None:
        if self.nf < 1:
            raise ValueError(f"nf must be >= 1, got {self.nf}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 1 or self.epochs < 1 or self.val_size < 1 or self.train_size < 0:
            raise ValueError("batch_size, epochs and val_size must be >= 1 and train_size >= 0")


class Classifier(nn.Module):
    """Two conv blocks and an MLP head; `embed` exposes the penultimate layer as features."""

    def __init__(self, nf: int = 1, num_classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8 * nf, 3, padding=1), nn.BatchNorm2d(8 * nf), nn.ReLU(), nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(8 * nf, 16 * nf, 3, padding=1), nn.BatchNorm2d(16 * nf), nn.ReLU(), nn.MaxPool2d(2),  # 7x7
            nn.Flatten(),
            nn.Linear(16 * nf * 7 * 7, 32 * nf), nn.ReLU(),
        )
        self.head = nn.Linear(32 * nf, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class PaperClassifier(nn.Module):
    """GASTeN's reference classifier: conv(1->nf) -> max-pool -> conv(nf->2nf) -> max-pool -> linear.

    No ReLU and no BatchNorm, as in the reference (Cunha et al.); images are rescaled to [-1, 1] first,
    the range the reference trained on. With two classes the reference has one output z and a
    sigmoid; here that z is returned as the logits [0, z], so softmax(...)[:, 1] == sigmoid(z) and
    cross-entropy == the reference's binary cross-entropy, with no extra parameter. `embed` is the
    flattened 7x7 feature maps the linear layer reads (2nf * 49 values).
    """

    def __init__(self, nf: int = 1, num_classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, nf, 3, padding="same"), nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(nf, 2 * nf, 3, padding="same"), nn.MaxPool2d(2),  # 7x7
            nn.Flatten(),
        )
        self.binary = num_classes == 2
        self.head = nn.Linear(2 * nf * 7 * 7, 1 if self.binary else num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.embed(x))
        return torch.cat([torch.zeros_like(logits), logits], dim=1) if self.binary else logits


ARCHITECTURES: dict[str, type[nn.Module]] = {"cnn": Classifier, "paper": PaperClassifier}


def make_classifier(arch: str, nf: int, num_classes: int) -> nn.Module:
    """A fresh classifier of architecture `arch` ("cnn" or "paper")."""
    return ARCHITECTURES[arch](nf, num_classes)


def split_train_val(data: ImageSet, config: ClassifierConfig) -> tuple[ImageSet, ImageSet]:
    """A seeded split of the training images: `val_size` for validation, the rest for training."""
    if config.val_size >= len(data):
        raise ValueError(f"val_size {config.val_size} leaves no training images (only {len(data)} available)")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(config.seed))
    val_idx, train_idx = order[: config.val_size], order[config.val_size:]
    if config.train_size:
        train_idx = train_idx[: config.train_size]

    def subset(idx: torch.Tensor) -> ImageSet:
        return ImageSet(data.images[idx], data.labels[idx], data.classes, data.source)

    return subset(train_idx), subset(val_idx)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageSet, device: torch.device, batch_size: int = 1024) -> dict[str, float]:
    """Mean cross-entropy and accuracy of `model` on `data`."""
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        x = data.images[start:start + batch_size].to(device)
        y = data.labels[start:start + batch_size].to(device)
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return {"loss": loss / len(data), "accuracy": correct / len(data)}


def load_training_data(config: ClassifierConfig) -> ImageSet:
    return load_images(config.dataset, "train", classes=config.classes or None,
                       allow_fallback=config.allow_fallback, seed=config.seed)


def held_out_epoch_images(config) -> int:
    """Training images one epoch reads where `split_train_val` carves the validation images out first (any
    config with dataset, classes, allow_fallback, seed, val_size and train_size)."""
    left = len(load_training_data(config)) - config.val_size
    return min(config.train_size, left) if config.train_size else left


HELD_OUT_EPOCH_COST = EpochCost(size_setting="train_size", images=held_out_epoch_images)


def train(config: ClassifierConfig, reporter: Reporter) -> dict[str, float]:
    """The trainable: reports train_loss, val_loss and val_accuracy every epoch."""
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    train_set, val_set = split_train_val(load_training_data(config), config)
    model = make_classifier(config.arch, config.nf, len(train_set.classes)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    def train_epoch(epoch: int) -> dict[str, float]:
        # The order is a function of (seed, epoch), so a run resumed at any epoch sees the same batches.
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            idx = order[start:start + config.batch_size]
            x, y = train_set.images[idx].to(device), train_set.labels[idx].to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        return {"train_loss": total / len(order)}

    def validate(epoch: int) -> dict[str, float]:
        scores = evaluate(model, val_set, device)
        return {"val_loss": scores["loss"], "val_accuracy": scores["accuracy"]}

    return fit(trainable="classifier", config=config, epochs=config.epochs, modules={"model": model},
               optimizers={"model": optimizer}, train_epoch=train_epoch, evaluate=validate, reporter=reporter)


def build_model(state: Checkpoint) -> nn.Module:
    """Rebuild the trained classifier from a checkpoint (used by the model registry).

    Checkpoints written before `arch` existed hold the CNN."""
    config = state.config
    num_classes = len(config["classes"]) or 10
    model = make_classifier(config.get("arch", "cnn"), config["nf"], num_classes)
    model.load_state_dict(state.modules["model"])
    return model.eval()


CLASSIFIER = TrainableDef(
    name="classifier",
    config_cls=ClassifierConfig,
    run=train,
    metrics=(
        Metric("val_accuracy", higher_is_better=True, description="accuracy on the held-out validation images"),
        Metric("val_loss", higher_is_better=False, description="cross-entropy on the validation images"),
        Metric("train_loss", higher_is_better=False, description="mean training cross-entropy of the epoch"),
    ),
    description="small CNN classifier over MNIST-like images (class subsets such as 7 vs 1); arch cnn or paper",
    build_model=build_model,
    datasets=training_data,
    # 8 steps at lr 1e-2: sure enough of its classes that the contract's clustering of its features finds clusters.
    tiny_config={"train_size": 128, "val_size": 32, "epochs": 1, "batch_size": 16, "lr": 1e-2},
    epoch_cost=HELD_OUT_EPOCH_COST,
)
