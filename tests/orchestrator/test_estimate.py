"""The cost estimate: expected trial-epochs with ASHA's rungs against hand computations, the wall time of
trials on a few slots, and `--dry-run --estimate` on the smoke study through the launcher."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from ray.tune.schedulers.async_hyperband import _Bracket

from orchestrator.epoch_probe import EpochTiming
from orchestrator.estimate import StageEstimate, parallel_trials
from orchestrator.launch import main
from orchestrator.spec import ResourcesSpec, TuneStage
from orchestrator.trial_epochs import asha_milestones, expected_trial_epochs

SMOKE = Path(__file__).resolve().parents[2] / "search_spaces" / "smoke.yaml"


def test_without_a_scheduler_every_trial_trains_every_epoch():
    plan = expected_trial_epochs(4, 3)
    assert plan.total == 12 and plan.trial_lengths() == [(4.0, 3)]


def test_asha_rungs_are_tunes():
    assert asha_milestones(1, 2, 4) == (1, 2, 4)
    assert asha_milestones(3, 2, 6) == (3, 6)
    assert asha_milestones(1, 3, 9) == (1, 3, 9)


@pytest.mark.parametrize("trials, epochs, asha, total", [
    # one rung, reduction factor 2: the first at the rung goes on, each later one with chance 1/2 (it must
    # beat the median of those before it): 1 + 5/2 = 3.5 of the flagship's 6 gasten trials train to 6
    (6, 6, (3, 2, 6), 2.5 * 3 + 3.5 * 6),
    (5, 2, (1, 2, 2), 2 * 1 + 3 * 2),
    # reduction factor 3 (rung at 1; the config's 3 epochs end the trials before the rung at 3): after k
    # results the 2/3 percentile sits at index 2(k-1)/3, beaten with chance (k+2)/(3(k+1)): 1, 1/2, 4/9, 5/12,
    # 2/5, 7/18, 8/21, 3/8, 10/27 for the 9 trials, 4.2763 in all
    (9, 3, (1, 3, 9), (9 - 4.2763) * 1 + 4.2763 * 3),
])
def test_expected_trial_epochs_at_one_rung_against_hand_computations(trials, epochs, asha, total):
    plan = expected_trial_epochs(trials, epochs, asha)
    assert len(plan.milestones) == 1 and plan.reaching == (trials,)
    assert plan.total == pytest.approx(total, abs=0.25)  # about 3 standard errors of the estimate's simulation


def test_a_later_rung_is_reached_by_the_earlier_rungs_survivors():
    plan = expected_trial_epochs(8, 4, (1, 2, 4))  # the smoke study: rungs at 1 and 2, 1 + 7/2 go on from 1
    assert plan.milestones == (1, 2) and plan.reaching == (8, pytest.approx(4.5, abs=0.05))
    went_on = plan.reaching[1]
    assert plan.total == pytest.approx((8 - went_on) * 1 + (went_on - plan.finishing) * 2 + plan.finishing * 4)


@pytest.mark.parametrize("trials, epochs, asha", [(8, 4, (1, 2, 4)), (9, 9, (1, 3, 9))])
def test_the_expectation_matches_tunes_own_asha_on_random_trials(trials, epochs, asha):
    """Studies of trials of random quality (each keeping its rank at every rung) run one after another
    through Tune's `_Bracket`, counted here on their own seed: the mean trial-epochs against the estimate."""
    grace_period, reduction_factor, max_t = asha
    rng = np.random.default_rng(1)
    totals = []
    for _ in range(1000):
        bracket = _Bracket(grace_period, max_t, reduction_factor, s=0)
        milestones = sorted(m for m, _ in bracket._rungs if m < epochs)
        total = 0
        for number, quality in enumerate(rng.random(trials)):
            trial = SimpleNamespace(trial_id=str(number))
            stopped = next((m for m in milestones if bracket.on_result(trial, m, quality) == "STOP"), None)
            total += stopped or epochs
        totals.append(total)
    assert np.mean(totals) == pytest.approx(expected_trial_epochs(trials, epochs, asha).total, rel=0.03)


def test_wall_time_fills_the_slots_and_counts_each_workers_start_once():
    # 3 trials of 1 s setup + 2 epochs of 2 s on 2 slots whose workers start in 5 s: 5 + 5 + 5 on one slot
    timing = EpochTiming(setup_s=1.0, train_s=1.5, evaluate_s=0.5, images=100, probe_images=10)
    estimate = StageEstimate("s", expected_trial_epochs(3, 2), timing, start_s=5.0, parallel=2, cpu=1.0, gpu=0.5)
    assert estimate.wall_s == pytest.approx(15.0)
    assert estimate.work_s == pytest.approx(2 * 5 + 3 * 5)
    assert (estimate.cpu_hours, estimate.gpu_hours) == (pytest.approx(25 / 3600), pytest.approx(12.5 / 3600))


def test_trials_at_once_are_capped_by_the_stage_and_by_the_machine():
    stage = TuneStage(name="s", trainable="classifier", metric="val_accuracy", mode="max", num_samples=8,
                      max_concurrent_trials=4, resources=ResourcesSpec(cpu=1.0))
    assert parallel_trials(stage, cpus=2, gpus=0) == 2
    assert parallel_trials(stage, cpus=16, gpus=0) == 4
    on_gpus = TuneStage(name="s", trainable="classifier", metric="val_accuracy", mode="max", num_samples=8,
                        resources=ResourcesSpec(cpu=1.0, gpu=0.5))
    assert parallel_trials(on_gpus, cpus=16, gpus=1) == 2


def test_a_resumed_study_keeps_the_estimate_it_was_launched_with(capsys):
    assert main([str(SMOKE), "--estimate", "--resume"]) == 2
    assert "--estimate works with --dry-run or a fresh launch" in capsys.readouterr().err


@pytest.mark.slow  # several seconds (a subprocess or a small training run): not part of the quick loop
def test_dry_run_estimate_of_the_smoke_study(capsys):
    assert main([str(SMOKE), "--dry-run", "--estimate"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"  classifier: ASHA: 8 reach epoch 1, 4\.\d+ reach epoch 2, 3\.\d+ go on to 4 -> 19\.\d+ "
                     r"trial-epochs expected \(without early stopping 32\)", out), out
    assert re.search(r"worker start \d+\.\d s; per trial: setup \d+\.\d s; per epoch: train \d+\.\d s \(1500 images\) "
                     r"\+ evaluate \d+\.\d s", out)
    assert re.search(r"2 trials at a time -> wall \d:\d\d:\d\d; reserves \d+\.\d\d CPU-hours, 0\.00 GPU-hours", out)
    assert "  evaluate: job stage, not estimated" in out
    assert re.search(r"total of the 1 stage\(s\) estimated: 19\.\d+ trial-epochs, wall", out)


def test_the_report_sets_a_kept_estimate_beside_the_actual_cost(tmp_path):
    from orchestrator.estimate_record import ESTIMATE_FILE
    from orchestrator.report import write_report
    from tests.orchestrator.test_report import TRIAL_TIMES, fake_state

    output = tmp_path / "out"
    fake_state(output)  # stage `search` finished in 40 s wall, its trials' time_total_s summed below
    (output / ESTIMATE_FILE).write_text(json.dumps(
        {"search": {"trial_epochs": 6, "wall_s": 50.0, "cpu_hours": 0.02, "gpu_hours": 0.0}}))
    report = write_report(output, log_to_mlflow=False).read_text()
    section = report.split("## Estimate vs actual", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in section.splitlines() if line.startswith("| search"))
    cells = [cell.strip() for cell in row.strip("|").split(" | ")]
    actual_cpu_h = sum(times[-1] for times in TRIAL_TIMES.values()) / 3600
    assert cells[1:3] == ["50 s / 40 s", "1.25"]
    assert cells[3] == f"0.02 / {actual_cpu_h:.4g}"


def test_a_study_launched_without_estimate_has_no_such_section(tmp_path):
    from orchestrator.report import write_report
    from tests.orchestrator.test_report import fake_state

    output = tmp_path / "out"
    fake_state(output)
    assert "Estimate vs actual" not in write_report(output, log_to_mlflow=False).read_text()
