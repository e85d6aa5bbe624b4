"""The same study file and seed give the same study: twice in a row, and once more killed and resumed.

The study is tiny but has every source of run-to-run difference the reproducible mode removes: a tune
stage with two trials at a time, Optuna's TPE suggesting from the results so far, ASHA stopping trials
at rungs and seeded trials; then an Optuna stage running two trials at a time in threads (TPE with
constant liar). Its toy trainable and objective (toy_trainables.py) sleep a random, unseeded time
before each result, so the order in which parallel trials end changes from run to run. Run A and run B
go through uninterrupted; run C is SIGKILLed in the middle of the tune stage, resumed, SIGKILLed again
in the middle of the Optuna stage and resumed to the end. All three must hold the same trials
(trials.csv but for ids and timings), the same champions and the same MLflow metric history for every
trial, tune trials matched by their place in suggestion order. Run C also shows what a SIGKILL must not
cost: no process of the killed launcher's group survives, the resumed stage keeps its MLflow parent run,
and a trial finished before the kill is never trained again.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from tests.orchestrator import toy_trainables as toy
from tests.orchestrator.study_helpers import client_for, launcher_env, run_launcher, run_until, study_runs

STUDY = "twin"
TUNE_TRIALS, EPOCHS, OPTUNA_TRIALS = 4, 4, 6
# trials.csv columns that differ between runs by design: ids, where and when a trial ran, how long it took,
# and Tune's count of steps since the trial's last restore (a resumed trial was restored).
BY_DESIGN = {"trial_id", "logdir", "date", "timestamp", "pid", "hostname", "node_ip", "node_id",
             "checkpoint_dir_name", "time_this_iter_s", "time_total_s", "time_since_restore",
             "iterations_since_restore"}


def twin_study(path: Path, seed: int | None = None) -> Path:
    """The study; `seed` (None: the file names none, so 0) for the comparison of seeds."""
    study = {"study": STUDY, **({"seed": seed} if seed is not None else {}), "stages": [
        {"name": "search", "kind": "tune", "trainable": toy.NOISY_NAME,
         # Every trial lasts at least 2 x 2 s (ASHA's grace period x the delay), longer than the kill's
         # grace after the second trial ends: the kill lands with a trial still running, however fast the
         # warm, reused workers start the next ones.
         "config": {"epochs": EPOCHS, "jitter_s": 0.3, "delay_s": 2.0},
         "space": {"x": {"type": "uniform", "low": 0.0, "high": 1.0}},
         "metric": "loss", "num_samples": TUNE_TRIALS, "max_concurrent_trials": 2,
         "scheduler": {"type": "asha", "max_t": EPOCHS, "grace_period": 2, "reduction_factor": 2},
         "resources": {"cpu": 1}},
        {"name": "bowl", "kind": "optuna", "objective": toy.BOWL_NAME, "config": {"jitter_s": 0.4},
         "space": {"shape": {"point": {"a": {"type": "uniform", "low": 0.0, "high": 1.0},
                                       "b": {"type": "uniform", "low": 0.0, "high": 1.0}},
                             "line": {"a": {"type": "uniform", "low": 0.0, "high": 1.0}}}},
         "metric": "distance", "n_trials": OPTUNA_TRIALS, "n_jobs": 2},
    ]}
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def env() -> dict[str, str]:
    return toy.with_path(launcher_env())


def run_study(spec: Path, output: Path, *args: str) -> str:
    result = run_launcher(str(spec), "--output", str(output), *args, env=env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def study_file(tmp_path_factory) -> Path:
    return twin_study(tmp_path_factory.mktemp("reproducible") / f"{STUDY}.yaml")


@pytest.fixture(scope="module")
def reference(study_file) -> Path:
    """Run A: the study run through once."""
    run_study(study_file, study_file.parent / "a")
    return study_file.parent / "a"


@dataclass
class KilledRun:
    output: Path
    second: str  # the output of the launch killed in the Optuna stage
    last: str  # the output of the launch that ran to the end
    survivors: list[int]  # processes of the first killed launcher's group still alive after the kill
    search_parent: str  # the tune stage's MLflow parent run when the first kill came
    finished_before: set[str]  # the tune stage's trials finished before the first kill


@pytest.fixture(scope="module")
def killed_and_resumed(study_file) -> KilledRun:
    """Run C: killed once the tune stage's first two trials ended (Tune snapshots its state about once a
    second, hence the wait), resumed and killed once the Optuna stage finished its second trial, resumed to
    the end. Also what was true right after the first kill."""
    output = study_file.parent / "c"
    killed: list[int] = []
    run_until(study_file, output, r"\[search\] 2/\d+ done", grace_s=2.5, env=env(), killed=killed)
    time.sleep(1)
    survivors = [pid for pid in killed if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    _, parents, children = study_runs(client_for(output), STUDY)
    parent = parents["search"]
    assert parent.info.status == "RUNNING"  # killed: nobody could close it
    finished = {r.data.tags["gensearch.trial_id"] for r in children[parent.info.run_id] if r.info.status == "FINISHED"}
    second = "".join(run_until(study_file, output, r"\[bowl\] 2/\d+ trial", grace_s=0.2, extra_args=("--resume",),
                               env=env()))
    last = run_study(study_file, output, "--resume")
    return KilledRun(output, second, last, survivors, parent.info.run_id, finished)


def trials_table(output: Path, stage: str) -> pd.DataFrame:
    kind = "tune" if stage == "search" else "optuna"
    frame = pd.read_csv(output / kind / stage / "trials.csv")
    return frame[[c for c in frame.columns if c not in BY_DESIGN]]


def places(output: Path) -> dict[str, dict[str, int]]:
    """Each stage's trials: the id MLflow and study_state.json know them by -> place in suggestion order."""
    tune = pd.read_csv(output / "tune" / "search" / "trials.csv")
    optuna = pd.read_csv(output / "optuna" / "bowl" / "trials.csv")
    return {"search": dict(zip(tune["trial_id"], tune["trial_index"])),
            "bowl": {str(number): number for number in optuna["trial"]}}


def champions(output: Path) -> dict[str, dict]:
    """Each stage's champion as study_state.json names it, its trial by place instead of id."""
    state = json.loads((output / "study_state.json").read_text())
    by_place = places(output)
    found = {}
    for stage, record in state["stages"].items():
        best = dict(record["best"])
        best["place"] = by_place[stage][best.pop("trial_id")]
        for key in ("checkpoint", "child_run_id"):  # paths and run ids: where, not what
            best.pop(key)
        found[stage] = best
    return found


def histories(output: Path) -> dict[tuple[str, int], dict]:
    """Every trial's MLflow params and metric histories [(step, value)], by (stage, place); timings left out."""
    client = client_for(output)
    _, parents, children = study_runs(client, STUDY)
    by_place = places(output)
    found = {}
    for stage, parent in parents.items():
        for run in children[parent.info.run_id]:
            assert run.info.status == "FINISHED", (stage, run.data.tags)
            place = by_place[stage][run.data.tags["gensearch.trial_id"]]
            metrics = {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
                       for key in run.data.metrics if not key.startswith("time_") and not key.endswith("_s")}
            found[(stage, place)] = {"params": run.data.params, "metrics": metrics}
    return found


def assert_same_study(first: Path, second: Path) -> None:
    for stage in ("search", "bowl"):
        pd.testing.assert_frame_equal(trials_table(first, stage), trials_table(second, stage))
    assert champions(first) == champions(second)
    ours, theirs = histories(first), histories(second)
    assert sorted(ours) == sorted(theirs) == sorted(
        [("search", i) for i in range(TUNE_TRIALS)] + [("bowl", i) for i in range(OPTUNA_TRIALS)])
    for key in ours:
        assert ours[key] == theirs[key], key


@pytest.mark.slow  # two launches of a tiny study
def test_two_runs_of_one_seed_give_the_same_trials_champions_and_histories(study_file, reference):
    rerun = study_file.parent / "b"
    run_study(study_file, rerun)
    assert_same_study(reference, rerun)


@pytest.mark.slow  # three launches of a tiny study
def test_a_study_killed_mid_stage_and_resumed_ends_as_the_uninterrupted_one(reference, killed_and_resumed):
    output, second, last = killed_and_resumed.output, killed_and_resumed.second, killed_and_resumed.last
    # Each kill came in the middle of its stage: some trials were done, some were left to run.
    assert re.search(rf"\[search\] resuming .*\n(.*\n)*\[search\] [34]/{TUNE_TRIALS} done", second), second
    assert f"[bowl] {OPTUNA_TRIALS} of {OPTUNA_TRIALS} trials to run" in second
    left = re.search(rf"\[bowl\] (\d+) of {OPTUNA_TRIALS} trials to run", last)
    assert left and 0 < int(left.group(1)) < OPTUNA_TRIALS, last
    assert_same_study(reference, output)


@pytest.mark.slow
def test_a_sigkill_leaves_no_process_and_resume_keeps_the_parent_and_never_retrains_a_finished_trial(
        killed_and_resumed):
    run = killed_and_resumed
    assert run.survivors == [], "processes of the killed launcher's group survived"
    assert 2 <= len(run.finished_before) < TUNE_TRIALS, "the kill did not land mid-search"
    _, parents, children = study_runs(client_for(run.output), STUDY)
    assert parents["search"].info.run_id == run.search_parent and parents["search"].info.status == "FINISHED"
    assert run.finished_before <= {r.data.tags["gensearch.trial_id"] for r in children[run.search_parent]}
    # A trial finished before the kill was not trained again: Tune's own log of it has no repeated step.
    for trial_id in run.finished_before:
        log = next((run.output / "tune" / "search").glob(f"*{trial_id}*")) / "result.json"
        steps = [json.loads(line)["training_iteration"] for line in log.read_text().splitlines()]
        assert steps == list(range(1, len(steps) + 1)), f"trial {trial_id} re-ran after resume: steps {steps}"


@pytest.mark.slow
def test_the_study_is_not_trivially_the_same(reference):
    """Guards the tests above: the trials differ from each other (seeds, settings) and ASHA stopped some."""
    tune = trials_table(reference, "search")
    assert tune["config/seed"].nunique() == TUNE_TRIALS
    assert tune["config/x"].nunique() == TUNE_TRIALS
    assert (tune["training_iteration"] < EPOCHS).any(), "no trial was stopped early: the rung decisions went untested"
    assert trials_table(reference, "bowl")["value"].nunique() == OPTUNA_TRIALS
