"""The clustering objective: which reducer and clusterer find the patterns in GASTeN's ambiguous images.

"Finding Patterns in Ambiguous Images" generates many images with the GASTeN generator, keeps those
the classifier cannot decide on (C(x) in a band around 0.5), embeds them with the classifier's
penultimate layer, and clusters the embeddings. Which reduction (UMAP, PCA, none) and which
clusterer (HDBSCAN, a Gaussian mixture) with which settings is a search, scored by silhouette
(Davies-Bouldin, Calinski-Harabasz, the noise fraction and the number of clusters are reported
too, and a study declares constraints on them so one giant cluster or all-noise cannot win).

The orchestrator runs this as an `optuna` stage: `prepare` makes the ambiguous set once (cached in
the stage's folder as ambiguous.npz, so a resumed stage does not regenerate it), `evaluate` is one
trial, and `finalize` writes the best trial's clustering result folder (trainables/prototypes.py's
format), which the prototypes job reads by reference (`clustering.best`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from trainables.ambiguous import AmbiguousSet, check_band, generate_ambiguous, load_ambiguous, save_ambiguous
from trainables.clustering import CLUSTERERS, REDUCERS, run_pipeline, view_2d
from trainables.definitions import BranchPick, Metric, ObjectiveDef
from trainables.prototypes import ClusteringResultData, save_clustering_result
from trainables.settings import RuntimeSettings

AMBIGUOUS_FILE = "ambiguous.npz"


@dataclass(frozen=True, kw_only=True)
class ClusteringSearchConfig(RuntimeSettings):
    generator: str = ""  # a gasten (or dcgan) checkpoint folder: `inputs: {generator: gasten.best}`
    classifier: str = ""  # the binary classifier's checkpoint folder: `inputs: {classifier: classifier.best}`
    ambiguous: str = ""  # instead of both: an ambiguous-image set (.npz from trainables.ambiguous.save_ambiguous)
    images: int = 15000  # images to generate (the paper: 15,000); only those with C(x) in `band` are kept
    band: tuple[float, ...] = (0.4, 0.6)
    min_images: int = 30  # fewer kept images than this is an error, not a clustering
    score_on: Literal["reduced", "embedding"] = "reduced"  # see trainables.clustering.run_pipeline

    def __post_init__(self) -> None:
        generated = bool(self.generator) or bool(self.classifier)
        if generated == bool(self.ambiguous):
            raise ValueError("give either generator and classifier (normally by reference: inputs: {generator: "
                             "gasten.best, classifier: classifier.best}) or an `ambiguous` .npz file, not both")
        if generated and not (self.generator and self.classifier):
            raise ValueError("generator and classifier go together: give both")
        check_band(tuple(self.band))
        if self.images < 1 or self.min_images < 2:
            raise ValueError(f"images must be >= 1 and min_images >= 2, got {self.images} and {self.min_images}")


def prepare(config: ClusteringSearchConfig, workdir: Path) -> AmbiguousSet:
    """The ambiguous set every trial clusters: generated once, then read back from the stage folder."""
    if config.ambiguous:
        data = load_ambiguous(config.ambiguous)
    else:
        cached = Path(workdir) / AMBIGUOUS_FILE
        if cached.is_file():
            data = load_ambiguous(cached)
            print(f"[clustering] {len(data)} ambiguous images from {cached}", flush=True)
        else:
            print(f"[clustering] generating {config.images} images, keeping C(x) in "
                  f"[{config.band[0]:g}, {config.band[1]:g}]...", flush=True)
            data = generate_ambiguous(config.generator, config.classifier, config.images,
                                      (config.band[0], config.band[1]), config.seed, config.device)
            save_ambiguous(data, cached)
            print(f"[clustering] kept {len(data)} of {data.generated} ({len(data) / data.generated:.1%}) -> "
                  f"{cached}", flush=True)
    if len(data) < config.min_images:
        raise ValueError(f"only {len(data)} of {data.generated} images have C(x) in [{data.band[0]:g}, "
                         f"{data.band[1]:g}] (min_images {config.min_images}); raise `images` or widen `band`")
    return data


def evaluate(config: ClusteringSearchConfig, picks: Mapping[str, BranchPick], data: AmbiguousSet) -> dict[str, float]:
    """One trial: reduce, cluster and score the ambiguous embeddings."""
    result = run_pipeline(data.embeddings, picks["reducer"][1], picks["clusterer"][1], config.seed, config.score_on)
    return dict(result.metrics)


def finalize(config: ClusteringSearchConfig, picks: Mapping[str, BranchPick], data: AmbiguousSet,
             folder: Path) -> None:
    """The best trial's clustering, re-run (every step is seeded) and saved with a 2-D view for plots."""
    (reducer_kind, reducer), (clusterer_kind, clusterer) = picks["reducer"], picks["clusterer"]
    result = run_pipeline(data.embeddings, reducer, clusterer, config.seed, config.score_on)
    coords = view_2d(data.embeddings, result.reduced, reducer, config.seed)
    save_clustering_result(folder, ClusteringResultData(
        images=data.images, scores=data.scores, embeddings=data.embeddings, reduced=result.reduced,
        labels=result.labels, coords=coords, reducer={"kind": reducer_kind, **asdict(reducer)},
        clusterer={"kind": clusterer_kind, **asdict(clusterer)}, metrics=result.metrics, classes=data.classes,
        band=data.band, generated=data.generated))


def describe_data(data: AmbiguousSet) -> dict[str, float]:
    return {"ambiguous_images": float(len(data)), "generated_images": float(data.generated),
            "kept_fraction": len(data) / max(data.generated, 1)}


def preflight(config: ClusteringSearchConfig) -> None:
    """A given ambiguous file must exist before anything starts (checkpoints come from earlier stages)."""
    if config.ambiguous and not Path(config.ambiguous).is_file():
        raise FileNotFoundError(f"ambiguous: no such file {config.ambiguous}")


CLUSTERING = ObjectiveDef(
    name="clustering",
    config_cls=ClusteringSearchConfig,
    branches={"reducer": REDUCERS, "clusterer": CLUSTERERS},
    prepare=prepare,
    evaluate=evaluate,
    finalize=finalize,
    metrics=(
        Metric("silhouette", higher_is_better=True, description="mean silhouette of the clustered points, in [-1, 1]"),
        Metric("davies_bouldin", higher_is_better=False, description="Davies-Bouldin index (0 is best)"),
        Metric("calinski_harabasz", higher_is_better=True, description="Calinski-Harabasz index"),
        Metric("noise_fraction", higher_is_better=False, description="share of points HDBSCAN left in no cluster"),
        Metric("n_clusters", higher_is_better=True, description="clusters found, noise excluded"),
        Metric("reduce_s", higher_is_better=False, description="seconds spent reducing"),
        Metric("cluster_s", higher_is_better=False, description="seconds spent clustering"),
    ),
    description="reduce (UMAP/PCA/none) and cluster (HDBSCAN/GMM) ambiguous images' classifier embeddings",
    preflight=preflight,
    describe_data=describe_data,
    # A 1-epoch DCGAN draws blobs the tiny classifier is sure about: none falls in [0.4, 0.6], so keep them all.
    tiny_config={"images": 300, "band": [0.0, 1.0]},
    contract_inputs=lambda upstream: {"generator": upstream.trainable("dcgan"),
                                      "classifier": upstream.trainable("classifier")},
    tiny_picks={"reducer": ("pca", {"n_components": 5}), "clusterer": ("gmm", {"n_components": 3})},
)
