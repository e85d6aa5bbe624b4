"""The champion of a stage that searches several metrics, and the Pareto front it is chosen from.

Every evaluated epoch of every trial that did not fail is a candidate: a trial is worth its best
epoch, not its last (ASHA may stop it after its best one, and a fine-tuned generator may trade more
realism away each epoch). The stage's `champion` rule (spec.ChampionRule) names one metric to
optimise and bounds on others; a bound may be another metric of the same result, so a trainable's own
yardstick (GASTeN: the FID of real boundary digits) is read from the row it bounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orchestrator.spec import ChampionBound, ChampionRule, TuneStage
from orchestrator.study_state import BestTrial
from trainables import catalog
from trainables.definitions import TrainableDef


@dataclass(frozen=True)
class Point:
    """One evaluated epoch of one trial and every metric it reported then."""

    trial: str
    epoch: int
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class Champion:
    point: Point
    feasible: bool  # False: no point met the rule; this one broke it least
    violation: float  # 0 when feasible


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bound_value(side: float | str | None, metrics: Mapping[str, float]) -> float | None:
    """A bound's side as a number: itself, or the named metric read from the same result."""
    if side is None or not isinstance(side, str):
        return side
    value = metrics.get(side)
    return float(value) if _finite(value) else math.nan


def _excess(value: float, bound: float, over: bool) -> float:
    """How far `value` is past `bound` (above it when `over`), relative to the bound's size."""
    gap = value - bound if over else bound - value
    return max(0.0, gap) / abs(bound) if bound else max(0.0, gap)


def bound_violation(bound: ChampionBound, metrics: Mapping[str, float]) -> float:
    """0 when `metrics` meets `bound`; else how far past it (0.1: 10% past the bound); inf when the
    metric or a bounding metric is missing or not a number."""
    value = metrics.get(bound.metric)
    low, high = _bound_value(bound.min, metrics), _bound_value(bound.max, metrics)
    if not _finite(value) or (low is not None and math.isnan(low)) or (high is not None and math.isnan(high)):
        return math.inf
    return (_excess(value, low, over=False) if low is not None else 0.0) + \
        (_excess(value, high, over=True) if high is not None else 0.0)


def violation(rule: ChampionRule, metrics: Mapping[str, float]) -> float:
    """The sum of a point's relative violations of every bound of `rule` (bounds in different units
    add up that way); 0 when it meets them all."""
    return sum(bound_violation(bound, metrics) for bound in rule.where)


def signed(value: float, mode: str) -> float:
    """A value to minimise whatever the metric's direction."""
    return -value if mode == "max" else value


def choose_champion(points: Sequence[Point], rule: ChampionRule) -> Champion | None:
    """The best `rule.metric` among the points that meet every bound; when none does, the point that
    breaks them least (then the best objective). Ties go to the later epoch (trained longest), then to
    the earlier point in `points`. None when no point reported the objective."""
    scored = [(violation(rule, p.metrics), signed(float(p.metrics[rule.metric]), rule.mode), -p.epoch, index, p)
              for index, p in enumerate(points) if _finite(p.metrics.get(rule.metric))]
    if not scored:
        return None
    feasible = [entry for entry in scored if entry[0] == 0]
    best = min(feasible, key=lambda e: e[1:4]) if feasible else min(scored, key=lambda e: e[:4])
    return Champion(best[4], feasible=bool(feasible), violation=best[0])


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a is at least as good as b everywhere and better somewhere (both signed: lower is better)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(points: Sequence[Point], objectives: Sequence[tuple[str, str]]) -> list[Point]:
    """The points that no other point dominates under `objectives` ((metric, mode) pairs), in their
    given order; points missing an objective take no part. Equal points all stay."""
    scored = [(p, [signed(float(p.metrics[m]), mode) for m, mode in objectives]) for p in points
              if all(_finite(p.metrics.get(m)) for m, _ in objectives)]
    return [p for p, values in scored if not any(dominates(other, values) for _, other in scored)]


def pareto_axes(stage: TuneStage, definition: TrainableDef) -> tuple[str, str] | None:
    """The plane of a stage's Pareto plot: the trainable's own pair of rival metrics (GASTeN: fid_mnist,
    acd) when the stage searches them or only one metric; else a two-objective stage's first two."""
    if definition.pareto and (not stage.multi_objective or set(definition.pareto) <= set(stage.metrics)):
        return definition.pareto
    return (stage.metrics[0], stage.metrics[1]) if stage.multi_objective else None


@dataclass(frozen=True)
class ReferenceVerdict:
    label: str
    values: Mapping[str, float]  # the reference's value on each axis of the Pareto plot
    beaten: bool  # the champion is at least as good on every axis


def reference_verdicts(definition: TrainableDef, axes: tuple[str, str],
                       metrics: Mapping[str, float]) -> list[ReferenceVerdict]:
    """Each reference point of the trainable (`pareto_references`, values read from the champion's own
    result: they are the same for every trial) against the champion's `metrics` on the plot's axes."""
    modes = {axis: definition.metric(axis).mode for axis in axes}
    verdicts = []
    for label, names in definition.pareto_references.items():
        values = {axis: metrics.get(name) for axis, name in zip(axes, names)}
        if not all(_finite(v) for v in values.values()) or not all(_finite(metrics.get(a)) for a in axes):
            continue
        beaten = all(signed(metrics[a], modes[a]) <= signed(values[a], modes[a]) for a in axes)
        verdicts.append(ReferenceVerdict(label, {a: float(v) for a, v in values.items()}, beaten))
    return verdicts


def describe_metrics(stage: TuneStage) -> str:
    """`val_accuracy (max)`; for several metrics `[acd (min), fid_mnist (min)], champion: minimize acd where ...`."""
    if not stage.multi_objective:
        return f"{stage.metric} ({stage.mode})"
    return "[" + ", ".join(f"{m} ({mode})" for m, mode in stage.objectives) + f"], champion: {stage.champion}"


def searched_values(stage: TuneStage, metrics: Mapping[str, float], joiner: str = "=") -> str:
    """`acd=0.21, fid_mnist=40.1`: a point's value of each metric the stage searches."""
    return ", ".join(f"{m}{joiner}{metrics[m]:.4g}" for m in stage.metrics if m in metrics)


def describe_champion(stage: TuneStage, best: BestTrial) -> str:
    """`champion (trial t, epoch 12): acd 0.21, fid_mnist 40.1 - beats real ambiguous digits (acd 0.23,
    fid_mnist 62.8): yes` for a stage with several metrics; "beats" = at least as good on both axes of
    its Pareto plot."""
    text = f"champion (trial {best.trial_id}, epoch {best.epoch}): {searched_values(stage, best.metrics, ' ')}"
    if best.rule_met is False:
        text += f" - no epoch met the rule ({stage.champion}): this one came closest"
    try:
        definition = catalog.trainable(stage.trainable)
    except catalog.UnknownEntryError:
        return text
    axes = pareto_axes(stage, definition)
    for verdict in reference_verdicts(definition, axes, best.metrics) if axes else []:
        order = sorted(verdict.values, key=lambda m: stage.metrics.index(m) if m in stage.metrics else len(stage.metrics))
        values = ", ".join(f"{m} {verdict.values[m]:.4g}" for m in order)
        text += f" - beats {verdict.label} ({values}): {'yes' if verdict.beaten else 'no'}"
    return text
