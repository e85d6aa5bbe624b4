"""Study YAML validation: a valid file becomes typed objects; every malformed one is exit 2 with one
line per problem naming the file and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.launch import main
from orchestrator.spec import (AshaSpec, Choice, JobStage, LogUniform, Reference, RegisterSpec, ResourcesSpec,
                               SearcherSpec, SpecError, TuneStage, load_study, load_yaml, parse_study)

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "search_spaces" / "smoke.yaml"


def valid_study() -> dict:
    # Read with the spec's own loader: plain yaml.safe_load keeps `1e-4` as a string, and every edited
    # copy would then carry two extra problems (space.lr.low/high) besides the one under test.
    return load_yaml(SMOKE, str(SMOKE))


def test_smoke_yaml_becomes_typed_frozen_objects():
    spec = load_study(SMOKE)
    assert (spec.name, spec.source, len(spec.stages)) == ("smoke", str(SMOKE), 2)
    search, evaluate = spec.stages
    assert isinstance(search, TuneStage) and isinstance(evaluate, JobStage)
    assert (search.name, search.trainable) == ("classifier", "classifier")
    assert (search.metric, search.mode, search.total_trials) == ("val_accuracy", "max", 8)
    assert search.space["lr"] == LogUniform(1e-4, 3e-2)  # `1e-4` without a dot is still a float
    assert type(search.space["lr"].low) is float and search.space["lr"].low == 0.0001
    assert search.space["batch_size"] == Choice((32, 64, 128)) and search.space["nf"] == Choice((1, 2))
    assert search.scheduler == AshaSpec(max_t=4, grace_period=1, reduction_factor=2.0)
    assert search.searcher == SearcherSpec("optuna", "tpe", 0)
    assert search.resources == ResourcesSpec(cpu=1.0, gpu=0.0)
    assert (search.num_samples, search.max_concurrent_trials, search.max_failures) == (8, 2, 1)
    assert search.config["classes"] == [7, 1] and search.config["epochs"] == 4
    assert search.register == RegisterSpec("smoke-classifier", "champion")
    assert spec.output == Path("runs/smoke")
    assert (search.register.name, search.register.alias) == ("smoke-classifier", "champion")
    assert (evaluate.job, evaluate.inputs) == ("evaluate_classifier", {"checkpoint": Reference("classifier", "best")})
    with pytest.raises(AttributeError):
        search.num_samples = 3


@pytest.mark.parametrize("metric,mode", [("val_accuracy", "max"), ("val_loss", "min"), ("train_loss", "min")])
def test_the_mode_comes_from_the_trainables_declaration_of_its_metric(metric, mode):
    study = valid_study()
    study["stages"][0]["metric"] = metric
    stage = parse_study(study, "edited.yaml").stages[0]
    assert (stage.metric, stage.mode) == (metric, mode)


def test_problems_are_collected_as_key_message_pairs():
    study = valid_study()
    study["stages"][0]["num_samples"] = 0
    study["stages"][0]["resources"] = {"cpu": -1}
    with pytest.raises(SpecError) as error:
        parse_study(study, "edited.yaml")
    assert error.value.problems == [("stages[0].num_samples", "must be >= 1, got 0"),
                                    ("stages[0].resources.cpu", "must be > 0, got -1")]
    assert str(error.value) == ("edited.yaml: stages[0].num_samples: must be >= 1, got 0\n"
                                "edited.yaml: stages[0].resources.cpu: must be > 0, got -1")


def stage0(**changes):
    def edit(study):
        study["stages"][0].update(changes)
    return edit


def space(name, entry):
    def edit(study):
        study["stages"][0]["space"][name] = entry
    return edit


def drop_key(key):
    def edit(study):
        del study[key]
    return edit


def top(**changes):
    def edit(study):
        study.update(changes)
    return edit


def second_stage(**changes):
    def edit(study):
        study["stages"][1].update(changes)
    return edit


def first_stage_uses_later(study):
    study["stages"][0]["inputs"] = {"checkpoint": "evaluate.best"}


def constant_lr(value):
    def edit(study):
        del study["stages"][0]["space"]["lr"]
        study["stages"][0]["config"]["lr"] = value
    return edit


# (id, edit of the valid study, expected key path, expected message fragment)
MALFORMED = [
    ("missing-study", drop_key("study"), "study", "required"),
    ("unknown-top-key", top(stagse=[]), "stagse", "did you mean 'stages'"),
    ("empty-stages", top(stages=[]), "stages", "non-empty list"),
    ("stage-without-name", stage0(name=None), "stages[0].name", "required"),
    ("duplicate-stage", second_stage(name="classifier"), "stages[1].name", "duplicate stage name"),
    ("unknown-kind", stage0(kind="sweep"), "stages[0].kind", "must be one of tune, optuna, job"),
    ("unknown-trainable", stage0(trainable="resnet9000"), "stages[0].trainable", "unknown trainable 'resnet9000'"),
    ("unknown-job", second_stage(job="nope"), "stages[1].job", "unknown job 'nope'"),
    ("stage-key-typo", stage0(num_sample=8), "stages[0].num_sample", "did you mean 'num_samples'"),
    ("config-key-unknown", stage0(config={"learning_rate": 0.1}), "stages[0].config.learning_rate",
     "has no setting 'learning_rate'"),
    ("config-wrong-type", stage0(config={"epochs": "four"}), "stages[0].config.epochs", "expected an integer"),
    ("config-range-check", stage0(config={"epochs": 0}), "stages[0].config", "epochs and val_size must be >= 1"),
    ("config-post-init-lr", constant_lr(-1), "stages[0].config", "lr must be > 0, got -1.0"),
    ("uniform-low-high", space("lr", {"type": "uniform", "low": 0.5, "high": 0.1}), "stages[0].space.lr",
     "low must be < high (0.5 >= 0.1)"),
    ("loguniform-low-high", space("lr", {"type": "loguniform", "low": 1e-2, "high": 1e-4}), "stages[0].space.lr",
     "low must be < high (0.01 >= 0.0001)"),
    ("loguniform-nonpositive", space("lr", {"type": "loguniform", "low": 0, "high": 1}), "stages[0].space.lr.low",
     "must be > 0 on a log scale"),
    ("int-low-high", space("epochs", {"type": "int", "low": 5, "high": 2}), "stages[0].space.epochs",
     "low must be <= high (5 > 2)"),
    ("choice-empty", space("nf", {"type": "choice", "values": []}), "stages[0].space.nf.values", "non-empty list"),
    ("space-unknown-type", space("lr", {"type": "normal", "mean": 0}), "stages[0].space.lr.type",
     "must be one of uniform, loguniform, int, choice, grid"),
    ("space-type-mismatch", space("nf", {"type": "uniform", "low": 1, "high": 4}), "stages[0].space.nf",
     "sampled values do not fit the setting: expected an integer"),
    ("grid-with-optuna", space("nf", {"type": "grid", "values": [1, 2]}), "stages[0].space.nf",
     "grid needs `searcher: {type: basic}`"),
    ("unknown-metric", stage0(metric="accuracy"), "stages[0].metric", "does not report 'accuracy'"),
    ("zero-samples", stage0(num_samples=0), "stages[0].num_samples", "must be >= 1, got 0"),
    ("asha-grace", stage0(scheduler={"type": "asha", "max_t": 4, "grace_period": 9}), "stages[0].scheduler.grace_period",
     "must be between 1 and max_t (4)"),
    ("asha-reduction", stage0(scheduler={"type": "asha", "max_t": 4, "reduction_factor": 1}),
     "stages[0].scheduler.reduction_factor", "must be > 1"),
    ("negative-cpu", stage0(resources={"cpu": -1}), "stages[0].resources.cpu", "must be > 0"),
    ("forward-reference", first_stage_uses_later, "stages[0].inputs.checkpoint",
     "'evaluate.best' refers to a later stage"),
    ("unknown-reference", second_stage(inputs={"checkpoint": "gan.best"}), "stages[1].inputs.checkpoint",
     "refers to an unknown stage"),
    ("bad-reference-syntax", second_stage(inputs={"checkpoint": "runs/smoke/best"}), "stages[1].inputs.checkpoint",
     "expected a reference like 'stage.best'"),
    ("unknown-selector", second_stage(inputs={"checkpoint": "classifier.worst"}), "stages[1].inputs.checkpoint",
     "unknown selector 'worst'"),
    ("asha-max-t-zero", stage0(scheduler={"type": "asha", "max_t": 0}), "stages[0].scheduler.max_t",
     "must be >= 1, got 0"),
    ("choice-duplicates", space("nf", {"type": "choice", "values": [1, 1]}), "stages[0].space.nf.values",
     "has duplicates"),
    ("job-config-typo", second_stage(config={"limt": 5}), "stages[1].config.limt", "did you mean 'limit'"),
    ("negative-seed", top(seed=-1), "seed", "must be an integer from 0 to"),
    ("float-seed", top(seed=1.5), "seed", "expected an integer"),
    ("reproducible-not-bool", top(reproducible="yes"), "reproducible", "expected true"),
]

# A stage that cannot be parsed takes its name with it, so a later reference to it is reported too.
EXTRA_LINES = {"stage-without-name": 1}


def run_cli(path, capsys):
    code = main([str(path), "--dry-run"])
    captured = capsys.readouterr()
    return code, captured.err


def assert_clean_problem_lines(err: str, path) -> list[str]:
    lines = err.strip().splitlines()
    assert lines, "no problem was reported"
    assert "Traceback" not in err
    for line in lines:
        assert line.startswith(f"{path}: "), line
    return lines


def rejected_lines(path, capsys) -> tuple[list[str], str]:
    """`--dry-run` of a bad file: exit 2 and only clean one-line problems naming it; (lines, stderr)."""
    code, err = run_cli(path, capsys)
    assert code == 2
    return assert_clean_problem_lines(err, path), err


@pytest.mark.parametrize("edit,key,fragment", [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_malformed_spec_is_exit_2_with_a_line_naming_file_and_key(tmp_path, capsys, request, edit, key,
                                                                  fragment):
    study = valid_study()
    edit(study)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    lines, err = rejected_lines(path, capsys)
    assert any(line.startswith(f"{path}: {key}: ") and fragment in line for line in lines), err
    assert len(lines) == 1 + EXTRA_LINES.get(request.node.callspec.id, 0), err


def test_the_unedited_fixture_is_valid(tmp_path, capsys):
    """Guards the cases above: each edit of this study must be the file's only problem."""
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(valid_study(), sort_keys=False))
    code = main([str(path), "--dry-run", "--output", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert (code, captured.err) == (0, "")
    assert "trials: 8 (Optuna tpe, seed 0)" in captured.out


@pytest.mark.parametrize("text,fragment", [
    ("study: x\nstages: [\n", "line 3, column 1: YAML syntax error"),
    ("- just\n- a list\n", "expected a mapping with keys study, stages"),
], ids=["yaml-syntax-error", "top-level-list"])
def test_unparseable_or_wrong_shape_file(tmp_path, capsys, text, fragment):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    lines, err = rejected_lines(path, capsys)
    assert len(lines) == 1 and fragment in lines[0], err


def test_missing_file_is_exit_2(tmp_path, capsys):
    code, err = run_cli(tmp_path / "absent.yaml", capsys)
    assert code == 2
    assert err.strip() == f"{tmp_path / 'absent.yaml'}: file not found"


def test_every_problem_in_a_file_is_reported_at_once(tmp_path, capsys):
    study = valid_study()
    study["stages"][0]["num_samples"] = 0
    study["stages"][0]["space"]["lr"] = {"type": "uniform", "low": 1, "high": 0}
    study["stages"][0]["metric"] = "loss"
    study["stages"][1]["inputs"] = {"checkpoint": "nowhere.best"}
    study["colour"] = "blue"
    path = tmp_path / "many.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    lines, err = rejected_lines(path, capsys)
    assert len(lines) == 5, err
    keys = sorted(line.split(": ")[1] for line in lines)
    assert keys == sorted(["colour", "stages[0].num_samples", "stages[0].space.lr", "stages[0].metric",
                           "stages[1].inputs.checkpoint"])


@pytest.mark.slow  # several seconds (a subprocess or a small training run): not part of the quick loop
def test_cli_subprocess_bad_spec_prints_exactly_one_line(tmp_path):
    study = valid_study()
    study["stages"][0]["space"]["lr"] = {"type": "loguniform", "low": 1e-2, "high": 1e-4}
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "orchestrator.launch", str(path), "--dry-run"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == f"{path}: stages[0].space.lr: low must be < high (0.01 >= 0.0001)"


def test_cli_subprocess_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "orchestrator.launch", str(SMOKE), "--dry-run",
                             "--output", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "trials: 8 (Optuna tpe, seed 0), at most 2 at once; ASHA max_t=4" in result.stdout
    assert "inputs: checkpoint <- classifier.best" in result.stdout
    assert "Nothing was run (--dry-run)." in result.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text_edit,key,fragment", [
    (("nf: {type: choice, values: [1, 2]}", "nf: {type: choice, values: [2, 0]}"), "stages[0].space.nf",
     "the value 0 fails: nf must be >= 1"),
    (("high: 3e-2}", "high: .inf}"), "stages[0].space.lr.high", "expected a finite number, got inf"),
    (("lr: {type: loguniform, low: 1e-4, high: 3e-2}", "lr: {type: choice, values: [0.001, .nan]}"),
     "stages[0].space.lr", "expected a finite number, got nan"),
    (("study: smoke", "study: smoke\nstudy: other"), "", "duplicate key 'study'"),
], ids=["every-choice-is-range-checked", "infinite-bound", "nan-choice", "duplicate-yaml-key"])
def test_values_a_sampler_could_draw_and_yaml_pitfalls_are_caught(tmp_path, capsys, text_edit, key, fragment):
    old, new = text_edit
    text = SMOKE.read_text()
    assert old in text
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace(old, new, 1))
    lines, err = rejected_lines(path, capsys)
    assert any(line.startswith(f"{path}: {key}: " if key else f"{path}: ") and fragment in line for line in lines), err


STAGE = "stages:\n  - {name: c, kind: tune, trainable: classifier, metric: val_accuracy, %s}\n"


@pytest.mark.parametrize("data,fragment", [
    (b"study: x\n" + (STAGE % "space: {lr: {type: [uniform], low: 0.1, high: 1}}").encode(),
     "stages[0].space.lr.type: must be one of uniform"),
    (b"study: x\n? [a]\n: 1\nstages: []\n", ""),
    (b"study: x\xff\nstages: []\n", "not UTF-8 text"),
    (b"study: x\n" + (STAGE % ("space: {lr: {type: uniform, low: 0.1, high: 1" + "0" * 400 + "}}")).encode(),
     "stages[0].space.lr.high: expected a finite number"),
    (b"study: x\n" + (STAGE % ("config: {lr: 1" + "0" * 400 + "}")).encode(),
     "stages[0].config.lr: expected a finite number, got an integer of 401 digits"),
    (b"study: x\n" + (STAGE % "").replace("trainable: classifier", "trainable: ':X'").encode(),
     "stages[0].trainable: cannot import ':X'"),
], ids=["list-as-space-type", "complex-yaml-key", "not-utf8", "huge-int-bound", "huge-int-constant", "empty-module"])
def test_odd_input_never_crashes_the_launcher(tmp_path, capsys, data, fragment):
    path = tmp_path / "odd.yaml"
    path.write_bytes(data)
    lines, err = rejected_lines(path, capsys)
    assert any(fragment in line for line in lines), err


def test_yaml_merge_keys_are_not_taken_for_duplicates(tmp_path, capsys):
    text = SMOKE.read_text().replace("      dataset: mnist\n", "      <<: {dataset: mnist}\n")
    assert "<<:" in text
    path = tmp_path / "merge.yaml"
    path.write_text(text)
    assert main([str(path), "--dry-run"]) == 0, capsys.readouterr().err


def test_a_merge_key_with_an_explicit_override_is_accepted_and_the_explicit_key_wins(tmp_path):
    """Issue 19, defect 8: `config: {<<: *cfg, epochs: 2}` was refused as a duplicate key."""
    text = SMOKE.read_text().replace("    config:\n      data:\n", "    config: &cfg\n      data:\n")
    text = text.replace("study: smoke\n", "study: smoke\nprofile: quick\n")
    text += "\nprofiles:\n  short:\n    stages:\n      classifier: {config: {<<: *cfg, epochs: 2}}\n"
    path = tmp_path / "merge.yaml"
    path.write_text(text)
    result = subprocess.run([sys.executable, "-m", "orchestrator.launch", str(path), "--dry-run", "--profile", "short",
                             "--output", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    config = load_study(path, profile="short").stage("classifier").config
    assert config["epochs"] == 2 and config["classes"] == [7, 1] and config["train_size"] == 1500


def test_a_key_written_twice_beside_a_merge_key_is_still_refused(tmp_path, capsys):
    path = tmp_path / "twice.yaml"
    path.write_text(SMOKE.read_text().replace("      epochs: 4\n", "      <<: {allow_fallback: true}\n"
                                                                      "      epochs: 4\n      epochs: 2\n"))
    lines, err = rejected_lines(path, capsys)
    assert any("duplicate key 'epochs'" in line for line in lines), err


def alias_bomb(levels: int = 9) -> str:
    """The "billion laughs" shape: each anchor a list of ten aliases of the one before (10^levels values)."""
    lines = ["study: bomb", "description: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"output: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" if i == 1 else
              f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\nstages: *a{levels}\n"


BOUNDS = {
    "alias-bomb": (alias_bomb(), "expands to more than 100,000 values through its aliases"),
    "deep-list": ("study: deep\nstages: " + "[" * 10_000 + "]" * 10_000 + "\n", "nested more than 100 levels deep"),
    "deep-through-aliases": ("study: deep\n" + "".join(f"x{i}: &a{i} [{'*a' + str(i - 1) if i else 'x'}]\n"
                                                        for i in range(200)) + "stages: *a199\n",
                             "nests more than 100 levels deep once its aliases are expanded"),
    "alias-loop": ("study: loop\nstages: &s [*s]\n", "an alias refers to a value that contains it"),
    "long-value": ("study: long\ndescription: " + "x" * 200_000 + "\nstages: []\n", "a value of 200,000 characters"),
    "megabyte-file": ("study: big\ndescription: " + "x" * 1_000_000 + "\nstages: []\n", "a study file is at most"),
}


@pytest.mark.parametrize("name", list(BOUNDS))
def test_oversized_yaml_is_one_line_and_exit_2_within_a_second_without_memory_growth(tmp_path, name):
    """Issue 19: an alias bomb (10^9 values here) drove the launcher to 3 GB with no answer after 45 s; a
    10,000-deep list ended in a RecursionError and a 200 KB traceback."""
    import time
    import tracemalloc

    text, fragment = BOUNDS[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    if name in ("alias-bomb", "deep-list"):  # the issue's two cases, in a real launcher (a timeout, not a hang)
        result = subprocess.run([sys.executable, "-m", "orchestrator.launch", str(path), "--dry-run"], cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"{path}: ") and \
            fragment in result.stderr, result.stderr[:2000]
    started = time.perf_counter()
    with pytest.raises(SpecError, match=fragment.replace("(", r"\(")):
        load_study(path)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"{elapsed:.2f} s"
    tracemalloc.start()  # measured apart: tracing slows the pure-Python scanner several times over
    with pytest.raises(SpecError):
        load_study(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20e6, f"{peak / 1e6:.0f} MB"


@pytest.mark.parametrize("path", sorted((REPO / "search_spaces").glob("*.yaml")), ids=lambda path: path.stem)
def test_every_shipped_study_uses_the_current_spelling_in_every_profile(path):
    profiles = load_study(path).profiles or ("",)
    assert {profile: load_study(path, profile or None).deprecations for profile in profiles} == {
        profile: () for profile in profiles}
