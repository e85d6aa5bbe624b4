"""The prototype curve: prototypes vs random ambiguous vs real training images, on C's own 7-vs-1 task.

A small 7-vs-1 classifier C is trained here (one epoch, 1000 images). The "ambiguous" pool is blends
of real 7s and 1s (a 7 faded into a 1), scored by C, grouped into three clusters by blend weight
(one of them with only two members) plus a few noise images, saved with `save_clustering_result`;
the real `prototypes` job then picks medoids and representatives from it, and writes the folder
the curve job reads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from trainables import catalog
from trainables.checkpoint import save_checkpoint
from trainables.classifier import CLASSIFIER
from trainables.config import ConfigError, build_config
from trainables.data import load_images
from trainables.gasten import load_frozen_classifier, positive_probability
from trainables.prototype_curve import (COLUMNS, PROTOTYPE_CURVE, CurveData, PrototypeCurveConfig, draw_generated,
                                        draw_real, prototype_sets, score_draw)
from trainables.prototypes import PROTOTYPES, ClusteringResultData, PrototypesConfig, save_clustering_result
from trainables.reporter import ListReporter

K = 3
SMALL = {"repeats": 3, "train_pool": 2000, "test_images": 500, "device": "cpu"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory) -> str:
    torch.set_num_threads(1)
    reporter = ListReporter()
    CLASSIFIER.run(build_config(CLASSIFIER.config_cls, {"classes": [7, 1], "train_size": 1000, "val_size": 100,
                                                        "epochs": 1, "batch_size": 32}), reporter)
    return str(save_checkpoint(reporter.last_checkpoint, tmp_path_factory.mktemp("classifier")))


def blend_pool(classifier: str, sizes=(20, 20, 2), noise: int = 4, seed: int = 0) -> ClusteringResultData:
    """Blends w * a 7 + (1 - w) * a 1, w uniform in [0.3, 0.5] (cluster 0: C says "1"), [0.7, 0.9] (cluster 1:
    "7") and [0.5, 0.7] (cluster 2, where C's decision flips); noise images anywhere in [0.3, 0.9]."""
    rng = np.random.default_rng(seed)
    data = load_images("mnist", "train", classes=(7, 1), limit=600, seed=seed)
    sevens, ones = data.images[data.labels == 0], data.images[data.labels == 1]
    labels = np.concatenate([np.full(size, c) for c, size in enumerate(sizes)] + [np.full(noise, -1)])
    low = np.array([0.3, 0.7, 0.5, 0.3])[labels]  # labels -1 (noise) take the last entry
    width = np.where(labels >= 0, 0.2, 0.6)
    weights = torch.from_numpy(low + width * rng.random(len(labels))).float().view(-1, 1, 1, 1)
    images = weights * sevens[:len(labels)] + (1 - weights) * ones[:len(labels)]
    model, _ = load_frozen_classifier(classifier, torch.device("cpu"))
    with torch.no_grad():
        scores = positive_probability(model, images).numpy()
        embeddings = model.embed(images).numpy()
    coords = rng.normal(size=(len(labels), 2))
    return ClusteringResultData(images=images.numpy(), scores=scores, embeddings=embeddings, reduced=coords,
                                labels=labels, coords=coords, reducer={"kind": "none"},
                                clusterer={"kind": "manual"}, classes=(7, 1), band=(0.0, 1.0),
                                generated=len(labels))


def prototypes_folder(tmp_path, result: ClusteringResultData, k: int = K) -> str:
    clustering = save_clustering_result(tmp_path / "clustering", result)
    workdir = tmp_path / "prototypes"
    workdir.mkdir()
    PROTOTYPES.run(PrototypesConfig(clustering=str(clustering), k=k), ListReporter(), workdir)
    return str(workdir)


def run_curve(tmp_path, prototypes: str, classifier: str, **settings):
    """The curve job on a prototypes folder; its clustering by default the one `prototypes_folder` saved beside
    it (what the prototypes job records as its output `clustering`)."""
    workdir = tmp_path / "curve"
    workdir.mkdir(parents=True)
    reporter = ListReporter()
    clustering = str(Path(prototypes).parent / "clustering")
    config = build_config(PrototypeCurveConfig, {"prototypes": prototypes, "classifier": classifier,
                                                 "clustering": clustering, **SMALL, **settings})
    metrics = PROTOTYPE_CURVE.run(config, reporter, workdir)
    return workdir, reporter, metrics


@pytest.fixture(scope="module")
def curve_run(classifier_folder, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("curve")
    result = blend_pool(classifier_folder)
    folder = prototypes_folder(tmp_path, result)
    return (result, folder, *run_curve(tmp_path, folder, classifier_folder))


def test_the_prototype_sets_are_the_medoid_then_the_representatives_in_rank_order(curve_run):
    result, folder, *_ = curve_run
    table = pd.read_parquet(f"{folder}/prototypes.parquet")
    sets = prototype_sets(table)
    assert [len(s) for s in sets] == [3, 6, 8, 10]  # 3 clusters x m, the 2-member cluster capped at 2
    for m, picked in enumerate(sets, start=1):
        expected = []
        for cluster in (0, 1, 2):
            part = table[table.cluster == cluster]
            medoid = part[part.kind == "medoid"]["index"].tolist()
            representatives = part[part.kind == "representative"].sort_values("rank")["index"].tolist()
            expected += (medoid + representatives)[:m]
        assert picked.tolist() == expected
        assert (result.labels[picked] >= 0).all()  # prototypes never come from the noise


def test_random_draws_differ_across_repeats_and_real_draws_are_balanced():
    draws = [draw_generated(46, 10, seed=0, repeat=r) for r in range(3)]
    assert all(len(set(d)) == 10 and d.max() < 46 for d in draws)
    assert not np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[1], draws[2])
    np.testing.assert_array_equal(draws[0], draw_generated(46, 10, seed=0, repeat=0))
    labels = np.repeat([0, 1], [30, 50])
    for n in (1, 6, 7):
        picked = draw_real(labels, n, seed=0, repeat=0)
        counts = np.bincount(labels[picked], minlength=2)
        assert len(set(picked)) == n and sorted(counts) == [n // 2, n - n // 2]
    assert not np.array_equal(draw_real(labels, 6, 0, 0), draw_real(labels, 6, 0, 1))


def test_job_writes_the_curve_table_plot_and_headline(curve_run):
    _, _, workdir, reporter, metrics = curve_run
    table = pd.read_parquet(workdir / "prototype_curve.parquet")
    assert tuple(table.columns) == COLUMNS
    for source in ("prototypes", "random_generated", "real"):
        part = table[table.source == source]
        assert part.n.tolist() == [3, 6, 8, 10] and part.m.tolist() == [1, 2, 3, 4]
    assert (table[table.source == "prototypes"].repeats == 1).all()
    assert (table[table.source != "prototypes"].repeats == SMALL["repeats"]).all()
    pool = 46
    assert table[table.source == "prototypes"].heldout.tolist() == [pool - n for n in (3, 6, 8, 10)]
    assert (table[table.source == "real"].heldout == pool).all()  # real images use none of the pool
    random = table[table.source != "prototypes"]
    assert (random.test_accuracy_std + random.agreement_std > 0).any()  # the repeats really differ

    # The planted case: on C's penultimate layer C's decision is a linear function of the features,
    # so every source learns a head that agrees with C and gets the (easy) real test split right.
    largest = table[table.n == 10].set_index("source")
    assert (largest.test_accuracy_mean > 0.9).all(), largest
    assert largest.loc["prototypes", "agreement_mean"] > 0.8 and largest.loc["random_generated", "agreement_mean"] > 0.8

    assert list(metrics)[:8] == [
        "prototypes_minus_random.test_accuracy", "prototypes_minus_random.agreement",
        "prototypes.test_accuracy.n10", "random_generated.test_accuracy.n10", "real.test_accuracy.n10",
        "prototypes.agreement.n10", "random_generated.agreement.n10", "real.agreement.n10"]
    assert metrics["prototypes_minus_random.test_accuracy"] == pytest.approx(
        largest.loc["prototypes", "test_accuracy_mean"] - largest.loc["random_generated", "test_accuracy_mean"])
    assert {f"{s}.{kind}.n{n}" for s in ("prototypes", "random_generated", "real")
            for kind in ("test_accuracy", "agreement") for n in (3, 6, 8, 10)} <= set(metrics)
    assert {m.name for m in PROTOTYPE_CURVE.metrics} <= set(metrics)
    assert reporter.results == [metrics] and json.loads((workdir / "metrics.json").read_text()) == metrics

    text = (workdir / "prototype_curve.md").read_text()
    assert "| n | source | test accuracy | agreement with C | notes |" in text
    row = largest.loc["random_generated"]
    assert (f"| 10 | random_generated | {row.test_accuracy_mean:.3f} ± {row.test_accuracy_std:.3f} | "
            f"{row.agreement_mean:.3f} ± {row.agreement_std:.3f} |") in text
    picture = Image.open(workdir / "prototype_curve.png")
    assert picture.width > 1.8 * picture.height  # two panels side by side


def test_a_training_set_with_one_label_is_the_constant_predictor(classifier_folder, tmp_path):
    # Unit: fitting is skipped and the constant's accuracy recorded.
    data = CurveData(pool_features=np.eye(4), pool_labels=np.array([0, 1, 1, 1]), real_features=np.eye(4),
                     real_labels=np.array([0, 1, 0, 1]), test_features=np.eye(4)[:3], test_labels=np.array([1, 1, 0]))
    accuracy, agreement, heldout, one_label = score_draw(data, np.eye(4)[:2], np.array([1, 1]), np.array([0, 1]), 0, 0)
    assert (accuracy, agreement, heldout, one_label) == (pytest.approx(2 / 3), 1.0, 2, True)

    # Job: one cluster, so the first prototype set (and each source at n = 1) holds a single image.
    result = blend_pool(classifier_folder, sizes=(12,), noise=2)
    folder = prototypes_folder(tmp_path, result, k=2)
    _, _, metrics = run_curve(tmp_path, folder, classifier_folder, repeats=2)
    table = pd.read_parquet(tmp_path / "curve" / "prototype_curve.parquet")
    first = table[table.n == 1].set_index("source")
    assert first.one_label_draws.to_dict() == {"prototypes": 1, "random_generated": 2, "real": 2}
    test = load_images("mnist", "test", classes=(7, 1), limit=SMALL["test_images"], seed=0).labels.numpy()
    medoid = prototype_sets(pd.read_parquet(f"{folder}/prototypes.parquet"))[0]
    label = int(result.scores[medoid[0]] > 0.5)  # C's decision on the medoid: the constant predicted
    assert first.loc["prototypes", "test_accuracy_mean"] == pytest.approx((test == label).mean())
    held_out = np.delete(result.scores > 0.5, medoid).astype(int)
    assert first.loc["prototypes", "agreement_mean"] == pytest.approx((held_out == label).mean())
    # Two one-image real draws: each the constant of its label, so the mean is one of three values.
    assert min(abs(first.loc["real", "test_accuracy_mean"] - v) for v in ((test == 0).mean(), (test == 1).mean(),
                                                                           0.5)) < 1e-9
    assert table.n.tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert "draws had one label: constant predictor" in (tmp_path / "curve" / "prototype_curve.md").read_text()
    assert "prototypes.test_accuracy.n1" in metrics


def test_pixel_features_run_through_the_same_curve(curve_run, classifier_folder, tmp_path):
    _, folder, *_ = curve_run
    _, _, metrics = run_curve(tmp_path, folder, classifier_folder, features="pixels", repeats=2)
    assert 0.0 <= metrics["real.test_accuracy.n10"] <= 1.0 and "prototypes.agreement.n3" in metrics


@pytest.mark.parametrize("changes,message", [
    ({"prototypes": ""}, "prototypes is empty"), ({"classifier": ""}, "classifier is empty"),
    ({"repeats": 0}, "repeats must be >= 1"), ({"train_pool": -1}, "train_pool"), ({"train_pool": 1}, "train_pool"),
    ({"test_images": -1}, "test_images"), ({"seed": -1}, "seed"), ({"clustering": ""}, "clustering is empty"),
])
def test_config_errors_name_the_setting(changes, message):
    with pytest.raises(ValueError, match=message):
        PrototypeCurveConfig(**{"prototypes": "/p", "classifier": "/c", "clustering": "/k", **changes})
    with pytest.raises(ConfigError, match="features"):
        build_config(PrototypeCurveConfig, {"prototypes": "/p", "classifier": "/c", "clustering": "/k",
                                            "features": "vae"})
    assert catalog.job("prototype_curve") is PROTOTYPE_CURVE


def test_inputs_that_do_not_belong_together_are_refused(curve_run, classifier_folder, tmp_path):
    result, folder, *_ = curve_run
    with pytest.raises(ValueError, match="^prototypes: .* holds no prototypes.parquet"):
        run_curve(tmp_path / "a", str(tmp_path), classifier_folder, clustering=str(tmp_path))
    bare = tmp_path / "bare"  # the table alone: its clustering is given by reference, never read out of a file
    bare.mkdir()
    shutil.copy(f"{folder}/prototypes.parquet", bare)
    given_by_reference = r"^config: clustering is empty: .* \(inputs: \{clustering: prototypes.clustering\}\)"
    with pytest.raises(ValueError, match=given_by_reference):
        run_curve(tmp_path / "b", str(bare), classifier_folder, clustering="")
    with pytest.raises(ValueError, match="^clustering: .* not a clustering result"):
        run_curve(tmp_path / "e", str(bare), classifier_folder, clustering=str(bare))
    other = save_clustering_result(tmp_path / "other", blend_pool(classifier_folder, seed=1))
    with pytest.raises(ValueError, match="^clustering: the picks in .* do not index"):
        run_curve(tmp_path / "c", folder, classifier_folder, clustering=str(other))
    retrained = ListReporter()
    CLASSIFIER.run(build_config(CLASSIFIER.config_cls, {"classes": [7, 1], "train_size": 100, "val_size": 50,
                                                        "epochs": 1, "seed": 3}), retrained)
    stranger = str(save_checkpoint(retrained.last_checkpoint, tmp_path / "stranger"))
    with pytest.raises(ValueError, match="^classifier: .* does not reproduce the clustering's C"):
        run_curve(tmp_path / "d", folder, stranger)
