"""A DCGAN for 28x28 grayscale images: GASTeN's step 1, and the generator GASTeN fine-tunes.

Read top to bottom: the config, the two networks, the losses, one training epoch (shared with
`trainables/gasten.py`, which only adds a term to the generator loss), FID, the trainable.
Images are in [0, 1] like everything `trainables/data.py` returns: the generator ends in a
sigmoid and the discriminator rescales its input to [-1, 1] itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainables.checkpoint import Checkpoint
from trainables.data import DatasetUse, ImageSet, load_images
from trainables.definitions import EpochCost, Metric, TrainableDef
from trainables.device import resolve_device
from trainables.feature_net import embed_images, feature_net
from trainables.fit import fit
from trainables.metrics.acd import fixed_noise
from trainables.metrics.fid import FrechetDistance
from trainables.metrics.inception_fid import InceptionFid, find_inception_weights
from trainables.reporter import Reporter
from trainables.sample_grid import sample_grid_png
from trainables.settings import DataSettings, RuntimeSettings

FID_NOISE_SEED = 1  # the latents behind every per-epoch FID: the same in every trial
FID_INCEPTION = Metric("fid_inception", higher_is_better=False, optional=True,
                       description="standard Inception FID (torchmetrics); reported only where the Inception "
                                   "weights file is on the machine")
GRID_IMAGES = 64  # samples.png: the first latents of the FID noise


@dataclass(frozen=True, kw_only=True)
class DCGANConfig(DataSettings, RuntimeSettings):
    classes: tuple[int, ...] = (7, 1)  # DataSettings.classes with its own default
    z_dim: int = 64
    ngf: int = 32
    ndf: int = 32
    lr: float = 2e-4
    beta1: float = 0.5
    batch_size: int = 64
    epochs: int = 10
    fid_images: int = 1000  # generated and real test images compared by the per-epoch fid_mnist
    inception_weights: str = ""  # torch-fidelity's Inception file; "" searches $GENSEARCH_INCEPTION_WEIGHTS, caches

    def __post_init__(self) -> None:
        if min(self.z_dim, self.ngf, self.ndf, self.batch_size, self.epochs) < 1:
            raise ValueError("z_dim, ngf, ndf, batch_size and epochs must be >= 1")
        if self.train_size < 0:
            raise ValueError(f"train_size must be >= 0, got {self.train_size}")
        check_gan_training(self.lr, self.beta1, self.fid_images)


def check_gan_training(lr: float, beta1: float, fid_images: int) -> None:
    """The Adam and FID settings DCGAN and GASTeN share, checked the same way in both configs."""
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not 0 <= beta1 < 1:
        raise ValueError(f"beta1 must be in [0, 1), got {beta1}")
    if fid_images < 2:
        raise ValueError(f"fid_images must be >= 2, got {fid_images}")


class Generator(nn.Module):
    """z (N, z_dim) -> 7x7 feature maps -> 14x14 -> (N, 1, 28, 28) images in [0, 1]."""

    def __init__(self, z_dim: int = 64, ngf: int = 32) -> None:
        super().__init__()
        self.z_dim, self.ngf = z_dim, ngf
        self.project = nn.Sequential(
            nn.Linear(z_dim, 4 * ngf * 7 * 7, bias=False), nn.BatchNorm1d(4 * ngf * 7 * 7), nn.ReLU())
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(4 * ngf, 2 * ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * ngf), nn.ReLU(),  # 14x14
            nn.ConvTranspose2d(2 * ngf, 1, 4, 2, 1), nn.Sigmoid(),  # 28x28
        )
        init_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.project(z).view(-1, 4 * self.ngf, 7, 7))


class Discriminator(nn.Module):
    """(N, 1, 28, 28) images in [0, 1] -> (N,) logits of "real"."""

    def __init__(self, ndf: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, ndf, 4, 2, 1), nn.LeakyReLU(0.2),  # 14x14
            nn.Conv2d(ndf, 2 * ndf, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * ndf), nn.LeakyReLU(0.2),  # 7x7
            nn.Flatten(), nn.Linear(2 * ndf * 7 * 7, 1),
        )
        init_weights(self)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 2 * ndf * 49) penultimate activations: the flattened 7x7 maps the final Linear reads."""
        return self.net[:-1](x * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1).squeeze(1)


def init_weights(module: nn.Module) -> None:
    """DCGAN's initialisation: N(0, 0.02) weights, BatchNorm scales N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def generator_from_checkpoint(state: Checkpoint) -> Generator:
    """The generator of a dcgan or gasten checkpoint, loaded and in eval mode.

    A dcgan checkpoint's config gives its size (z_dim, ngf). A gasten config names only the dcgan folder it
    started from, which may have moved or gone since, so a gasten generator's size is read off its weights."""
    weights = state.modules["generator"]
    if {"z_dim", "ngf"} <= state.config.keys():
        generator = Generator(state.config["z_dim"], state.config["ngf"])
    else:
        rows, z_dim = weights["project.0.weight"].shape  # Linear(z_dim, 4 * ngf * 49)
        generator = Generator(z_dim, rows // (4 * 7 * 7))
    generator.load_state_dict(weights)
    return generator.eval()


def discriminator_from_checkpoint(state: Checkpoint) -> Discriminator:
    """The discriminator of a dcgan or gasten checkpoint, loaded and in eval mode; its width (ndf) as
    `generator_from_checkpoint` finds the generator's size."""
    weights = state.modules["discriminator"]
    ndf = state.config["ndf"] if "ndf" in state.config else weights["net.0.weight"].shape[0]  # Conv2d(1, ndf, ...)
    discriminator = Discriminator(int(ndf))
    discriminator.load_state_dict(weights)
    return discriminator.eval()


# The non-saturating GAN losses (Goodfellow et al., 2014), on logits.
def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def train_gan_epoch(
    *,
    generator: Generator,
    discriminator: Discriminator,
    g_optimizer: torch.optim.Optimizer,
    d_optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    batch_size: int,
    order_seed: int,
    device: torch.device,
    extra_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    extra_weight: float = 0.0,
) -> dict[str, float]:
    """One pass over `images`: a discriminator step then a generator step per batch.

    The generator minimises `generator_loss + extra_weight * extra_loss(fake images)`; GASTeN
    passes its confusion term here. Latents are drawn on the CPU from the global generator (whose
    state `fit` checkpoints) and the batch order is a function of `order_seed`, so a resumed run
    repeats an uninterrupted one. Returns mean d_loss, g_loss (GAN part) and, when given,
    extra_loss (unweighted). The sums stay on the device until the epoch ends: a `.item()` per
    batch would make the CPU wait for a GPU three times a batch.
    """
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(order_seed))
    names = ("d_loss", "g_loss", *(("extra_loss",) if extra_loss else ()))
    totals = {name: torch.zeros((), device=device) for name in names}
    for start in range(0, len(order), batch_size):
        real = images[order[start:start + batch_size]].to(device)
        z = torch.randn(len(real), generator.z_dim).to(device)
        fake = generator(z)

        d_loss = discriminator_loss(discriminator(real), discriminator(fake.detach()))
        d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        d_optimizer.step()

        g_loss = generator_loss(discriminator(fake))
        total = g_loss
        if extra_loss is not None:
            extra = extra_loss(fake)
            total = g_loss + extra_weight * extra
            totals["extra_loss"] += extra.detach() * len(real)
        g_optimizer.zero_grad(set_to_none=True)
        total.backward()
        g_optimizer.step()
        totals["d_loss"] += d_loss.detach() * len(real)
        totals["g_loss"] += g_loss.detach() * len(real)
    return {name: value.item() / len(order) for name, value in totals.items()}


@torch.no_grad()
def generate(generator: Generator, noise: torch.Tensor, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """Images (CPU) for the given latents, in the generator's current mode."""
    return torch.cat([generator(noise[start:start + batch_size].to(device)).cpu()
                      for start in range(0, len(noise), batch_size)])


class FidScorer:
    """fid_mnist of a generator against a fixed set of real images, on fixed latents.

    The real statistics are computed once; each call embeds the generator's images for the
    same `fid_images` latents (seed FID_NOISE_SEED), so epochs and trials are scored alike.
    With Inception weights on this machine (`inception_weights`), `scores` adds the standard
    `fid_inception` from torchmetrics on the same images.
    """

    def __init__(self, real: ImageSet, fid_images: int, z_dim: int, device: torch.device,
                 allow_fallback: bool = False, inception_weights: str = "") -> None:
        self.device = device
        self.net = feature_net(device, allow_fallback)
        self.noise = fixed_noise(fid_images, z_dim, FID_NOISE_SEED)
        self.metric = FrechetDistance()
        self.metric.update(embed_images(self.net, real.images), real=True)
        weights = find_inception_weights(inception_weights)
        self.inception = InceptionFid(real.images, device, weights) if weights is not None else None

    def __call__(self, generator: Generator) -> float:
        return self.scores(generator)["fid_mnist"]

    def scores(self, generator: Generator) -> dict[str, float]:
        images = generate(generator, self.noise, self.device)
        scores = {"fid_mnist": self.fid_mnist(images)}
        if self.inception is not None:
            scores["fid_inception"] = self.inception(images)
        return scores

    def fid_mnist(self, images: torch.Tensor) -> float:
        """fid_mnist of any (N, 1, 28, 28) images in [0, 1] against the same real statistics."""
        self.metric.reset(keep_real=True)
        self.metric.update(embed_images(self.net, images), real=False)
        return self.metric.compute()


def load_fid_reference(dataset: str, classes: tuple[int, ...], fid_images: int, allow_fallback: bool,
                       seed: int = 0) -> ImageSet:
    """Up to `fid_images` seeded real test images of `classes` (all of them when fewer exist)."""
    return load_images(dataset, "test", classes=classes or None, limit=fid_images, allow_fallback=allow_fallback,
                       seed=seed)


def training_images(config: DCGANConfig) -> ImageSet:
    return load_images(config.dataset, "train", classes=config.classes or None, limit=config.train_size or None,
                       allow_fallback=config.allow_fallback, seed=config.seed)


def train(config: DCGANConfig, reporter: Reporter) -> dict[str, float]:
    """The trainable: reports d_loss, g_loss and fid_mnist (lower is better) every epoch."""
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    data = training_images(config)
    fid = FidScorer(load_fid_reference(config.dataset, config.classes, config.fid_images, config.allow_fallback),
                    config.fid_images, config.z_dim, device, config.allow_fallback, config.inception_weights)
    generator = Generator(config.z_dim, config.ngf).to(device)
    discriminator = Discriminator(config.ndf).to(device)
    betas = (config.beta1, 0.999)
    g_optimizer = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=betas)
    d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=betas)

    def train_epoch(epoch: int) -> dict[str, float]:
        return train_gan_epoch(generator=generator, discriminator=discriminator, g_optimizer=g_optimizer,
                               d_optimizer=d_optimizer, images=data.images, batch_size=config.batch_size,
                               order_seed=config.seed * 100_003 + epoch, device=device)

    def evaluate(epoch: int) -> dict[str, float]:
        return fid.scores(generator)

    def files(epoch: int) -> dict[str, bytes]:
        images = generate(generator, fid.noise[:GRID_IMAGES], device)
        return {"samples.png": sample_grid_png(images, title=f"DCGAN epoch {epoch + 1}, lr={config.lr:.3g}")}

    return fit(trainable="dcgan", config=config, epochs=config.epochs,
               modules={"generator": generator, "discriminator": discriminator},
               optimizers={"generator": g_optimizer, "discriminator": d_optimizer},
               train_epoch=train_epoch, evaluate=evaluate, reporter=reporter, files=files)


def build_model(state: Checkpoint) -> Generator:
    """Rebuild the trained generator from a checkpoint (used by the model registry)."""
    return generator_from_checkpoint(state)


def datasets(config: DCGANConfig) -> tuple[DatasetUse, ...]:
    """Training images, test images (the FID reference) and MNIST for the fid_mnist feature network."""
    return (DatasetUse(config.dataset, ("train", "test"), tuple(config.classes), config.allow_fallback),
            DatasetUse("mnist", ("train",), fallback=config.allow_fallback, setting=""))


DCGAN = TrainableDef(
    name="dcgan",
    config_cls=DCGANConfig,
    run=train,
    metrics=(
        Metric("fid_mnist", higher_is_better=False,
               description="Fréchet distance to real test images, on MNIST-classifier features (not Inception)"),
        Metric("g_loss", higher_is_better=False, description="mean non-saturating generator loss of the epoch"),
        Metric("d_loss", higher_is_better=False, description="mean discriminator loss of the epoch"),
        FID_INCEPTION,
    ),
    description="DCGAN for 28x28 grayscale images (GASTeN step 1)",
    curves=("fid_mnist", "g_loss", "d_loss"),
    build_model=build_model,
    datasets=datasets,
    tiny_config={"train_size": 128, "epochs": 1, "batch_size": 32, "fid_images": 64},
    epoch_cost=EpochCost(size_setting="train_size", images=lambda config: len(training_images(config))),
)
