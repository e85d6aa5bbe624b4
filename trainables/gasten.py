"""GASTeN step 2: fine-tune a DCGAN generator so a frozen binary classifier cannot decide.

GASTeN (Cunha et al., "Generative Adversarial Stress Test Networks", IDA 2023) starts from a
trained DCGAN (`trainables/dcgan.py`) and keeps training it with

    generator loss = non-saturating GAN loss + alpha * mean |0.5 - C(G(z))|

where C(x) is the frozen classifier's probability of the POSITIVE class: label index 1, i.e. the
second entry of the classifier checkpoint's `classes` (for the default `classes: [7, 1]`, "is a 1").
The discriminator keeps training as usual, which keeps the images realistic. Real images (for D
and for FID) are the classifier's own dataset and classes, so the GAN is stressed on its task.
Metrics per epoch: fid_mnist (realism, lower is better) and acd (mean |0.5 - p| on a fixed noise
set shared by every trial, lower is better), plus the loss terms. The step-1 generator is scored
on the same noise before fine-tuning starts (`fid_mnist_step1`, `acd_step1`), so every epoch also
reports how far it moved: `acd_ratio`, `fid_ratio` and their trade-off

    tradeoff = acd / acd_step1 + max(0, fid_mnist / fid_mnist_step1 - fid_budget)

the default search objective: the share of the step-1 confidence left, plus a penalty once the
realism lost exceeds the budget (fid_budget 1.5: FID may grow by half for free). Lower is better;
the step-1 generator itself scores 1.0. Without the budget a search rewards images that fool the
classifier by no longer looking like digits; with it, "the lowest ACD at an affordable FID". Each epoch also writes
`samples.png`: 64 generated images from fixed latents with C(x) under each.

Two more yardsticks ride along with every epoch. `band_share` (and `band_share_step1`) is the share
of the ACD noise set with C(x) inside `band` (default [0.4, 0.6], the clustering stage's band): how
many boundary images the generator makes. `acd_real_ambiguous` and `fid_real_ambiguous` score the
`fid_images` real training digits of the pair that the classifier finds least certain
(`trainables/real_ambiguous.py`): a generator at or below both is more ambiguous than real boundary
digits and at least as realistic. They are constants of a trial, computed once before fine-tuning.
Against that yardstick the objective has a second form, with the realism budget set by real boundary
digits instead of a multiple of the step-1 FID:

    tradeoff_real = acd / acd_step1 + max(0, fid_mnist / fid_real_ambiguous - 1)

Both inputs are checkpoint folders given by reference in a study
(`inputs: {generator: gan.best, classifier: classifier.best}`), so they are required settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainables import classifier as classifier_module
from trainables.checkpoint import Checkpoint, load_checkpoint
from trainables.data import DatasetUse, ImageSet, load_images
from trainables.dcgan import (FID_INCEPTION, Discriminator, FidScorer, Generator, build_model, check_gan_training,
                              discriminator_from_checkpoint, generate, generator_from_checkpoint, load_fid_reference,
                              train_gan_epoch)
from trainables.definitions import EpochCost, Metric, TrainableDef
from trainables.device import resolve_device
from trainables.feature_net import FEATURE_NET_VERSION
from trainables.fit import fit, load_optimizer_state
from trainables.metrics.acd import (DEFAULT_BAND, average_confusion_distance, band_share, check_band,
                                    confusion_distance, fixed_noise)
from trainables.real_ambiguous import RealAmbiguous, cache_key, cached_real_ambiguous, real_ambiguous
from trainables.reporter import Reporter
from trainables.sample_grid import sample_grid_png
from trainables.settings import RuntimeSettings, TrainingDataSettings

ACD_NOISE_SEED = 0  # the latents behind every acd value: the same in every trial of every study
GRID_IMAGES = 64  # the first latents of the ACD noise, drawn with their scores in samples.png


@dataclass(frozen=True, kw_only=True)
class GastenConfig(TrainingDataSettings, RuntimeSettings):
    generator: str  # a dcgan checkpoint folder: `inputs: {generator: gan.best}`
    classifier: str  # a binary classifier checkpoint folder: `inputs: {classifier: classifier.best}`
    alpha: float = 25.0  # weight of the confusion term; the paper explores 5..30
    fid_budget: float = 1.5  # fid_mnist / fid_mnist_step1 allowed before `tradeoff` is penalised
    lr: float = 2e-4
    beta1: float = 0.5
    continue_optimizers: bool = False  # start from step 1's Adam moments instead of fresh ones
    batch_size: int = 64
    epochs: int = 40
    fid_images: int = 1000
    inception_weights: str = ""  # as in dcgan: when found, fid_inception is reported too
    acd_images: int = 2048
    band: tuple[float, ...] = DEFAULT_BAND  # C(x) range counted by band_share (the clustering stage's band)

    def __post_init__(self) -> None:
        for name in ("generator", "classifier"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty: give a {'dcgan' if name == 'generator' else 'classifier'} "
                                 f"checkpoint folder, normally by reference (inputs: {{{name}: STAGE.best}})")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if self.fid_budget < 1:
            raise ValueError(f"fid_budget must be >= 1 (a ratio to the step-1 FID), got {self.fid_budget}")
        check_gan_training(self.lr, self.beta1, self.fid_images)
        if min(self.batch_size, self.epochs, self.acd_images) < 1 or self.train_size < 0:
            raise ValueError("batch_size, epochs and acd_images must be >= 1 and train_size >= 0")
        check_band(tuple(self.band))


def positive_probability(classifier: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """C(x): softmax probability of label index 1 (the second of the classifier's `classes`)."""
    return torch.softmax(classifier(images), dim=1)[:, 1]


def continue_step1_optimizers(folder: str, g_optimizer: torch.optim.Optimizer,
                               d_optimizer: torch.optim.Optimizer) -> None:
    """Start from step 1's Adam moments, keeping this config's lr and betas.

    Measured on 7 vs 1 (2 CPU cores, lr 2e-4, alpha 30, one epoch of 6000 images): ACD fell from 0.43
    to 0.25 with step 1's moments against 0.40 with fresh ones, at a far higher fid_mnist (51 against 9):
    the confusion gradients are large next to step 1's second moments, so the steps are too. A knob
    for the search, off by default."""
    optimizers = load_checkpoint(folder).optimizers
    for name, optimizer in (("generator", g_optimizer), ("discriminator", d_optimizer)):
        load_optimizer_state(optimizer, optimizers[name], keep_settings=True)


def load_frozen_classifier(folder: str, device: torch.device) -> tuple[nn.Module, Checkpoint]:
    """The binary classifier from a checkpoint folder, in eval mode with gradients off."""
    state = load_checkpoint(folder)
    if state.trainable != "classifier":
        raise ValueError(f"classifier: {folder} is a {state.trainable!r} checkpoint, not a classifier one")
    if len(state.config["classes"]) != 2:
        raise ValueError(f"classifier: {folder} separates classes {tuple(state.config['classes']) or 'all ten'}; "
                         "GASTeN needs a binary classifier (two classes)")
    model = classifier_module.build_model(state).to(device).eval()
    model.requires_grad_(False)
    return model, state


def load_gan(folder: str, device: torch.device) -> tuple[Generator, Discriminator]:
    """Generator and discriminator of a dcgan checkpoint folder, sized by its config."""
    state = load_checkpoint(folder)
    if state.trainable != "dcgan":
        raise ValueError(f"generator: {folder} is a {state.trainable!r} checkpoint, not a dcgan one")
    return generator_from_checkpoint(state).to(device), discriminator_from_checkpoint(state).to(device)


@torch.no_grad()
def scored_samples(generator: Generator, classifier: nn.Module, noise: torch.Tensor,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Images for `noise` (generator in its current mode) and C(x) of each, both on the CPU."""
    images = generate(generator, noise, device)
    probabilities = torch.cat([positive_probability(classifier, images[start:start + 512].to(device)).cpu()
                               for start in range(0, len(images), 512)])
    return images, probabilities


def measure_acd(generator: Generator, classifier: nn.Module, noise: torch.Tensor, device: torch.device) -> float:
    """ACD of `generator` (in its current mode) on the latents `noise`."""
    return average_confusion_distance(scored_samples(generator, classifier, noise, device)[1])


def confusion_scores(generator: Generator, classifier: nn.Module, noise: torch.Tensor, device: torch.device,
                     band: tuple[float, ...] = DEFAULT_BAND) -> dict[str, float]:
    """ACD and band share of `generator` (in its current mode) on the latents `noise`, from one pass."""
    probabilities = scored_samples(generator, classifier, noise, device)[1]
    return {"acd": average_confusion_distance(probabilities), "band_share": band_share(probabilities, band)}


def real_ambiguous_yardstick(classifier: nn.Module, images: Callable[[], torch.Tensor], fid: FidScorer,
                             device: torch.device, cache_settings: Mapping[str, Any] | None) -> RealAmbiguous:
    """The `fid_images` real images with C(x) closest to 0.5, scored by the trial's own FidScorer.

    `images` loads the pair's training images (only on a cache miss); `cache_settings` name everything
    besides the classifier's weights that fixes the result (None: compute, never cache).
    """
    def compute() -> RealAmbiguous:
        return real_ambiguous(lambda batch: positive_probability(classifier, batch.to(device)), images(),
                              len(fid.noise), fid.fid_mnist)

    key = None if cache_settings is None else cache_key(classifier, {"images": len(fid.noise), **cache_settings})
    return cached_real_ambiguous(key, compute)


def tradeoff(acd: float, fid: float, acd_step1: float, fid_step1: float, fid_budget: float = 1.5) -> dict[str, float]:
    """How far fine-tuning moved from the step-1 generator: ratios and the search objective."""
    acd_ratio = acd / max(acd_step1, 1e-12)
    fid_ratio = fid / max(fid_step1, 1e-12)
    return {"acd_ratio": acd_ratio, "fid_ratio": fid_ratio,
            "tradeoff": acd_ratio + max(0.0, fid_ratio - fid_budget)}


def tradeoff_real(acd: float, fid: float, acd_step1: float, fid_real_ambiguous: float) -> float:
    """The confidence left, plus a penalty once less realistic than the real boundary digits."""
    return acd / max(acd_step1, 1e-12) + max(0.0, fid / max(fid_real_ambiguous, 1e-12) - 1.0)


def training_images(config: GastenConfig, classifier_state: Checkpoint) -> ImageSet:
    """The real images fine-tuning reads: the classifier's own dataset and classes."""
    task = classifier_state.config
    return load_images(task["dataset"], "train", classes=tuple(task["classes"]), limit=config.train_size or None,
                       allow_fallback=config.allow_fallback, seed=config.seed)


def train(config: GastenConfig, reporter: Reporter) -> dict[str, float]:
    """The trainable: reports fid_mnist, acd, g_loss, d_loss and confusion_loss every epoch."""
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    generator, discriminator = load_gan(config.generator, device)
    classifier, classifier_state = load_frozen_classifier(config.classifier, device)
    dataset, classes = classifier_state.config["dataset"], tuple(classifier_state.config["classes"])
    data = training_images(config, classifier_state)
    fid = FidScorer(load_fid_reference(dataset, classes, config.fid_images, config.allow_fallback),
                    config.fid_images, generator.z_dim, device, config.allow_fallback, config.inception_weights)
    acd_noise = fixed_noise(config.acd_images, generator.z_dim, ACD_NOISE_SEED)
    generator.eval()  # scored like every epoch: BatchNorm on its running statistics
    step1 = {"fid_mnist_step1": fid(generator),
             **{f"{name}_step1": value for name, value in
                confusion_scores(generator, classifier, acd_noise, device, config.band).items()}}

    # The yardstick ranks every training image of the pair, whatever share of them fine-tuning reads.
    def pair_images() -> torch.Tensor:
        return (data if not config.train_size else load_images(dataset, "train", classes=classes)).images

    cache_settings = None if config.allow_fallback else {  # a fallback run's numbers are never stored
        "dataset": dataset, "classes": list(classes), "fid_reference": "test", "feature_net": FEATURE_NET_VERSION}
    yardstick = real_ambiguous_yardstick(classifier, pair_images, fid, device, cache_settings).metrics()
    grid_noise = acd_noise[:GRID_IMAGES]
    names = "/".join(str(c) for c in classes)
    betas = (config.beta1, 0.999)
    g_optimizer = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=betas)
    d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=betas)
    if config.continue_optimizers:
        continue_step1_optimizers(config.generator, g_optimizer, d_optimizer)

    def confusion(fake: torch.Tensor) -> torch.Tensor:
        return confusion_distance(positive_probability(classifier, fake))

    def train_epoch(epoch: int) -> dict[str, float]:
        metrics = train_gan_epoch(generator=generator, discriminator=discriminator, g_optimizer=g_optimizer,
                                  d_optimizer=d_optimizer, images=data.images, batch_size=config.batch_size,
                                  order_seed=config.seed * 100_003 + epoch, device=device,
                                  extra_loss=confusion, extra_weight=config.alpha)
        return {"g_loss": metrics["g_loss"], "d_loss": metrics["d_loss"], "confusion_loss": metrics["extra_loss"]}

    def evaluate(epoch: int) -> dict[str, float]:
        scores = {**fid.scores(generator), **confusion_scores(generator, classifier, acd_noise, device, config.band)}
        return {**scores, **step1, **yardstick,
                **tradeoff(scores["acd"], scores["fid_mnist"], step1["acd_step1"], step1["fid_mnist_step1"],
                           config.fid_budget),
                "tradeoff_real": tradeoff_real(scores["acd"], scores["fid_mnist"], step1["acd_step1"],
                                               yardstick["fid_real_ambiguous"])}

    def files(epoch: int) -> dict[str, bytes]:
        images, probabilities = scored_samples(generator, classifier, grid_noise, device)
        title = f"GASTeN epoch {epoch + 1}, alpha={config.alpha:.3g}: C = P(class {classes[1]}) of {names}"
        return {"samples.png": sample_grid_png(images, probabilities, title)}

    return fit(trainable="gasten", config=config, epochs=config.epochs,
               modules={"generator": generator, "discriminator": discriminator},
               optimizers={"generator": g_optimizer, "discriminator": d_optimizer},
               train_epoch=train_epoch, evaluate=evaluate, reporter=reporter, files=files)


def datasets(config: GastenConfig) -> tuple[DatasetUse, ...]:
    """MNIST for the fid_mnist feature network. The training images are the classifier's dataset, read
    from its checkpoint, which an earlier stage writes: that stage declares the dataset."""
    return (DatasetUse("mnist", ("train",), fallback=config.allow_fallback, setting=""),)


GASTEN = TrainableDef(
    name="gasten",
    config_cls=GastenConfig,
    run=train,
    metrics=(
        Metric("tradeoff", higher_is_better=False,
               description="acd_ratio + max(0, fid_ratio - fid_budget): confidence left, penalised past the "
                           "FID budget"),
        Metric("tradeoff_real", higher_is_better=False,
               description="acd_ratio + max(0, fid_mnist / fid_real_ambiguous - 1): confidence left, penalised once "
                           "less realistic than real boundary digits"),
        Metric("fid_mnist", higher_is_better=False,
               description="Fréchet distance to the classifier's real test images, on MNIST-classifier features"),
        Metric("acd", higher_is_better=False,
               description="mean |0.5 - C(G(z))| over 2048 fixed latents: 0 = on the decision boundary"),
        Metric("confusion_loss", higher_is_better=False, description="mean |0.5 - C(G(z))| over the epoch's batches"),
        Metric("g_loss", higher_is_better=False, description="mean non-saturating generator loss (GAN part)"),
        Metric("d_loss", higher_is_better=False, description="mean discriminator loss of the epoch"),
        Metric("acd_ratio", higher_is_better=False, description="acd / acd_step1 (step 1 = the generator fine-tuned)"),
        Metric("fid_ratio", higher_is_better=False, description="fid_mnist / fid_mnist_step1"),
        Metric("acd_step1", higher_is_better=False, description="acd of the step-1 generator on the same latents"),
        Metric("fid_mnist_step1", higher_is_better=False, description="fid_mnist of the step-1 generator"),
        Metric("band_share", higher_is_better=True,
               description="share of the 2048 fixed latents' images with C(x) in `band` (default [0.4, 0.6])"),
        Metric("band_share_step1", higher_is_better=True, description="band_share of the step-1 generator"),
        Metric("acd_real_ambiguous", higher_is_better=False,
               description="mean |0.5 - C(x)| of the fid_images real training images with C(x) closest to 0.5"),
        Metric("fid_real_ambiguous", higher_is_better=False,
               description="fid_mnist of those real boundary images: the realism a generator should match"),
        FID_INCEPTION,
    ),
    pareto=("fid_mnist", "acd"),
    curves=("fid_mnist", "acd", "tradeoff"),
    baselines={"fid_mnist": "fid_mnist_step1", "acd": "acd_step1"},
    pareto_references={"real ambiguous digits": ("fid_real_ambiguous", "acd_real_ambiguous")},
    description="GASTeN: fine-tune a DCGAN generator towards a frozen binary classifier's decision boundary",
    build_model=build_model,
    datasets=datasets,
    tiny_config={"train_size": 128, "epochs": 1, "batch_size": 32, "fid_images": 64, "acd_images": 256},
    contract_inputs=lambda upstream: {"generator": upstream.trainable("dcgan"),
                                      "classifier": upstream.trainable("classifier")},
    epoch_cost=EpochCost(size_setting="train_size",
                         images=lambda config: len(training_images(config, load_checkpoint(config.classifier)))),
)
