"""A PBT stage through the real launcher, Ray Tune and MLflow: every exploit is in the exploiting trial's run (a tag
naming the donor, the settings series), the trial goes on from the donor's weights with its new settings and its
own seed, one child run per trial, and a study killed mid-stage resumes to the end. Bad `scheduler: {type: pbt}`
input is one line naming the file and the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from orchestrator.launch import main
from orchestrator.tracking import TAG_TRIAL
from tests.orchestrator import toy_trainables as toy
from tests.orchestrator.study_helpers import client_for, launcher_env, run_launcher, run_until, study_runs

STUDY, TRIALS, EPOCHS, INTERVAL = "population", 4, 5, 2  # generations at epochs 2 and 4: two exploits
LR_LOW, LR_HIGH = 0.01, 0.4
EXPLOIT = re.compile(r"^from trial (\w+) at iteration (\d+)$")


def pbt_study(path: Path, **scheduler) -> Path:
    study = {"study": STUDY, "stages": [
        {"name": "descent", "kind": "tune", "trainable": toy.DESCENT_NAME,
         "config": {"epochs": EPOCHS, "delay_s": 0.1},
         "space": {"lr": {"type": "loguniform", "low": 0.01, "high": 0.2}},
         "metric": "loss", "num_samples": TRIALS,
         "scheduler": {"type": "pbt", "perturbation_interval": INTERVAL,
                       "mutations": {"lr": {"type": "loguniform", "low": LR_LOW, "high": LR_HIGH}}, **scheduler},
         "resources": {"cpu": 1}},
    ]}
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def env() -> dict[str, str]:
    return toy.with_path(launcher_env())


def history(client, run_id: str, metric: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, metric)}


def trial_runs(output: Path) -> dict[str, object]:
    _, parents, children = study_runs(client_for(output), STUDY)
    runs = children[parents["descent"].info.run_id]
    by_trial = {run.data.tags[TAG_TRIAL]: run for run in runs}
    assert len(runs) == len(by_trial) == TRIALS, [run.data.tags.get(TAG_TRIAL) for run in runs]
    return by_trial


def check_exploits(output: Path, generations: tuple[int, ...] = (INTERVAL, 2 * INTERVAL)) -> int:
    """Every exploit tag is borne out by the runs' series; returns how many there are. `generations`: the
    epochs exploits may happen at (a resumed PBT starts its interval count afresh from the restored epochs)."""
    client, runs = client_for(output), trial_runs(output)
    count = 0
    for trial, run in runs.items():
        assert run.info.status == "FINISHED", (trial, run.info.status)
        lr, lr_used = history(client, run.info.run_id, "pbt.lr"), history(client, run.info.run_id, "lr_used")
        w, seed = history(client, run.info.run_id, "w"), history(client, run.info.run_id, "seed_used")
        assert sorted(lr) == sorted(w) == list(range(1, EPOCHS + 1)), (trial, sorted(lr), sorted(w))
        assert lr == pytest.approx(lr_used), trial  # the series is the lr the optimizer stepped with
        assert set(seed.values()) == {float(run.data.params["seed"])}, trial  # its own seed throughout
        tags = {k: v for k, v in run.data.tags.items() if k.startswith("gensearch.pbt.exploit.")}
        assert run.data.tags["gensearch.pbt.exploits"] == str(len(tags))
        for tag in tags.values():
            donor, iteration = EXPLOIT.match(tag).groups()
            iteration = int(iteration)
            assert iteration in generations, tag
            donor_w = history(client, runs[donor].info.run_id, "w")[iteration]
            assert LR_LOW <= lr[iteration + 1] <= LR_HIGH
            # one SGD step on from the donor's weight, at this trial's new lr
            assert w[iteration + 1] == pytest.approx(toy.descent_step(donor_w, lr[iteration + 1]), rel=1e-5), tag
            count += 1
    return count


@pytest.mark.slow
def test_every_exploit_is_in_mlflow_and_the_trial_goes_on_from_the_donors_weights(tmp_path):
    output = tmp_path / "out"
    result = run_launcher(str(pbt_study(tmp_path / "pbt.yaml")), "--output", str(output), env=env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(re.findall(r"PBT: trial \w+ continues from trial", result.stdout)) == 2, result.stdout[-3000:]
    assert check_exploits(output) == 2  # a quarter of four trials, at each of two generations


@pytest.mark.slow
def test_a_pbt_study_killed_mid_stage_resumes_to_the_end_without_duplicate_runs(tmp_path):
    spec, output = pbt_study(tmp_path / "pbt.yaml"), tmp_path / "out"
    run_until(spec, output, r"PBT: trial \w+ continues from trial", grace_s=2.5, env=env())
    result = run_launcher(str(spec), "--output", str(output), "--resume", env=env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert check_exploits(output, generations=tuple(range(1, EPOCHS))) >= 2


@pytest.mark.parametrize("scheduler,key,fragment", [
    ({"perturbation_interval": 0}, "stages[0].scheduler.perturbation_interval", "must be >= 1"),
    ({"mutations": {}}, "stages[0].scheduler.mutations", "required: the settings PBT may change"),
    ({"mutations": {"learning_rate": {"type": "uniform", "low": 0.1, "high": 0.2}}},
     "stages[0].scheduler.mutations.learning_rate", "the trainable has no setting 'learning_rate'"),
    ({"mutations": {"seed": {"type": "int", "low": 0, "high": 9}}}, "stages[0].scheduler.mutations.seed",
     "every trial keeps its own seed"),
    ({"mutations": {"lr": {"type": "grid", "values": [0.1, 0.2]}}}, "stages[0].scheduler.mutations.lr.type",
     "use choice"),
    ({"quantile_fraction": 0.7}, "stages[0].scheduler.quantile_fraction", "must be in (0, 0.5]"),
    ({"perturbation_intervall": 2}, "stages[0].scheduler.perturbation_intervall", "did you mean 'perturbation_interval'"),
])
def test_bad_pbt_input_is_exit_2_with_one_line_naming_file_and_key(tmp_path, capsys, scheduler, key, fragment):
    path = pbt_study(tmp_path / "bad.yaml", **scheduler)
    study = yaml.safe_load(path.read_text())
    study["stages"][0]["trainable"] = "classifier"  # a real trainable: the catalog knows it without the toy's path
    study["stages"][0]["config"] = {"epochs": EPOCHS}
    study["stages"][0]["metric"] = "val_accuracy"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    code = main([str(path), "--dry-run"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(f"{path}: {key}: ") and fragment in lines[0], lines


def test_a_pbt_stage_with_an_optuna_searcher_or_a_concurrency_cap_is_refused(tmp_path, capsys):
    path = pbt_study(tmp_path / "bad.yaml")
    study = yaml.safe_load(path.read_text())
    study["stages"][0].update(trainable="classifier", config={"epochs": EPOCHS}, metric="val_accuracy",
                              searcher={"sampler": "tpe"}, max_concurrent_trials=2)
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    assert main([str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: stages[0].searcher: a pbt stage draws its first population at random" in err
    assert f"{path}: stages[0].max_concurrent_trials: a pbt stage trains its whole population" in err


def test_the_plan_says_pbt_and_that_it_is_not_bit_reproducible(tmp_path, capsys):
    path = pbt_study(tmp_path / "ok.yaml")
    study = yaml.safe_load(path.read_text())
    study["stages"][0].update(trainable="classifier", config={"epochs": EPOCHS}, metric="val_accuracy")
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    assert main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "basic (random/grid)" in out
    assert "PBT every 2 epoch(s), quantile 0.25, resample 0.25; mutates lr loguniform" in out
    assert "not bit-reproducible" in out
