"""Study YAML for a tune stage with several metrics: `metric: [A, B]`, `mode`, `champion` and
`scheduler.metric`; every mistake is one line naming the file and the key."""

from __future__ import annotations

import copy

import pytest
import yaml

from orchestrator.launch import main
from orchestrator.spec import AshaSpec, ChampionBound, ChampionRule, SpecError, parse_study
from tests.orchestrator import toy_trainables as toy
from tests.orchestrator.test_spec import valid_study

TWO = {
    "study": "toy",
    "stages": [{
        "name": "search", "kind": "tune", "trainable": toy.NAME,
        "space": {"x": {"type": "uniform", "low": 0.0, "high": 1.0}},
        "metric": ["loss", "cost"],
        "champion": {"minimize": "loss", "where": {"cost": {"max": "budget", "min": 0}}},
        "num_samples": 4, "scheduler": {"type": "asha", "max_t": 4},
    }],
}


@pytest.fixture(autouse=True)
def toy_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(toy.FOLDER))


def edited(**changes) -> dict:
    study = copy.deepcopy(TWO)
    study["stages"][0].update(changes)
    return study


def test_two_metrics_become_objectives_with_the_trainables_directions_and_a_champion_rule():
    stage = parse_study(edited(), "toy.yaml").stages[0]
    assert (stage.metrics, stage.modes, stage.multi_objective) == (("loss", "cost"), ("min", "min"), True)
    assert stage.champion == ChampionRule("loss", "min", (ChampionBound("cost", min=0.0, max="budget"),))
    assert (stage.metric, stage.mode) == ("loss", "min")  # the champion's objective
    assert stage.scheduler_metric == ("loss", "min")  # ASHA's default: the champion's objective
    assert stage.objectives == (("loss", "min"), ("cost", "min"))
    assert str(stage.champion) == "minimize loss where 0 <= cost <= budget"
    assert stage.champion.metrics_read == ("loss", "cost", "budget")


def test_scheduler_metric_and_a_mode_that_restates_the_trainables_are_accepted():
    stage = parse_study(edited(mode=["min", "min"], scheduler={"type": "asha", "max_t": 4, "metric": "cost"}),
                        "toy.yaml").stages[0]
    assert stage.scheduler == AshaSpec(max_t=4, metric="cost", mode="min")
    assert stage.scheduler_metric == ("cost", "min")


def test_a_single_metric_stage_is_as_before_and_may_restate_its_mode():
    study = valid_study()
    stage = parse_study(study, "smoke.yaml").stages[0]
    assert (stage.metrics, stage.modes, stage.champion, stage.multi_objective) == ((), (), None, False)
    assert stage.objectives == (("val_accuracy", "max"),) and stage.scheduler_metric == ("val_accuracy", "max")
    study["stages"][0]["mode"] = "max"
    assert parse_study(study, "smoke.yaml").stages[0].mode == "max"


def test_dry_run_plan_names_the_objectives_the_rule_and_asha_s_metric(tmp_path, capsys):
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(edited(), sort_keys=False))
    assert main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert (f"search  tune  trainable={toy.NAME}  metric=[loss (min), cost (min)], champion: minimize loss "
            "where 0 <= cost <= budget") in out
    assert "ASHA max_t=4 grace=1 reduction=2 on loss (min)" in out


def champion(**rule):
    return {"champion": rule}


# (id, changes to the stage, expected key, expected message fragment)
MALFORMED = [
    ("one-metric-list", {"metric": ["loss"]}, "stages[0].metric", "two or more metrics"),
    ("unknown-metric-in-list", {"metric": ["loss", "cots"]}, "stages[0].metric[1]",
     "does not report 'cots' (did you mean 'cost'?)"),
    ("metric-twice", {"metric": ["loss", "loss"]}, "stages[0].metric", "names a metric twice"),
    ("metric-not-a-name", {"metric": ["loss", 3]}, "stages[0].metric[1]", "expected a metric name"),
    ("metric-a-mapping", {"metric": {"loss": "min"}}, "stages[0].metric", "a metric name or a list of them"),
    ("mode-contradicts", {"mode": ["min", "max"]}, "stages[0].mode[1]",
     "'max' contradicts trainable 'toy_trainables:TRADEOFF', which declares cost lower-is-better; write min"),
    ("mode-length", {"mode": ["min"]}, "stages[0].mode", "a list of 2 modes matching metric ['loss', 'cost']"),
    ("mode-word", {"mode": ["min", "lowest"]}, "stages[0].mode[1]", "must be max or min"),
    ("champion-missing", {"champion": None}, "stages[0].champion", "required for a stage with several metrics"),
    ("champion-key-typo", champion(minimize="loss", wehre={}), "stages[0].champion.wehre", "did you mean 'where'"),
    ("champion-two-goals", champion(minimize="loss", maximize="cost"), "stages[0].champion",
     "give only one of minimize, maximize"),
    ("champion-no-goal", champion(where={"cost": {"max": 1}}), "stages[0].champion",
     "give minimize: METRIC or maximize: METRIC"),
    ("champion-goal-not-searched", champion(minimize="budget"), "stages[0].champion.minimize",
     "must be one of the stage's metrics (loss, cost)"),
    ("champion-wrong-direction", champion(maximize="loss"), "stages[0].champion.maximize",
     "declares loss lower-is-better: write minimize: loss"),
    ("bound-unknown-metric", champion(minimize="loss", where={"cots": {"max": 1}}), "stages[0].champion.where.cots",
     "does not report 'cots' (did you mean 'cost'?)"),
    ("bound-names-unknown-metric", champion(minimize="loss", where={"cost": {"max": "budgte"}}),
     "stages[0].champion.where.cost.max", "does not report 'budgte' (did you mean 'budget'?)"),
    ("bound-side-typo", champion(minimize="loss", where={"cost": {"below": 1}}),
     "stages[0].champion.where.cost.below", "unknown key"),
    ("bound-empty", champion(minimize="loss", where={"cost": {}}), "stages[0].champion.where.cost",
     "give min, max or both"),
    ("bound-min-above-max", champion(minimize="loss", where={"cost": {"min": 2, "max": 1}}),
     "stages[0].champion.where.cost", "min must be <= max (2 > 1)"),
    ("bound-not-a-number", champion(minimize="loss", where={"cost": {"max": True}}),
     "stages[0].champion.where.cost.max", "expected a number"),
    ("asha-unknown-metric", {"scheduler": {"type": "asha", "max_t": 4, "metric": "los"}},
     "stages[0].scheduler.metric", "does not report 'los' (did you mean 'loss'?)"),
]


@pytest.mark.parametrize("changes,key,fragment", [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_each_mistake_is_exit_2_with_one_line_naming_file_and_key(tmp_path, capsys, changes, key, fragment):
    study = edited(**changes)
    if study["stages"][0].get("champion") is None:
        del study["stages"][0]["champion"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    assert main([str(path), "--dry-run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}: {key}: ") and fragment in lines[0], lines[0]


def test_a_champion_on_a_single_metric_stage_and_a_contradicting_mode_are_refused():
    study = valid_study()
    study["stages"][0]["champion"] = {"maximize": "val_accuracy"}
    study["stages"][0]["mode"] = "min"
    with pytest.raises(SpecError) as error:
        parse_study(study, "smoke.yaml")
    assert [key for key, _ in error.value.problems] == ["stages[0].mode", "stages[0].champion"]
    assert "'min' contradicts trainable 'classifier', which declares val_accuracy higher-is-better" in str(error.value)
    assert "only for a stage with several metrics" in str(error.value)
