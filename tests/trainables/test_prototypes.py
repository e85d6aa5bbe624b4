"""Prototype selection on hand-made points, and the prototypes job on a saved synthetic clustering."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from trainables.config import ConfigError, build_config, required_fields
from trainables.prototypes import (PARQUET_COLUMNS, PROTOTYPES, ClusteringResultData, PrototypesConfig,
                                   cluster_lines, load_clustering_result, medoid_index, save_clustering_result,
                                   select_prototypes)
from trainables.reporter import ListReporter

PNG = b"\x89PNG\r\n\x1a\n"


def picks_of(picks, cluster, kind):
    return [(p.rank, p.index) for p in picks if p.cluster == cluster and p.kind == kind]


def test_medoid_representatives_and_ambiguous_members_of_hand_made_clusters():
    # Cluster 4 lies on a line at x = 0, 1, 2, 3, 10 (rows 5, 0, 7, 2, 4). Summed distances: 16, 13, 12, 13, 34,
    # so the medoid is x = 2; the mean is 3.2, so the nearest to the centre are x = 3, (2), 1, 0, 10.
    # Cluster 1 sits far away; rows 3 and 8 are noise, one of them with the most ambiguous score of all.
    points = np.array([[1, 0], [100, 100], [3, 0], [50, 50], [10, 0], [0, 0], [101, 100], [2, 0], [-50, 0],
                       [100, 102]], dtype=np.float32)
    labels = np.array([4, 1, 4, -1, 4, 4, 1, 4, -1, 1])
    scores = np.array([0.45, 0.9, 0.2, 0.5, 0.52, 0.7, 0.61, 0.1, 0.5, 0.35], dtype=np.float32)
    picks = select_prototypes(points, labels, scores, k=2)
    assert [p.cluster for p in picks] == [1] * 5 + [4] * 5  # by cluster id, noise never
    assert [p.kind for p in picks[:5]] == ["medoid", "representative", "representative", "ambiguous", "ambiguous"]
    assert picks_of(picks, 4, "medoid") == [(1, 7)]
    assert picks_of(picks, 4, "representative") == [(1, 2), (2, 0)]  # x = 3 then x = 1; the medoid left out
    assert picks_of(picks, 4, "ambiguous") == [(1, 4), (2, 0)]  # |C - 0.5| = 0.02, 0.05
    # Cluster 1: (100, 100), (101, 100), (100, 102): sums 3.0, 3.24, 4.24; the mean is (100.33, 100.67).
    assert picks_of(picks, 1, "medoid") == [(1, 1)]
    assert picks_of(picks, 1, "representative") == [(1, 6), (2, 9)]
    assert picks_of(picks, 1, "ambiguous") == [(1, 6), (2, 9)]  # 0.11, 0.15 (overlapping is fine)
    assert all(p.score == pytest.approx(scores[p.index]) for p in picks)
    assert all(math.isnan(p.x) and p.image == "" for p in picks)  # filled in by the job, not here


def test_a_cluster_smaller_than_k_gives_what_it_has():
    points = np.array([[0.0], [1.0], [5.0], [6.0], [7.0]])
    picks = select_prototypes(points, np.array([0, 0, 1, 1, 1]), np.array([0.1, 0.6, 0.5, 0.4, 0.9]), k=5)
    assert [(p.cluster, p.kind) for p in picks].count((0, "representative")) == 1
    assert [(p.cluster, p.kind) for p in picks].count((0, "ambiguous")) == 2
    assert picks_of(picks, 1, "medoid") == [(1, 3)]
    assert picks_of(picks, 1, "representative") == [(1, 2), (2, 4)]  # equidistant from 6: the lower row first
    assert picks_of(picks, 1, "ambiguous") == [(1, 2), (2, 3), (3, 4)]
    lone = select_prototypes(points, np.array([-1, -1, 0, -1, -1]), np.zeros(5), k=3)
    assert [(p.kind, p.index) for p in lone] == [("medoid", 2), ("ambiguous", 2)]  # no one else to represent
    assert select_prototypes(points, np.full(5, -1), np.zeros(5), k=3) == []


def test_medoid_summed_chunk_by_chunk_matches_the_full_distance_matrix():
    points = np.random.default_rng(0).normal(size=(300, 5))
    full = np.linalg.norm(points[:, None] - points[None], axis=2).sum(axis=1)
    # 0.01 MiB holds ~4 rows of 300 float64 distances: the sums are built from dozens of chunks.
    assert medoid_index(points, working_memory=0.01) == int(np.argmin(full)) == medoid_index(points)


def test_selection_refuses_mismatched_inputs_and_k_below_one():
    with pytest.raises(ValueError, match="k must be >= 1"):
        select_prototypes(np.zeros((3, 2)), np.zeros(3, int), np.zeros(3), k=0)
    with pytest.raises(ValueError, match=r"points must be \(N, D\)"):
        select_prototypes(np.zeros((3, 2)), np.zeros(4, int), np.zeros(3), k=1)


def test_config_requires_the_clustering_folder_and_checks_its_settings():
    assert required_fields(PrototypesConfig) == ("clustering",)
    assert build_config(PrototypesConfig, {"clustering": "/c"}) == PrototypesConfig("/c", 5, "embedding")
    with pytest.raises(ConfigError, match="clustering is empty"):
        build_config(PrototypesConfig, {"clustering": ""})
    with pytest.raises(ConfigError, match="k must be >= 1"):
        build_config(PrototypesConfig, {"clustering": "/c", "k": 0})
    with pytest.raises(ConfigError, match="space: expected one of"):
        build_config(PrototypesConfig, {"clustering": "/c", "space": "pixels"})


def synthetic_result(clusters: int = 3, size: int = 20, noise: int = 5, seed: int = 0) -> ClusteringResultData:
    """`clusters` blobs in a 6-D embedding (its first two dimensions are the reduced space and the view)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=20, size=(clusters, 6))
    embeddings = np.concatenate([rng.normal(centre, 1.0, size=(size, 6)) for centre in centres]
                                + [rng.normal(scale=40, size=(noise, 6))])
    labels = np.concatenate([np.full(size, cluster) for cluster in range(clusters)] + [np.full(noise, -1)])
    order = rng.permutation(len(labels))  # clusters interleaved in the arrays, as a clusterer leaves them
    embeddings, labels = embeddings[order], labels[order]
    return ClusteringResultData(
        images=rng.random((len(labels), 1, 28, 28)), scores=rng.uniform(0.4, 0.6, len(labels)),
        embeddings=embeddings, reduced=embeddings[:, :2], labels=labels, coords=embeddings[:, :2] * 0.5,
        reducer={"kind": "umap", "n_components": 2}, clusterer={"kind": "hdbscan", "min_cluster_size": 5},
        metrics={"silhouette": 0.8, "dbcv": float("nan")}, classes=(7, 1), band=(0.4, 0.6), generated=1000)


def test_clustering_result_round_trip_with_documented_types(tmp_path):
    result = synthetic_result()
    folder = save_clustering_result(tmp_path / "clustering", result)
    assert sorted(p.name for p in folder.iterdir()) == ["clustering.json", "clustering.npz"]
    loaded = load_clustering_result(folder)
    for name, dtype in (("images", np.float32), ("scores", np.float32), ("embeddings", np.float32),
                        ("reduced", np.float32), ("labels", np.int64), ("coords", np.float32)):
        assert getattr(loaded, name).dtype == dtype, name
        np.testing.assert_array_equal(getattr(loaded, name), getattr(result, name), err_msg=name)
    assert loaded.reducer == {"kind": "umap", "n_components": 2}
    assert loaded.clusterer == {"kind": "hdbscan", "min_cluster_size": 5}
    assert loaded.metrics == {"silhouette": 0.8, "dbcv": None}  # JSON has no NaN
    assert (loaded.classes, loaded.band, loaded.generated, loaded.clusters) == ((7, 1), (0.4, 0.6), 1000, [0, 1, 2])
    with pytest.raises(FileNotFoundError, match="not a clustering result"):
        load_clustering_result(tmp_path)
    with pytest.raises(ValueError, match="coords has shape"):
        ClusteringResultData(**{**vars(result), "coords": result.coords[:3]})
    with pytest.raises(ValueError, match="reducer must be a mapping with a 'kind'"):
        ClusteringResultData(**{**vars(result), "reducer": {"n_components": 2}})


def run_job(tmp_path, result, **settings):
    folder = save_clustering_result(tmp_path / "clustering", result)
    workdir = tmp_path / "work"
    workdir.mkdir()
    reporter = ListReporter()
    config = build_config(PrototypesConfig, {"clustering": str(folder), **settings})
    metrics = PROTOTYPES.run(config, reporter, workdir)
    return workdir, reporter, metrics


def test_job_writes_images_table_grids_scatter_and_reports(tmp_path, capsys):
    result = synthetic_result()
    k = 3
    workdir, reporter, metrics = run_job(tmp_path, result, k=k)

    table = pd.read_parquet(workdir / "prototypes.parquet")
    assert tuple(table.columns) == PARQUET_COLUMNS == ("cluster", "kind", "rank", "score", "x", "y", "index",
                                                       "image")
    schema = pq.read_schema(workdir / "prototypes.parquet")
    assert {name: str(schema.field(name).type) for name in schema.names} == {
        "cluster": "int64", "kind": "string", "rank": "int64", "score": "double", "x": "double", "y": "double",
        "index": "int64", "image": "string"}
    assert table.groupby("cluster").size().to_dict() == {0: 1 + k + k, 1: 1 + k + k, 2: 1 + k + k}
    assert table.groupby("kind").size().to_dict() == {"medoid": 3, "representative": 3 * k, "ambiguous": 3 * k}
    assert (result.labels[table["index"]] == table["cluster"]).all()  # every pick belongs to its cluster
    np.testing.assert_allclose(table["score"], result.scores[table["index"]])
    np.testing.assert_allclose(table[["x", "y"]].to_numpy(), result.coords[table["index"]])
    for row in table.itertuples():
        assert row.image == f"images/c{row.cluster:02d}_{row.kind}_{row.rank}.png"
        picture = Image.open(workdir / row.image)
        assert (picture.size, picture.mode) == ((28, 28), "L")
        np.testing.assert_allclose(np.asarray(picture) / 255, result.images[row.index, 0], atol=0.5 / 255 + 1e-6)
    assert sorted(p.name for p in (workdir / "images").iterdir()) == sorted(p.split("/")[1] for p in table.image)

    assert sorted(p.name for p in (workdir / "grids").iterdir()) == ["cluster_00.png", "cluster_01.png",
                                                                      "cluster_02.png"]
    for picture in [*(workdir / "grids").iterdir(), workdir / "scatter.png"]:
        assert picture.read_bytes().startswith(PNG), picture
    assert Image.open(workdir / "scatter.png").width > Image.open(workdir / "scatter.png").height  # two panels

    ambiguous = table[table.kind == "ambiguous"]
    expected = {"clusters": 3.0, "prototypes": 3.0 * (1 + 2 * k), "images": 65.0, "noise_fraction": 5 / 65,
                "mean_score_ambiguous": float(np.mean(np.abs(ambiguous.score - 0.5))),
                "mean_score_clustered": float(np.mean(np.abs(result.scores[result.labels >= 0] - 0.5)))}
    assert reporter.results == [pytest.approx(expected)] and metrics == pytest.approx(expected)
    assert {m.name for m in PROTOTYPES.metrics} == set(expected)
    assert metrics["mean_score_ambiguous"] < metrics["mean_score_clustered"]  # the picks are the undecided ones

    printed = capsys.readouterr().out.splitlines()
    medoid = table[(table.cluster == 1) & (table.kind == "medoid")].iloc[0]
    assert printed[0].startswith("prototypes: 3 clusters of 65 ambiguous images (8% noise), 21 picks")
    assert printed[2] == (f"cluster 1: 20 images, C mean {result.scores[result.labels == 1].mean():.2f}, "
                          f"medoid #{medoid['index']} (C={medoid.score:.2f})")
    summary = (workdir / "summary.txt").read_text()
    assert printed[2] in summary and "reducer: umap, n_components=2" in summary and '"dbcv": null' in summary


def test_space_decides_where_the_medoid_is_measured(tmp_path):
    result = synthetic_result(clusters=1, size=30, noise=0, seed=1)
    embedding = select_prototypes(result.embeddings, result.labels, result.scores, 3)
    reduced = select_prototypes(result.reduced, result.labels, result.scores, 3)
    assert [p.index for p in embedding if p.kind != "ambiguous"] != [p.index for p in reduced if p.kind != "ambiguous"]
    workdir, _, _ = run_job(tmp_path, result, k=3, space="reduced")
    table = pd.read_parquet(workdir / "prototypes.parquet")
    assert table[table.kind != "ambiguous"]["index"].tolist() == [p.index for p in reduced if p.kind != "ambiguous"]


def test_printed_summary_lists_twelve_clusters_then_counts_the_rest():
    result = synthetic_result(clusters=15, size=4, noise=0)
    picks = select_prototypes(result.embeddings, result.labels, result.scores, 1)
    lines = cluster_lines(result, picks, limit=12)
    assert len(lines) == 13 and lines[-1] == "... and 3 more" and lines[11].startswith("cluster 11: 4 images")
    assert len(cluster_lines(result, picks)) == 15


def test_a_clustering_of_only_noise_is_an_actionable_error(tmp_path):
    result = synthetic_result()
    only_noise = ClusteringResultData(**{**vars(result), "labels": np.full(len(result), -1)})
    with pytest.raises(ValueError, match="every one of the 65 images is noise"):
        run_job(tmp_path, only_noise)
