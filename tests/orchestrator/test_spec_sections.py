"""A stage's `config:` with its shared settings grouped (`data:`, `runtime:`), the older flat spelling still read
with one deprecation line, nested error paths, and profiles patching either spelling (README "Config sections")."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from orchestrator.launch import main
from orchestrator.spec import SpecError, load_study, load_yaml, parse_study

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "search_spaces" / "smoke.yaml"
DEPRECATION = ("are read from the flat config for one more release; write them under data: "
               '(see README "Config sections")')


def smoke() -> dict:
    return load_yaml(SMOKE, str(SMOKE))


def flat_smoke() -> dict:
    """smoke.yaml in the older spelling: its `data:` settings written beside the others."""
    study = smoke()
    config = study["stages"][0]["config"]
    study["stages"][0]["config"] = {**config.pop("data"), **config}
    return study


def write(path: Path, study: dict) -> Path:
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def spec_problems(study: dict, profile: str | None = None) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as error:
        parse_study(study, "s.yaml", profile=profile)
    return error.value.problems


def test_the_shipped_smoke_study_groups_its_data_settings_and_reads_as_the_flat_spelling_did():
    assert "data" in smoke()["stages"][0]["config"] and "dataset" not in smoke()["stages"][0]["config"]
    sectioned, flat = parse_study(smoke(), "s.yaml"), parse_study(flat_smoke(), "s.yaml")
    assert sectioned.stages == flat.stages
    assert sectioned.stage("classifier").config == {"dataset": "mnist", "classes": [7, 1], "train_size": 1500,
                                                    "allow_fallback": True, "val_size": 500, "epochs": 4}
    assert sectioned.deprecations == ()
    assert flat.deprecations == ("s.yaml: stages[0].config: dataset, classes, train_size, allow_fallback "
                                 f"{DEPRECATION}",)


def test_a_flat_study_works_and_prints_one_deprecation_line_naming_file_stage_and_keys(tmp_path, capsys):
    study = flat_smoke()
    study["stages"][1]["config"] = {"device": "cpu"}  # a second stage in the older spelling: still one line
    path = write(tmp_path / "flat.yaml", study)
    assert main([str(path), "--dry-run", "--output", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"{path}: stages[0].config (dataset, classes, train_size, allow_fallback), stages[1].config "
                   "(device): these settings are read from the flat config for one more release; write them under "
                   'data: and runtime: (see README "Config sections")']


@pytest.mark.parametrize("config,key,message", [
    ({"data": {"dataset": "cifar"}}, "stages[0].config.data.dataset", "expected one of ['mnist', 'fashion_mnist']"),
    ({"data": {"clases": [7, 1]}}, "stages[0].config.data.clases", "unknown data setting (did you mean 'classes'?)"),
    ({"runtime": {"dataset": "mnist"}}, "stages[0].config.runtime.dataset", "'dataset' belongs under data:"),
    ({"runtime": "cpu"}, "stages[0].config.runtime", "expected a mapping of runtime settings (device, seed)"),
    ({"dataset": "mnist", "data": {"dataset": "mnist"}}, "stages[0].config.data.dataset",
     "is also given as dataset outside data:; keep it in one place"),
], ids=["wrong-value", "unknown-in-section", "wrong-section", "section-not-a-mapping", "both-spellings"])
def test_a_bad_section_is_exit_2_with_one_line_naming_the_nested_key(tmp_path, capsys, config, key, message):
    study = smoke()
    study["stages"][0]["config"] = {"epochs": 2, **config}
    path = write(tmp_path / "bad.yaml", study)
    assert main([str(path), "--dry-run", "--output", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}: {key}: ") and message in lines[0], lines


def test_a_section_setting_the_stage_config_lacks_is_named_for_each_kind():
    study = smoke()
    study["stages"][1]["config"] = {"runtime": {"seed": 3, "device": "cpu"}}  # a job: device only
    assert spec_problems(study) == [("stages[1].config.runtime.seed",
                                     "this config has no setting 'seed' (its runtime settings: device)")]


def test_a_range_check_on_a_sectioned_setting_is_reported_at_the_config():
    study = smoke()
    study["stages"][0]["config"]["data"]["train_size"] = -1
    assert spec_problems(study) == [("stages[0].config", "batch_size, epochs and val_size must be >= 1 and "
                                                         "train_size >= 0")]


def test_a_searched_shared_setting_stays_a_flat_space_key_and_may_not_also_be_a_constant():
    study = smoke()
    study["stages"][0]["space"]["train_size"] = {"type": "choice", "values": [500, 1500]}
    assert spec_problems(study) == [("stages[0].space.train_size", "is also set in config; keep it in one place")]
    del study["stages"][0]["config"]["data"]["train_size"]
    assert "train_size" in parse_study(study, "s.yaml").stage("classifier").space


@pytest.mark.parametrize("base,patch", [
    (smoke, {"data": {"classes": [5, 3]}}),
    (smoke, {"classes": [5, 3]}),
    (flat_smoke, {"data": {"classes": [5, 3]}}),
    (flat_smoke, {"classes": [5, 3]}),
], ids=["sections-onto-sections", "flat-onto-sections", "sections-onto-flat", "flat-onto-flat"])
def test_a_profile_patches_a_shared_setting_in_either_spelling(base, patch):
    study = base()
    study["profile"], study["profiles"] = "quick", {"quick-5v3": {"stages": {"classifier": {"config": copy.deepcopy(
        patch)}}}}
    spec = parse_study(study, "s.yaml", profile="quick-5v3")
    config = spec.stage("classifier").config
    assert config["classes"] == [5, 3]
    assert (config["dataset"], config["train_size"], config["epochs"]) == ("mnist", 1500, 4)  # the rest is kept
    flat_written = base is flat_smoke or "classes" in patch
    assert bool(spec.deprecations) == flat_written


def test_the_shipped_flagship_profiles_patch_the_sectioned_classes():
    spec = load_study(REPO / "search_spaces" / "gasten_mnist.yaml", profile="paper-5v3")
    assert {name: spec.stage(name).config["classes"] for name in ("classifier", "gan", "boundary_ood")} == {
        "classifier": [5, 3], "gan": [5, 3], "boundary_ood": [5, 3]}
    assert spec.stage("classifier").config["train_size"] == 0 and spec.deprecations == ()
