"""Typed configs from loose YAML values: coercions that are safe, errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from trainables.config import ConfigError, build_config


@dataclass(frozen=True)
class Example:
    checkpoint: str
    lr: float = 0.1
    classes: tuple[int, ...] = (7, 1)
    dataset: Literal["mnist", "fashion_mnist"] = "mnist"
    note: str | None = None
    epochs: int = 1


def problems(values) -> dict[str, str]:
    with pytest.raises(ConfigError) as error:
        build_config(Example, values)
    return dict(error.value.problems)


def test_yaml_shaped_values_are_coerced():
    config = build_config(Example, {"checkpoint": "/c", "lr": 1, "classes": [3, 5], "note": None})
    assert config == Example("/c", 1.0, (3, 5), "mnist", None, 1)
    assert isinstance(config.lr, float) and isinstance(config.classes, tuple)


def test_every_problem_is_named_by_key():
    found = problems({"lr": "fast", "classes": [1, "two"], "dataset": "cifar", "note": 3, "epochs": 1.5,
                      "learning_rate": 0.1})
    assert found == {
        "lr": "expected a number, got 'fast'",
        "classes": "item 1: expected an integer, got 'two'",
        "dataset": "expected one of ['mnist', 'fashion_mnist'], got 'cifar'",
        "note": "expected a string, got 3 or expected null",
        "epochs": "expected an integer, got 1.5",
        "learning_rate": "unknown setting (known: checkpoint, lr, classes, dataset, note, epochs)",
        "checkpoint": "required setting is missing",
    }


def test_booleans_are_not_numbers():
    assert problems({"checkpoint": "/c", "epochs": True}) == {"epochs": "expected an integer, got True"}
