"""Tune's own record of a finished trial, read: its id (from the folder name it is given), its best value,
the checkpoint and metrics at that value, its evaluated epochs, and the order the searcher suggested the
trials in; what a stage's champion, trials table and plots are built from.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from orchestrator.champion import Point
from orchestrator.tracking import numeric_metrics
from orchestrator.trial_logger import TUNE_BOOKKEEPING
from orchestrator.trial_order import suggestion_place


def evaluated_points(result: Any) -> list[tuple[Point, Any]]:
    """A trial's evaluated epochs as (point, that epoch's checkpoint): a candidate champion is a model one
    can load, so a trial that checkpoints offers its checkpointed results (every epoch for the built-in
    trainables); one that never checkpoints offers every reported result, without a checkpoint. A step
    repeated after a resume counts once, by its latest record (whose checkpoint is the one kept)."""
    trial = trial_id_of(result)
    if result.best_checkpoints:
        rows = sorted(((metrics, checkpoint) for checkpoint, metrics in result.best_checkpoints),
                      key=lambda row: (row[0].get("training_iteration", 0), row[1].path))
    else:
        frame = result.metrics_dataframe
        rows = [(row.to_dict(), None) for _, row in frame.iterrows()] if frame is not None else []
    by_step: dict[int, tuple[Point, Any]] = {}
    for metrics, checkpoint in rows:
        step = int(_plain(metrics.get("training_iteration", 0)))
        values = numeric_metrics({k: _plain(v) for k, v in metrics.items() if k not in TUNE_BOOKKEEPING})
        by_step[step] = (Point(trial, step, values), checkpoint)
    return [by_step[step] for step in sorted(by_step)]


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def checkpoint_at_best(result: Any, metric: str, value: float) -> Any:
    """The checkpoint of the LAST step that reported the trial's best `value`: when steps tie (a
    validation AUROC of 1.0 from the first epoch on) the one trained longest is kept, not the first."""
    tied = [(m.get("training_iteration", 0), c) for c, m in (result.best_checkpoints or []) if m.get(metric) == value]
    return max(tied, key=lambda pair: pair[0])[1] if tied else None


def metrics_at_best(result: Any, metric: str, value: float) -> tuple[int | None, dict[str, float]]:
    """The last step at which the trial reported its best `value`, and every metric it reported then."""
    frame = result.metrics_dataframe
    if frame is None or metric not in frame:
        return None, {}
    rows = frame[frame[metric] == value]
    if rows.empty:
        return None, {}
    row = rows.iloc[-1]
    names = set(result.metrics or {}) - TUNE_BOOKKEEPING
    metrics = {name: float(row[name]) for name in sorted(names)
               if name in row.index and isinstance(row[name], (int, float)) and math.isfinite(row[name])}
    return int(row.get("training_iteration", 0)) or None, metrics


def trial_folder_name(trial: Any) -> str:
    """Trial folders named by trial id alone, so a folder always tells which trial it holds."""
    return f"trial_{trial.trial_id}"


def trial_id_of(result: Any) -> str:
    return Path(result.path).name.removeprefix("trial_")


def best_value(result: Any, metric: str, mode: str) -> float | None:
    """The trial's best reported value of `metric` (ASHA may stop a trial after its best epoch)."""
    frame = result.metrics_dataframe
    if frame is None or metric not in frame:
        value = (result.metrics or {}).get(metric)
        return value if isinstance(value, (int, float)) and math.isfinite(value) else None
    column = frame[metric].dropna()
    column = column[column.map(math.isfinite)]
    if column.empty:
        return None
    return float(column.max() if mode == "max" else column.min())


def trials_by_place(grid: Any) -> list[tuple[int, Any, Any]]:
    """(place in suggestion order, Tune trial, result) of every trial of a finished stage, by place. Tune's
    own order is that of its trial list, which a resume rebuilds by last result time."""
    trials = list(getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or [])
    if len(trials) != len(grid):  # a ResultGrid without its trials (not Ray 2.60's): keep Tune's order
        return [(index, None, result) for index, result in enumerate(grid)]
    rows = []
    for index, (trial, result) in enumerate(zip(trials, grid)):
        try:
            place = suggestion_place(trial)
        except ValueError:
            place = len(trials) + index
        rows.append((place, trial, result))
    return sorted(rows, key=lambda row: row[0])


def in_suggestion_order(grid: Any) -> list[Any]:
    return [result for _, _, result in trials_by_place(grid)]
