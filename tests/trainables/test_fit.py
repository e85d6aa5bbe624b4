"""The one training loop: per-epoch reports, exact resume from a checkpoint, divergence guard."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.classifier import ClassifierConfig, train
from trainables.fit import TrainingDiverged, fit
from trainables.reporter import ListReporter

TINY = dict(train_size=128, val_size=64, epochs=3, batch_size=32)


def run(reporter=None, **changes) -> ListReporter:
    reporter = reporter or ListReporter()
    train(ClassifierConfig(**{**TINY, **changes}), reporter)
    return reporter


def test_reports_every_epoch_with_a_self_describing_checkpoint():
    reporter = run()
    assert [r["epoch"] for r in reporter.results] == [1.0, 2.0, 3.0]
    assert {"epoch", "train_loss", "val_loss", "val_accuracy"} <= set(reporter.results[-1])
    state = reporter.last_checkpoint
    assert state["epoch"] == 3
    assert ClassifierConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()}) == \
        ClassifierConfig(**TINY)


def test_resume_from_a_checkpoint_gives_the_same_model_as_an_uninterrupted_run():
    straight = run().last_checkpoint["modules"]["model"]
    interrupted = run(epochs=2).last_checkpoint
    resumed = run(ListReporter(resume_from=interrupted))
    assert [r["epoch"] for r in resumed.results] == [3.0]
    final = resumed.last_checkpoint["modules"]["model"]
    for key in straight:
        assert torch.allclose(straight[key].float(), final[key].float()), key


def test_resuming_a_finished_run_reports_its_final_metrics_once_without_training():
    finished = run(epochs=2)
    again = run(ListReporter(resume_from=finished.last_checkpoint), epochs=2)
    assert again.results == [finished.results[-1]]
    assert again.last_checkpoint is None


def test_a_non_finite_metric_stops_training_with_the_reason():
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TrainingDiverged, match=r"toy: epoch 1: non-finite train_loss \(train_loss=nan\)"):
        fit(trainable="toy", config=ClassifierConfig(), epochs=2, modules={"model": model},
            optimizers={"model": optimizer}, train_epoch=lambda epoch: {"train_loss": float("nan")},
            evaluate=lambda epoch: {"val_loss": 1.0}, reporter=ListReporter())
