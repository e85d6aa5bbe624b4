"""Job: every OOD method on every test OOD set, as one table a paper would print.

The methods' settings were chosen on validation data (the classifier's held-out split against a
validation OOD set); only here do the test sets appear: MNIST's test split in-distribution, and
Fashion-MNIST test, KMNIST test and uniform noise out (by default). Each method also reports its
in-distribution test accuracy, so a detector that buys separation with accuracy is visible.

A method that comes with its own reject threshold (generator_nn and conditional_nn pick one on validation
images at a target true-positive rate) is also judged as a selective classifier at that threshold: the share of
test images it rejects, its accuracy on the ones it accepts, and the share of each OOD set it lets
through. Those are out-of-sample: the threshold never saw the test split.

The generator-based methods also state what they cost (`costs.parquet`, a third table): the
parameters of their generator(s) and similarity network and their training time, as their trials
reported them; one generator per class against one conditional generator is the trade-off.

Writes `ood_table.md`, `ood_table.parquet` (one row per method x OOD set), `selective.parquet`
(methods with a threshold), `costs.parquet`, `roc_curves.png` (a panel per OOD set, a curve per
method) and `metrics.json`; reports `<method>.<set>.<metric>`, `<method>.id_accuracy`, for
thresholded methods `<method>.test_reject_rate`, `<method>.selective_accuracy`,
`<method>.<set>.ood_accepted`, and each method's costs as `<method>.<cost>`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from trainables.checkpoint import Checkpoint, load_checkpoint
from trainables.classifier import ClassifierConfig
from trainables.data import load_images
from trainables.definitions import JobDef, Metric, Output, Upstream
from trainables.device import resolve_device
from trainables.ood import conditional_nn, generator_nn, kplus1, leave_out
from trainables.ood.detectors import Detector, MaxSoftmax, Odin
from trainables.ood.metrics import METRIC_KEYS, ood_metrics
from trainables.ood.odin_search import load_classifier
from trainables.ood.sets import ood_datasets, ood_set
from trainables.plotting import pyplot
from trainables.reporter import Reporter
from trainables.settings import DeviceSettings

TEST_SEED = 0  # the test OOD images (odin_search draws its validation images with another seed)
OTHER_METHODS = ("max_softmax", "odin", "generator_nn", "leave_out", "conditional_nn")  # names kplus1_name can't take
COSTS = ("generator_params", "similarity_params", "train_seconds")  # reported by the generator-based trainables


@dataclass(frozen=True, kw_only=True)
class EvaluateOodConfig(DeviceSettings):
    classifier: str  # the plain classifier (max-softmax and ODIN): `inputs: {classifier: classifier.best}`
    odin: str = ""  # an odin result folder (`odin.best`) for its searched T and epsilon; "" = the paper's 1000, 0.002
    kplus1: str = ""  # a kplus1 checkpoint folder (`kplus1.best`); "" leaves the method out
    kplus1_name: str = "kplus1"  # its name in the table and metrics (e.g. kplus1_boundary for GASTeN outliers)
    generator_nn: str = ""  # a generator_nn checkpoint folder (`generator_nn.best`); "" leaves the method out
    leave_out: str = ""  # a leave_out checkpoint folder (`leave_out.best`); "" leaves the method out
    conditional_nn: str = ""  # a conditional_nn checkpoint folder (`conditional_nn.best`); "" leaves it out
    test_sets: tuple[str, ...] = ("fashion_mnist", "kmnist", "uniform_noise")
    images: int = 2000  # per OOD set, and in-distribution test images

    def __post_init__(self) -> None:
        if not self.classifier:
            raise ValueError("classifier is empty: give a classifier checkpoint folder (inputs: {classifier: "
                             "classifier.best})")
        if not self.test_sets:
            raise ValueError("test_sets is empty: name at least one OOD set (e.g. fashion_mnist)")
        if self.images < 10:
            raise ValueError(f"images must be >= 10, got {self.images}")
        if not self.kplus1_name or "." in self.kplus1_name or self.kplus1_name in OTHER_METHODS:
            raise ValueError(f"kplus1_name must be a non-empty name without dots, other than "
                             f"{', '.join(OTHER_METHODS)}, got {self.kplus1_name!r}")


@dataclass(frozen=True)
class Method:
    name: str
    detector: Detector
    predict: Callable[[torch.Tensor], np.ndarray]  # in-distribution class per image
    settings: str
    threshold: float | None = None  # its own reject rule (score >= threshold accepts), chosen on validation data
    costs: Mapping[str, float] = field(default_factory=dict)  # COSTS its trial reported


def reported_costs(state: Checkpoint) -> dict[str, float]:
    """The COSTS a checkpoint's trial reported (a checkpoint written before a cost existed has none of it)."""
    return {key: float(state.metrics[key]) for key in COSTS if key in state.metrics}


def check_same_data(name: str, state: Checkpoint, classifier_config: ClassifierConfig) -> None:
    """A method trained on all ten classes of a dataset is scored on the classifier's test split: both must agree."""
    trained_on = (state.config["dataset"], tuple(range(10)))
    tested_on = (classifier_config.dataset, tuple(classifier_config.classes) or tuple(range(10)))
    if trained_on != tested_on:
        raise ValueError(f"{name}: trained on {trained_on[0]} classes {trained_on[1]}, the classifier on "
                         f"{tested_on[0]} classes {tested_on[1]}; both are scored on one test split")


def methods(config: EvaluateOodConfig) -> list[Method]:
    device = str(resolve_device(config.device))
    model, classifier_config = load_classifier(config.classifier)

    def predict_plain(images: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([model(b.to(device)).argmax(1).cpu() for b in images.split(512)]).numpy()

    temperature, epsilon = 1000.0, 0.002
    if config.odin:
        chosen = load_checkpoint(config.odin).config
        temperature, epsilon = chosen["temperature"], chosen["epsilon"]
    found = [Method("max_softmax", MaxSoftmax(model, device=device), predict_plain, "-"),
             Method("odin", Odin(model, temperature, epsilon, device=device), predict_plain,
                    f"T={temperature:.4g}, epsilon={epsilon:.4g}")]
    if config.kplus1:
        state = load_checkpoint(config.kplus1)
        trained_on = (state.config["dataset"], tuple(state.config.get("classes", ())) or tuple(range(10)))
        tested_on = (classifier_config.dataset, tuple(classifier_config.classes) or tuple(range(10)))
        if trained_on != tested_on:  # its predictions are scored against the classifier's test labels
            raise ValueError(f"kplus1: {config.kplus1} was trained on {trained_on[0]} classes {trained_on[1]}, the "
                             f"classifier on {tested_on[0]} classes {tested_on[1]}; both are scored on one test split")
        detector = kplus1.KPlus1Detector(kplus1.build_model(state), device=device)
        found.append(Method(config.kplus1_name, detector, detector.predict, kplus1.describe(state)))
    if config.generator_nn:
        state = load_checkpoint(config.generator_nn)
        detector = generator_nn.detector_from_state(state, device=device)
        chosen = state.config
        settings = (f"latent_dim={chosen['latent_dim']}, vae_epochs={chosen['vae_epochs']}, "
                    f"bank={len(state.extras['bank'])}, target_tpr={chosen['target_tpr']}")
        found.append(Method("generator_nn", detector, detector.predict, settings, threshold=detector.threshold,
                            costs=reported_costs(state)))
    if config.leave_out:
        state = load_checkpoint(config.leave_out)
        check_same_data("leave_out", state, classifier_config)
        detector = leave_out.detector_from_state(state, device=device)
        found.append(Method("leave_out", detector, detector.predict, leave_out.describe(state)))
    if config.conditional_nn:
        state = load_checkpoint(config.conditional_nn)
        check_same_data("conditional_nn", state, classifier_config)
        detector = conditional_nn.detector_from_state(state, device=device)
        found.append(Method("conditional_nn", detector, detector.predict, conditional_nn.describe(state),
                            threshold=detector.threshold, costs=reported_costs(state)))
    return found


def run(config: EvaluateOodConfig, reporter: Reporter, workdir: Path) -> dict[str, float]:
    _, classifier_config = load_classifier(config.classifier)
    test = load_images(classifier_config.dataset, "test", classes=classifier_config.classes or None,
                       limit=config.images, seed=TEST_SEED)
    out_sets = {name: ood_set(name, config.images, TEST_SEED) for name in config.test_sets}
    rows, selective_rows, cost_rows, curves, metrics = [], [], [], {}, {}
    for method in methods(config):
        print(f"[ood] scoring {method.name} ({method.settings}) on {len(test)} in-distribution and "
              f"{len(out_sets)} x {config.images} OOD images", flush=True)
        scores_in = method.detector.score(test.images)
        predictions = method.predict(test.images)
        accuracy = float((predictions == test.labels.numpy()).mean())
        metrics[f"{method.name}.id_accuracy"] = accuracy
        accepted_out = {}
        for set_name, images in out_sets.items():
            scores_out = method.detector.score(images)
            values = ood_metrics(scores_in, scores_out)
            rows.append({"method": method.name, "ood_set": set_name, **values, "id_accuracy": accuracy,
                         "settings": method.settings})
            metrics.update({f"{method.name}.{set_name}.{k}": v for k, v in values.items()})
            curves[(method.name, set_name)] = (scores_in, scores_out)
            if method.threshold is not None:
                accepted_out[set_name] = float((scores_out >= method.threshold).mean())
        if method.threshold is not None:
            chosen = generator_nn.selective_metrics(scores_in >= method.threshold, predictions, test.labels.numpy())
            selective_rows.append({"method": method.name, "threshold": method.threshold,
                                   "test_reject_rate": chosen["reject_rate"],
                                   "selective_accuracy": chosen["selective_accuracy"], "id_accuracy": accuracy,
                                   **{f"{name}_accepted": share for name, share in accepted_out.items()}})
            metrics[f"{method.name}.test_reject_rate"] = chosen["reject_rate"]
            metrics[f"{method.name}.selective_accuracy"] = chosen["selective_accuracy"]
            metrics.update({f"{method.name}.{name}.ood_accepted": share for name, share in accepted_out.items()})
        if method.costs:
            cost_rows.append({"method": method.name, **{key: method.costs.get(key, math.nan) for key in COSTS}})
            metrics.update({f"{method.name}.{key}": value for key, value in method.costs.items()})
    workdir = Path(workdir)
    write_tables(rows, workdir, selective_rows, cost_rows)
    plot_roc_curves(curves, list(out_sets), workdir / "roc_curves.png")
    (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print((workdir / "ood_table.md").read_text(), flush=True)
    reporter.report(metrics)
    return metrics


def write_tables(rows: list[dict], workdir: Path, selective_rows: list[dict] = (), cost_rows: list[dict] = ()
                 ) -> None:
    import pandas as pd

    pd.DataFrame(rows).to_parquet(workdir / "ood_table.parquet", index=False)
    header = ["method", "OOD set", *METRIC_KEYS, "ID accuracy", "settings"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["method"], row["ood_set"], *(f"{row[k]:.4f}" for k in METRIC_KEYS), f"{row['id_accuracy']:.4f}",
                 row["settings"]]
        lines.append("| " + " | ".join(cells) + " |")
    if selective_rows:
        pd.DataFrame(selective_rows).to_parquet(workdir / "selective.parquet", index=False)
        accepted = [key for key in selective_rows[0] if key.endswith("_accepted")]
        header = ["method", "threshold", "test reject rate", "selective accuracy", "accuracy (no reject)",
                  *(f"{key.removesuffix('_accepted')} accepted" for key in accepted)]
        lines += ["", "Selective classification at the validation threshold (test split; OOD sets: share let through):",
                  "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in selective_rows:
            cells = [row["method"], f"{row['threshold']:.4g}", f"{row['test_reject_rate']:.4f}",
                     f"{row['selective_accuracy']:.4f}", f"{row['id_accuracy']:.4f}",
                     *(f"{row[key]:.4f}" for key in accepted)]
            lines.append("| " + " | ".join(cells) + " |")
    if cost_rows:
        pd.DataFrame(cost_rows).to_parquet(workdir / "costs.parquet", index=False)
        lines += ["", "What the generator-based methods cost (as their trials reported it; '-': not reported):", "",
                  "| method | generator parameters | similarity parameters | training seconds |", "|---|---|---|---|"]
        for row in cost_rows:
            cells = [row["method"], *("-" if math.isnan(row[key]) else f"{row[key]:,.0f}" for key in COSTS)]
            lines.append("| " + " | ".join(cells) + " |")
    (workdir / "ood_table.md").write_text("\n".join(lines) + "\n")


def plot_roc_curves(curves: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]], sets: list[str],
                    path: Path) -> None:
    from sklearn.metrics import roc_curve

    plt = pyplot()
    figure, axes = plt.subplots(1, len(sets), figsize=(4 * len(sets), 3.8), squeeze=False)
    for axis, set_name in zip(axes[0], sets):
        for (method, name), (scores_in, scores_out) in curves.items():
            if name != set_name:
                continue
            labels = np.r_[np.ones(len(scores_in)), np.zeros(len(scores_out))]
            fpr, tpr, _ = roc_curve(labels, np.r_[scores_in, scores_out])
            axis.plot(fpr, tpr, label=method)
        axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
        axis.set_title(f"in: test split, out: {set_name}", fontsize=9)
        axis.set_xlabel("false positive rate (OOD accepted)")
        axis.set_ylabel("true positive rate (in-distribution accepted)")
        axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def tiny_methods(upstream: Upstream, classifier: str) -> dict[str, str]:
    """The methods of the table, each from its own tiny run on all ten classes (the classifier's). Not
    conditional_nn: scoring with its siamese network would double the seconds (its evaluation is tested in
    tests/trainables/ood/test_ood_study_parts.py)."""
    return {"classifier": classifier, "odin": upstream.trainable("odin", classifier=classifier),
            **{name: upstream.trainable(name) for name in ("kplus1", "generator_nn", "leave_out")}}


EVALUATE_OOD = JobDef(
    name="evaluate_ood",
    config_cls=EvaluateOodConfig,
    run=run,
    metrics=(
        Metric("max_softmax.id_accuracy", higher_is_better=True, description="the plain classifier's test accuracy"),
    ),
    description="max-softmax, ODIN, the K+1 method, nearest-generated-image classification, the leave-out "
                "ensemble and the conditional generator with a siamese similarity on every test OOD set: AUROC, "
                "AUPR-in/out, FPR@95TPR, detection error, in-distribution accuracy, reject rate and selective "
                "accuracy, generator costs; tables, parquet and ROC curves",
    # the in-distribution test split is the classifier's dataset, read from its checkpoint (its stage declares it)
    datasets=lambda config: ood_datasets(config.test_sets, "test_sets"),
    tiny_config={"test_sets": ["fashion_mnist", "uniform_noise"], "images": 100},
    contract_inputs=lambda upstream: tiny_methods(upstream, upstream.trainable("classifier", classes=[])),
    outputs={"metrics": Output("metrics", "metrics.json"), "table": Output("table", "ood_table.md"),
             "roc_curves": Output("picture", "roc_curves.png"), "data": Output("data", "ood_table.parquet"),
             "selective": Output("data", "selective.parquet"), "costs": Output("data", "costs.parquet")},
)
