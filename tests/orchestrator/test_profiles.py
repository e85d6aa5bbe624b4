"""Profiles: one study file, a quick CPU configuration and paper-sized ones, picked by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.launch import main
from orchestrator.spec import Choice, SpecError, load_study, load_yaml, parse_study

REPO = Path(__file__).resolve().parents[2]
GASTEN = REPO / "search_spaces" / "gasten_mnist.yaml"
SMOKE = REPO / "search_spaces" / "smoke.yaml"


def with_profiles(profiles: dict, base: str | None = "quick") -> dict:
    study = load_yaml(SMOKE, str(SMOKE))
    if base is not None:
        study["profile"] = base
    study["profiles"] = profiles
    return study


def test_gasten_mnist_offers_a_quick_default_and_paper_profiles():
    quick = load_study(GASTEN)
    assert quick.profile == "quick" and quick.profiles[:2] == ("quick", "paper")
    assert [stage.name for stage in quick.stages] == ["classifier", "classifier_test", "gan", "gasten", "clustering",
                                                      "prototypes", "boundary_ood", "evaluation"]
    for name in quick.profiles:  # every profile keeps the three stages that name a digit pair on the same pair
        spec = load_study(GASTEN, profile=name)
        pairs = {stage: tuple(spec.stage(stage).config["classes"]) for stage in ("classifier", "gan", "boundary_ood")}
        assert len(set(pairs.values())) == 1, f"profile {name}: {pairs}"
    assert quick.output == Path("runs/gasten_mnist")
    paper = load_study(GASTEN, profile="paper")
    assert paper.output == Path("runs/gasten_mnist-paper")
    assert paper.stage("gan").config["epochs"] == 10 and quick.stage("gan").config["epochs"] == 8
    assert paper.stage("gasten").config["epochs"] == 40 and paper.stage("gasten").config["acd_images"] == 2048
    assert paper.stage("gasten").resources.gpu > 0 and quick.stage("gasten").resources.gpu == 0
    # Unpatched settings come through untouched.
    assert paper.stage("gasten").metrics == quick.stage("gasten").metrics == ("acd", "fid_mnist")
    assert paper.stage("gasten").champion == quick.stage("gasten").champion
    assert paper.stage("gan").config["classes"] == [7, 1]
    pair = load_study(GASTEN, profile="paper-5v3")  # extends paper, then changes the digit pair
    assert pair.stage("classifier").config["classes"] == [5, 3] and pair.stage("gan").config["epochs"] == 10
    assert pair.output == Path("runs/gasten_mnist-paper-5v3")
    # The optuna stage is patched like any other: the paper's 15,000 images, its branches untouched.
    assert (paper.stage("clustering").config["images"], paper.stage("clustering").n_trials) == (15000, 100)
    assert paper.stage("clustering").branches == quick.stage("clustering").branches


def test_a_profile_patches_stage_keys_deeply_and_replaces_space_entries_whole():
    study = with_profiles({"big": {"stages": {"classifier": {
        "config": {"epochs": 9}, "num_samples": 2,
        "space": {"batch_size": {"type": "choice", "values": [256]}}}}}})
    base = parse_study(study, "p.yaml")
    big = parse_study(study, "p.yaml", profile="big")
    assert (base.profile, big.profile, big.profiles) == ("quick", "big", ("quick", "big"))
    stage = big.stage("classifier")
    assert stage.config["epochs"] == 9 and stage.config["train_size"] == base.stage("classifier").config["train_size"]
    assert stage.num_samples == 2 and stage.space["batch_size"] == Choice((256,))
    assert stage.space["lr"] == base.stage("classifier").space["lr"]
    assert big.output == Path("runs/smoke-big") and base.output == Path("runs/smoke")


@pytest.mark.parametrize("profiles,profile,expected", [
    ({"big": {}}, "huge", ("profiles", "no profile 'huge' (this file has: quick, big)")),
    ({"big": {"stages": {"clasifier": {"num_samples": 2}}}}, "big",
     ("profiles.big.stages.clasifier", "no stage named 'clasifier' (stages: classifier, evaluate)")),
    ({"big": {"stages": {"classifier": {"name": "other"}}}}, "big",
     ("profiles.big.stages.classifier", "a profile cannot rename a stage or change its kind")),
    ({"big": {"extends": "large"}}, "big",
     ("profiles.big.extends", "no profile 'large' to extend (this file has: quick, big)")),
    ({"a": {"extends": "b"}, "b": {"extends": "a"}}, "a",
     ("profiles.a.extends", "profiles extend each other in a loop: a -> b -> a")),
    ({"quick": {}}, None,
     ("profiles.quick", "is the base profile (`profile: quick`): its settings are the stages themselves; "
                        "give other profiles a different name")),
    ({"big": {"epochs": 3}}, "big", ("profiles.big.epochs", "unknown key; allowed: extends, output, description, stages")),
])
def test_profile_mistakes_are_one_line_each_naming_the_key(profiles, profile, expected):
    with pytest.raises(SpecError) as error:
        parse_study(with_profiles(profiles), "p.yaml", profile=profile)
    assert error.value.problems == [expected]


def test_a_problem_the_profile_introduces_names_the_profile():
    study = with_profiles({"big": {"stages": {"classifier": {"num_samples": 0}}}})
    parse_study(study, "p.yaml")  # the base profile is fine
    with pytest.raises(SpecError) as error:
        parse_study(study, "p.yaml", profile="big")
    assert error.value.lines() == ["p.yaml (profile big): stages[0].num_samples: must be >= 1, got 0"]


def test_asking_for_a_profile_of_a_file_without_profiles_exits_2(capsys):
    assert main([str(SMOKE), "--dry-run", "--profile", "paper"]) == 2
    assert capsys.readouterr().err.strip() == (f"{SMOKE}: profiles: the file defines no profiles, so --profile paper "
                                               "cannot be applied; add a `profiles:` section")


def test_dry_run_names_the_profile_and_the_others(capsys):
    assert main([str(GASTEN), "--dry-run", "--profile", "paper"]) == 0
    out = capsys.readouterr().out
    assert "profile: paper (also offered: quick, " in out and "runs/gasten_mnist-paper" in out
    assert "trials: 16 (Optuna tpe, seed 0), at most 4 at once; ASHA max_t=40" in out
