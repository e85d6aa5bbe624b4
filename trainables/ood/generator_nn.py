"""Generator-based safer classification: classify by the nearest generated image, reject the far ones.

The method: train one generator per class (here the project's VAE, on that class's training
images only) and draw a bank of samples from each. An input is classified as the class of its
nearest bank image (Euclidean distance in pixel space) and rejected when that distance is larger
than a threshold: an image unlike anything the class generators produce is neither trusted nor
labelled. With the `trainables.ood` convention (higher = in-distribution) the detector's score is
minus that distance.

The reference method has no threshold. Here it is picked on the held-out validation images so that
`target_tpr` of them are accepted (the same "score >= threshold" rule and TPR convention as
`ood_metrics`' FPR at 95% TPR), and the trainable reports what the threshold costs on those images:
the reject rate, the accuracy on the accepted ones (selective accuracy) and the accuracy over all.
Note that the validation reject rate is in-sample (the threshold was chosen on the very same
images), so it is about 1 - target_tpr by construction; the out-of-sample reject rate is the test
split's, measured by whoever evaluates the checkpoint.

Read top to bottom: the config, the threshold and selective metrics, the detector, the bank
(per-class VAEs, reusing `trainables/vae.py`'s model and epoch function), the trainable. The
checkpoint holds the bank as uint8 pixels (20,000 images are 15 MB, versus 60 MB as floats and
well under the VAEs' weights) plus the threshold; the VAEs are not needed afterwards. The metrics
and threshold are computed on the bank exactly as stored (quantised to 1/255), so a detector
rebuilt from the checkpoint gives the very same scores.

Like `kplus1`, val_auroc uses a validation OOD set that is not a test set (`validation_ood`,
Gaussian noise by default), so a search never tunes on the sets it is finally judged on.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from trainables.checkpoint import Checkpoint
from trainables.classifier import split_train_val
from trainables.data import ImageSet, every_class_training_data, load_images
from trainables.definitions import Metric, TrainableDef
from trainables.device import resolve_device
from trainables.ood.detectors import Detector
from trainables.ood.metrics import ood_metrics
from trainables.ood.sets import check_validation_ood, ood_set
from trainables.reporter import Reporter
from trainables.settings import DatasetSettings, RuntimeSettings
from trainables.vae import VAE, VAEConfig, decode, train_vae_epoch

NAME = "generator_nn"
VALIDATION_SEED = 1  # the validation OOD images, as in odin_search; evaluation jobs draw test images with seed 0
_SEED_STRIDE = 100_003  # per config.seed, as elsewhere; per-class seeds are offsets inside it
_LATENT_OFFSET = 50_000  # the prior latents of class c come from seed * stride + offset + c


@dataclass(frozen=True, kw_only=True)
class GeneratorNNConfig(DatasetSettings, RuntimeSettings):
    val_size: int = 1000  # carved from the training split, seeded; picks the threshold
    latent_dim: int = 8
    vae_epochs: int = 3  # per class VAE
    # Per class VAE. Smaller than VAEConfig's 128 because each VAE sees a tenth of the data: with 128,
    # 3,000 training images and 2 epochs give each VAE 6 steps and a bank of blobs (nearest-neighbour
    # accuracy 0.18); 32 gives 4x the steps for about 1.6x the time on full MNIST.
    vae_batch_size: int = 32
    samples_per_class: int = 2000  # the generated bank: samples_per_class x classes images
    target_tpr: float = 0.95  # share of in-distribution validation images the threshold must accept
    validation_ood: str = "gaussian_noise"  # a trainables.ood.sets name, used ONLY for val_auroc

    def __post_init__(self) -> None:
        if min(self.latent_dim, self.vae_epochs, self.vae_batch_size, self.samples_per_class, self.val_size) < 1:
            raise ValueError("latent_dim, vae_epochs, vae_batch_size, samples_per_class and val_size must be >= 1")
        if self.train_size < 0:
            raise ValueError(f"train_size must be >= 0, got {self.train_size}")
        if not 0.0 < self.target_tpr <= 1.0:
            raise ValueError(f"target_tpr must be in (0, 1], got {self.target_tpr}")
        check_validation_ood(self.validation_ood)

    def vae_config(self) -> VAEConfig:
        """The per-class VAE: this config's data, latent size, epochs and batch; VAEConfig's width, lr and beta."""
        return VAEConfig(dataset=self.dataset, train_size=self.train_size, val_size=self.val_size,
                         latent_dim=self.latent_dim, epochs=self.vae_epochs, batch_size=self.vae_batch_size,
                         seed=self.seed, device=self.device, allow_fallback=self.allow_fallback)


def threshold_at_tpr(scores_in: np.ndarray, tpr: float) -> float:
    """The largest threshold t such that `score >= t` accepts at least `tpr` of `scores_in`.

    That is the k-th largest score, k the smallest count with k / n >= tpr, computed in floating
    point exactly as `ood_metrics` compares sklearn's TPRs with 0.95 (0.07 * 100 is 7.000000000000001,
    so a plain ceil(tpr * n) would ask for 8 of 100). With ties at the k-th score more than k are
    accepted, as there is no threshold between equal scores. Rounding up, never interpolating:
    the promise is "at least tpr accepted".
    """
    scores = np.asarray(scores_in, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"scores_in must be a non-empty 1-D array, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores_in contains non-finite scores (NaN or inf)")
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    n = scores.size
    k = min(max(math.ceil(tpr * n), 1), n)
    while k > 1 and (k - 1) / n >= tpr:
        k -= 1
    while k < n and k / n < tpr:
        k += 1
    return float(np.sort(scores)[::-1][k - 1])


def selective_metrics(accepted: np.ndarray, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """What a reject option buys: reject_rate, coverage (= 1 - reject_rate), selective_accuracy
    (accuracy on the accepted images; NaN when none is accepted, as there is nothing to be right
    about) and accuracy (on all images, as if nothing were rejected)."""
    accepted = np.asarray(accepted)
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if accepted.dtype != np.bool_:
        raise ValueError(f"accepted must be a boolean array, got dtype {accepted.dtype}")
    if not (accepted.ndim == predictions.ndim == labels.ndim == 1) or not (
            len(accepted) == len(predictions) == len(labels)):
        raise ValueError(f"accepted, predictions and labels must be 1-D of one length, got shapes "
                         f"{accepted.shape}, {predictions.shape}, {labels.shape}")
    if accepted.size == 0:
        raise ValueError("selective_metrics needs at least one image")
    correct = predictions == labels
    coverage = float(accepted.mean())
    return {
        "reject_rate": 1.0 - coverage,
        "coverage": coverage,
        "selective_accuracy": float(correct[accepted].mean()) if accepted.any() else math.nan,
        "accuracy": float(correct.mean()),
    }


def validation_metrics(scores_in: np.ndarray, predictions: np.ndarray, labels: np.ndarray, scores_ood: np.ndarray,
                       target_tpr: float) -> dict[str, float]:
    """What a generator-based trainable reports once (epoch 1): the threshold at `target_tpr` of the validation
    scores, what it costs there (val_reject_rate, val_selective_accuracy; val_accuracy rejects nothing) and
    val_auroc of the validation images against the validation OOD set."""
    threshold = threshold_at_tpr(scores_in, target_tpr)
    selective = selective_metrics(scores_in >= threshold, predictions, labels)
    return {
        "epoch": 1.0,
        "val_auroc": ood_metrics(scores_in, scores_ood)["auroc"],
        "val_accuracy": selective["accuracy"],
        "val_reject_rate": selective["reject_rate"],
        "val_selective_accuracy": selective["selective_accuracy"],
        "threshold": threshold,
    }


def validation_metric_defs(score: str, classify: str) -> tuple[Metric, ...]:
    """The Metric declarations of `validation_metrics`, for a method whose score is `score` and that
    classifies by `classify`."""
    return (
        Metric("val_auroc", higher_is_better=True,
               description=f"AUROC of {score}: validation images vs the validation_ood set (not a test set)"),
        Metric("val_accuracy", higher_is_better=True,
               description=f"{classify} accuracy on all held-out validation images (nothing rejected)"),
        Metric("val_reject_rate", higher_is_better=False,
               description="share of validation images rejected at the threshold (about 1 - target_tpr by "
                           "construction: the threshold is picked on these images)"),
        Metric("val_selective_accuracy", higher_is_better=True,
               description="accuracy on the validation images the threshold accepts"),
        Metric("threshold", higher_is_better=True,
               description=f"the chosen threshold on the score ({score}); informational"),
    )


def cost_metric_defs(generator: str, training: str) -> tuple[Metric, ...]:
    """The Metric declarations of the costs a generator-based trainable reports beside its validation metrics."""
    return (Metric("generator_params", higher_is_better=False, description=generator),
            Metric("train_seconds", higher_is_better=False, description=training))


def training_split(config) -> tuple[torch.device, ImageSet, ImageSet]:
    """Seeds torch and returns (device, training images, held-out validation images) of `config.dataset`,
    all classes; the validation images pick the threshold."""
    torch.manual_seed(config.seed)
    data = load_images(config.dataset, "train", allow_fallback=config.allow_fallback, seed=config.seed)
    return resolve_device(config.device), *split_train_val(data, config)


def report_final(reporter: Reporter, name: str, config, detector: Detector, scores_in: np.ndarray,
                 predictions: np.ndarray, labels: np.ndarray, costs: dict[str, float], bank: torch.Tensor,
                 bank_labels: torch.Tensor,
                 modules: Mapping[str, dict[str, torch.Tensor]] | None = None) -> dict[str, float]:
    """A generator-based trainable's one report (epoch 1): `validation_metrics` at `config.target_tpr`
    against `config.validation_ood` (never a test set) and `costs`, with the checkpoint `republish_final`
    and `detector_from_state` read: the bank as stored and the threshold (its extras), and the state dicts of
    any trained `modules`."""
    validation_ood = ood_set(config.validation_ood, count=config.val_size, seed=VALIDATION_SEED)
    metrics = {**validation_metrics(scores_in, predictions, labels, detector.score(validation_ood), config.target_tpr),
               **costs}
    checkpoint = Checkpoint(trainable=name, config=dataclasses.asdict(config), epoch=1, metrics=dict(metrics),
                            modules=dict(modules or {}),
                            extras={"bank": bank, "bank_labels": bank_labels, "threshold": metrics["threshold"]})
    reporter.report(metrics, checkpoint=checkpoint)
    return metrics


def republish_final(reporter: Reporter, name: str) -> dict[str, float] | None:
    """For a trainable whose only checkpoint is its final one: when resumed, publish that result again (so
    this attempt has one too) and return it; None on a fresh start."""
    resumed = reporter.restore()
    if resumed is None:
        return None
    if resumed.trainable != name:
        raise ValueError(f"asked to resume from a {resumed.trainable!r} checkpoint, not a {name} one")
    metrics = dict(resumed.metrics)
    reporter.report(metrics)
    return metrics


def _check_images(images: torch.Tensor, what: str = "images") -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{what} must be a (N, C, H, W) tensor, got {shape}")


class NearestGeneratedDetector(Detector):
    """Score = -min_j ||x - bank_j||_2 over the pixels; prediction = label of that nearest bank image.

    The nearest image is found with `torch.cdist` in float32 (fast, through a matrix product), and
    the distance to it is then recomputed directly in float64: the matrix-product form
    ||x||^2 - 2 x.b + ||b||^2 loses the small distances to cancellation, and scores that are exact
    differences keep near-duplicates apart and make a rebuilt detector reproduce its threshold.
    `accepts` needs the threshold (from training, or any the caller picks).
    """

    name = NAME

    def __init__(self, bank: torch.Tensor, bank_labels: torch.Tensor, threshold: float | None = None,
                 device: str = "auto", batch_size: int = 512) -> None:
        _check_images(bank, "bank")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if len(bank) == 0:
            raise ValueError("the bank is empty: a nearest-neighbour detector needs at least one image")
        if not isinstance(bank_labels, torch.Tensor) or bank_labels.shape != (len(bank),):
            raise ValueError(f"bank_labels must be a ({len(bank)},) tensor, got "
                             f"{getattr(bank_labels, 'shape', type(bank_labels).__name__)}")
        if threshold is not None and not math.isfinite(threshold):
            raise ValueError(f"threshold must be finite or None, got {threshold}")
        self.device = resolve_device(device)
        self.image_shape = tuple(bank.shape[1:])
        self.bank = bank.float().flatten(1).to(self.device)
        self.bank_labels = bank_labels.long().cpu()
        self.threshold = None if threshold is None else float(threshold)
        self.batch_size = batch_size

    @torch.no_grad()
    def nearest(self, images: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """(index of the nearest bank image (N,) on the CPU, float64 distance to it (N,))."""
        _check_images(images)
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"images are {tuple(images.shape[1:])}, the bank holds {self.image_shape} images")
        indices, distances = [], []
        for batch in images.split(self.batch_size):
            x = batch.to(self.device).float().flatten(1)
            idx = torch.cdist(x, self.bank).argmin(dim=1)
            distances.append((x.double() - self.bank[idx].double()).norm(dim=1).cpu())
            indices.append(idx.cpu())
        if not indices:
            return torch.empty(0, dtype=torch.long), np.empty(0)
        return torch.cat(indices), torch.cat(distances).numpy()

    def score(self, images: torch.Tensor) -> np.ndarray:
        return -self.nearest(images)[1]

    def predict(self, images: torch.Tensor) -> np.ndarray:
        """The class index (0..K-1, as `ImageSet.labels`) of the nearest bank image."""
        return self.bank_labels[self.nearest(images)[0]].numpy()

    def accepts(self, images: torch.Tensor) -> np.ndarray:
        """True where score >= threshold: the image is close enough to some generated one to be classified."""
        if self.threshold is None:
            raise ValueError("this detector has no threshold: pass one, or rebuild it with detector_from_state")
        return self.score(images) >= self.threshold


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def quantize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8 pixels, the way the bank is stored (the datasets' own resolution)."""
    return (images.clamp(0.0, 1.0) * 255).round().to(torch.uint8)


def dequantize(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float() / 255.0


def train_class_vae(images: torch.Tensor, config: VAEConfig, class_index: int, device: torch.device) -> VAE:
    """A VAE on one class's images. The global RNG (weights, reparameterisation noise) and the batch
    order are seeded from (seed, class), so each class's VAE is the same whatever the others do."""
    torch.manual_seed(config.seed * _SEED_STRIDE + class_index)
    vae = VAE(config.latent_dim, config.nf).to(device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=config.lr)
    for epoch in range(config.epochs):
        train_vae_epoch(vae, optimizer, images, config.batch_size, config.beta,
                        order_seed=config.seed * _SEED_STRIDE + 1000 * (class_index + 1) + epoch, device=device)
    return vae.eval()


def generate_bank(train_set: ImageSet, config: GeneratorNNConfig, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(bank (K * samples_per_class, 1, 28, 28) uint8, labels (K * samples_per_class,) int64), on the CPU.

    One VAE per class, trained, sampled from the N(0, I) prior and dropped before the next one,
    so at most one VAE is in memory.
    """
    vae_config = config.vae_config()
    images, labels = [], []
    for class_index in range(len(train_set.classes)):
        own = train_set.images[train_set.labels == class_index]
        if len(own) == 0:
            raise ValueError(f"class {train_set.classes[class_index]} has no training images (train_size "
                             f"{config.train_size} is too small); every class needs its own generator")
        vae = train_class_vae(own, vae_config, class_index, device)
        generator = torch.Generator().manual_seed(config.seed * _SEED_STRIDE + _LATENT_OFFSET + class_index)
        z = torch.randn(config.samples_per_class, config.latent_dim, generator=generator)
        images.append(quantize(decode(vae, z, device)))
        labels.append(torch.full((config.samples_per_class,), class_index, dtype=torch.long))
        del vae
    return torch.cat(images), torch.cat(labels)


def detector_from_state(state: Checkpoint, device: str = "auto") -> NearestGeneratedDetector:
    """The trained detector (bank and validation threshold) from a generator_nn checkpoint state."""
    if state.trainable != NAME:
        raise ValueError(f"a {state.trainable!r} checkpoint is not a {NAME} one")
    return NearestGeneratedDetector(dequantize(state.extras["bank"]), state.extras["bank_labels"],
                                    threshold=state.extras["threshold"], device=device)


def train(config: GeneratorNNConfig, reporter: Reporter) -> dict[str, float]:
    """The trainable: builds the bank, picks the threshold, reports once (epoch 1): val_auroc,
    val_accuracy, val_reject_rate, val_selective_accuracy and threshold."""
    republished = republish_final(reporter, NAME)
    if republished is not None:
        return republished

    started = time.perf_counter()
    device, train_set, val_set = training_split(config)
    bank, bank_labels = generate_bank(train_set, config, device)
    train_seconds = time.perf_counter() - started
    vae_config = config.vae_config()
    generator_params = len(train_set.classes) * parameter_count(VAE(vae_config.latent_dim, vae_config.nf))

    detector = NearestGeneratedDetector(dequantize(bank), bank_labels, device=str(device))
    nearest, distances = detector.nearest(val_set.images)
    return report_final(reporter, NAME, config, detector, -distances, bank_labels[nearest].numpy(),
                        val_set.labels.numpy(), {"generator_params": float(generator_params),
                                                 "train_seconds": train_seconds}, bank, bank_labels)


GENERATOR_NN = TrainableDef(
    name=NAME,
    config_cls=GeneratorNNConfig,
    run=train,
    metrics=(
        *validation_metric_defs("minus the pixel distance to the nearest generated image", "nearest-generated-image"),
        *cost_metric_defs("parameters of the per-class VAEs together (classes x one VAE)",
                          "wall time of training the per-class VAEs and drawing the bank"),
    ),
    description="class-wise VAE sample banks: nearest generated image classifies, its distance rejects (OOD)",
    datasets=every_class_training_data,
    tiny_config={"train_size": 300, "val_size": 100, "vae_epochs": 1, "samples_per_class": 50},
)
