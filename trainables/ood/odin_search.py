"""ODIN as a searchable trainable: score one (temperature, epsilon) on validation data only.

ODIN has no weights of its own; its two settings decide everything, and they are easy to tune on
the very sets the paper reports, which would make the numbers meaningless. This trainable scores a
setting on the classifier's own validation images (held out of its training split) against a
*validation* OOD set (Gaussian noise by default) that is not one of the test OOD sets, so a Tune
search over it never sees the sets the evaluation job reports on.

Its "checkpoint" is the setting itself and the classifier folder it applies to, so a later stage
receives the chosen detector by reference (`odin.best`) like any other result.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from trainables import classifier as classifier_module
from trainables.checkpoint import Checkpoint, load_checkpoint
from trainables.config import build_config
from trainables.definitions import Metric, TrainableDef
from trainables.device import resolve_device
from trainables.ood.detectors import Odin
from trainables.ood.metrics import HIGHER_IS_BETTER, METRIC_KEYS, ood_metrics
from trainables.ood.sets import ood_set
from trainables.reporter import Reporter
from trainables.settings import DeviceSettings

VALIDATION_SEED = 1  # the validation OOD images; the evaluation job draws its test images with seed 0


@dataclass(frozen=True, kw_only=True)
class OdinConfig(DeviceSettings):
    classifier: str  # a classifier checkpoint folder: `inputs: {classifier: classifier.best}`
    temperature: float = 1000.0  # the paper's reference setting
    epsilon: float = 0.002
    validation_ood: str = "gaussian_noise"  # an OOD set name (trainables.ood.sets); never a test set
    validation_images: int = 1000

    def __post_init__(self) -> None:
        if not self.classifier:
            raise ValueError("classifier is empty: give a classifier checkpoint folder, normally by reference "
                             "(inputs: {classifier: classifier.best})")
        if self.temperature <= 0 or self.epsilon < 0:
            raise ValueError(f"temperature must be > 0 and epsilon >= 0, got {self.temperature} and {self.epsilon}")
        if self.validation_images < 10:
            raise ValueError(f"validation_images must be >= 10, got {self.validation_images}")


def load_classifier(folder: str) -> tuple[torch.nn.Module, classifier_module.ClassifierConfig]:
    """The trained classifier of a checkpoint folder, with the config it was trained under."""
    state = load_checkpoint(folder)
    if state.trainable != "classifier":
        raise ValueError(f"classifier: {folder} is a {state.trainable!r} checkpoint, not a classifier one")
    return classifier_module.build_model(state), build_config(classifier_module.ClassifierConfig, state.config)


def validation_images(config: classifier_module.ClassifierConfig, count: int) -> torch.Tensor:
    """In-distribution validation images: the classifier's own held-out split, never its training images."""
    _, val = classifier_module.split_train_val(classifier_module.load_training_data(config), config)
    return val.images[:count]


def run(config: OdinConfig, reporter: Reporter) -> dict[str, float]:
    """The trainable: reports val_auroc, val_fpr_at_95_tpr, ... of one ODIN setting, once."""
    model, classifier_config = load_classifier(config.classifier)
    detector = Odin(model, config.temperature, config.epsilon, device=str(resolve_device(config.device)))
    scores_in = detector.score(validation_images(classifier_config, config.validation_images))
    scores_out = detector.score(ood_set(config.validation_ood, config.validation_images, VALIDATION_SEED))
    metrics = {"epoch": 1.0, **{f"val_{k}": v for k, v in ood_metrics(scores_in, scores_out).items()}}
    state = Checkpoint(trainable="odin", config=dataclasses.asdict(config), epoch=1, metrics=dict(metrics))
    reporter.report(metrics, checkpoint=state)
    return metrics


ODIN = TrainableDef(
    name="odin",
    config_cls=OdinConfig,
    run=run,
    metrics=(
        Metric("val_auroc", higher_is_better=True,
               description="AUROC of ODIN: classifier's validation images vs the validation OOD set"),
        *(Metric(f"val_{key}", higher_is_better=HIGHER_IS_BETTER[key], description=f"{key} on the validation sets")
          for key in METRIC_KEYS if key != "auroc"),
    ),
    description="ODIN (temperature + input perturbation) on a trained classifier, scored on validation OOD data",
    tiny_config={"validation_images": 32},  # the tiny classifier's validation split
    contract_inputs=lambda upstream: {"classifier": upstream.trainable("classifier")},
)
