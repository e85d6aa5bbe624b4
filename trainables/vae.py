"""A small convolutional VAE for 28x28 grayscale images.

Read top to bottom: the config, the model, the loss, one training epoch (shared with
`trainables/ood/kplus1.py`, which trains a VAE as its first stage), the trainable entry point.
Images are in [0, 1] like everything `trainables/data.py` returns; the decoder ends in a sigmoid
and the reconstruction term is the Bernoulli log-likelihood (binary cross-entropy summed over the
784 pixels), so `val_loss` is the usual negative ELBO in nats per image.

Validation images are carved from the training split exactly as the classifier does it, so a
search (over `latent_dim`, say) never looks at the test split. With `fewshot_k > 0` every epoch
also reports `val_fewshot_lin`: the few-shot accuracy of the posterior means (`features`) with
`fewshot_k` labelled training images per class and a logistic-regression head, scored on the
validation images. That is the latent-size search's objective: which latent size gives the most
useful features when labels are scarce, not which reconstructs best.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables.checkpoint import Checkpoint
from trainables.classifier import HELD_OUT_EPOCH_COST, split_train_val
from trainables.data import load_images, training_data
from trainables.definitions import Metric, TrainableDef
from trainables.device import resolve_device
from trainables.fewshot import fewshot_score
from trainables.fit import fit
from trainables.reporter import Reporter
from trainables.sample_grid import sample_grid_png
from trainables.settings import DataSettings, RuntimeSettings

VAL_NOISE_SEED = 0  # the reparameterisation noise behind every validation ELBO: the same each epoch
SAMPLE_NOISE_SEED = 1  # the prior latents behind samples.png
GRID_IMAGES = 64


@dataclass(frozen=True, kw_only=True)
class VAEConfig(DataSettings, RuntimeSettings):
    val_size: int = 1000  # carved from the training split, seeded
    latent_dim: int = 16
    nf: int = 32  # conv width
    beta: float = 1.0  # weight of the KL term in the training loss (1.0 is the plain ELBO)
    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 10
    fewshot_k: int = 0  # > 0: report val_fewshot_lin, lin-head accuracy with this many labels per class
    fewshot_repeats: int = 5  # seeded k-shot draws averaged per epoch
    fewshot_pool: int = 10000  # training images encoded per epoch as the pool the k-shot sets are drawn from

    def __post_init__(self) -> None:
        if min(self.latent_dim, self.nf, self.batch_size, self.epochs, self.val_size) < 1:
            raise ValueError("latent_dim, nf, batch_size, epochs and val_size must be >= 1")
        if self.fewshot_k < 0 or self.fewshot_repeats < 1 or self.fewshot_pool < 1:
            raise ValueError("fewshot_k must be >= 0 (0 = off), fewshot_repeats and fewshot_pool >= 1")
        if self.train_size < 0:
            raise ValueError(f"train_size must be >= 0, got {self.train_size}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


class VAE(nn.Module):
    """x (N, 1, 28, 28) -> q(z|x) = N(mu, exp(logvar)) -> z (N, latent_dim) -> images in [0, 1].

    LeakyReLU rather than ReLU: with ReLU the VAE sits on the "mean image" plateau (about 205
    nats on MNIST) for several hundred steps before the latents come alive; LeakyReLU(0.2)
    leaves it about twice as fast at the same cost per step.
    """

    def __init__(self, latent_dim: int = 16, nf: int = 32) -> None:
        super().__init__()
        self.latent_dim, self.nf = latent_dim, nf
        self.encoder = nn.Sequential(
            nn.Conv2d(1, nf, 4, 2, 1), nn.LeakyReLU(0.2),  # 14x14
            nn.Conv2d(nf, 2 * nf, 4, 2, 1), nn.LeakyReLU(0.2),  # 7x7
            nn.Flatten(),
            nn.Linear(2 * nf * 7 * 7, 256), nn.LeakyReLU(0.2),
        )
        self.to_mu = nn.Linear(256, latent_dim)
        self.to_logvar = nn.Linear(256, latent_dim)
        self.project = nn.Sequential(
            nn.Linear(latent_dim, 256), nn.LeakyReLU(0.2),
            nn.Linear(256, 2 * nf * 7 * 7), nn.LeakyReLU(0.2),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * nf, nf, 4, 2, 1), nn.LeakyReLU(0.2),  # 14x14
            nn.ConvTranspose2d(nf, 1, 4, 2, 1), nn.Sigmoid(),  # 28x28
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.to_mu(h), self.to_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.project(z).view(-1, 2 * self.nf, 7, 7))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, mu, logvar); `noise` is the reparameterisation eps (fresh N(0, I) when None)."""
        mu, logvar = self.encode(x)
        eps = torch.randn_like(mu) if noise is None else noise
        z = mu + eps * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


def vae_loss(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             beta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(recon + beta * kl, recon, kl), each summed over an image and averaged over the batch.

    recon = -log p(x|z) under independent Bernoulli pixels (binary cross-entropy), and
    kl = KL(N(mu, exp(logvar)) || N(0, I)) = -1/2 sum(1 + logvar - mu^2 - exp(logvar)), in closed form.
    """
    batch = x.shape[0]
    recon_term = F.binary_cross_entropy(recon, x, reduction="sum") / batch
    kl_term = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / batch
    return recon_term + beta * kl_term, recon_term, kl_term


def train_vae_epoch(vae: VAE, optimizer: torch.optim.Optimizer, images: torch.Tensor, batch_size: int,
                    beta: float, order_seed: int, device: torch.device) -> dict[str, float]:
    """One pass over `images`; returns the mean training loss (beta-weighted) per image.

    The batch order is a function of `order_seed` and the noise comes from the global generator
    (whose state `fit` checkpoints), so a resumed run repeats an uninterrupted one.
    """
    vae.train()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(order_seed))
    total = torch.zeros((), device=device)
    for start in range(0, len(order), batch_size):
        x = images[order[start:start + batch_size]].to(device)
        recon, mu, logvar = vae(x)
        loss, _, _ = vae_loss(recon, x, mu, logvar, beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(x)
    return {"train_loss": total.item() / len(order)}


@torch.no_grad()
def evaluate_vae(vae: VAE, images: torch.Tensor, device: torch.device, batch_size: int = 1024) -> dict[str, float]:
    """Negative ELBO (beta = 1, whatever the training beta) per image, and its two terms.

    The reparameterisation noise is drawn from a fixed seed, so two epochs (or two trials) are
    scored on the same single-sample estimate.
    """
    vae.eval()
    noise = torch.randn(len(images), vae.latent_dim, generator=torch.Generator().manual_seed(VAL_NOISE_SEED))
    recon_sum, kl_sum = 0.0, 0.0
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        recon, mu, logvar = vae(x, noise[start:start + batch_size].to(device))
        _, recon_term, kl_term = vae_loss(recon, x, mu, logvar)
        recon_sum += recon_term.item() * len(x)
        kl_sum += kl_term.item() * len(x)
    recon_mean, kl_mean = recon_sum / len(images), kl_sum / len(images)
    return {"val_loss": recon_mean + kl_mean, "val_recon": recon_mean, "val_kl": kl_mean}


@torch.no_grad()
def features(vae: VAE, images: torch.Tensor, device: torch.device, batch_size: int = 1024) -> np.ndarray:
    """The posterior means mu(x), (N, latent_dim) float32 on the CPU: the VAE's representation of x."""
    vae.eval()
    return torch.cat([vae.encode(images[start:start + batch_size].to(device))[0].cpu()
                      for start in range(0, len(images), batch_size)]).numpy()


@torch.no_grad()
def decode(vae: VAE, z: torch.Tensor, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """Images (CPU) for the given latents, with the VAE in eval mode."""
    vae.eval()
    return torch.cat([vae.decode(z[start:start + batch_size].to(device)).cpu()
                      for start in range(0, len(z), batch_size)])


def train(config: VAEConfig, reporter: Reporter) -> dict[str, float]:
    """The trainable: reports train_loss, val_loss (negative ELBO per image), val_recon and val_kl."""
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    data = load_images(config.dataset, "train", classes=config.classes or None,
                       allow_fallback=config.allow_fallback, seed=config.seed)
    train_set, val_set = split_train_val(data, config)
    vae = VAE(config.latent_dim, config.nf).to(device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=config.lr)
    prior = torch.randn(GRID_IMAGES, config.latent_dim, generator=torch.Generator().manual_seed(SAMPLE_NOISE_SEED))

    def train_epoch(epoch: int) -> dict[str, float]:
        return train_vae_epoch(vae, optimizer, train_set.images, config.batch_size, config.beta,
                               order_seed=config.seed * 100_003 + epoch, device=device)

    pool = train_set.images[:config.fewshot_pool], train_set.labels[:config.fewshot_pool].numpy()

    def validate(epoch: int) -> dict[str, float]:
        metrics = evaluate_vae(vae, val_set.images, device)
        if config.fewshot_k:
            metrics["val_fewshot_lin"] = fewshot_score(features(vae, pool[0], device), pool[1],
                                                       features(vae, val_set.images, device), val_set.labels.numpy(),
                                                       config.fewshot_k, config.fewshot_repeats, config.seed)
        return metrics

    def files(epoch: int) -> dict[str, bytes]:
        title = f"VAE epoch {epoch + 1}, latent_dim={config.latent_dim}, beta={config.beta:.3g}"
        return {"samples.png": sample_grid_png(decode(vae, prior, device), title=title)}

    return fit(trainable="vae", config=config, epochs=config.epochs, modules={"model": vae},
               optimizers={"model": optimizer}, train_epoch=train_epoch, evaluate=validate, reporter=reporter,
               files=files)


def load_vae(weights: dict[str, torch.Tensor], latent_dim: int, nf: int) -> VAE:
    """A VAE of the given size with `weights` loaded, in eval mode."""
    vae = VAE(latent_dim, nf)
    vae.load_state_dict(weights)
    return vae.eval()


def build_model(state: Checkpoint) -> VAE:
    """Rebuild the trained VAE from a checkpoint, at the size its config names (used by the model registry)."""
    return load_vae(state.modules["model"], state.config["latent_dim"], state.config["nf"])


VAE_TRAINABLE = TrainableDef(
    name="vae",
    config_cls=VAEConfig,
    run=train,
    metrics=(
        Metric("val_loss", higher_is_better=False,
               description="negative ELBO (nats per image, beta = 1) on the held-out validation images"),
        Metric("val_recon", higher_is_better=False, description="reconstruction term of val_loss (pixel BCE sum)"),
        Metric("val_kl", higher_is_better=False, description="KL(q(z|x) || N(0, I)) term of val_loss"),
        Metric("train_loss", higher_is_better=False, description="mean training loss (recon + beta * KL) of the epoch"),
        Metric("val_fewshot_lin", higher_is_better=True, optional=True,
               description="few-shot accuracy of the posterior means: fewshot_k labelled training images per "
                           "class, logistic regression, scored on the validation images (when fewshot_k > 0)"),
    ),
    description="convolutional VAE for 28x28 grayscale images (latent-dimension searches, OOD outlier generation)",
    curves=("val_loss", "val_recon", "val_kl"),
    build_model=build_model,
    datasets=training_data,
    tiny_config={"train_size": 256, "val_size": 64, "epochs": 1, "batch_size": 64},
    epoch_cost=HELD_OUT_EPOCH_COST,
)
