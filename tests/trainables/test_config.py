"""Typed configs from loose YAML values: coercions that are safe, errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from trainables.classifier import ClassifierConfig
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


def test_a_union_takes_any_of_its_members_and_literals_only_their_values():
    config = build_config(Example, {"checkpoint": "/c", "note": "seed sweep", "dataset": "fashion_mnist"})
    assert (config.note, config.dataset) == ("seed sweep", "fashion_mnist")
    assert build_config(Example, {"checkpoint": "/c", "note": None}).note is None
    assert problems({"checkpoint": "/c", "dataset": "MNIST"}) == {
        "dataset": "expected one of ['mnist', 'fashion_mnist'], got 'MNIST'"}


def test_a_tuple_field_checks_and_converts_each_item():
    assert build_config(Example, {"checkpoint": "/c", "classes": []}).classes == ()
    assert problems({"checkpoint": "/c", "classes": 7}) == {"classes": "expected a list, got 7"}
    assert problems({"checkpoint": "/c", "classes": [7, 1.0]}) == {"classes": "item 1: expected an integer, got 1.0"}


def test_a_missing_required_setting_alone_is_one_problem():
    with pytest.raises(ConfigError) as error:
        build_config(Example, {})
    assert error.value.problems == [("checkpoint", "required setting is missing")]
    assert str(error.value) == "checkpoint: required setting is missing"


def test_range_checks_of_the_config_class_become_a_config_problem():
    with pytest.raises(ConfigError) as error:
        build_config(ClassifierConfig, {"lr": -1})
    assert error.value.problems == [("config", "lr must be > 0, got -1.0")]


def test_floats_reject_booleans_and_non_finite_numbers():
    assert problems({"checkpoint": "/c", "lr": True}) == {"lr": "expected a number, got True"}
    assert problems({"checkpoint": "/c", "lr": float("nan")}) == {"lr": "expected a finite number, got nan"}
    assert problems({"checkpoint": "/c", "lr": float("inf")}) == {"lr": "expected a finite number, got inf"}


def test_range_checks_wait_until_every_type_is_right():
    """__post_init__ would crash on a wrongly typed value, so it only runs on a well-typed config."""
    with pytest.raises(ConfigError) as error:
        build_config(ClassifierConfig, {"lr": -1, "epochs": "four"})
    assert error.value.problems == [("epochs", "expected an integer, got 'four'")]


def test_the_real_classifier_config_is_filled_from_yaml_values():
    config = build_config(ClassifierConfig, {"classes": [3, 8], "lr": 1, "dataset": "fashion_mnist"})
    assert (config.classes, config.lr, config.dataset) == ((3, 8), 1.0, "fashion_mnist")
    assert type(config.lr) is float
    with pytest.raises(ConfigError) as error:
        build_config(ClassifierConfig, {"dataset": "cifar10", "nf": "2"})
    assert error.value.problems == [("dataset", "expected one of ['mnist', 'fashion_mnist'], got 'cifar10'"),
                                    ("nf", "expected an integer, got '2'")]
