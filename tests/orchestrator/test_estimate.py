"""The cost estimate: expected trial-epochs with ASHA's rungs against hand computations, the wall time of
trials on a few slots, and `--dry-run --estimate` on the smoke study through the launcher."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("trials, epochs, asha, milestones, reaching, total", [
    # the smoke study: 8 reach epoch 1, 4 reach 2, 2 train to 4: 4*1 + 2*2 + 2*4
    (8, 4, (1, 2, 4), (1, 2), (8, 4), 16),
    # the flagship's gasten stage: 6 reach epoch 3, 3 train to 6: 3*3 + 3*6
    (6, 6, (3, 2, 6), (3,), (6,), 27),
    # epochs below max_t end the trials first: rungs 1, 2 of 1, 2, 4, 8; 4*1 + 2*2 + 2*3
    (8, 3, (1, 2, 8), (1, 2), (8, 4), 14),
    # reduction factor 3: 9 reach 1, 3 reach 3, 1 trains to 9: 6*1 + 2*3 + 1*9
    (9, 9, (1, 3, 9), (1, 3), (9, 3), 21),
    # fractional expectations: 5 reach 1, 2.5 train to 2: 2.5*1 + 2.5*2
    (5, 2, (1, 2, 2), (1,), (5,), 7.5),
])
def test_expected_trial_epochs_with_asha(trials, epochs, asha, milestones, reaching, total):
    plan = expected_trial_epochs(trials, epochs, asha)
    assert (plan.milestones, plan.reaching, plan.total) == (milestones, reaching, pytest.approx(total))


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


def test_dry_run_estimate_of_the_smoke_study(capsys):
    assert main([str(SMOKE), "--dry-run", "--estimate"]) == 0
    out = capsys.readouterr().out
    assert ("  classifier: ASHA: 8 reach epoch 1, 4 reach epoch 2, 2 go on to 4 -> 16 trial-epochs expected "
            "(without early stopping 32)") in out
    assert re.search(r"worker start \d+\.\d s; per trial: setup \d+\.\d s; per epoch: train \d+\.\d s \(1500 images\) "
                     r"\+ evaluate \d+\.\d s", out)
    assert re.search(r"2 trials at a time -> wall \d:\d\d:\d\d; reserves \d+\.\d\d CPU-hours, 0\.00 GPU-hours", out)
    assert "  evaluate: job stage, not estimated" in out
    assert re.search(r"total of the 1 stage\(s\) estimated: 16 trial-epochs, wall", out)


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
