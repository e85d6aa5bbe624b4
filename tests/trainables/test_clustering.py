"""Reduce, cluster, score: planted clusters come back, scores are sklearn's on the clustered points, sizes clamp.

Real umap, hdbscan and scikit-learn on tiny data. umap compiles with numba on its first fit in a
process (umap 0.5 caches almost none of it: ~20 s on an idle 2-core machine, whatever the data size),
so the two tests that fit umap are marked slow: the full suite runs them, the fast part does not.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, calinski_harabasz_score, davies_bouldin_score, silhouette_score

from trainables.clustering import (
    CLUSTERERS,
    REDUCERS,
    GmmConfig,
    HdbscanConfig,
    NoReduction,
    PcaConfig,
    UmapConfig,
    build_clusterer,
    build_reducer,
    cluster,
    reduce,
    run_pipeline,
    score,
    view_2d,
)
from trainables.config import ConfigError, build_config

REPO = Path(__file__).resolve().parents[2]
SCORE_KEYS = {"silhouette", "davies_bouldin", "calinski_harabasz", "noise_fraction", "n_clusters"}


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """Five well-separated Gaussian blobs in 50 dimensions: 300 points and their true labels."""
    points, truth = make_blobs(n_samples=300, n_features=50, centers=5, cluster_std=1.0,
                               center_box=(-10.0, 10.0), random_state=0)
    return points.astype(np.float32), truth


# Planted clusters come back.

def test_pca_then_hdbscan_recovers_planted_blobs(blobs):
    points, truth = blobs
    result = run_pipeline(points, PcaConfig(n_components=5), HdbscanConfig(min_cluster_size=10))
    assert result.reduced.shape == (300, 5)
    assert adjusted_rand_score(truth, result.labels) >= 0.9
    assert result.metrics["n_clusters"] == 5
    assert set(result.metrics) == SCORE_KEYS | {"reduce_s", "cluster_s"}
    assert result.metrics["reduce_s"] >= 0 and result.metrics["cluster_s"] >= 0


def test_gmm_on_raw_embeddings_recovers_planted_blobs(blobs):
    points, truth = blobs
    result = run_pipeline(points, NoReduction(), GmmConfig(n_components=5))
    assert result.reduced is points  # nothing rescaled behind the caller's back
    assert adjusted_rand_score(truth, result.labels) >= 0.9
    assert result.metrics["noise_fraction"] == 0.0
    assert result.metrics["silhouette"] > 0.5


@pytest.mark.slow
def test_umap_then_hdbscan_recovers_planted_blobs_and_repeats_itself(blobs):
    points, truth = blobs
    config = UmapConfig(n_neighbors=15, n_components=2)
    result = run_pipeline(points, config, HdbscanConfig(min_cluster_size=10), seed=3)
    assert result.reduced.shape == (300, 2)
    assert adjusted_rand_score(truth, result.labels) >= 0.9
    again = run_pipeline(points, config, HdbscanConfig(min_cluster_size=10), seed=3)
    np.testing.assert_array_equal(again.reduced, result.reduced)  # a fixed seed is a fixed trial
    np.testing.assert_array_equal(again.labels, result.labels)
    assert view_2d(points, result.reduced, config) is result.reduced


def test_scoring_on_the_embedding_uses_the_original_space(blobs):
    points, _ = blobs
    result = run_pipeline(points, PcaConfig(n_components=3), GmmConfig(n_components=5), score_on="embedding")
    expected = score(points, result.labels)
    assert {key: result.metrics[key] for key in SCORE_KEYS} == pytest.approx(expected)
    assert result.metrics["calinski_harabasz"] != pytest.approx(score(result.reduced, result.labels)["calinski_harabasz"])
    with pytest.raises(ValueError, match="score_on"):
        run_pipeline(points, NoReduction(), GmmConfig(), score_on="both")  # type: ignore[arg-type]


# score(): sklearn's numbers, on the clustered points only.

HAND_POINTS = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [5.0, 5.0], [5.0, 6.0], [6.0, 5.5], [10.0, 0.0], [10.5, 1.0]])
HAND_LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2])


def test_score_matches_sklearn_on_a_hand_case():
    scores = score(HAND_POINTS, HAND_LABELS)
    assert set(scores) == SCORE_KEYS
    assert scores["silhouette"] == pytest.approx(silhouette_score(HAND_POINTS, HAND_LABELS))
    assert scores["davies_bouldin"] == pytest.approx(davies_bouldin_score(HAND_POINTS, HAND_LABELS))
    assert scores["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(HAND_POINTS, HAND_LABELS))
    assert scores["n_clusters"] == 3 and scores["noise_fraction"] == 0.0


def test_noise_is_left_out_of_the_scores_and_counted_apart():
    noise = np.array([[50.0, -50.0], [-40.0, 30.0]])  # far away: would wreck every score if counted
    points = np.vstack([HAND_POINTS, noise])
    labels = np.concatenate([HAND_LABELS, [-1, -1]])
    scores = score(points, labels)
    clean = score(HAND_POINTS, HAND_LABELS)
    for key in ("silhouette", "davies_bouldin", "calinski_harabasz", "n_clusters"):
        assert scores[key] == pytest.approx(clean[key]), key
    assert scores["noise_fraction"] == pytest.approx(2 / 10)


def test_one_cluster_has_no_quality_scores():
    scores = score(HAND_POINTS, np.array([0, 0, 0, 0, 0, 0, -1, -1]))
    assert scores["n_clusters"] == 1
    assert scores["noise_fraction"] == pytest.approx(0.25)
    assert all(math.isnan(scores[key]) for key in ("silhouette", "davies_bouldin", "calinski_harabasz"))


def test_all_noise_and_one_point_per_cluster_have_no_quality_scores():
    all_noise = score(HAND_POINTS, np.full(8, -1))
    assert all_noise["n_clusters"] == 0 and all_noise["noise_fraction"] == 1.0
    assert math.isnan(all_noise["silhouette"]) and math.isnan(all_noise["calinski_harabasz"])
    singletons = score(HAND_POINTS[:3], np.array([0, 1, 2]))  # as many clusters as points
    assert singletons["n_clusters"] == 3 and math.isnan(singletons["davies_bouldin"])


def test_silhouette_on_many_points_is_a_fixed_sample():
    points, labels = make_blobs(n_samples=6000, n_features=3, centers=3, random_state=1)
    first, second = score(points, labels), score(points, labels)
    assert first["silhouette"] == second["silhouette"]
    assert first["silhouette"] == pytest.approx(silhouette_score(points, labels, sample_size=5000, random_state=0))


# Impossible sizes clamp instead of crashing.

def test_pca_clamps_more_components_than_eight_points_allow():
    points = np.random.default_rng(0).normal(size=(8, 5))
    assert reduce(points, PcaConfig(n_components=50)).shape == (8, 5)  # min(N, D)


@pytest.mark.slow
def test_umap_clamps_more_components_and_neighbours_than_eight_points_allow():
    points = np.random.default_rng(0).normal(size=(8, 5))
    assert reduce(points, UmapConfig(n_neighbors=15, n_components=20)).shape == (8, 5)  # min(N - 2, D)
    assert reduce(np.random.default_rng(1).normal(size=(8, 40)), UmapConfig(n_components=20)).shape == (8, 6)


def test_clusterers_clamp_to_the_points_there_are():
    points = np.random.default_rng(0).normal(size=(8, 3))
    labels = cluster(points, GmmConfig(n_components=20), seed=1)
    assert labels.shape == (8,) and labels.min() >= 0 and len(np.unique(labels)) <= 8
    assert (cluster(points[:1], HdbscanConfig(min_cluster_size=2)) == -1).all()  # hdbscan itself crashes here
    assert (cluster(points, HdbscanConfig(min_cluster_size=20)) == -1).all()


# Configs: built by kind, checked on construction.

def test_builders_return_typed_configs():
    assert build_reducer("umap", {"n_neighbors": 30, "min_dist": 0}) == UmapConfig(n_neighbors=30, min_dist=0.0)
    assert isinstance(build_reducer("umap", {"min_dist": 0}).min_dist, float)
    assert build_reducer("none", {}) == NoReduction()
    assert build_clusterer("hdbscan", {"min_samples": None}) == HdbscanConfig()
    assert build_clusterer("gmm", {"covariance_type": "tied"}) == GmmConfig(covariance_type="tied")


def test_every_config_field_is_one_the_yaml_checker_understands():
    for config_cls in (*REDUCERS.values(), *CLUSTERERS.values()):
        defaults = config_cls()
        values = {field.name: getattr(defaults, field.name) for field in dataclasses.fields(config_cls)}
        assert build_config(config_cls, values) == defaults


def test_unknown_kind_names_itself_and_the_known_ones():
    with pytest.raises(ValueError, match=r"'tsne'.*umap, pca, none"):
        build_reducer("tsne", {})
    with pytest.raises(ValueError, match=r"'kmeans'.*hdbscan, gmm"):
        build_clusterer("kmeans", {})


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="n_neighbours: unknown setting"):
        build_reducer("umap", {"n_neighbours": 10})
    with pytest.raises(ConfigError, match="metric: expected one of"):
        build_reducer("umap", {"metric": "hamming"})
    with pytest.raises(ConfigError, match="min_cluster_size must be >= 2"):
        build_clusterer("hdbscan", {"min_cluster_size": 1})


@pytest.mark.parametrize("make,message", [
    (lambda: UmapConfig(n_neighbors=1), "n_neighbors"),
    (lambda: UmapConfig(min_dist=-0.1), "min_dist"),
    (lambda: UmapConfig(n_components=0), "n_components"),
    (lambda: PcaConfig(n_components=0), "n_components"),
    (lambda: HdbscanConfig(min_samples=0), "min_samples"),
    (lambda: HdbscanConfig(cluster_selection_epsilon=-1.0), "cluster_selection_epsilon"),
    (lambda: GmmConfig(n_components=0), "n_components"),
])
def test_out_of_range_settings_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# The 2-D view for scatter plots.

def test_view_2d_keeps_a_2d_space_and_draws_others_with_pca():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(30, 10))
    reduced = rng.normal(size=(30, 2))
    assert view_2d(embeddings, reduced, PcaConfig(n_components=2)) is reduced
    view = view_2d(embeddings, embeddings, NoReduction())
    assert view.shape == (30, 2)
    np.testing.assert_allclose(view, PCA(n_components=2).fit_transform(embeddings))


def test_view_2d_pads_what_too_few_points_cannot_span():
    two = np.array([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    view = view_2d(two, two, UmapConfig())
    assert view.shape == (2, 2) and (view[:, 1] == 0).all()
    assert abs(view[0, 0] - view[1, 0]) == pytest.approx(5.0)  # the one direction there is
    assert (view_2d(two[:1], two[:1], NoReduction()) == 0).all()


# Importing the module pays for neither umap nor hdbscan.

def test_importing_the_module_loads_neither_umap_nor_hdbscan():
    code = ("import sys, trainables.clustering; "
            "loaded = [m for m in ('umap', 'hdbscan', 'numba') if m in sys.modules]; "
            "print(loaded); sys.exit(1 if loaded else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_gmm_sklearn_cannot_fit_in_float32_is_refit_instead_of_failing_the_search():
    """Two tight groups far from the origin, in float32: sklearn's covariance estimate loses its precision
    and the plain fit raises "ill-defined empirical covariance" (a seed-1 flagship run failed on this)."""
    from sklearn.mixture import GaussianMixture

    points = (np.random.default_rng(0).normal(size=(300, 4)) * 1e-3 + 100.0).astype(np.float32)
    points[:150, 0] += 1.0
    with pytest.raises(ValueError, match="ill-defined empirical covariance"):
        GaussianMixture(n_components=8, covariance_type="diag", random_state=0).fit(points)
    labels = cluster(points, GmmConfig(n_components=8, covariance_type="diag"), 0)
    assert (labels >= 0).all()
    groups = [set(labels[:150]), set(labels[150:])]
    assert groups[0].isdisjoint(groups[1])  # the two groups are told apart
