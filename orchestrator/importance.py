"""Parameter importance of a stage: which searched settings moved its metric, and which did not matter.

Ray Tune has no importance analysis and Optuna's lives on an Optuna study, so a stage's finished trials
are put into one: an Optuna stage hands over its own trials, a Tune stage builds them from each trial's
config and best reported value (as `parameter_sweep.png` plots it), with the distributions its declared
space gives. Optuna's fANOVA then splits each objective's variance among the settings; a stage with
several metrics gets one importance per metric.

Why fANOVA and not Optuna's default, PED-ANOVA: a stage here has 4 to 30 trials, and PED-ANOVA reads only
its top 10% (one trial of six) where fANOVA fits its forest to all of them (how often each ranks a toy's
driving setting first: README, "What you get"). The forest is seeded, so the same trials give the same
importances.

fANOVA reads the settings every trial has: in a conditional space (an Optuna stage's branches) that is the
branch choice (`reducer`, `clusterer`), not an option's own settings.

Too few trials, or a single setting that varied (its importance is 1.0 by construction), give one line
instead of a meaningless bar.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.spec import Choice, Grid, IntRange, LogUniform, SpaceEntry, Uniform
from orchestrator.stage_outputs import TUNE_STAGE_OUTPUTS

MIN_TRIALS = 4  # fewer finished trials say nothing about which setting mattered
TABLE_FILE = TUNE_STAGE_OUTPUTS["importance"].path
PLOT_FILE = TUNE_STAGE_OUTPUTS["importance_plot"].path
HEADING = "**Parameter importance**"
FOREST_SEED = 0


@dataclass(frozen=True)
class StageImportance:
    """Per objective (metric name), each varied setting's share of the metric's variance (summing to 1);
    or, when there was nothing to say, why (`skipped`)."""

    trials: int
    objectives: tuple[tuple[str, str], ...]  # (metric, mode)
    importances: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> setting -> share
    constant: tuple[str, ...] = ()  # metrics with the same value in every trial: nothing to split
    skipped: str | None = None

    def metrics(self) -> dict[str, float]:
        """`importance.<metric>.<setting>` for the stage's MLflow run."""
        return {f"importance.{metric}.{name}": value
                for metric, values in self.importances.items() for name, value in values.items()}


def distribution(entry: SpaceEntry) -> Any:
    """The Optuna distribution of one declared search-space entry."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(entry, (Uniform, LogUniform)):
        return FloatDistribution(entry.low, entry.high, log=isinstance(entry, LogUniform))
    if isinstance(entry, IntRange):
        return IntDistribution(entry.low, entry.high, log=entry.log)
    if isinstance(entry, (Choice, Grid)):
        return CategoricalDistribution([categorical(value) for value in entry.values])
    raise TypeError(entry)


def categorical(value: Any) -> Any:
    """A value as Optuna can hold it: a numpy scalar (Tune's own sampling) as a Python number, a list or
    mapping (e.g. a pair of classes) by its text."""
    value = value.item() if hasattr(value, "item") else value
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def trials_from_configs(space: Mapping[str, SpaceEntry], rows: Sequence[tuple[Mapping[str, Any], Sequence[float]]]
                        ) -> list[Any]:
    """Optuna trials from (config, one value per objective) of finished trials: a Tune stage's results. A
    trial whose config lacks a searched setting or whose value is not finite is left out."""
    from optuna.trial import create_trial

    distributions = {name: distribution(entry) for name, entry in space.items()}
    trials = []
    for config, values in rows:
        if any(name not in config for name in space) or not all(math.isfinite(v) for v in values):
            continue
        params = {name: categorical(config[name]) for name in space}
        trials.append(create_trial(params=params, distributions=distributions, values=list(values)))
    return trials


def varied_settings(trials: Sequence[Any]) -> list[str]:
    """The settings every trial has and that took more than one value: the ones importance can tell apart."""
    common = set.intersection(*(set(t.params) for t in trials)) if trials else set()
    return sorted(name for name in common if len({repr(t.params[name]) for t in trials}) > 1)


def compute_importance(trials: Sequence[Any], objectives: Sequence[tuple[str, str]]) -> StageImportance:
    """fANOVA importances of `trials` (finished Optuna trials, one value per objective, in order)."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    objectives = tuple(objectives)

    def skipped(why: str) -> StageImportance:
        return StageImportance(trials=len(trials), objectives=objectives, skipped=why)

    if len(trials) < MIN_TRIALS:
        return skipped(f"only {len(trials)} finished trial(s); at least {MIN_TRIALS} are needed")
    settings = varied_settings(trials)
    if not settings:
        return skipped(f"no searched setting varied across the {len(trials)} finished trials")
    if len(settings) == 1:
        return skipped(f"only one searched setting varied ({settings[0]}): its importance is 1.0 by construction")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per in-memory study
    study = optuna.create_study(directions=["minimize"] * len(objectives))  # fANOVA ignores the direction
    study.add_trials(trials)
    importances, constant = {}, []
    for index, (metric, _) in enumerate(objectives):
        if len({t.values[index] for t in trials}) == 1:
            constant.append(metric)
            continue
        importances[metric] = get_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=FOREST_SEED), params=settings,
            target=lambda trial, i=index: trial.values[i])
    if not importances:
        return skipped(f"{', '.join(constant)} took the same value in every finished trial")
    return StageImportance(trials=len(trials), objectives=objectives, importances=importances,
                           constant=tuple(constant))


def table_lines(result: StageImportance) -> list[str]:
    """importance.md: a setting per row, an objective per column, most important first; or the one line
    saying why there is none."""
    if result.skipped is not None:
        return [f"{HEADING}: skipped, {result.skipped}."]
    metrics = list(result.importances)
    first = result.importances[metrics[0]]
    settings = sorted(first, key=lambda name: -first[name])
    lines = [f"{HEADING} (Optuna's fANOVA over {result.trials} finished trials; each column is the metric's "
             f"variance split among the settings, summing to 1):", "",
             "| setting | " + " | ".join(f"{m} ({dict(result.objectives)[m]})" for m in metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    lines += [f"| {name} | " + " | ".join(f"{result.importances[m].get(name, 0.0):.3f}" for m in metrics) + " |"
              for name in settings]
    if result.constant:
        lines += ["", f"{', '.join(result.constant)}: the same value in every finished trial, so no importance."]
    return lines


def summary_line(stage: str, result: StageImportance) -> str:
    """The stage's one line of output: the importances, most important first, or why there are none."""
    if result.skipped is not None:
        return f"[{stage}] parameter importance skipped: {result.skipped}"
    parts = [f"{metric}: " + ", ".join(f"{name} {value:.2f}" for name, value in values.items())
             for metric, values in result.importances.items()]
    return f"[{stage}] parameter importance (fANOVA, {result.trials} trials): " + "; ".join(parts)


def write_importance(stage: str, trials: Sequence[Any], objectives: Sequence[tuple[str, str]], folder: Path,
                     tracker: Any = None, run_id: str | None = None) -> StageImportance:
    """Compute the stage's importance, write importance.md (and importance.png when there is something to
    draw) into its folder, print its line and, given a tracker, log both files and the
    `importance.<metric>.<setting>` metrics on the stage's run."""
    from orchestrator.stage_plots import plot_importance

    result = compute_importance(trials, objectives)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TABLE_FILE).write_text("\n".join(table_lines(result)) + "\n")
    plot = folder / PLOT_FILE
    plot.unlink(missing_ok=True)  # a resumed stage that now has nothing to draw keeps no stale picture
    if result.importances:
        plot_importance(result.importances, stage, plot)
    print(summary_line(stage, result), flush=True)
    if tracker is not None and run_id is not None:
        for path in (folder / TABLE_FILE, plot):
            if path.is_file():
                tracker.log_file(run_id, path)
        tracker.log_metrics(run_id, result.metrics())
    return result
