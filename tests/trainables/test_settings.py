"""The shared settings (trainables/settings.py): declared once, inherited by every config that has them, flat
in the config object, and accepted grouped (`data:`, `runtime:`) by `build_config`."""

from __future__ import annotations

import dataclasses

import pytest

from trainables import catalog
from trainables.classifier import ClassifierConfig
from trainables.config import ConfigError, build_config, flatten_sections
from trainables.evaluate_classifier import EvaluateClassifierConfig
from trainables.gasten import GastenConfig
from trainables.settings import (SECTIONS, DatasetSettings, DataSettings, DeviceSettings, RuntimeSettings,
                                 TrainingDataSettings)
from trainables.vae import VAEConfig

FLAT = {"dataset": "fashion_mnist", "classes": [3, 8], "train_size": 500, "allow_fallback": True, "seed": 4,
        "device": "cpu", "epochs": 2}
SECTIONED = {"data": {"dataset": "fashion_mnist", "classes": [3, 8], "train_size": 500, "allow_fallback": True},
             "runtime": {"seed": 4, "device": "cpu"}, "epochs": 2}


def every_config_class() -> dict[str, type]:
    entries = {f"trainable {name}": catalog.trainable(name) for name in catalog.trainable_names()}
    entries |= {f"job {name}": catalog.job(name) for name in catalog.job_names()}
    entries |= {f"objective {name}": catalog.objective(name) for name in catalog.objective_names()}
    return {what: entry.config_cls for what, entry in entries.items()}


def problems(config_cls: type, values: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as error:
        build_config(config_cls, values)
    return dict(error.value.problems)


def test_sections_build_the_same_config_as_the_flat_spelling_and_asdict_stays_flat():
    sectioned, flat = build_config(ClassifierConfig, SECTIONED), build_config(ClassifierConfig, FLAT)
    assert sectioned == flat
    assert (sectioned.dataset, sectioned.classes, sectioned.train_size, sectioned.seed, sectioned.epochs) == (
        "fashion_mnist", (3, 8), 500, 4, 2)
    state = dataclasses.asdict(sectioned)  # what a checkpoint's "config" and the MLflow params hold
    assert "data" not in state and "runtime" not in state
    assert {"dataset", "classes", "train_size", "allow_fallback", "seed", "device", "epochs", "lr"} <= set(state)
    assert build_config(ClassifierConfig, state) == sectioned  # a checkpoint's flat config still reads back


def test_a_config_redeclares_only_a_default_that_differs():
    assert ClassifierConfig().classes == (7, 1) and VAEConfig().classes == DataSettings().classes == ()
    assert [field.name for field in dataclasses.fields(ClassifierConfig)].count("classes") == 1


def test_every_config_with_a_shared_setting_inherits_it_from_its_declaration():
    """A shared setting redeclared by hand is how the 15 copies of `device` came about."""
    owners = {"device": DeviceSettings, "seed": RuntimeSettings, "train_size": TrainingDataSettings,
              "allow_fallback": TrainingDataSettings, "dataset": DatasetSettings, "classes": DataSettings}
    assert set(owners) == {name for names in SECTIONS.values() for name in names}
    checked = 0
    for what, config_cls in every_config_class().items():
        names = {field.name for field in dataclasses.fields(config_cls)}
        for name in names & set(owners):
            if (what, name) == ("job fewshot", "dataset"):  # any dataset name, not only the two trained on
                continue
            assert issubclass(config_cls, owners[name]), f"{what}: {name} is declared again instead of inherited"
            checked += 1
    assert checked >= 50


def test_configs_are_keyword_only_and_their_range_checks_still_run():
    with pytest.raises(TypeError):
        EvaluateClassifierConfig("/checkpoint")  # positional: refused, so a base's field cannot shift the order
    with pytest.raises(ValueError, match="train_size"):
        ClassifierConfig(train_size=-1)
    with pytest.raises(ValueError, match="generator is empty"):
        GastenConfig(generator="", classifier="/c", seed=3)
    assert problems(ClassifierConfig, {"data": {"train_size": -1}}) == {
        "config": "batch_size, epochs and val_size must be >= 1 and train_size >= 0"}


def test_a_problem_inside_a_section_is_named_by_its_nested_key():
    found = problems(ClassifierConfig, {"data": {"dataset": "cifar", "clases": [1, 2], "seed": 1},
                                        "runtime": {"seed": "one"}, "epochs": 2})
    assert found == {
        "data.dataset": "expected one of ['mnist', 'fashion_mnist'], got 'cifar'",
        "data.clases": f"unknown data setting (did you mean 'classes'?); data: holds {', '.join(SECTIONS['data'])}",
        "data.seed": "'seed' belongs under runtime:",
        "runtime.seed": "expected an integer, got 'one'",
    }


def test_a_section_setting_the_config_lacks_and_a_setting_given_twice_are_refused():
    assert problems(GastenConfig, {"generator": "/g", "classifier": "/c", "data": {"classes": [7, 1]}}) == {
        "data.classes": "this config has no setting 'classes' (its data settings: train_size, allow_fallback)"}
    assert problems(EvaluateClassifierConfig, {"checkpoint": "/c", "runtime": {"seed": 0}}) == {
        "runtime.seed": "this config has no setting 'seed' (its runtime settings: device)"}
    assert problems(ClassifierConfig, {"seed": 1, "runtime": {"seed": 2}}) == {
        "runtime.seed": "is also given as seed outside runtime:; keep it in one place"}
    assert problems(ClassifierConfig, {"data": [1]}) == {
        "data": f"expected a mapping of data settings ({', '.join(SECTIONS['data'])}), got list"}


def test_flatten_sections_says_which_shared_settings_were_written_flat():
    settings = flatten_sections(ClassifierConfig, {"dataset": "mnist", "data": {"classes": [7, 1]}, "seed": 0,
                                                   "epochs": 1})
    assert settings.values == {"dataset": "mnist", "classes": [7, 1], "seed": 0, "epochs": 1}
    assert settings.written == {"dataset": "dataset", "classes": "data.classes", "seed": "seed", "epochs": "epochs"}
    assert (settings.flat_shared, settings.problems) == (("dataset", "seed"), ())
