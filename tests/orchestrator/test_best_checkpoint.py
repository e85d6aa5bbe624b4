"""Which checkpoint of a trial is its best: the last of the steps that reached the best value."""

from __future__ import annotations

import pandas as pd
from ray import tune

from orchestrator.tune_stage import checkpoint_at_best, metrics_at_best


def result_with(tmp_path, values: list[float]) -> tune.Result:
    checkpoints = []
    for step, value in enumerate(values, 1):
        folder = tmp_path / f"checkpoint_{step:06d}"
        folder.mkdir()
        checkpoints.append((tune.Checkpoint.from_directory(str(folder)),
                            {"val_auroc": value, "val_accuracy": 0.9 + step / 100, "training_iteration": step}))
    frame = pd.DataFrame([metrics for _, metrics in checkpoints])
    return tune.Result(metrics=checkpoints[-1][1], checkpoint=checkpoints[-1][0], error=None, path=str(tmp_path),
                       metrics_dataframe=frame, best_checkpoints=checkpoints[::-1])


def test_a_tie_keeps_the_step_trained_longest(tmp_path):
    result = result_with(tmp_path, [1.0, 1.0, 1.0, 0.99])
    assert checkpoint_at_best(result, "val_auroc", 1.0).path.endswith("checkpoint_000003")
    epoch, metrics = metrics_at_best(result, "val_auroc", 1.0)
    assert epoch == 3 and metrics["val_accuracy"] == 0.93


def test_a_single_best_step_is_taken_as_is(tmp_path):
    result = result_with(tmp_path, [0.8, 0.95, 0.9])
    assert checkpoint_at_best(result, "val_auroc", 0.95).path.endswith("checkpoint_000002")
    assert checkpoint_at_best(result, "val_auroc", 0.5) is None  # no step reported it
