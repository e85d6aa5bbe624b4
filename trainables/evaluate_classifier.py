"""Job: score a trained classifier once on the untouched test split.

A search picks its best trial on validation images; this job gives the honest number a paper
would report, with a confusion matrix and the misclassified images to look at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from trainables.checkpoint import load_checkpoint
from trainables.classifier import build_model, evaluate
from trainables.data import load_images
from trainables.definitions import JobDef, Metric, Output
from trainables.device import resolve_device
from trainables.plotting import pyplot
from trainables.reporter import Reporter
from trainables.settings import DeviceSettings



@dataclass(frozen=True, kw_only=True)
class EvaluateClassifierConfig(DeviceSettings):
    checkpoint: str  # a checkpoint folder, normally given by reference: `inputs: {checkpoint: classifier.best}`
    limit: int = 0  # 0 scores the whole test split


def run(config: EvaluateClassifierConfig, reporter: Reporter, workdir: Path) -> dict[str, float]:
    state = load_checkpoint(config.checkpoint)
    trained = state.config
    device = resolve_device(config.device)
    model = build_model(state).to(device)
    test = load_images(trained["dataset"], "test", classes=tuple(trained["classes"]) or None,
                       limit=config.limit or None, allow_fallback=trained["allow_fallback"])
    scores = evaluate(model, test, device)
    with torch.no_grad():
        predicted = torch.cat([model(test.images[i:i + 1024].to(device)).argmax(1).cpu()
                               for i in range(0, len(test), 1024)])
    # Imported here: the catalog imports this module for every `--dry-run`, and scikit-learn
    # (like matplotlib, see trainables/plotting.py) costs most of a second to import.
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(test.labels.numpy(), predicted.numpy(), labels=range(len(test.classes)))
    metrics = {"test_accuracy": scores["accuracy"], "test_loss": scores["loss"], "test_images": float(len(test))}
    for index, cls in enumerate(test.classes):
        metrics[f"test_accuracy_class_{cls}"] = float(matrix[index, index] / max(matrix[index].sum(), 1))

    plot_confusion(matrix, test.classes, workdir / "confusion_matrix.png")
    wrong = (predicted != test.labels).nonzero().flatten()[:32]
    plot_images(test.images[wrong], [f"{test.classes[test.labels[i]]}→{test.classes[predicted[i]]}" for i in wrong],
                workdir / "misclassified.png")
    (workdir / "metrics.json").write_text(json.dumps({**metrics, "source": test.source}, indent=2))
    reporter.report(metrics)
    return metrics


def plot_confusion(matrix, classes: tuple[int, ...], path: Path) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(1.2 + 0.6 * len(classes), 1 + 0.6 * len(classes)))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(classes)), classes)
    axis.set_yticks(range(len(classes)), classes)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for (row, col), count in zip(((r, c) for r in range(len(classes)) for c in range(len(classes))), matrix.flat):
        axis.text(col, row, str(count), ha="center", va="center", fontsize=8)
    axis.set_title("test confusion matrix")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_images(images: torch.Tensor, titles: list[str], path: Path, columns: int = 8) -> None:
    rows = max(1, -(-len(images) // columns))
    plt = pyplot()
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.25), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, title in zip(axes.flat, images, titles):
        axis.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
        axis.set_title(title, fontsize=7)
    if not titles:
        axes.flat[0].set_title("no misclassified images", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


EVALUATE_CLASSIFIER = JobDef(
    name="evaluate_classifier",
    config_cls=EvaluateClassifierConfig,
    run=run,
    metrics=(
        Metric("test_accuracy", higher_is_better=True, description="accuracy on the test split"),
        Metric("test_loss", higher_is_better=False, description="cross-entropy on the test split"),
    ),
    description="score a classifier checkpoint on the test split; confusion matrix and misclassified images",
    tiny_config={"limit": 200},
    contract_inputs=lambda upstream: {"checkpoint": upstream.trainable("classifier")},
    outputs={"metrics": Output("metrics", "metrics.json"),
             "confusion_matrix": Output("picture", "confusion_matrix.png"),
             "misclassified": Output("picture", "misclassified.png")},
)
