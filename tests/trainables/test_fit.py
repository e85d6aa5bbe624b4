"""The one training loop: per-epoch reports, exact resume from a checkpoint, divergence guard."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainables.classifier import ClassifierConfig, train
from trainables.config import build_config
from trainables.fit import TrainingDiverged, fit
from trainables.reporter import ListReporter

TINY = dict(train_size=128, val_size=64, epochs=3, batch_size=32, allow_fallback=False)


def run(reporter=None, **changes) -> ListReporter:
    reporter = reporter or ListReporter()
    train(ClassifierConfig(**{**TINY, **changes}), reporter)
    return reporter


@pytest.fixture(scope="module")
def straight() -> ListReporter:
    """Three epochs without interruption (shared: training is the slow part of this file)."""
    return run()


def test_reports_every_epoch_with_a_self_describing_checkpoint(straight):
    assert [r["epoch"] for r in straight.results] == [1.0, 2.0, 3.0]
    for result in straight.results:
        assert set(result) == {"epoch", "train_loss", "val_loss", "val_accuracy"}
        assert all(math.isfinite(value) for value in result.values()), result
        assert 0.0 <= result["val_accuracy"] <= 1.0
    state = straight.last_checkpoint
    assert (state.trainable, state.epoch) == ("classifier", 3)
    assert state.metrics == straight.results[-1]
    assert set(state.modules) == set(state.optimizers) == {"model"}
    # The stored config (lists where the dataclass has tuples) rebuilds the very same config.
    assert build_config(ClassifierConfig, state.config) == ClassifierConfig(**TINY)


def test_resume_from_a_checkpoint_gives_the_same_model_as_an_uninterrupted_run(straight):
    interrupted = run(epochs=2)
    assert [r["epoch"] for r in interrupted.results] == [1.0, 2.0]
    assert interrupted.last_checkpoint.epoch == 2
    resumed = run(ListReporter(resume_from=interrupted.last_checkpoint))
    assert [r["epoch"] for r in resumed.results] == [3.0]
    expected = straight.last_checkpoint.modules["model"]
    final = resumed.last_checkpoint.modules["model"]
    assert set(final) == set(expected)
    for key in expected:
        assert torch.allclose(expected[key].float(), final[key].float()), key
    for metric in ("train_loss", "val_loss", "val_accuracy"):
        assert resumed.results[0][metric] == pytest.approx(straight.results[-1][metric]), metric
    # Adam's moments continue from the checkpoint too (a fresh optimizer would give other weights later).
    expected_adam = straight.last_checkpoint.optimizers["model"]["state"]
    final_adam = resumed.last_checkpoint.optimizers["model"]["state"]
    assert set(final_adam) == set(expected_adam)
    for index, moments in expected_adam.items():
        for name, tensor in moments.items():
            assert torch.allclose(tensor.float(), final_adam[index][name].float()), (index, name)


def test_resuming_a_finished_run_reports_its_final_metrics_once_without_training(straight):
    again = run(ListReporter(resume_from=straight.last_checkpoint))
    assert again.results == [straight.results[-1]]
    assert again.last_checkpoint is None  # no epoch ran, so no new checkpoint


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2))


def fit_tiny(train_epoch, evaluate, reporter=None):
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return fit(trainable="toy", config=ClassifierConfig(), epochs=3, modules={"model": model},
               optimizers={"model": optimizer}, train_epoch=train_epoch, evaluate=evaluate,
               reporter=reporter or ListReporter())


def test_a_nan_training_metric_stops_training_with_the_reason():
    reporter = ListReporter()
    with pytest.raises(TrainingDiverged, match=r"^toy: epoch 1: non-finite train_loss \(train_loss=nan\); "
                                               r"lower the learning rate$"):
        fit_tiny(lambda epoch: {"train_loss": float("nan")}, lambda epoch: {"val_loss": 1.0}, reporter)
    assert reporter.results == [] and reporter.last_checkpoint is None


def test_an_infinite_metric_in_a_later_epoch_is_named_and_earlier_epochs_are_kept():
    reporter = ListReporter()
    with pytest.raises(TrainingDiverged, match=r"^toy: epoch 2: non-finite val_loss \(val_loss=inf\)"):
        fit_tiny(lambda epoch: {"train_loss": 1.0},
                 lambda epoch: {"val_loss": float("inf") if epoch == 1 else 0.5}, reporter)
    assert reporter.results == [{"epoch": 1.0, "train_loss": 1.0, "val_loss": 0.5}]
    assert reporter.last_checkpoint.epoch == 1


def test_a_classifier_whose_learning_rate_explodes_fails_with_the_non_finite_metric():
    # lr=1e6 stays finite on this tiny net (losses ~1e20); 1e10 overflows float32 in the first steps.
    reporter = ListReporter()
    with pytest.raises(TrainingDiverged, match=r"^classifier: epoch \d: non-finite .*train_loss.*=nan"
                                               r".*; lower the learning rate$"):
        run(reporter, lr=1e10)
    assert all(math.isfinite(value) for result in reporter.results for value in result.values())


def test_resume_restores_the_global_random_stream():
    """A trainable that draws from torch's global RNG (dropout, noise) continues the same stream."""
    def draw(epoch):
        return {"train_loss": float(torch.rand(()))}

    def evaluate(epoch):
        return {"val_loss": 1.0}

    torch.manual_seed(7)
    straight = ListReporter()
    fit_tiny(draw, evaluate, straight)
    torch.manual_seed(7)
    first_two = ListReporter()
    model = Tiny()
    fit(trainable="toy", config=ClassifierConfig(), epochs=2, modules={"model": model},
        optimizers={"model": torch.optim.SGD(model.parameters(), lr=0.1)}, train_epoch=draw, evaluate=evaluate,
        reporter=first_two)
    assert first_two.results == straight.results[:2]
    torch.manual_seed(12345)  # a restarted process starts from some other random state
    resumed = ListReporter(resume_from=first_two.last_checkpoint)
    fit_tiny(draw, evaluate, resumed)
    assert [r["epoch"] for r in resumed.results] == [3.0]
    assert resumed.results[0]["train_loss"] == straight.results[2]["train_loss"]


def test_a_checkpoint_of_another_config_gives_weights_and_moments_but_keeps_this_configs_settings():
    """Population-based training resumes a trial from a better trial's checkpoint with changed settings: the
    weights and Adam's moments come from the checkpoint, the lr from the new config. At a vanishing lr the
    epoch leaves the donor's weights where they were; at the donor's own lr it would move them."""
    donor = run(epochs=2)
    taken = run(ListReporter(resume_from=donor.last_checkpoint), lr=1e-9, seed=7)
    assert [r["epoch"] for r in taken.results] == [3.0]
    state, before = taken.last_checkpoint, donor.last_checkpoint
    assert [group["lr"] for group in state.optimizers["model"]["param_groups"]] == [1e-9]
    assert state.config["seed"] == 7
    for key, weight in before.modules["model"].items():
        if not key.endswith(("weight", "bias")):
            continue  # batch norm's running statistics follow the data, whatever the lr
        assert torch.allclose(state.modules["model"][key].float(), weight.float(), atol=1e-6), key
    # Adam's step count went on from the donor's: two epochs there, one here.
    steps = [s["step"] for s in (before.optimizers["model"]["state"][0], state.optimizers["model"]["state"][0])]
    assert float(steps[1]) == pytest.approx(1.5 * float(steps[0]))
