"""A DDPM for 28x28 grayscale images, and the features of an image at diffusion step t.

Read top to bottom: the config, the noise schedule (its own small class, pure tensors), the U-Net
that predicts the noise, the loss, one training epoch, validation, ancestral sampling, feature
extraction, the trainable entry point.

Conventions
-----------
* The DDPM of Ho et al. (2020): T = `timesteps` steps, betas linear from `beta_start` to
  `beta_end`, the network predicts the noise (epsilon) and is trained with the plain MSE.
* Steps are 0-based: t runs over 0..T-1 and alpha_bar[t] = prod_{s <= t} (1 - beta_s), so t = 0 is
  the first (lightest) noising and t = T-1 is (almost) pure noise; "t = 350 of 1000" is index 350.
* Arguments called `images` are in [0, 1], like everything `trainables/data.py` returns; they are
  mapped to [-1, 1] (`to_model_space`) before noising. Arguments called `x0`/`x_t` are already
  in that model space.

Validation images are carved from the training split exactly as the classifier and the VAE do,
so a search never looks at the test split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainables.checkpoint import Checkpoint
from trainables.classifier import HELD_OUT_EPOCH_COST, split_train_val
from trainables.data import load_images, training_data
from trainables.definitions import Metric, TrainableDef
from trainables.device import resolve_device
from trainables.fit import fit
from trainables.reporter import Reporter
from trainables.sample_grid import sample_grid_png
from trainables.settings import DataSettings, RuntimeSettings

VAL_NOISE_SEED = 0  # the steps and noise behind every validation loss: the same each epoch
SAMPLE_NOISE_SEED = 1  # the starting noise (and every later draw) behind samples.png
PREVIEW_STEP = 350  # denoise.png shows what the U-Net makes of the validation images at this step
PREVIEW_IMAGES = 8


@dataclass(frozen=True, kw_only=True)
class DiffusionConfig(DataSettings, RuntimeSettings):
    val_size: int = 1000  # carved from the training split, seeded
    timesteps: int = 1000  # T
    beta_start: float = 1e-4
    beta_end: float = 0.02
    # U-Net base width: levels 28x28, 14x14, 7x7 have nf, 2nf, 2nf channels. At 16 an epoch on
    # all of MNIST takes about 1.5 min on 2 CPU cores (nf = 32 costs about 3.4 times as much).
    nf: int = 16
    lr: float = 1e-3  # 2e-4 (the DDPM paper's) learns far more slowly in a CPU-sized budget
    batch_size: int = 128
    epochs: int = 5
    # Images drawn by ancestral sampling (T U-Net passes) after the last epoch only, for
    # samples.png: at nf = 16 on 2 CPU cores 16 images take about 12 s (a seventh of an epoch),
    # too slow to repeat every epoch. 0 skips it.
    sample_images: int = 16

    def __post_init__(self) -> None:
        if min(self.nf, self.batch_size, self.epochs, self.val_size) < 1:
            raise ValueError("nf, batch_size, epochs and val_size must be >= 1")
        if self.train_size < 0:
            raise ValueError(f"train_size must be >= 0, got {self.train_size}")
        if self.sample_images < 0:
            raise ValueError(f"sample_images must be >= 0, got {self.sample_images}")
        if self.timesteps < 2:
            raise ValueError(f"timesteps must be >= 2, got {self.timesteps}")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got beta_start={self.beta_start}, "
                             f"beta_end={self.beta_end}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels -> [-1, 1], the range the DDPM noises and denoises."""
    return images * 2 - 1


def to_pixel_space(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((x + 1) / 2).clamp(0, 1)


class NoiseSchedule:
    """The forward process q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), t = 0..T-1.

    Computed in float64 and kept in float32 on the CPU; `to(device)` gives a copy elsewhere.
    """

    def __init__(self, timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        if timesteps < 2 or not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"bad schedule: timesteps={timesteps}, beta_start={beta_start}, beta_end={beta_end}")
        self.timesteps, self.beta_start, self.beta_end = timesteps, beta_start, beta_end
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        alpha_bar = torch.cumprod(1 - betas, dim=0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        self.betas = betas.float()
        self.alphas = (1 - betas).float()
        self.alpha_bar = alpha_bar.float()
        # Variance of the posterior q(x_{t-1} | x_t, x_0), used as the reverse-step variance.
        self.posterior_variance = (betas * (1 - alpha_bar_prev) / (1 - alpha_bar)).float()

    @classmethod
    def from_config(cls, config: DiffusionConfig) -> NoiseSchedule:
        return cls(config.timesteps, config.beta_start, config.beta_end)

    def to(self, device: torch.device | str) -> NoiseSchedule:
        moved = object.__new__(NoiseSchedule)
        moved.__dict__.update({key: value.to(device) if isinstance(value, torch.Tensor) else value
                               for key, value in self.__dict__.items()})
        return moved

    def _at(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t], shaped (N, 1, 1, 1) to broadcast over images like `like`."""
        picked = values.to(like.device)[t.to(like.device)]
        return picked.view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise; `t` holds one step per image."""
        t = self.check_steps(t, len(x0))
        alpha_bar = self._at(self.alpha_bar, t, x0)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The x0 that `eps` implies: (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        t = self.check_steps(t, len(x_t))
        alpha_bar = self._at(self.alpha_bar, t, x_t)
        return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()

    def check_steps(self, t: torch.Tensor | int, count: int) -> torch.Tensor:
        """`t` as a LongTensor of `count` steps (an int is repeated), each in 0..T-1."""
        t = torch.as_tensor(t, dtype=torch.long)
        if t.dim() == 0:
            t = t.expand(count)
        if t.shape != (count,):
            raise ValueError(f"need one step per image ({count}), got steps of shape {tuple(t.shape)}")
        if len(t) and (int(t.min()) < 0 or int(t.max()) >= self.timesteps):
            raise ValueError(f"steps must be in 0..{self.timesteps - 1}, got {int(t.min())}..{int(t.max())}")
        return t


def schedule_from_config(config: DiffusionConfig) -> NoiseSchedule:
    return NoiseSchedule.from_config(config)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the steps (N,) -> (N, dim), as in the Transformer and the DDPM."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, dtype=torch.float32, device=t.device) / max(half, 1))
    args = t.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(embedding, (0, dim - 2 * half))


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 8), channels)  # up to 8 groups, always a divisor


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the step embedding added in between, and a (1x1) skip."""

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embed = nn.Linear(embed_dim, out_channels)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.embed(embedding)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """epsilon(x_t, t) for (N, 1, 28, 28) inputs: down 28 -> 14 -> 7, a middle block, up 7 -> 14 -> 28.

    One residual block per level on each path, skip connections between them (concatenated),
    stride-2 convolutions down, nearest-neighbour up (the up block's first conv does the rest).
    The levels have nf, 2nf, 2nf channels; the decoder's three up blocks output 2nf (7x7),
    2nf (14x14) and nf (28x28) channels, so the pooled features have `feature_dim = 5 nf`
    entries (80 at the default nf = 16).

    Deliberately small: most of the cost is at 28x28, and a CPU epoch on MNIST must take minutes.
    """

    def __init__(self, nf: int = 16) -> None:
        super().__init__()
        self.nf = nf
        c1, c2, c3 = nf, 2 * nf, 2 * nf
        embed_dim = 4 * nf
        self.embed = nn.Sequential(nn.Linear(nf, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.inc = nn.Conv2d(1, c1, 3, padding=1)
        self.down1 = ResBlock(c1, c1, embed_dim)  # 28x28
        self.pool1 = nn.Conv2d(c1, c1, 3, stride=2, padding=1)  # -> 14x14
        self.down2 = ResBlock(c1, c2, embed_dim)
        self.pool2 = nn.Conv2d(c2, c2, 3, stride=2, padding=1)  # -> 7x7
        self.down3 = ResBlock(c2, c3, embed_dim)
        self.middle = ResBlock(c3, c3, embed_dim)
        self.up3 = ResBlock(c3 + c3, c3, embed_dim)  # 7x7
        self.up2 = ResBlock(c3 + c2, c2, embed_dim)  # 14x14
        self.up1 = ResBlock(c2 + c1, c1, embed_dim)  # 28x28
        self.out = nn.Sequential(group_norm(c1), nn.SiLU(), nn.Conv2d(c1, 1, 3, padding=1))
        # The last conv starts at zero (the prediction starts at epsilon = 0, loss 1), which
        # steadies the first steps; the usual choice for DDPM U-Nets.
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @property
    def up_channels(self) -> tuple[int, int, int]:
        """Channels of the up blocks' outputs, in the order `forward` returns them (7x7, 14x14, 28x28)."""
        return (self.up3.conv2.out_channels, self.up2.conv2.out_channels, self.up1.conv2.out_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor | int, return_features: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Predicted noise, shaped like `x`; with `return_features`, also the three up-block
        activations [(N, 2nf, 7, 7), (N, 2nf, 14, 14), (N, nf, 28, 28)]."""
        t = torch.as_tensor(t, dtype=torch.long, device=x.device)
        if t.dim() == 0:
            t = t.expand(len(x))
        e = self.embed(timestep_embedding(t, self.nf))
        s1 = self.down1(self.inc(x), e)
        s2 = self.down2(self.pool1(s1), e)
        s3 = self.down3(self.pool2(s2), e)
        h = self.middle(s3, e)
        a3 = self.up3(torch.cat([h, s3], dim=1), e)
        a2 = self.up2(torch.cat([F.interpolate(a3, scale_factor=2.0, mode="nearest"), s2], dim=1), e)
        a1 = self.up1(torch.cat([F.interpolate(a2, scale_factor=2.0, mode="nearest"), s1], dim=1), e)
        eps = self.out(a1)
        return (eps, [a3, a2, a1]) if return_features else eps

    def decoder_activations(self, x: torch.Tensor, t: torch.Tensor | int) -> list[torch.Tensor]:
        """The up-block activations alone (see `forward`)."""
        return self.forward(x, t, return_features=True)[1]


def feature_dim(model: UNet, pool: int = 1) -> int:
    """Length of one image's feature vector from `extract_features`: the up blocks' channels (5 nf)
    times the pool x pool cells each is averaged into."""
    return sum(model.up_channels) * pool * pool


def ddpm_loss(model: UNet, schedule: NoiseSchedule, images: torch.Tensor, t: torch.Tensor | None = None,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between the true and the predicted noise (the DDPM's "simple" loss).

    `images` are in [0, 1]. The steps are uniform over 0..T-1 and the noise standard normal,
    both drawn on the CPU from the global generator (which `fit` checkpoints, so a resumed run
    repeats an uninterrupted one on any device) unless given.
    """
    x0 = to_model_space(images)
    if t is None:
        t = torch.randint(0, schedule.timesteps, (len(x0),))
    if noise is None:
        noise = torch.randn(x0.shape)
    t, noise = t.to(x0.device), noise.to(x0.device)
    return F.mse_loss(model(schedule.q_sample(x0, t, noise), t), noise)


def train_ddpm_epoch(model: UNet, schedule: NoiseSchedule, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                     batch_size: int, order_seed: int, device: torch.device) -> dict[str, float]:
    """One pass over `images`; returns the mean training loss per image. The batch order is a
    function of `order_seed`."""
    model.train()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(order_seed))
    total = torch.zeros((), device=device)
    for start in range(0, len(order), batch_size):
        x = images[order[start:start + batch_size]].to(device)
        loss = ddpm_loss(model, schedule, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(x)
    return {"train_loss": total.item() / len(order)}


@torch.no_grad()
def evaluate_ddpm(model: UNet, schedule: NoiseSchedule, images: torch.Tensor, device: torch.device,
                  batch_size: int = 512) -> dict[str, float]:
    """The loss on `images` at steps and noise drawn from a fixed seed, so epochs (and trials with
    the same validation images and T) are scored on the same draws."""
    model.eval()
    generator = torch.Generator().manual_seed(VAL_NOISE_SEED)
    t = torch.randint(0, schedule.timesteps, (len(images),), generator=generator)
    noise = torch.randn(images.shape, generator=generator)
    total = 0.0
    for start in range(0, len(images), batch_size):
        part = slice(start, start + batch_size)
        x = images[part].to(device)
        total += ddpm_loss(model, schedule, x, t[part], noise[part]).item() * len(x)
    return {"val_loss": total / len(images)}


@torch.no_grad()
def sample(model: UNet, schedule: NoiseSchedule, count: int, device: torch.device, seed: int = SAMPLE_NOISE_SEED
           ) -> torch.Tensor:
    """`count` images in [0, 1] (on the CPU) by ancestral sampling: T U-Net passes, so slow on a CPU.

    The reverse step uses the posterior variance (beta-tilde); every draw comes from `seed`.
    """
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(count, 1, 28, 28, generator=generator).to(device)
    betas, alphas = schedule.betas.tolist(), schedule.alphas.tolist()
    alpha_bar, variance = schedule.alpha_bar.tolist(), schedule.posterior_variance.tolist()
    for step in reversed(range(schedule.timesteps)):
        eps = model(x, step)
        x = (x - betas[step] / math.sqrt(1 - alpha_bar[step]) * eps) / math.sqrt(alphas[step])
        if step > 0:
            x = x + math.sqrt(variance[step]) * torch.randn(x.shape, generator=generator).to(device)
    return to_pixel_space(x).cpu()


@torch.no_grad()
def extract_features(model: UNet, schedule: NoiseSchedule, images: torch.Tensor, t: int, *, batch_size: int = 256,
                     seed: int = 0, device: torch.device | str = "cpu", pool: int = 1) -> torch.Tensor:
    """Features (N, feature_dim(model, pool)) of `images` (N, 1, 28, 28) in [0, 1] at step `t` (0-based).

    Each image is noised to x_t, the U-Net runs at step t, and each up-block activation is
    averaged over its H x W, concatenated in the order 7x7 (2nf), 14x14 (2nf), 28x28 (nf): D = 5 nf.

    `pool` > 1 averages each activation over a pool x pool grid of cells instead of the whole image
    (adaptive average pooling; D = 5 nf pool^2, channel-major per block). The reference method is
    the global average (pool = 1); a small U-Net's 80 globally averaged channels lose where a stroke
    is, and measured on MNIST (nf 16, 2 epochs, k = 16, logistic regression) they score 0.72 against
    raw pixels' 0.77, while 2 x 2 cells score 0.87 at the same t.

    The noise is drawn on the CPU from one generator seeded with `seed`, batch after batch, so
    image i always gets the same noise for the same seed and image count whatever `batch_size`
    (each image takes a whole, fixed-size piece of the stream): features are deterministic.
    Returns a float32 CPU tensor; the model is put in eval mode.
    """
    if not 0 <= t < schedule.timesteps:
        raise ValueError(f"t must be in 0..{schedule.timesteps - 1}, got {t}")
    if not 1 <= pool <= 7:
        raise ValueError(f"pool must be in 1..7 (cells per side of the smallest, 7x7 activation), got {pool}")
    if images.dim() != 4 or images.shape[1:] != (1, 28, 28):
        raise ValueError(f"expected images of shape (N, 1, 28, 28), got {tuple(images.shape)}")
    device = torch.device(device)
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    features = []
    for start in range(0, len(images), batch_size):
        x0 = to_model_space(images[start:start + batch_size].float())
        noise = torch.randn(x0.shape, generator=generator)
        steps = torch.full((len(x0),), t, dtype=torch.long)
        x_t = schedule.q_sample(x0, steps, noise).to(device)
        _, activations = model(x_t, steps.to(device), return_features=True)
        features.append(torch.cat([F.adaptive_avg_pool2d(a, pool).flatten(1) for a in activations], dim=1).cpu())
    if not features:
        return torch.zeros(0, feature_dim(model, pool))
    return torch.cat(features)


@torch.no_grad()
def denoise_preview(model: UNet, schedule: NoiseSchedule, images: torch.Tensor, t: int, device: torch.device
                    ) -> torch.Tensor:
    """Rows of images, x_t and the x0 the U-Net predicts from x_t: one cheap pass, for denoise.png."""
    model.eval()
    generator = torch.Generator().manual_seed(VAL_NOISE_SEED)
    x0 = to_model_space(images)
    steps = torch.full((len(x0),), t, dtype=torch.long)
    x_t = schedule.q_sample(x0, steps, torch.randn(x0.shape, generator=generator))
    eps = model(x_t.to(device), steps.to(device)).cpu()
    return torch.cat([images, to_pixel_space(x_t), to_pixel_space(schedule.predict_x0(x_t, steps, eps))])


def train(config: DiffusionConfig, reporter: Reporter) -> dict[str, float]:
    """The trainable: reports train_loss and val_loss (epsilon MSE, a pure-noise guess scores 1)."""
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    data = load_images(config.dataset, "train", classes=config.classes or None,
                       allow_fallback=config.allow_fallback, seed=config.seed)
    train_set, val_set = split_train_val(data, config)
    schedule = schedule_from_config(config)
    model = UNet(config.nf).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    preview_step = min(PREVIEW_STEP, config.timesteps - 1)

    def train_epoch(epoch: int) -> dict[str, float]:
        return train_ddpm_epoch(model, schedule, optimizer, train_set.images, config.batch_size,
                                order_seed=config.seed * 100_003 + epoch, device=device)

    def validate(epoch: int) -> dict[str, float]:
        return evaluate_ddpm(model, schedule, val_set.images, device)

    def files(epoch: int) -> dict[str, bytes]:
        preview = denoise_preview(model, schedule, val_set.images[:PREVIEW_IMAGES], preview_step, device)
        out = {"denoise.png": sample_grid_png(
            preview, columns=len(preview) // 3,
            title=f"DDPM epoch {epoch + 1}: images, x_t at t={preview_step}, predicted x0")}
        if epoch == config.epochs - 1 and config.sample_images:
            # Ancestral sampling costs T passes: only once, after the last epoch.
            out["samples.png"] = sample_grid_png(sample(model, schedule, config.sample_images, device),
                                                 title=f"DDPM samples after epoch {epoch + 1}, nf={config.nf}")
        return out

    return fit(trainable="ddpm", config=config, epochs=config.epochs, modules={"model": model},
               optimizers={"model": optimizer}, train_epoch=train_epoch, evaluate=validate, reporter=reporter,
               files=files)


def build_model(state: Checkpoint) -> UNet:
    """Rebuild the trained U-Net from a checkpoint, at the width its config names, in eval mode (used by the model
    registry); the noise schedule it was trained with comes from `schedule_from_state(state)`."""
    model = UNet(state.config["nf"])
    model.load_state_dict(state.modules["model"])
    return model.eval()


def schedule_from_state(state: Checkpoint) -> NoiseSchedule:
    """The noise schedule the checkpointed U-Net was trained with."""
    config = state.config
    return NoiseSchedule(config["timesteps"], config["beta_start"], config["beta_end"])


DIFFUSION = TrainableDef(
    name="ddpm",
    config_cls=DiffusionConfig,
    run=train,
    metrics=(
        Metric("val_loss", higher_is_better=False,
               description="epsilon-prediction MSE on the held-out validation images (fixed seeded steps and "
                           "noise; predicting zero noise scores about 1)"),
        Metric("train_loss", higher_is_better=False, description="mean epsilon-prediction MSE of the epoch"),
    ),
    description="DDPM (linear betas, epsilon prediction) with a small U-Net for 28x28 grayscale images; "
                "its decoder activations at step t are image features",
    curves=("val_loss", "train_loss"),
    build_model=build_model,
    datasets=training_data,
    tiny_config={"train_size": 128, "val_size": 32, "epochs": 1, "batch_size": 64, "nf": 4, "timesteps": 50,
                 "sample_images": 2},
    epoch_cost=HELD_OUT_EPOCH_COST,
)
