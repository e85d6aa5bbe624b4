"""Job: is prototype selection worth it? Heads trained on prototypes, on random generated images, on real images.

The `prototypes` job picks, per cluster of ambiguous (GASTeN) images, a medoid and k representatives.
If those picks summarise the clusters well, a small labelled training set made of them should teach
a simple head more than the same number of ambiguous images picked at random. This job measures
that, on the binary task of the study's classifier C (e.g. MNIST 7 vs 1), with three training sets
of equal size n, for a curve over n:

- ``prototypes``: per cluster the medoid, then its representatives in rank order; the first m of
  each cluster for m = 1 .. 1 + k (n = clusters x m, less where a cluster has fewer picks);
- ``random_generated``: n images drawn uniformly at random from the same clustered pool (every image
  of the clustering result, noise included: nothing excluded), a fresh draw per repeat;
- ``real``: n real training images of the two classes (balanced, a fresh seeded draw per repeat),
  with their true labels.

Generated images have no ground-truth label, so both generated sources are labelled by C's
decision (argmax of its two outputs): C is the teacher whose decision boundary these images
describe, and "does a head trained on them reproduce C" is the question. The real source is the
reference a labelled-data budget of the same size buys.

Each set trains the ``lin`` head of `trainables.fewshot` (standardisation, then logistic
regression) on `features`: ``classifier`` (C's penultimate layer, the same code path as the
few-shot job's classifier source; there C's decision is a linear function of the features, so the
generated labels are learnable exactly) or ``pixels``. Every head is scored on (i) the real TEST
split of the two classes (accuracy against the true labels) and (ii) its agreement with C on the
held-out ambiguous images: the pool's images not in that draw's training set. Random sources are
drawn `repeats` times (mean and sample std); the prototype set is one set (std 0). A training set
with a single label cannot fit a classifier: it is recorded as the constant predictor of that
label (`one_label_draws` counts such draws) instead of failing the job.

Inputs by reference: `prototypes` (the prototypes job's folder, with `prototypes.parquet`),
`clustering` (the clustering result the picks index, which the prototypes job records as its output
`clustering`: `inputs: {clustering: prototypes.clustering}`) and `classifier` (C). The clustering must
be the one the picks index (their scores are checked) and C the classifier that scored it (C(x) is
recomputed and compared).

Writes `prototype_curve.parquet` (one row per source and n), `prototype_curve.md`,
`prototype_curve.png` (test accuracy and agreement vs n, a line and std band per source) and
`metrics.json`; reports `<source>.test_accuracy.n<n>` and `<source>.agreement.n<n>`, headed by
prototypes against random_generated at the largest n.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from trainables.data import load_images
from trainables.definitions import JobDef, Metric, Output
from trainables.device import resolve_device
from trainables.evaluate_fewshot import FewShotJobConfig, feature_sources
from trainables.fewshot import FewShotConfig, build_head
from trainables.gasten import load_frozen_classifier, positive_probability
from trainables.prototypes import load_clustering_result
from trainables.reporter import Reporter
from trainables.settings import RuntimeSettings

SOURCES: tuple[str, ...] = ("prototypes", "random_generated", "real")
COLUMNS: tuple[str, ...] = ("source", "m", "n", "repeats", "test_accuracy_mean", "test_accuracy_std",
                            "agreement_mean", "agreement_std", "heldout", "one_label_draws")
PROTOTYPES_FILE = "prototypes.parquet"
SCORE_TOLERANCE = 1e-3  # recomputed C(x) vs the clustering's stored scores (device numerics differ by ~1e-6)
_TAGS = {"random_generated": 0x6E4, "real": 0x4EA1}  # separate the two sources' random streams


@dataclass(frozen=True, kw_only=True)
class PrototypeCurveConfig(RuntimeSettings):
    prototypes: str  # the prototypes job's folder: `inputs: {prototypes: prototypes.best}`
    classifier: str  # C, the binary classifier: `inputs: {classifier: classifier.best}`
    clustering: str = ""  # the clustering result the picks index: `inputs: {clustering: prototypes.clustering}`
    features: Literal["classifier", "pixels"] = "classifier"  # C's penultimate layer, or raw pixels
    repeats: int = 5  # draws of each random source per n
    train_pool: int = 0  # real training images (seeded subset of the two classes) REAL draws from; 0 = all
    test_images: int = 0  # real test images of the two classes scored; 0 = the whole test split

    def __post_init__(self) -> None:
        for name, what, reference in (("prototypes", "the prototypes job's folder", "prototypes.best"),
                                      ("classifier", "C's checkpoint folder", "classifier.best"),
                                      ("clustering", "the clustering result the prototypes were picked from",
                                       "prototypes.clustering")):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty: give {what} by reference (inputs: {{{name}: {reference}}})")
        if self.features not in ("classifier", "pixels"):
            raise ValueError(f"features must be 'classifier' or 'pixels', got {self.features!r}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.train_pool < 0 or self.train_pool == 1:
            raise ValueError(f"train_pool must be 0 (all) or >= 2, got {self.train_pool}")
        if self.test_images < 0:
            raise ValueError(f"test_images must be >= 0 (0 = the whole test split), got {self.test_images}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

def load_inputs(config: PrototypeCurveConfig):
    """(prototypes.parquet as a frame, the clustering result its `index` column points into), checked
    to belong together: every pick's row exists and carries the pick's score."""
    import pandas as pd

    path = Path(config.prototypes) / PROTOTYPES_FILE
    if not path.is_file():
        raise ValueError(f"prototypes: {config.prototypes} holds no {PROTOTYPES_FILE}; give the prototypes job's "
                         "folder (inputs: {prototypes: prototypes.best})")
    table = pd.read_parquet(path)
    where = config.clustering
    try:
        result = load_clustering_result(where)
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"clustering: {error}") from None
    index = table["index"].to_numpy()
    if len(table) and (index.min() < 0 or index.max() >= len(result)
                       or not np.allclose(table["score"].to_numpy(), result.scores[index], atol=1e-6)):
        raise ValueError(f"clustering: the picks in {path} do not index {where} (rows or scores differ); give the "
                         "clustering result the prototypes were picked from")
    return table, result


def prototype_order(table) -> dict[int, list[int]]:
    """Per cluster (ascending): the medoid's row, then the representatives' rows in rank order."""
    order: dict[int, list[int]] = {}
    for cluster in sorted(int(c) for c in table["cluster"].unique()):
        part = table[table["cluster"] == cluster]
        medoid = part[part["kind"] == "medoid"].sort_values("rank")
        representatives = part[part["kind"] == "representative"].sort_values("rank")
        rows = [int(i) for i in medoid["index"]] + [int(i) for i in representatives["index"]]
        if rows:
            order[cluster] = rows
    return order


def prototype_sets(table) -> list[np.ndarray]:
    """The PROTOTYPES training sets, for m = 1 .. 1 + k: the first m of each cluster's order, cluster by cluster.

    A cluster with fewer than m picks gives all it has, so n grows by fewer than `clusters` there.
    """
    order = prototype_order(table)
    if not order:
        raise ValueError("prototypes: the table holds no medoid or representative pick")
    longest = max(len(rows) for rows in order.values())
    return [np.asarray([row for rows in order.values() for row in rows[:m]], dtype=np.int64)
            for m in range(1, longest + 1)]


# ---------------------------------------------------------------------------------------------
# Draws and heads
# ---------------------------------------------------------------------------------------------

def draw_generated(pool: int, n: int, seed: int, repeat: int) -> np.ndarray:
    """n distinct rows of the ambiguous pool, uniformly at random; a function of (seed, n, repeat)."""
    rng = np.random.default_rng([int(seed), _TAGS["random_generated"], int(n), int(repeat)])
    return np.sort(rng.choice(pool, size=min(n, pool), replace=False))


def draw_real(labels: np.ndarray, n: int, seed: int, repeat: int) -> np.ndarray:
    """n rows of the real training pool, balanced over the labels (the odd one to a random label)."""
    rng = np.random.default_rng([int(seed), _TAGS["real"], int(n), int(repeat)])
    classes = np.unique(labels)
    counts = np.full(len(classes), n // len(classes))
    counts[rng.permutation(len(classes))[:n % len(classes)]] += 1
    chosen = []
    for cls, count in zip(classes, counts):
        rows = np.flatnonzero(labels == cls)
        chosen.append(rows[rng.permutation(len(rows))[:count]])
    return np.sort(np.concatenate(chosen))


def fit_head(x: np.ndarray, y: np.ndarray, seed: int, repeat: int) -> tuple[Callable[[np.ndarray], np.ndarray], bool]:
    """(predict, one_label): the few-shot job's ``lin`` head, or the constant predictor of a one-label set."""
    labels = np.unique(y)
    if len(labels) == 1:
        constant = labels[0]
        return (lambda features: np.full(len(features), constant, dtype=y.dtype)), True
    head = build_head("lin", FewShotConfig(heads=("lin",), seed=seed), len(y), repeat)
    head.fit(x, y)
    return head.predict, False


@dataclass(frozen=True, eq=False)
class CurveData:
    """Everything the curve is computed from: features and labels of the three image sets."""

    pool_features: np.ndarray  # (N, D) the clustering result's images
    pool_labels: np.ndarray  # (N,) C's decision on them (0/1: the index of C's class)
    real_features: np.ndarray  # (M, D) real training images of the two classes
    real_labels: np.ndarray  # (M,) their true labels
    test_features: np.ndarray  # (T, D) real test images
    test_labels: np.ndarray  # (T,) their true labels


def score_draw(data: CurveData, x: np.ndarray, y: np.ndarray, used: np.ndarray | None, seed: int,
               repeat: int) -> tuple[float, float, int, bool]:
    """(test accuracy, agreement with C on the held-out pool, held-out size, one_label) of one training set."""
    predict, one_label = fit_head(x, y, seed, repeat)
    accuracy = float(np.mean(predict(data.test_features) == data.test_labels))
    heldout = np.ones(len(data.pool_labels), dtype=bool)
    if used is not None:
        heldout[used] = False
    agreement = (float(np.mean(predict(data.pool_features[heldout]) == data.pool_labels[heldout]))
                 if heldout.any() else math.nan)
    return accuracy, agreement, int(heldout.sum()), one_label


def _row(source: str, m: int, n: int, scores: list[tuple[float, float, int, bool]]) -> dict:
    accuracy = np.asarray([s[0] for s in scores])
    agreement = np.asarray([s[1] for s in scores])

    def std(values: np.ndarray) -> float:
        return float(values.std(ddof=1)) if len(values) > 1 else 0.0

    return {"source": source, "m": m, "n": n, "repeats": len(scores),
            "test_accuracy_mean": float(accuracy.mean()), "test_accuracy_std": std(accuracy),
            "agreement_mean": float(agreement.mean()), "agreement_std": std(agreement),
            "heldout": float(np.mean([s[2] for s in scores])), "one_label_draws": int(sum(s[3] for s in scores))}


def curve(data: CurveData, sets: list[np.ndarray], repeats: int, seed: int):
    """The table: for each prototype set (m = 1, 2, ...) a row per source at its size n."""
    import pandas as pd

    rows = []
    for m, picked in enumerate(sets, start=1):
        n = len(picked)
        rows.append(_row("prototypes", m, n, [score_draw(data, data.pool_features[picked], data.pool_labels[picked],
                                                         picked, seed, 0)]))
        drawn = []
        for r in range(repeats):
            drawn_rows = draw_generated(len(data.pool_labels), n, seed, r)
            drawn.append(score_draw(data, data.pool_features[drawn_rows], data.pool_labels[drawn_rows], drawn_rows,
                                    seed, r))
        rows.append(_row("random_generated", m, n, drawn))
        drawn = []
        for r in range(repeats):
            drawn_rows = draw_real(data.real_labels, n, seed, r)
            drawn.append(score_draw(data, data.real_features[drawn_rows], data.real_labels[drawn_rows], None, seed, r))
        rows.append(_row("real", m, n, drawn))
    return pd.DataFrame(rows, columns=list(COLUMNS))


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------

def _cell(mean: float, std: float) -> str:
    return "–" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"


def markdown_table(table) -> str:
    lines = ["| n | source | test accuracy | agreement with C | notes |", "|---:|---|---:|---:|---|"]
    for row in table.itertuples():
        note = (f"{row.one_label_draws}/{row.repeats} draws had one label: constant predictor"
                if row.one_label_draws else "")
        lines.append(f"| {row.n} | {row.source} | {_cell(row.test_accuracy_mean, row.test_accuracy_std)} | "
                     f"{_cell(row.agreement_mean, row.agreement_std)} | {note} |")
    return "\n".join(lines) + "\n"


def plot_curve(table, path: Path, title: str = "") -> None:
    from trainables.plotting import pyplot

    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.get_cmap("tab10")
    try:
        for axis, (column, label) in zip(axes, (("test_accuracy", "test accuracy (real test split, true labels)"),
                                                ("agreement", "agreement with C (held-out ambiguous images)"))):
            for position, source in enumerate(SOURCES):
                part = table[table["source"] == source].sort_values("n")
                if part.empty:
                    continue
                n, mean, std = (part["n"].to_numpy(), part[f"{column}_mean"].to_numpy(),
                                part[f"{column}_std"].to_numpy())
                axis.plot(n, mean, marker="o", markersize=3.5, color=colours(position), label=source)
                axis.fill_between(n, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), color=colours(position),
                                  alpha=0.2, linewidth=0)
            axis.set_xlabel("training images (n)")
            axis.set_ylabel(label)
            axis.set_ylim(0.0, 1.02)
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize=8, loc="lower right")
        if title:
            figure.suptitle(title, fontsize=10)
        figure.tight_layout()
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)


def curve_metrics(table) -> dict[str, float]:
    """`<source>.test_accuracy.n<n>`, `<source>.agreement.n<n>`; headed by prototypes vs random_generated
    (and real) at the largest n and their differences. NaN values (no held-out image) are left out."""
    metrics: dict[str, float] = {}
    for row in table.itertuples():
        metrics[f"{row.source}.test_accuracy.n{row.n}"] = float(row.test_accuracy_mean)
        metrics[f"{row.source}.agreement.n{row.n}"] = float(row.agreement_mean)
    largest = int(table["n"].max())
    headline = {}
    for kind in ("test_accuracy", "agreement"):
        ours, random_ = metrics[f"prototypes.{kind}.n{largest}"], metrics[f"random_generated.{kind}.n{largest}"]
        headline[f"prototypes_minus_random.{kind}"] = ours - random_
    for kind in ("test_accuracy", "agreement"):
        for source in SOURCES:
            headline[f"{source}.{kind}.n{largest}"] = metrics[f"{source}.{kind}.n{largest}"]
    return {key: value for key, value in {**headline, **metrics}.items() if math.isfinite(value)}


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------

def extractor(config: PrototypeCurveConfig) -> tuple[str, Callable[[torch.Tensor], np.ndarray]]:
    """(description, images -> features): the few-shot job's own classifier or pixel source."""
    fewshot = FewShotJobConfig(classifier=config.classifier if config.features == "classifier" else "",
                               pixels=config.features == "pixels", device=config.device)
    for name, described, extract in feature_sources(fewshot):
        if name == config.features:
            return described, extract
    raise AssertionError(f"feature_sources gave no {config.features!r} source")  # pragma: no cover


def teacher_scores(model: torch.nn.Module, images: torch.Tensor, device: torch.device) -> np.ndarray:
    """C(x) = P(second class) for each image (C in eval mode), on the CPU as float64."""
    with torch.no_grad():
        return torch.cat([positive_probability(model, batch.to(device)).double().cpu()
                          for batch in images.split(512)]).numpy()


def run(config: PrototypeCurveConfig, reporter: Reporter, workdir: Path) -> dict[str, float]:
    table, result = load_inputs(config)
    sets = prototype_sets(table)

    device = resolve_device(config.device)
    model, state = load_frozen_classifier(config.classifier, device)
    classes, dataset = tuple(int(c) for c in state.config["classes"]), state.config["dataset"]
    if result.classes and tuple(result.classes) != classes:
        raise ValueError(f"classifier: {config.classifier} separates {classes}, the clustering's images were scored "
                         f"for {tuple(result.classes)}")
    pool_images = torch.from_numpy(result.images)
    scores = teacher_scores(model, pool_images, device)
    drift = float(np.max(np.abs(scores - result.scores), initial=0.0))
    if drift > SCORE_TOLERANCE:
        raise ValueError(f"classifier: {config.classifier} does not reproduce the clustering's C(x) (differs by up "
                         f"to {drift:.3g}); give the classifier the clustering's images were scored with")
    # C's decision, argmax of its two outputs: label 1 where P(second class) wins (a tie goes to 0, as argmax).
    pool_labels = (scores > 0.5).astype(np.int64)

    described, extract = extractor(config)
    real = load_images(dataset, "train", classes=classes, limit=config.train_pool or None, seed=config.seed)
    test = load_images(dataset, "test", classes=classes, limit=config.test_images or None, seed=config.seed)
    print(f"[prototype_curve] {len(sets)} prototype sets (n = {', '.join(str(len(s)) for s in sets)}) from "
          f"{len(table['cluster'].unique())} clusters; {len(result)} ambiguous, {len(real)} real training and "
          f"{len(test)} test images; features: {config.features} ({described})", flush=True)
    data = CurveData(pool_features=extract(pool_images), pool_labels=pool_labels,
                     real_features=extract(real.images), real_labels=real.labels.numpy(),
                     test_features=extract(test.images), test_labels=test.labels.numpy())
    frame = curve(data, sets, config.repeats, config.seed)

    workdir = Path(workdir)
    frame.to_parquet(workdir / "prototype_curve.parquet", index=False)
    names = "/".join(str(c) for c in classes)
    intro = (f"Heads (standardised logistic regression on {config.features} features) trained on n images, tested "
             f"on {len(test)} real {names} test images (true labels) and for agreement with C on the ambiguous "
             f"images each head did not train on. Generated images are labelled by C's decision; real ones by "
             f"their true labels. Random sources: mean ± std over {config.repeats} draws; prototypes: one set.")
    (workdir / "prototype_curve.md").write_text(f"{intro}\n\n{markdown_table(frame)}")
    plot_curve(frame, workdir / "prototype_curve.png",
               title=f"Prototypes vs random ambiguous vs real training images ({names}, {config.features} features)")
    metrics = curve_metrics(frame)
    (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print((workdir / "prototype_curve.md").read_text(), flush=True)
    reporter.report(metrics)
    return metrics


PROTOTYPE_CURVE = JobDef(
    name="prototype_curve",
    config_cls=PrototypeCurveConfig,
    run=run,
    metrics=(
        Metric("prototypes_minus_random.test_accuracy", higher_is_better=True,
               description="test accuracy of the head trained on the prototypes minus that of random generated "
                           "images, at the largest n"),
        Metric("prototypes_minus_random.agreement", higher_is_better=True,
               description="agreement with C on held-out ambiguous images, prototypes minus random generated, at "
                           "the largest n"),
    ),
    description="is prototype selection worth it: heads trained on n prototypes, n random ambiguous images "
                "(both labelled by C) and n real images; test accuracy and agreement with C vs n; table, parquet, "
                "plot",
    tiny_config={"repeats": 2, "train_pool": 200, "test_images": 200},
    # C must be the classifier that scored the clustering: the same tiny classifier upstream of both.
    contract_inputs=lambda upstream: {"prototypes": upstream.job("prototypes"),
                                      "clustering": upstream.objective("clustering"),
                                      "classifier": upstream.trainable("classifier")},
    outputs={"metrics": Output("metrics", "metrics.json"), "table": Output("table", "prototype_curve.md"),
             "plot": Output("picture", "prototype_curve.png"), "data": Output("data", "prototype_curve.parquet")},
)
