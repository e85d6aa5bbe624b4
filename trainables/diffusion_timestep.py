"""Which diffusion step t gives the best features? One trial scores one t of an already trained DDPM.

The DDPM is trained once, by an earlier stage; every trial here receives its checkpoint folder by
reference (`inputs: {ddpm: ddpm.best}`) and only runs feature extraction at its t, so a search
over t never retrains the model. The score is the few-shot objective of the representation
studies: `fewshot_k` labelled images per class, a logistic-regression head on the features at t,
accuracy averaged over `fewshot_repeats` seeded draws.

The images come from the DDPM's own split (its config's dataset, val_size and seed): the k-shot
pool from its training part, the scored images from its held-out validation part, which the DDPM
never trained on. The test split is left for the final curve (the `fewshot` job).

Its "checkpoint" is the setting (the DDPM folder and t) and its score, like `odin`'s, so the
final stage gets the chosen t by reference (`timestep.best`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from trainables import diffusion
from trainables.checkpoint import Checkpoint, load_checkpoint
from trainables.classifier import split_train_val
from trainables.config import build_config
from trainables.data import ImageSet, load_images
from trainables.definitions import Metric, TrainableDef
from trainables.device import resolve_device
from trainables.fewshot import fewshot_score
from trainables.reporter import Reporter
from trainables.settings import DeviceSettings

NAME = "ddpm_timestep"
FEATURE_NOISE_SEED = 0  # the noise that takes each image to x_t: the same for every trial and t


@dataclass(frozen=True, kw_only=True)
class TimestepConfig(DeviceSettings):
    ddpm: str  # a ddpm checkpoint folder: `inputs: {ddpm: ddpm.best}`
    t: int = 350  # 0-based step of the DDPM's chain; the reference study's MNIST optimum was about 350 of 1000
    pool: int = 1  # 1 = global average of each up-block activation (the reference); 2 = 2x2 cells (see extract_features)
    fewshot_k: int = 16  # labelled images per class
    fewshot_repeats: int = 5
    pool_size: int = 5000  # training images (of the DDPM's split) the k-shot sets are drawn from
    val_images: int = 2000  # the DDPM's validation images the head is scored on
    batch_size: int = 256

    def __post_init__(self) -> None:
        if not self.ddpm:
            raise ValueError("ddpm is empty: give a ddpm checkpoint folder, normally by reference "
                             "(inputs: {ddpm: ddpm.best})")
        if self.t < 0:
            raise ValueError(f"t must be >= 0, got {self.t}")
        if not 1 <= self.pool <= 7:
            raise ValueError(f"pool must be in 1..7, got {self.pool}")
        if min(self.fewshot_k, self.fewshot_repeats, self.pool_size, self.val_images, self.batch_size) < 1:
            raise ValueError("fewshot_k, fewshot_repeats, pool_size, val_images and batch_size must be >= 1")


def load_ddpm(folder: str) -> tuple[diffusion.UNet, diffusion.NoiseSchedule, diffusion.DiffusionConfig]:
    """The trained U-Net of a ddpm checkpoint folder, its noise schedule and the config it was trained under."""
    state = load_checkpoint(folder)
    if state.trainable != "ddpm":
        raise ValueError(f"ddpm: {folder} is a {state.trainable!r} checkpoint, not a ddpm one")
    return (diffusion.build_model(state), diffusion.schedule_from_state(state),
            build_config(diffusion.DiffusionConfig, state.config))


def ddpm_split(config: diffusion.DiffusionConfig) -> tuple[ImageSet, ImageSet]:
    """The DDPM's own (training, validation) images, exactly as it split them."""
    data = load_images(config.dataset, "train", classes=config.classes or None,
                       allow_fallback=config.allow_fallback, seed=config.seed)
    return split_train_val(data, config)


def run(config: TimestepConfig, reporter: Reporter) -> dict[str, float]:
    """The trainable: reports val_fewshot_lin of the features at step t, once."""
    model, schedule, ddpm_config = load_ddpm(config.ddpm)
    if config.t >= schedule.timesteps:
        raise ValueError(f"t={config.t} is past the DDPM's chain (steps 0..{schedule.timesteps - 1})")
    device = resolve_device(config.device)
    model.to(device)
    train_set, val_set = ddpm_split(ddpm_config)
    pool, scored = train_set.images[:config.pool_size], val_set.images[:config.val_images]

    def features(images: torch.Tensor) -> torch.Tensor:
        return diffusion.extract_features(model, schedule, images, config.t, batch_size=config.batch_size,
                                          seed=FEATURE_NOISE_SEED, device=device, pool=config.pool).numpy()

    accuracy = fewshot_score(features(pool), train_set.labels[:config.pool_size].numpy(), features(scored),
                             val_set.labels[:config.val_images].numpy(), config.fewshot_k, config.fewshot_repeats)
    metrics = {"epoch": 1.0, "val_fewshot_lin": accuracy}
    state = Checkpoint(trainable=NAME, config=dataclasses.asdict(config), epoch=1, metrics=dict(metrics))
    reporter.report(metrics, checkpoint=state)
    return metrics


DDPM_TIMESTEP = TrainableDef(
    name=NAME,
    config_cls=TimestepConfig,
    run=run,
    metrics=(
        Metric("val_fewshot_lin", higher_is_better=True,
               description="few-shot accuracy of the DDPM's decoder features at step t: fewshot_k labelled images "
                           "per class, logistic regression, scored on the DDPM's validation images"),
    ),
    description="features of a trained DDPM at one diffusion step t, scored by few-shot accuracy (search t, "
                "never retrain)",
    # The tiny DDPM's split is 128 training and 32 validation images.
    tiny_config={"t": 10, "fewshot_k": 2, "fewshot_repeats": 2, "pool_size": 128, "val_images": 32},
    contract_inputs=lambda upstream: {"ddpm": upstream.trainable("ddpm")},
)
