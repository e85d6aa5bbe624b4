"""Generated outliers and a K+1 classifier: an OOD detector that has seen "off-manifold" images.

The method: train a VAE on the in-distribution training images; decode latents drawn from a thin
shell far outside where the N(0, I) prior puts its mass (z = r u, u uniform on the unit sphere,
r = shell_radius * sqrt(latent_dim), while prior samples have norm close to sqrt(latent_dim));
those decodings are image-like but off the data manifold. A classifier with one extra output,
class K ("unknown"), is then trained on the real images (classes 0..K-1) and the generated ones
(class K). The OOD score is P(K | x); with the `trainables.ood` convention (higher =
in-distribution) the detector's score is 1 - P(K | x), and its in-distribution prediction is the
argmax over the first K outputs.

Read top to bottom: the config, the outlier generator, the detector, the training step, the
trainable. Stage 1 (the VAE) is a plain loop over `vae_epochs` reusing `trainables/vae.py`'s
epoch function; stage 2 (the classifier) runs in the project's `fit` loop, which checkpoints
both networks, so a resumed run loads the VAE instead of training it again and regenerates the
very same outliers (they come from a seeded generator). The validation AUROC uses an OOD set
that is not a test set (`validation_ood`, uniform noise by default), so a search never tunes
on the sets it is finally judged on.

`classes` restricts the in-distribution to some classes, relabelled 0..K-1 in the given order
exactly as `trainables/classifier.py` does (through `load_images`): with `classes: [7, 1]` output
0 is "7", output 1 is "1" (the study classifier's C(x) = P(second class)) and output 2 "unknown".

The boundary variant (`outliers_from`, a `gasten` or `dcgan` checkpoint folder): no VAE is
trained; the outliers are that GAN's images, `outliers` of them from latents of a private seeded
generator (a resumed run regenerates the same set). With `outlier_band` and a `classifier`
checkpoint only images whose C(x) lies in the band are kept (GASTeN's images on the binary
classifier's decision boundary): they are generated and scored by `trainables.ambiguous`, chunk
after chunk, until `outliers` are kept or `outlier_candidates` have been tried.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables.ambiguous import check_band, generate_ambiguous, load_generator
from trainables.checkpoint import STATE_FILE, Checkpoint, load_checkpoint
from trainables.classifier import HELD_OUT_EPOCH_COST, Classifier, split_train_val
from trainables.config import build_config
from trainables.data import ImageSet, load_images, training_data
from trainables.dcgan import generate
from trainables.definitions import Metric, TrainableDef
from trainables.device import resolve_device
from trainables.fit import fit
from trainables.ood.detectors import Detector
from trainables.ood.metrics import ood_metrics
from trainables.ood.sets import check_validation_ood, ood_set
from trainables.reporter import Reporter
from trainables.settings import DataSettings, RuntimeSettings
from trainables.vae import VAE, VAEConfig, decode, evaluate_vae, load_vae, train_vae_epoch

VALIDATION_OOD_IMAGES = 1000


@dataclass(frozen=True, kw_only=True)
class KPlus1Config(DataSettings, RuntimeSettings):
    # classes (DataSettings): the in-distribution classes, relabelled 0..K-1 in this order; () = all ten
    val_size: int = 1000  # carved from the training split, seeded
    latent_dim: int = 8
    vae_epochs: int = 5
    shell_radius: float = 3.0  # in units of sqrt(latent_dim), the typical norm of a prior sample
    outliers: int = 10000  # generated outlier images per training run
    ood_weight: float = 1.0  # weight of the outlier class's cross-entropy relative to the in-distribution one
    nf: int = 1  # classifier width: Classifier(nf, K + 1)
    lr: float = 1e-3  # classifier learning rate (the VAE uses VAEConfig's defaults)
    batch_size: int = 64  # in-distribution images per classifier batch (outliers are added to each batch)
    epochs: int = 3  # classifier epochs
    validation_ood: str = "uniform_noise"  # a trainables.ood.sets name, used ONLY for val_auroc
    # The boundary variant: a gasten or dcgan checkpoint folder (`inputs: {outliers_from: gasten.best}`) whose
    # images are the outliers; no VAE is trained and latent_dim, vae_epochs and shell_radius are unused.
    outliers_from: str = ""
    outlier_band: tuple[float, float] = ()  # keep only generated images with C(x) in [low, high]; () keeps all
    classifier: str = ""  # the binary classifier C of outlier_band (`inputs: {classifier: classifier.best}`)
    outlier_candidates: int = 0  # most images generated to find `outliers` in the band; 0 = 100 x outliers

    def __post_init__(self) -> None:
        if min(self.latent_dim, self.vae_epochs, self.outliers, self.nf, self.batch_size, self.epochs,
               self.val_size) < 1:
            raise ValueError("latent_dim, vae_epochs, outliers, nf, batch_size, epochs and val_size must be >= 1")
        if self.train_size < 0:
            raise ValueError(f"train_size must be >= 0, got {self.train_size}")
        if self.shell_radius <= 0:
            raise ValueError(f"shell_radius must be > 0, got {self.shell_radius}")
        if self.ood_weight < 0:
            raise ValueError(f"ood_weight must be >= 0, got {self.ood_weight}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        check_validation_ood(self.validation_ood)
        if self.classes:
            if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes) or not all(
                    isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 9 for c in self.classes):
                raise ValueError(f"classes must be () or at least 2 distinct digits 0..9, got {tuple(self.classes)}")
        if self.outlier_band:
            if not self.outliers_from:
                raise ValueError("outlier_band filters the images of outliers_from: give outliers_from (a gasten or "
                                 "dcgan checkpoint folder) or drop outlier_band")
            if not self.classifier:
                raise ValueError("outlier_band needs classifier, the binary classifier whose C(x) it bounds "
                                 "(inputs: {classifier: classifier.best})")
            try:
                check_band(tuple(self.outlier_band))
            except ValueError as error:
                raise ValueError(f"outlier_band: {error}") from None
        elif self.classifier:
            raise ValueError("classifier is only used to filter the outliers by outlier_band: set outlier_band "
                             "(e.g. [0.4, 0.6]) or drop classifier")
        if self.outlier_candidates < 0:
            raise ValueError(f"outlier_candidates must be >= 0 (0 = 100 x outliers), got {self.outlier_candidates}")

    def vae_config(self) -> VAEConfig:
        """The stage-1 VAE: this config's data, latent size and epochs; VAEConfig's width, lr and batch."""
        return VAEConfig(dataset=self.dataset, train_size=self.train_size, val_size=self.val_size,
                         latent_dim=self.latent_dim, epochs=self.vae_epochs, seed=self.seed, device=self.device,
                         allow_fallback=self.allow_fallback)


def shell_latents(n: int, latent_dim: int, radius: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """n latents uniform on the sphere of norm radius * sqrt(latent_dim) (a normalised Gaussian is uniform)."""
    directions = torch.randn(n, latent_dim, generator=generator)
    directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return directions * (radius * math.sqrt(latent_dim))


def generate_outliers(vae: VAE, n: int, radius: float, seed: int, device: torch.device | str) -> torch.Tensor:
    """(n, 1, 28, 28) images in [0, 1] (CPU): the VAE's decodings of `shell_latents`, drawn from `seed`."""
    device = torch.device(device) if isinstance(device, str) else device
    z = shell_latents(n, vae.latent_dim, radius, torch.Generator().manual_seed(seed))
    was_training = vae.training
    images = decode(vae, z, device)
    vae.train(was_training)
    return images


OUTLIER_ROUND_TAG = 0xB0DE  # separates the band rounds' latent streams from any other use of `seed`
OUTLIER_CANDIDATES_PER_OUTLIER = 100  # outlier_candidates 0: at most this many images generated per outlier


def check_generator_checkpoint(folder: str) -> str:
    """The trainable that wrote `folder` ('gasten', 'dcgan'); ValueError naming outliers_from otherwise."""
    if not (Path(folder) / STATE_FILE).is_file():
        raise ValueError(f"outliers_from: {folder} is not a checkpoint folder (no {STATE_FILE} inside); give a "
                         "gasten or dcgan checkpoint folder (inputs: {outliers_from: gasten.best})")
    state = load_checkpoint(folder)
    if "generator" not in state.modules:
        raise ValueError(f"outliers_from: {folder} is a {state.trainable!r} checkpoint without a generator; "
                         "give a gasten or dcgan checkpoint folder (inputs: {outliers_from: gasten.best})")
    return state.trainable


def _round_seed(seed: int, round_: int) -> int:
    return int(np.random.SeedSequence([seed, OUTLIER_ROUND_TAG, round_]).generate_state(1)[0])


def generator_outliers(folder: str, n: int, seed: int, device: torch.device | str, classifier: str = "",
                       band: tuple[float, float] | tuple[()] = (), candidates: int = 0,
                       chunk: int = 0) -> torch.Tensor:
    """(m, 1, 28, 28) images in [0, 1] (CPU) from the generator of a gasten or dcgan checkpoint folder.

    Without `band`: exactly n images, for n latents drawn from a private generator seeded with
    `seed` (the generator in eval mode, so each image depends on its latent alone). With `band`
    (and the `classifier` folder of C): `trainables.ambiguous.generate_ambiguous` generates and
    scores a chunk of images (latents seeded from (seed, round)), the ones with band[0] <= C(x) <=
    band[1] are kept, and so on until n are kept (the first n are returned) or `candidates` images
    (0: 100 n) were tried; then the m < n kept are returned with a printed note. A function of its
    arguments only: a resumed run regenerates the very same set. ValueError naming `outliers_from`
    when `folder` holds no generator, naming `outlier_band` when no image falls in the band.
    """
    check_generator_checkpoint(folder)
    device = resolve_device(str(device))
    if not band:
        generator = load_generator(folder, device)
        latents = torch.randn(n, generator.z_dim, generator=torch.Generator().manual_seed(seed))
        return generate(generator, latents, device)
    band = (float(band[0]), float(band[1]))
    limit = candidates or OUTLIER_CANDIDATES_PER_OUTLIER * n
    chunk = chunk or max(n, 1000)
    kept: list[np.ndarray] = []
    found = generated = round_ = 0
    while found < n and generated < limit:
        size = min(chunk, limit - generated)
        # Band [0, 1] keeps every image with its score; this band is applied here, so a chunk with
        # nothing inside is a normal step of the search, not generate_ambiguous's "none kept" error.
        scored = generate_ambiguous(folder, classifier, images=size, band=(0.0, 1.0), seed=_round_seed(seed, round_),
                                    device=str(device))
        inside = (scored.scores >= band[0]) & (scored.scores <= band[1])
        kept.append(scored.images[inside])
        found, generated, round_ = found + int(inside.sum()), generated + size, round_ + 1
    if not found:
        raise ValueError(f"outlier_band: none of the {generated} images generated from {folder} has C(x) in "
                         f"[{band[0]:g}, {band[1]:g}]; widen outlier_band or raise outlier_candidates")
    if found < n:
        print(f"[kplus1] only {found} of {generated} generated images have C(x) in [{band[0]:g}, {band[1]:g}]: "
              f"training with {found} outliers instead of {n} (raise outlier_candidates for more)", flush=True)
    return torch.from_numpy(np.concatenate(kept)[:n]).float()


def describe(state: Checkpoint) -> str:
    """The settings of a trained K+1 model, for evaluate_ood's table.

    VAE-shell outliers: "ood_weight=..., shell_radius=..., latent_dim=..." (as before the boundary
    variant existed). GAN outliers: "outliers=gasten generator, n=..., band=[...], ood_weight=...".
    Either way followed by the classes when the model was trained on a subset.
    """
    config = state.config
    if not config.get("outliers_from"):
        parts = [f"{k}={config[k]:.4g}" if isinstance(config[k], float) else f"{k}={config[k]}"
                 for k in ("ood_weight", "shell_radius", "latent_dim")]
    else:
        source = "GAN"
        if (Path(config["outliers_from"]) / STATE_FILE).is_file():  # the folder may have moved since training
            source = load_checkpoint(config["outliers_from"]).trainable or source
        parts = [f"outliers={source} generator", f"n={config['outliers']}"]
        if config.get("outlier_band"):
            low, high = config["outlier_band"]
            parts.append(f"band=[{low:g}, {high:g}]")
        parts.append(f"ood_weight={config['ood_weight']:.4g}")
    if config.get("classes"):
        parts.append("classes=" + "/".join(str(c) for c in config["classes"]))
    return ", ".join(parts)


class KPlus1Detector(Detector):
    """Score = 1 - softmax(f(x))[K] (probability of NOT being the unknown class, the last output).

    Computed in float64 so that a confident classifier's in-distribution scores do not all round
    to exactly 1.0 (ties would hide the ranking AUROC measures). The classifier is scored in eval
    mode and returned in the mode it was in.
    """

    name = "kplus1"

    def __init__(self, classifier: nn.Module, device: str = "auto", batch_size: int = 512) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.device = resolve_device(device)
        self.classifier = classifier.to(self.device)  # nn.Module.to moves the caller's module in place
        self.batch_size = batch_size

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(N, K + 1) float64 logits on the CPU."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(f"images must be a (N, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
        was_training = self.classifier.training
        self.classifier.eval()
        try:
            parts = [self.classifier(batch.to(self.device)).double().cpu() for batch in images.split(self.batch_size)]
        finally:
            self.classifier.train(was_training)
        logits = torch.cat(parts) if parts else torch.empty(0, 2, dtype=torch.float64)
        if logits.shape[1] < 2:
            raise ValueError(f"a K+1 classifier needs at least 2 outputs, this one has {logits.shape[1]}")
        return logits

    def score(self, images: torch.Tensor) -> np.ndarray:
        return (1.0 - F.softmax(self.logits(images), dim=1)[:, -1]).numpy()

    def predict(self, images: torch.Tensor) -> np.ndarray:
        """The in-distribution class (0..K-1): the argmax over all outputs but the unknown one."""
        return self.logits(images)[:, :-1].argmax(dim=1).numpy()


def train_kplus1_epoch(classifier: nn.Module, optimizer: torch.optim.Optimizer, data: ImageSet,
                       outliers: torch.Tensor, batch_size: int, ood_weight: float, order_seed: int,
                       device: torch.device) -> dict[str, float]:
    """One pass over the real images; each batch also holds its share of the outliers (all seen once).

    loss = CE(real, their labels) + ood_weight * CE(outliers, K), each a mean over its own images.
    Real and generated images go through the network together, so BatchNorm's statistics (and
    its running averages, used at test time) describe the mixture the classifier is trained on.
    """
    generator = torch.Generator().manual_seed(order_seed)
    order = torch.randperm(len(data), generator=generator)
    outlier_order = torch.randperm(len(outliers), generator=generator)
    real_batches = order.split(batch_size)
    outlier_batches = outlier_order.tensor_split(len(real_batches))
    unknown = len(data.classes)
    total = torch.zeros((), device=device)
    for idx, out_idx in zip(real_batches, outlier_batches):
        x = torch.cat([data.images[idx], outliers[out_idx]]).to(device)
        y = data.labels[idx].to(device)
        logits = classifier(x)
        loss = F.cross_entropy(logits[:len(idx)], y)
        if len(out_idx):
            out_logits = logits[len(idx):]
            loss = loss + ood_weight * F.cross_entropy(out_logits, torch.full((len(out_idx),), unknown, device=device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(idx)
    return {"train_loss": total.item() / len(order)}


def train(config: KPlus1Config, reporter: Reporter) -> dict[str, float]:
    """The trainable: stage 1 trains the VAE (or, with `outliers_from`, generates the GAN's outliers),
    stage 2 the K+1 classifier; reports val_auroc, val_accuracy, train_loss (and, with a VAE,
    vae_val_loss, the stage-1 VAE's negative ELBO) every epoch."""
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    data = load_images(config.dataset, "train", classes=config.classes or None, allow_fallback=config.allow_fallback,
                       seed=config.seed)
    train_set, val_set = split_train_val(data, config)
    validation_ood = ood_set(config.validation_ood, count=VALIDATION_OOD_IMAGES, seed=config.seed)

    modules: dict[str, nn.Module] = {}
    extra: dict[str, float] = {}
    if config.outliers_from:
        # The boundary variant: the GAN's images, regenerated identically on every (re)start.
        outliers = generator_outliers(config.outliers_from, config.outliers, config.seed, device,
                                      classifier=config.classifier, band=tuple(config.outlier_band),
                                      candidates=config.outlier_candidates)
    else:
        # Stage 1: the VAE, unless the checkpoint being resumed already holds it.
        vae_config = config.vae_config()
        vae = VAE(vae_config.latent_dim, vae_config.nf).to(device)
        resumed = reporter.restore()
        if resumed is None:
            vae_optimizer = torch.optim.Adam(vae.parameters(), lr=vae_config.lr)
            for epoch in range(vae_config.epochs):
                train_vae_epoch(vae, vae_optimizer, train_set.images, vae_config.batch_size, vae_config.beta,
                                order_seed=config.seed * 100_003 + epoch, device=device)
        else:
            vae.load_state_dict(resumed.modules["vae"])
        extra["vae_val_loss"] = evaluate_vae(vae, val_set.images, device)["val_loss"]
        outliers = generate_outliers(vae, config.outliers, config.shell_radius, config.seed, device)
        modules["vae"] = vae

    # Stage 2: the K+1 classifier, in the project's training loop.
    classifier = Classifier(config.nf, len(train_set.classes) + 1).to(device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=config.lr)
    detector = KPlus1Detector(classifier, device=config.device)

    def train_epoch(epoch: int) -> dict[str, float]:
        return train_kplus1_epoch(classifier, optimizer, train_set, outliers, config.batch_size, config.ood_weight,
                                  order_seed=config.seed * 100_003 + 50_000 + epoch, device=device)

    def validate(epoch: int) -> dict[str, float]:
        accuracy = float((detector.predict(val_set.images) == val_set.labels.numpy()).mean())
        auroc = ood_metrics(detector.score(val_set.images), detector.score(validation_ood))["auroc"]
        return {"val_accuracy": accuracy, "val_auroc": auroc, **extra}

    return fit(trainable="kplus1", config=config, epochs=config.epochs,
               modules={**modules, "classifier": classifier}, optimizers={"classifier": optimizer},
               train_epoch=train_epoch, evaluate=validate, reporter=reporter)


def build_model(state: Checkpoint) -> Classifier:
    """Rebuild the trained K+1 classifier (the unknown class is its last output) from a checkpoint, sized by its
    config: nf, and one output per class it was trained on (`classes`, () for all ten) plus the unknown one."""
    model = Classifier(state.config["nf"], (len(state.config.get("classes", ())) or 10) + 1)
    model.load_state_dict(state.modules["classifier"])
    return model.eval()


def stage1_vae(state: Checkpoint) -> VAE:
    """The stage-1 VAE of a K+1 checkpoint trained on VAE-shell outliers (no `outliers_from`), in eval mode,
    sized as its config built it (`KPlus1Config.vae_config`)."""
    vae_config = build_config(KPlus1Config, state.config).vae_config()
    return load_vae(state.modules["vae"], vae_config.latent_dim, vae_config.nf)


KPLUS1 = TrainableDef(
    name="kplus1",
    config_cls=KPlus1Config,
    run=train,
    metrics=(
        Metric("val_auroc", higher_is_better=True,
               description="AUROC of 1 - P(unknown): validation images vs the validation_ood set (not a test set)"),
        Metric("val_accuracy", higher_is_better=True,
               description="accuracy over the first K classes on the held-out validation images"),
        Metric("train_loss", higher_is_better=False,
               description="mean training loss of the epoch: CE(real) + ood_weight * CE(outliers, unknown)"),
        Metric("vae_val_loss", higher_is_better=False, optional=True,
               description="negative ELBO of the stage-1 VAE on the validation images (constant over epochs); "
                           "not reported with outliers_from, which trains no VAE"),
    ),
    description="K+1 classifier trained against VAE-generated off-manifold outliers, or a GAN's (GASTeN's "
                "boundary) images with outliers_from (OOD detection)",
    curves=("val_auroc", "val_accuracy", "train_loss"),
    build_model=build_model,
    datasets=training_data,
    tiny_config={"train_size": 256, "val_size": 64, "vae_epochs": 1, "outliers": 256, "epochs": 1},
    epoch_cost=dataclasses.replace(HELD_OUT_EPOCH_COST, also_scaled=("outliers",)),  # every outlier, every epoch
)
