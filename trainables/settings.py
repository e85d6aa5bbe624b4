"""The settings many configs share, declared once: what data a run reads and where it runs.

A config dataclass inherits the groups it uses (`class ClassifierConfig(DataSettings, RuntimeSettings)`) and
redeclares a field only where its default differs (the classifier's `classes = (7, 1)`). Inheritance keeps
`dataclasses.asdict(config)` flat, so checkpoints, MLflow params, search spaces and `seed` (the field the
study seeds) read the same names as before. In a study file the shared settings may be grouped as
`data: {...}` and `runtime: {...}` under a stage's `config:`; `SECTIONS` says which names each group holds,
and `trainables.config.flatten_sections` turns the groups back into flat settings.

The groups are kw_only so that a field with a default here never forces defaults on the fields a config
declares after it (`GastenConfig.generator` has none).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class DeviceSettings:
    """Where a run computes; every trainable, job and objective that touches torch has it."""

    device: str = "auto"  # "auto": CUDA when this process sees a GPU, else CPU; or a torch name ("cpu", "cuda:1")


@dataclass(frozen=True, kw_only=True)
class RuntimeSettings(DeviceSettings):
    """Where a run computes and the seed its randomness comes from (a study gives each trial its own)."""

    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class TrainingDataSettings:
    """How much of the training split a run reads, and what it reads when MNIST is nowhere to be found.

    GASTeN has only these: its dataset and classes are its classifier's."""

    train_size: int = 0  # training images used; 0 keeps every (remaining) training image
    allow_fallback: bool = False  # scikit-learn's digits when MNIST is nowhere to be found


@dataclass(frozen=True, kw_only=True)
class DatasetSettings(TrainingDataSettings):
    """A run on all ten classes of one dataset (the OOD detectors' in-distribution)."""

    dataset: Literal["mnist", "fashion_mnist"] = "mnist"


@dataclass(frozen=True, kw_only=True)
class DataSettings(DatasetSettings):
    """A run on a subset of one dataset's classes."""

    classes: tuple[int, ...] = ()  # () means all ten classes


# The YAML groups (`config: {data: {...}, runtime: {...}}`) and the settings each may hold.
SECTIONS: dict[str, tuple[str, ...]] = {
    "data": tuple(field.name for field in dataclasses.fields(DataSettings)),
    "runtime": tuple(field.name for field in dataclasses.fields(RuntimeSettings)),
}


def section_of(name: str) -> str | None:
    """The YAML group a setting belongs in (`"data"` for `classes`), or None for a config's own setting."""
    return next((section for section, names in SECTIONS.items() if name in names), None)
