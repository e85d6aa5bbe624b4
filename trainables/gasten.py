"""GASTeN step 2: fine-tune a DCGAN generator so a frozen binary classifier cannot decide.

GASTeN (Cunha et al., "Generative Adversarial Stress Test Networks", IDA 2023) starts from a
trained DCGAN (`trainables/dcgan.py`) and keeps training it with

    generator loss = non-saturating GAN loss + alpha * mean |0.5 - C(G(z))|

where C(x) is the frozen classifier's probability of the POSITIVE class: label index 1, i.e. the
second entry of the classifier checkpoint's `classes` (for the default `classes: [7, 1]`, "is a 1").
The discriminator keeps training as usual, which keeps the images realistic. Real images (for D
and for FID) are the classifier's own dataset and classes, so the GAN is stressed on its task.
Metrics per epoch: fid_mnist (realism, lower is better) and acd (mean |0.5 - p| on a fixed noise
set shared by every trial, lower is better), plus the loss terms.

Both inputs are checkpoint folders given by reference in a study
(`inputs: {generator: gan.best, classifier: classifier.best}`), so they are required settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainables import classifier as classifier_module
from trainables.catalog import Metric, TrainableDef
from trainables.checkpoint import load_checkpoint
from trainables.data import load_images, locate
from trainables.dcgan import (Discriminator, FidScorer, Generator, build_model, generate, load_fid_reference,
                              train_gan_epoch)
from trainables.device import resolve_device
from trainables.fit import fit
from trainables.metrics.acd import average_confusion_distance, confusion_distance, fixed_noise
from trainables.reporter import CheckpointState, Reporter

ACD_NOISE_SEED = 0  # the latents behind every acd value: the same in every trial of every study


@dataclass(frozen=True)
class GastenConfig:
    generator: str  # a dcgan checkpoint folder: `inputs: {generator: gan.best}`
    classifier: str  # a binary classifier checkpoint folder: `inputs: {classifier: classifier.best}`
    alpha: float = 25.0  # weight of the confusion term; the paper explores 5..30
    train_size: int = 0  # real training images per epoch; 0 keeps every image of the classifier's classes
    lr: float = 2e-4
    beta1: float = 0.5
    batch_size: int = 64
    epochs: int = 40
    fid_images: int = 1000
    acd_images: int = 2048
    seed: int = 0
    device: str = "auto"
    allow_fallback: bool = False  # scikit-learn digits when MNIST is nowhere to be found

    def __post_init__(self) -> None:
        for name in ("generator", "classifier"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty: give a {'dcgan' if name == 'generator' else 'classifier'} "
                                 f"checkpoint folder, normally by reference (inputs: {{{name}: STAGE.best}})")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.beta1 < 1:
            raise ValueError(f"beta1 must be in [0, 1), got {self.beta1}")
        if min(self.batch_size, self.epochs, self.acd_images) < 1 or self.train_size < 0:
            raise ValueError("batch_size, epochs and acd_images must be >= 1 and train_size >= 0")
        if self.fid_images < 2:
            raise ValueError(f"fid_images must be >= 2, got {self.fid_images}")


def positive_probability(classifier: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """C(x): softmax probability of label index 1 (the second of the classifier's `classes`)."""
    return torch.softmax(classifier(images), dim=1)[:, 1]


def load_frozen_classifier(folder: str, device: torch.device) -> tuple[nn.Module, CheckpointState]:
    """The binary classifier from a checkpoint folder, in eval mode with gradients off."""
    state = load_checkpoint(folder)
    if state.get("trainable") != "classifier":
        raise ValueError(f"classifier: {folder} is a {state.get('trainable')!r} checkpoint, not a classifier one")
    if len(state["config"]["classes"]) != 2:
        raise ValueError(f"classifier: {folder} separates classes {tuple(state['config']['classes']) or 'all ten'}; "
                         "GASTeN needs a binary classifier (two classes)")
    model = classifier_module.build_model(state).to(device).eval()
    model.requires_grad_(False)
    return model, state


def load_gan(folder: str, device: torch.device) -> tuple[Generator, Discriminator]:
    """Generator and discriminator of a dcgan checkpoint folder, sized by its config."""
    state = load_checkpoint(folder)
    if state.get("trainable") != "dcgan":
        raise ValueError(f"generator: {folder} is a {state.get('trainable')!r} checkpoint, not a dcgan one")
    config = state["config"]
    generator = Generator(config["z_dim"], config["ngf"])
    discriminator = Discriminator(config["ndf"])
    generator.load_state_dict(state["modules"]["generator"])
    discriminator.load_state_dict(state["modules"]["discriminator"])
    return generator.to(device), discriminator.to(device)


@torch.no_grad()
def measure_acd(generator: Generator, classifier: nn.Module, noise: torch.Tensor, device: torch.device) -> float:
    """ACD of `generator` (in its current mode) on the latents `noise`."""
    images = generate(generator, noise, device)
    probabilities = torch.cat([positive_probability(classifier, images[start:start + 512].to(device)).cpu()
                               for start in range(0, len(images), 512)])
    return average_confusion_distance(probabilities)


def train(config: GastenConfig, reporter: Reporter) -> dict[str, float]:
    """The trainable: reports fid_mnist, acd, g_loss, d_loss and confusion_loss every epoch."""
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    generator, discriminator = load_gan(config.generator, device)
    classifier, classifier_state = load_frozen_classifier(config.classifier, device)
    dataset, classes = classifier_state["config"]["dataset"], tuple(classifier_state["config"]["classes"])
    data = load_images(dataset, "train", classes=classes, limit=config.train_size or None,
                       allow_fallback=config.allow_fallback, seed=config.seed)
    fid = FidScorer(load_fid_reference(dataset, classes, config.fid_images, config.allow_fallback),
                    config.fid_images, generator.z_dim, device, config.allow_fallback)
    acd_noise = fixed_noise(config.acd_images, generator.z_dim, ACD_NOISE_SEED)
    betas = (config.beta1, 0.999)
    g_optimizer = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=betas)
    d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=betas)

    def confusion(fake: torch.Tensor) -> torch.Tensor:
        return confusion_distance(positive_probability(classifier, fake))

    def train_epoch(epoch: int) -> dict[str, float]:
        metrics = train_gan_epoch(generator=generator, discriminator=discriminator, g_optimizer=g_optimizer,
                                  d_optimizer=d_optimizer, images=data.images, batch_size=config.batch_size,
                                  order_seed=config.seed * 100_003 + epoch, device=device,
                                  extra_loss=confusion, extra_weight=config.alpha)
        return {"g_loss": metrics["g_loss"], "d_loss": metrics["d_loss"], "confusion_loss": metrics["extra_loss"]}

    def evaluate(epoch: int) -> dict[str, float]:
        return {"fid_mnist": fid(generator), "acd": measure_acd(generator, classifier, acd_noise, device)}

    return fit(trainable="gasten", config=config, epochs=config.epochs,
               modules={"generator": generator, "discriminator": discriminator},
               optimizers={"generator": g_optimizer, "discriminator": d_optimizer},
               train_epoch=train_epoch, evaluate=evaluate, reporter=reporter)


def preflight(config: GastenConfig) -> None:
    """Fail before any trial starts when MNIST (for the fid_mnist feature network) is missing.

    The checkpoint folders themselves come from earlier stages and do not exist yet at launch.
    """
    if not config.allow_fallback:
        locate("mnist", "train")


GASTEN = TrainableDef(
    name="gasten",
    config_cls=GastenConfig,
    run=train,
    metrics=(
        Metric("fid_mnist", higher_is_better=False,
               description="Fréchet distance to the classifier's real test images, on MNIST-classifier features"),
        Metric("acd", higher_is_better=False,
               description="mean |0.5 - C(G(z))| over 2048 fixed latents: 0 = on the decision boundary"),
        Metric("confusion_loss", higher_is_better=False, description="mean |0.5 - C(G(z))| over the epoch's batches"),
        Metric("g_loss", higher_is_better=False, description="mean non-saturating generator loss (GAN part)"),
        Metric("d_loss", higher_is_better=False, description="mean discriminator loss of the epoch"),
    ),
    description="GASTeN: fine-tune a DCGAN generator towards a frozen binary classifier's decision boundary",
    build_model=build_model,
    preflight=preflight,
    # Empty on purpose: `generator` and `classifier` are required checkpoint folders, so the contract
    # test skips gasten (it has required fields) and tests/trainables/test_gasten.py builds the inputs.
    tiny_config={},
)
