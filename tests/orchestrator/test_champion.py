"""Choosing a two-objective stage's champion among every evaluated epoch, against hand computations."""

from __future__ import annotations

import math

import pytest

from orchestrator.champion import (Point, bound_violation, choose_champion, describe_champion, pareto_front,
                                   reference_verdicts, violation)
from orchestrator.spec import ChampionBound, ChampionRule, parse_study
from orchestrator.study_state import BestTrial
from tests.orchestrator import toy_trainables as toy

FID_BOUND = ChampionRule("acd", "min", (ChampionBound("fid", max="fid_real"),))


def point(trial: str, epoch: int, **metrics: float) -> Point:
    return Point(trial, epoch, metrics)


def test_a_violation_is_relative_to_its_bound_and_reads_named_bounds_from_the_same_row():
    assert bound_violation(ChampionBound("fid", max=40.0), {"fid": 44.0}) == pytest.approx(0.1)
    assert bound_violation(ChampionBound("fid", max=40.0), {"fid": 39.0}) == 0
    assert bound_violation(ChampionBound("fid", max="fid_real"), {"fid": 75.0, "fid_real": 60.0}) == pytest.approx(0.25)
    assert bound_violation(ChampionBound("acc", min=0.8), {"acc": 0.6}) == pytest.approx(0.25)
    assert bound_violation(ChampionBound("x", min=0.0, max=1.0), {"x": -0.5}) == pytest.approx(0.5)  # |bound| 0: absolute
    assert bound_violation(ChampionBound("fid", max="fid_real"), {"fid": 10.0}) == math.inf  # no yardstick reported
    assert bound_violation(ChampionBound("fid", max=40.0), {"fid": math.nan}) == math.inf
    two = ChampionRule("acd", "min", (ChampionBound("fid", max=40.0), ChampionBound("share", min=0.5)))
    assert violation(two, {"fid": 44.0, "share": 0.25}) == pytest.approx(0.1 + 0.5)


def test_the_champion_is_the_best_objective_among_feasible_epochs_not_a_trials_last():
    points = [point("a", 1, acd=0.40, fid=50, fid_real=60), point("a", 2, acd=0.30, fid=58, fid_real=60),
              point("a", 3, acd=0.20, fid=70, fid_real=60),  # lowest acd, but past the yardstick
              point("b", 1, acd=0.35, fid=40, fid_real=60), point("b", 3, acd=0.30, fid=59, fid_real=60)]
    chosen = choose_champion(points, FID_BOUND)
    assert (chosen.point.trial, chosen.point.epoch, chosen.feasible, chosen.violation) == ("b", 3, True, 0)  # tie: later epoch
    maximize = choose_champion(points, ChampionRule("fid", "max", (ChampionBound("acd", max=0.35),)))
    assert (maximize.point.trial, maximize.point.epoch) == ("a", 3)


def test_when_no_epoch_meets_the_rule_the_one_closest_to_it_is_chosen_and_flagged():
    points = [point("a", 1, acd=0.2, fid=90, fid_real=60), point("a", 2, acd=0.1, fid=72, fid_real=60),
              point("b", 1, acd=0.3, fid=66, fid_real=60)]
    chosen = choose_champion(points, FID_BOUND)
    assert (chosen.point.trial, chosen.point.epoch, chosen.feasible) == ("b", 1, False)
    assert chosen.violation == pytest.approx(0.1)
    assert choose_champion([point("a", 1, fid=1.0)], FID_BOUND) is None  # nobody reported the objective


def test_the_front_keeps_exactly_the_undominated_points_under_each_metrics_direction():
    points = [point("a", 1, acd=0.4, fid=10), point("a", 2, acd=0.3, fid=20), point("b", 1, acd=0.3, fid=25),
              point("b", 2, acd=0.1, fid=40), point("c", 1, acd=0.5, fid=50), point("c", 2, acd=0.1, fid=40),
              point("d", 1, fid=5)]  # no acd: takes no part
    front = pareto_front(points, (("acd", "min"), ("fid", "min")))
    assert [(p.trial, p.epoch) for p in front] == [("a", 1), ("a", 2), ("b", 2), ("c", 2)]
    higher = pareto_front(points, (("acd", "max"), ("fid", "min")))  # more acd is better now
    assert [(p.trial, p.epoch) for p in higher] == [("a", 1), ("c", 1)]


def toy_stage():
    return parse_study({"study": "toy", "stages": [{
        "name": "search", "kind": "tune", "trainable": toy.NAME, "space": {"x": {"type": "uniform", "low": 0, "high": 1}},
        "metric": ["loss", "cost"], "champion": {"minimize": "loss", "where": {"cost": {"max": "budget"}}},
        "num_samples": 2}]}, "toy.yaml").stages[0]


def test_the_summary_says_whether_the_champion_beats_each_reference_point(monkeypatch):
    monkeypatch.syspath_prepend(str(toy.FOLDER))
    stage, definition = toy_stage(), toy.TRADEOFF
    better = {"loss": 0.25, "cost": 0.8, "budget": 0.85, **toy.REFERENCE}  # cost ties the reference: still beats
    (verdict,) = reference_verdicts(definition, ("cost", "loss"), better)
    assert (verdict.label, verdict.values, verdict.beaten) == ("reference", {"cost": 0.8, "loss": 0.3}, True)
    assert not reference_verdicts(definition, ("cost", "loss"), {**better, "cost": 0.81})[0].beaten
    best = BestTrial("t1", "loss", 0.25, "/ckpt", {}, epoch=3, metrics=better, rule_met=True)
    assert describe_champion(stage, best) == ("champion (trial t1, epoch 3): loss 0.25, cost 0.8 - beats reference "
                                              "(loss 0.3, cost 0.8): yes")
    missed = BestTrial("t1", "loss", 0.25, "/ckpt", {}, epoch=3, metrics={**better, "cost": 0.9}, rule_met=False)
    assert describe_champion(stage, missed).startswith(
        "champion (trial t1, epoch 3): loss 0.25, cost 0.9 - no epoch met the rule (minimize loss where cost <= budget)")
    assert describe_champion(stage, missed).endswith(": no")


def test_the_front_file_lists_the_front_best_first_and_adds_a_champion_that_is_off_it(tmp_path, monkeypatch):
    import csv

    from orchestrator.tune_stage import TuneOutcome, write_pareto_front

    monkeypatch.syspath_prepend(str(toy.FOLDER))
    stage = parse_study({"study": "toy", "stages": [{
        "name": "search", "kind": "tune", "trainable": toy.NAME, "space": {"x": {"type": "uniform", "low": 0, "high": 1}},
        "metric": ["loss", "cost"], "champion": {"minimize": "loss", "where": {"cost": {"min": 0.32, "max": 0.4}}},
        "num_samples": 2}]}, "toy.yaml").stages[0]
    points = [point("a", 1, loss=0.9, cost=0.3), point("b", 1, loss=0.95, cost=0.35),  # b1: beaten by a1
              point("a", 2, loss=0.5, cost=0.6), point("b", 2, loss=0.4, cost=0.7)]
    front = pareto_front(points, stage.objectives)
    chosen = choose_champion(points, stage.champion)  # the only epoch with cost in [0.32, 0.4]: b1, off the front
    outcome = TuneOutcome(best=None, trials=2, failed_trials=0, experiment_dir=tmp_path, champion=chosen, front=front)
    write_pareto_front(stage, outcome, tmp_path / "pareto_front.csv")
    with (tmp_path / "pareto_front.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows == [["trial", "epoch", "loss", "cost", "feasible", "chosen", "on_front"],
                    ["b", "2", "0.4", "0.7", "False", "False", "True"],
                    ["a", "2", "0.5", "0.6", "False", "False", "True"],
                    ["a", "1", "0.9", "0.3", "False", "False", "True"],
                    ["b", "1", "0.95", "0.35", "True", "True", "False"]]
