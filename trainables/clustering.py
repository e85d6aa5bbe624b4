"""Clustering embeddings of generated images: reduce, cluster, score — the science behind a clustering search.

Read top to bottom: the configs (one frozen dataclass per reducer and per clusterer, named in
`REDUCERS` and `CLUSTERERS` so a study YAML can pick them by kind), the three steps, the pipeline
a search trial runs, a 2-D view for scatter plots, and the builders that turn a kind and loose
settings into a config.

Nothing here rescales the embeddings: they reach the reducer exactly as given. Whether to
standardise or L2-normalise is a property of the feature extractor, decided once where the
embeddings are made; doing it silently here would change what every trial's score means.

A search calls `run_pipeline` once per trial on the same embeddings, so sizes a sampler proposes
that this data cannot support (more UMAP neighbours than points, more GMM components than points)
are clamped rather than crashing the trial; the config keeps what was asked.

umap and hdbscan are imported inside the functions that use them: importing umap costs seconds
(numba), and validating a study file only needs the config classes.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from sklearn.decomposition import PCA
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score
from sklearn.mixture import GaussianMixture

from trainables.config import build_config


@dataclass(frozen=True)
class UmapConfig:
    n_neighbors: int = 15
    min_dist: float = 0.1
    n_components: int = 2
    metric: Literal["euclidean", "cosine", "manhattan", "correlation"] = "cosine"

    def __post_init__(self) -> None:
        if self.n_neighbors < 2:
            raise ValueError(f"n_neighbors must be >= 2, got {self.n_neighbors}")
        if self.min_dist < 0:
            raise ValueError(f"min_dist must be >= 0, got {self.min_dist}")
        if self.n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {self.n_components}")


@dataclass(frozen=True)
class PcaConfig:
    n_components: int = 10

    def __post_init__(self) -> None:
        if self.n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {self.n_components}")


@dataclass(frozen=True)
class NoReduction:
    """Cluster the embeddings as they are: the baseline every reducer has to beat."""


@dataclass(frozen=True)
class HdbscanConfig:
    min_cluster_size: int = 10
    min_samples: int | None = None  # None: hdbscan's default (= min_cluster_size)
    cluster_selection_epsilon: float = 0.0

    def __post_init__(self) -> None:
        if self.min_cluster_size < 2:
            raise ValueError(f"min_cluster_size must be >= 2, got {self.min_cluster_size}")
        if self.min_samples is not None and self.min_samples < 1:
            raise ValueError(f"min_samples must be null or >= 1, got {self.min_samples}")
        if self.cluster_selection_epsilon < 0:
            raise ValueError(f"cluster_selection_epsilon must be >= 0, got {self.cluster_selection_epsilon}")


@dataclass(frozen=True)
class GmmConfig:
    n_components: int = 5
    covariance_type: Literal["full", "diag", "tied", "spherical"] = "full"

    def __post_init__(self) -> None:
        if self.n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {self.n_components}")


ReducerConfig = UmapConfig | PcaConfig | NoReduction
ClustererConfig = HdbscanConfig | GmmConfig

REDUCERS: dict[str, type] = {"umap": UmapConfig, "pca": PcaConfig, "none": NoReduction}
CLUSTERERS: dict[str, type] = {"hdbscan": HdbscanConfig, "gmm": GmmConfig}

SILHOUETTE_SAMPLE = 5000  # silhouette is O(N^2); above this many points it is estimated on a sample
SILHOUETTE_SEED = 0  # fixed, so the same labels always get the same score whatever the trial's seed


def reduce(embeddings: np.ndarray, config: ReducerConfig, seed: int = 0) -> np.ndarray:
    """(N, D) embeddings -> (N, d) points for the clusterer, with sizes clamped to what N and D allow.

    Floating-point input keeps its dtype (float32 features stay float32: embeddings can be large);
    anything else becomes float64. No centring or scaling beyond what PCA itself does.
    """
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise ValueError(f"embeddings must be a non-empty (N, D) array, got shape {embeddings.shape}")
    if not np.issubdtype(embeddings.dtype, np.floating):
        embeddings = embeddings.astype(np.float64)
    n, dims = embeddings.shape

    if isinstance(config, NoReduction):
        return embeddings
    if isinstance(config, PcaConfig):
        # random_state matters only when sklearn picks its randomized solver (large inputs).
        pca = PCA(n_components=min(config.n_components, n, dims), random_state=seed)
        return pca.fit_transform(embeddings)
    if isinstance(config, UmapConfig):
        if n < 3:
            raise ValueError(f"UMAP needs at least 3 points, got {n}")
        import umap

        # umap's spectral initialisation needs n_components < N - 1; a neighbour graph needs neighbours.
        reducer = umap.UMAP(
            n_neighbors=min(config.n_neighbors, n - 1),
            min_dist=config.min_dist,
            n_components=min(config.n_components, n - 2, dims),
            metric=config.metric,
            # A fixed random_state makes umap run single-threaded. We accept the slowdown: a search
            # compares trials, and two runs of one config must give the same clusters and score.
            # Saying n_jobs=1 outright is that choice made explicit.
            random_state=seed,
            n_jobs=1,
        )
        with warnings.catch_warnings():
            # umap's "n_jobs overridden by setting random_state" notice, once per trial, is the trade-off above.
            warnings.filterwarnings("ignore", message=".*(random_state|n_jobs).*")
            return reducer.fit_transform(embeddings)
    raise TypeError(f"not a reducer config: {config!r}")


def cluster(points: np.ndarray, config: ClustererConfig, seed: int = 0) -> np.ndarray:
    """One integer label per point; -1 marks noise, which only HDBSCAN produces.

    HDBSCAN is deterministic, so `seed` only reaches the GMM's initialisation.
    """
    points = np.asarray(points)
    if points.ndim != 2 or len(points) == 0:
        raise ValueError(f"points must be a non-empty (N, d) array, got shape {points.shape}")
    n = len(points)

    if isinstance(config, HdbscanConfig):
        if n < config.min_cluster_size:
            # No cluster can be that large; hdbscan would say the same (or crash, for a single point).
            return np.full(n, -1, dtype=np.int64)
        import hdbscan

        clusterer = hdbscan.HDBSCAN(
            min_cluster_size=config.min_cluster_size,
            min_samples=config.min_samples,
            cluster_selection_epsilon=config.cluster_selection_epsilon,
        )
        return clusterer.fit_predict(points).astype(np.int64)
    if isinstance(config, GmmConfig):
        return fit_gmm(points, config, seed)
    raise TypeError(f"not a clusterer config: {config!r}")


GMM_RETRIES = ((None, 1e-6), (np.float64, 1e-6), (np.float64, 1e-4), (np.float64, 1e-2))  # (dtype, reg_covar)


def fit_gmm(points: np.ndarray, config: GmmConfig, seed: int) -> np.ndarray:
    """A GMM's labels. On float32 embeddings far from the origin, sklearn's covariance estimate can lose so
    much precision that it is not positive definite, and the fit raises ("ill-defined empirical
    covariance"): a property of the setting, not a bug, and one trial must not fail the search. Such a fit is
    repeated in float64 and then with more regularisation (sklearn's own advice); a setting no retry fits
    labels every point noise (-1), which the search's constraints then reject. The first attempt is the
    plain fit, so a setting that fits gives the labels it always gave."""
    for dtype, reg_covar in GMM_RETRIES:
        gmm = GaussianMixture(n_components=min(config.n_components, len(points)),
                              covariance_type=config.covariance_type, reg_covar=reg_covar, random_state=seed)
        try:
            return gmm.fit_predict(points if dtype is None else points.astype(dtype)).astype(np.int64)
        except ValueError:
            continue
    return np.full(len(points), -1, dtype=np.int64)


def score(points: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Internal quality of a labelling, judged on its clustered (non-noise) points only.

    Noise is left out rather than treated as a cluster: HDBSCAN's noise is "no cluster", and
    counting it as one would reward or punish a trial for an arbitrary blob. Dropping it can flatter
    a trial that calls most points noise, which is why `noise_fraction` is reported beside the
    scores. Where the scores are undefined (fewer than two clusters, or no point left to compare a
    cluster with) they are NaN, which a search treats as a failed trial rather than a value.
    """
    points, labels = np.asarray(points), np.asarray(labels)
    if len(points) != len(labels):
        raise ValueError(f"{len(points)} points but {len(labels)} labels")
    clustered = labels != -1
    x, y = points[clustered], labels[clustered]
    n_clusters = len(np.unique(y))
    scores = {
        "silhouette": float("nan"),
        "davies_bouldin": float("nan"),
        "calinski_harabasz": float("nan"),
        "noise_fraction": float(np.mean(~clustered)) if len(labels) else float("nan"),
        "n_clusters": float(n_clusters),
    }
    if n_clusters < 2 or n_clusters >= len(y):
        return scores
    sample = SILHOUETTE_SAMPLE if len(y) > SILHOUETTE_SAMPLE else None
    try:
        scores["silhouette"] = float(silhouette_score(x, y, sample_size=sample, random_state=SILHOUETTE_SEED))
    except ValueError:
        pass  # the sample missed all but one cluster (a tiny cluster among many points): undefined
    scores["davies_bouldin"] = float(davies_bouldin_score(x, y))
    scores["calinski_harabasz"] = float(calinski_harabasz_score(x, y))
    return scores


@dataclass(frozen=True, eq=False)  # eq=False: == on numpy fields is ambiguous
class ClusteringResult:
    reduced: np.ndarray  # the points the clusterer saw
    labels: np.ndarray  # -1 = noise
    metrics: dict[str, float]  # score(...) plus "reduce_s" and "cluster_s" (wall seconds of each step)


def run_pipeline(
    embeddings: np.ndarray,
    reducer: ReducerConfig,
    clusterer: ClustererConfig,
    seed: int = 0,
    score_on: Literal["reduced", "embedding"] = "reduced",
) -> ClusteringResult:
    """One trial: reduce, cluster, score.

    `score_on="reduced"` scores the labels in the space the clusterer saw, as the paper did: it
    measures how well the clusterer did its job, but each reducer builds its own space (UMAP in
    particular pulls neighbourhoods apart), so scores from different reducers or different
    n_components are not on one scale, and a search optimising it favours reducers that make
    clusters look tight. `score_on="embedding"` scores the same labels in the original embedding
    space: one yardstick for every trial, so reducers compete fairly, but it judges reduced-space
    clusters by distances the clusterer never saw, and silhouette is slower in high dimensions.
    """
    if score_on not in ("reduced", "embedding"):
        raise ValueError(f"score_on must be 'reduced' or 'embedding', got {score_on!r}")
    start = time.perf_counter()
    reduced = reduce(embeddings, reducer, seed)
    reduced_at = time.perf_counter()
    labels = cluster(reduced, clusterer, seed)
    clustered_at = time.perf_counter()
    metrics = score(reduced if score_on == "reduced" else embeddings, labels)
    metrics["reduce_s"] = reduced_at - start
    metrics["cluster_s"] = clustered_at - reduced_at
    return ClusteringResult(reduced=reduced, labels=labels, metrics=metrics)


def view_2d(embeddings: np.ndarray, reduced: np.ndarray, reducer: ReducerConfig, seed: int = 0) -> np.ndarray:
    """(N, 2) coordinates for a scatter plot of one trial's clusters.

    The clusterer's own space when it is already 2-D, so the picture shows what was clustered.
    Otherwise a UMAP trial is drawn with its own settings at two components (the picture then
    matches the neighbourhoods the trial chose) and everything else with PCA of the embeddings,
    which is cheap and makes no claim it did not cluster on. Too few points or dimensions for two
    axes leave the missing axis at zero.
    """
    reduced = np.asarray(reduced)
    if reduced.ndim == 2 and reduced.shape[1] == 2:
        return reduced
    embeddings = np.asarray(embeddings)
    n, dims = embeddings.shape
    if isinstance(reducer, UmapConfig) and n >= 4:
        coordinates = reduce(embeddings, replace(reducer, n_components=2), seed)
    else:
        k = min(2, n - 1, dims)  # n points span at most n - 1 directions
        coordinates = (PCA(n_components=k, random_state=seed).fit_transform(embeddings) if k >= 1
                       else np.zeros((n, 0)))
    return np.pad(coordinates, ((0, 0), (0, 2 - coordinates.shape[1])))


def build_reducer(kind: str, settings: Mapping[str, Any]) -> ReducerConfig:
    """The reducer config a study names, e.g. ("umap", {"n_neighbors": 30}); ConfigError lists bad settings."""
    if kind not in REDUCERS:
        raise ValueError(f"unknown reducer {kind!r} (known: {', '.join(REDUCERS)})")
    return build_config(REDUCERS[kind], settings)


def build_clusterer(kind: str, settings: Mapping[str, Any]) -> ClustererConfig:
    """The clusterer config a study names, e.g. ("hdbscan", {"min_cluster_size": 20}); ConfigError lists bad settings."""
    if kind not in CLUSTERERS:
        raise ValueError(f"unknown clusterer {kind!r} (known: {', '.join(CLUSTERERS)})")
    return build_config(CLUSTERERS[kind], settings)
