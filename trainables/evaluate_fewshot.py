"""Job: the few-shot accuracy curves of a study's features beside the raw-pixel baseline, on the test split.

The searches chose their setting (a VAE's latent size, a diffusion step t) on validation images;
only here does the test split appear. Every feature set goes through `trainables.fewshot` with the
same k-shot draws, so the curves differ by their features alone, and raw pixels are one more
feature set through the same code.

Feature sources, each a checkpoint folder given by reference (all optional, pixels on by default):
`vae` (posterior means), `diffusion` (a `ddpm_timestep` result: its DDPM's decoder features at its
t), `discriminator` (a `dcgan` or `gasten` result: its GAN discriminator's penultimate activations,
the flattened 7x7 maps before the real/fake Linear, `Discriminator.embed`, in eval mode so BatchNorm
uses its running statistics and an image's features do not depend on its batch), `classifier` (the
penultimate layer of a trained classifier: features trained WITH labels, the upper reference).

Writes `fewshot.parquet`, `fewshot.md` and `fewshot_curves.png`; reports `<features>.<head>.k<k>`
(mean accuracy) for every curve point.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainables.checkpoint import load_checkpoint
from trainables.data import DatasetUse, load_images
from trainables.definitions import JobDef, Metric, Output
from trainables.device import resolve_device
from trainables.fewshot import DEFAULT_SHOTS, FewShotConfig, fewshot_curve, markdown_table, pixel_features, plot_curves
from trainables.reporter import Reporter
from trainables.settings import RuntimeSettings

FeatureFn = Callable[[torch.Tensor], np.ndarray]
HEADLINE_K = 16  # the k the searches optimise


@dataclass(frozen=True, kw_only=True)
class FewShotJobConfig(RuntimeSettings):
    dataset: str = "mnist"
    vae: str = ""  # a vae checkpoint folder (`vae.best`)
    diffusion: str = ""  # a ddpm_timestep result folder (`timestep.best`): the DDPM and the chosen t
    classifier: str = ""  # a classifier checkpoint folder: labelled-data features, for reference
    discriminator: str = ""  # a dcgan (or gasten) checkpoint folder (`gan.best`): the discriminator's features
    pixels: bool = True  # the raw-pixel baseline
    shots: tuple[int, ...] = DEFAULT_SHOTS
    repeats: int = 5
    heads: tuple[str, ...] = ("lin", "nonlin")
    train_pool: int = 10000  # training images (seeded subset) the k-shot sets are drawn from
    test_images: int = 0  # 0 = the whole test split

    def __post_init__(self) -> None:
        if not (self.vae or self.diffusion or self.classifier or self.discriminator or self.pixels):
            raise ValueError("no feature set: give vae, diffusion, discriminator or classifier (by reference) or keep "
                             "pixels: true")
        if self.train_pool < 2 or self.test_images < 0:
            raise ValueError(f"train_pool must be >= 2 and test_images >= 0, got {self.train_pool}, "
                             f"{self.test_images}")
        FewShotConfig(shots=self.shots, repeats=self.repeats, heads=self.heads, seed=self.seed)  # validates those


def feature_sources(config: FewShotJobConfig) -> list[tuple[str, str, FeatureFn]]:
    """(name, settings, images -> features) for every configured feature set, pixels first."""
    device = resolve_device(config.device)
    sources: list[tuple[str, str, FeatureFn]] = []
    if config.pixels:
        sources.append(("pixels", "raw pixels", pixel_features))
    if config.vae:
        from trainables import vae as vae_module

        state = load_checkpoint(config.vae)
        model = vae_module.build_model(state).to(device)
        sources.append(("vae", f"posterior mean, latent_dim={model.latent_dim}",
                        lambda images: vae_module.features(model, images, device)))
    if config.diffusion:
        from trainables import diffusion
        from trainables.diffusion_timestep import FEATURE_NOISE_SEED, NAME, load_ddpm

        chosen = load_checkpoint(config.diffusion)
        if chosen.trainable != NAME:
            raise ValueError(f"diffusion: {config.diffusion} is a {chosen.trainable!r} result, not a "
                             f"{NAME} one (inputs: {{diffusion: <timestep stage>.best}})")
        unet, schedule, _ = load_ddpm(chosen.config["ddpm"])
        unet.to(device)
        t, pool = int(chosen.config["t"]), int(chosen.config.get("pool", 1))
        sources.append(("diffusion", f"DDPM decoder features at t={t}, {pool}x{pool} average pooling",
                        lambda images: diffusion.extract_features(unet, schedule, images, t, seed=FEATURE_NOISE_SEED,
                                                                  device=device, pool=pool).numpy()))
    if config.discriminator:
        from trainables.dcgan import discriminator_from_checkpoint

        state = load_checkpoint(config.discriminator)
        if "discriminator" not in state.modules:
            raise ValueError(f"discriminator: {config.discriminator} is a {state.trainable!r} checkpoint "
                             "without a discriminator; give a dcgan or gasten checkpoint folder (inputs: "
                             "{discriminator: gan.best})")
        critic = discriminator_from_checkpoint(state).to(device)

        def embed_critic(images: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                return torch.cat([critic.embed(batch.to(device)).cpu() for batch in images.split(512)]).numpy()

        sources.append(("discriminator", f"penultimate layer of a {state.trainable} discriminator "
                                         f"({critic.net[-1].in_features} features, trained without labels)",
                        embed_critic))
    if config.classifier:
        from trainables import classifier as classifier_module

        state = load_checkpoint(config.classifier)
        net = classifier_module.build_model(state).to(device)

        def embed(images: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                return torch.cat([net.embed(batch.to(device)).cpu() for batch in images.split(512)]).numpy()

        sources.append(("classifier", "penultimate layer of a classifier trained with labels", embed))
    return sources


def run(config: FewShotJobConfig, reporter: Reporter, workdir: Path) -> dict[str, float]:
    import pandas as pd

    fewshot = FewShotConfig(shots=config.shots, repeats=config.repeats, heads=config.heads, seed=config.seed)
    pool = load_images(config.dataset, "train", limit=config.train_pool, seed=config.seed)
    test = load_images(config.dataset, "test", limit=config.test_images or None, seed=config.seed)
    frames, settings = [], {}
    for name, described, extract in feature_sources(config):
        print(f"[fewshot] {name} ({described}): features of {len(pool)} training and {len(test)} test images",
              flush=True)
        frame = fewshot_curve(extract(pool.images), pool.labels.numpy(), extract(test.images), test.labels.numpy(),
                              fewshot, name)
        frames.append(frame)
        settings[name] = described
    table = pd.concat(frames, ignore_index=True)
    workdir = Path(workdir)
    table.to_parquet(workdir / "fewshot.parquet", index=False)
    notes = "\n".join(f"- {name}: {described}" for name, described in settings.items())
    (workdir / "fewshot.md").write_text(
        f"Few-shot test accuracy (mean ± std over {config.repeats} draws; {len(test)} test images):\n\n"
        f"{markdown_table(table)}\n{notes}\n")
    plot_curves(table, workdir / "fewshot_curves.png")
    metrics = {f"{row.features}.{row.head}.k{row.k}": float(row.mean_accuracy) for row in table.itertuples()}
    # The headline first (summaries show a job's first metrics): each feature set's lin accuracy at k = 16.
    headline = [key for key in metrics if key.endswith(f".lin.k{HEADLINE_K}")]
    metrics = {**{key: metrics[key] for key in headline}, **metrics}
    (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print((workdir / "fewshot.md").read_text(), flush=True)
    reporter.report(metrics)
    return metrics


FEWSHOT = JobDef(
    name="fewshot",
    config_cls=FewShotJobConfig,
    run=run,
    metrics=(Metric("pixels.lin.k16", higher_is_better=True, description="raw-pixel baseline, lin head, k = 16"),),
    description="few-shot accuracy curves (k labelled images per class, lin and MLP heads) of a study's VAE, "
                "diffusion, GAN discriminator or classifier features beside raw pixels, on the test split; table, "
                "parquet, plot",
    datasets=lambda config: (DatasetUse(config.dataset, ("train", "test")),),
    tiny_config={"shots": [2, 16], "repeats": 2, "heads": ["lin"], "train_pool": 500, "test_images": 300},
    contract_inputs=lambda upstream: {"vae": upstream.trainable("vae"), "diffusion": upstream.trainable("ddpm_timestep"),
                                      "classifier": upstream.trainable("classifier", classes=[]),
                                      "discriminator": upstream.trainable("dcgan")},
    outputs={"metrics": Output("metrics", "metrics.json"), "table": Output("table", "fewshot.md"),
             "curves": Output("picture", "fewshot_curves.png"), "data": Output("data", "fewshot.parquet")},
)
