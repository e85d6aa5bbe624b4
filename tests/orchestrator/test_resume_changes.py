"""`--resume` a user can predict (issue 19, defects 3, 4, 7): an edited study is refused with the diff and
the ways forward, `--restart-from` reruns stages and keeps the old runs superseded, a failed stage is retried,
and Ctrl-C leaves no run RUNNING. Real launchers, real Ray, a real MLflow store."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.resume_plan import ResumeRefused, plan_resume
from orchestrator.spec import load_study
from orchestrator.study_state import StageState, StudyState, load_state
from tests.orchestrator.study_helpers import (REPO, client_for, launcher, launcher_env, run_launcher, run_until,
                                              tiny_study)
from tests.orchestrator.test_failures import failing_study, no_run_is_left_running

SUPERSEDED = "gensearch.superseded"
REASON = "gensearch.failure_reason"


def edit(path: Path, change) -> Path:
    study = yaml.safe_load(path.read_text())
    change(study["stages"][0])
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def all_runs(client, experiment: str = "tiny") -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], max_results=1000)


def stage_runs(client, stage: str) -> tuple[list, list]:
    """(parent runs, child runs) of one stage, superseded ones included."""
    runs = [r for r in all_runs(client) if r.data.tags.get("gensearch.stage") == stage]
    return ([r for r in runs if "mlflow.parentRunId" not in r.data.tags],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags])


def search_only(spec: Path) -> Path:
    """The tiny study without its evaluation stage: what these tests check happens in the search."""
    study = yaml.safe_load(spec.read_text())
    study["stages"] = study["stages"][:1]
    spec.write_text(yaml.safe_dump(study, sort_keys=False))
    return spec


def progress_counts(text: str) -> list[tuple[int, int]]:
    return [(int(done), int(total)) for done, total in re.findall(r"\] (\d+)/(\d+) done", text)]


# ---------------------------------------------------------------- deciding, on specs (fast)


def two_stage_specs(tmp_path: Path, change=None):
    launched = tiny_study(tmp_path / "launched.yaml")
    current = tiny_study(tmp_path / "current.yaml")
    if change:
        edit(current, change)
    return load_study(launched), load_study(current)


def state_with(**statuses: str) -> StudyState:
    return StudyState(study="tiny", tracking_uri="sqlite:///x.db",
                      stages={name: StageState(status=status) for name, status in statuses.items()})


def test_a_comment_or_another_spelling_of_the_same_value_is_no_change(tmp_path):
    launched = tiny_study(tmp_path / "launched.yaml")
    text = launched.read_text().replace("low: 0.001", "low: 1.0e-3")
    assert text != launched.read_text()
    (tmp_path / "current.yaml").write_text("# tuned by hand\n" + text)
    plan = plan_resume(state_with(classifier="running"), load_study(launched), load_study(tmp_path / "current.yaml"),
                       tmp_path)
    assert plan.restart == {} and not plan.file_changed


def test_an_edit_to_a_stage_that_ran_is_refused_with_the_diff_and_the_ways_forward(tmp_path):
    launched, current = two_stage_specs(tmp_path, lambda s: (s["space"]["lr"].update(low=1e-2),
                                                             s.update(num_samples=12)))
    with pytest.raises(ResumeRefused) as refused:
        plan_resume(state_with(classifier="finished", evaluate="running"), launched, current, tmp_path)
    text = str(refused.value)
    assert "  classifier (finished): space.lr.low: 0.001 -> 0.01; num_samples: 4 -> 12" in text
    assert "--output NEW_DIR" in text and "--resume --restart-from classifier" in text
    assert "evaluate" not in text.split("Ways forward")[0]  # unchanged: not listed


def test_edits_to_a_stage_not_yet_run_or_to_a_failed_one_are_taken(tmp_path):
    launched, current = two_stage_specs(tmp_path, lambda s: s.update(num_samples=2))
    assert plan_resume(state_with(classifier="pending"), launched, current, tmp_path).file_changed
    plan = plan_resume(state_with(classifier="failed"), launched, current, tmp_path)
    assert list(plan.restart) == ["classifier"] and plan.file_changed
    assert plan_resume(state_with(classifier="failed"), launched, launched, tmp_path).restart == {}  # a plain retry


def test_restart_from_takes_that_stage_and_every_later_one_that_ran(tmp_path):
    launched, current = two_stage_specs(tmp_path, lambda s: s.update(num_samples=2))
    plan = plan_resume(state_with(classifier="finished", evaluate="finished"), launched, current, tmp_path,
                       restart_from="classifier")
    assert list(plan.restart) == ["classifier", "evaluate"]
    with pytest.raises(ResumeRefused, match="classifier \\(finished\\): num_samples: 4 -> 2"):
        plan_resume(state_with(classifier="finished", evaluate="finished"), launched, current, tmp_path,
                    restart_from="evaluate")
    with pytest.raises(ResumeRefused, match="no such stage"):
        plan_resume(state_with(classifier="finished"), launched, current, tmp_path, restart_from="gan")


# ---------------------------------------------------------------- real launchers


@pytest.mark.slow
def test_resume_with_an_edited_stage_is_refused_and_the_study_as_launched_is_kept(tmp_path):
    """Defect 4: after a stop, lr bounds and num_samples were edited; --resume ran 8 trials, new ones outside
    the new bounds, without a word, and overwrote the folder's study.yaml with the edited file."""
    spec = search_only(tiny_study(tmp_path / "tiny.yaml", num_samples=3, epochs=1, train_size=200))
    launched_text = spec.read_text()
    output = tmp_path / "out"
    run_until(spec, output, r"\[classifier\] 1/3 done")
    runs_before = sorted(r.info.run_id for r in all_runs(client_for(output)))
    edit(spec, lambda s: (s["space"]["lr"].update(low=1e-2), s.update(num_samples=12)))
    result = run_launcher(str(spec), "--output", str(output), "--resume", timeout=600)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "  classifier (running): space.lr.low: 0.001 -> 0.01; num_samples: 3 -> 12" in result.stderr
    assert "--resume --restart-from classifier" in result.stderr and "Traceback" not in result.stderr
    assert "Starting Ray" not in result.stdout
    assert (output / "study.yaml").read_text() == launched_text
    assert sorted(r.info.run_id for r in all_runs(client_for(output))) == runs_before

    spec.write_text("# the same study, commented\n" + launched_text.replace("low: 0.001", "low: 1.0e-3"))
    result = run_launcher(str(spec), "--output", str(output), "--resume", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (output / "study.yaml").read_text() == launched_text


@pytest.mark.slow
def test_a_stage_killed_before_tunes_first_snapshot_resumes(tmp_path):
    """A launcher killed between creating its Tuner and Tune's first snapshot leaves only `tuner.pkl`; Tune
    restored that and failed every resume with "no search space has been defined"."""
    spec = search_only(tiny_study(tmp_path / "tiny.yaml", num_samples=2, epochs=1, train_size=200))
    output = tmp_path / "out"
    run_until(spec, output, r"\[classifier\] \d+ trials")
    experiment = output / "tune" / "classifier"
    assert (experiment / "tuner.pkl").is_file()
    for snapshot in experiment.glob("*state-*"):  # in case Tune saved its first snapshot just before the kill
        snapshot.unlink()
    result = run_launcher(str(spec), "--output", str(output), "--resume", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "finished (2/2 ok)" in result.stdout


@pytest.mark.slow
def test_restart_from_reruns_with_the_new_settings_and_keeps_the_old_runs_superseded(tmp_path):
    spec = search_only(tiny_study(tmp_path / "tiny.yaml", num_samples=3, epochs=2, train_size=300))
    old_text = spec.read_text()
    output = tmp_path / "out"
    run_until(spec, output, r"\[classifier\] 1/3 done")
    old_parent = load_state(output).stage("classifier").parent_run_id
    old_trials = {p.name for p in (output / "tune" / "classifier").glob("trial_*")}
    edit(spec, lambda s: (s.update(num_samples=2), s["config"].update(epochs=1), s.update(scheduler=None)))
    result = run_launcher(str(spec), "--output", str(output), "--resume", "--restart-from", "classifier", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    client = client_for(output)
    parents, children = stage_runs(client, "classifier")
    old = [r for r in parents if r.info.run_id == old_parent]
    new = [r for r in parents if r.info.run_id != old_parent]
    assert len(old) == 1 and len(new) == 1
    assert old[0].data.tags[SUPERSEDED] == "true" and old[0].info.status == "KILLED"
    assert new[0].info.status == "FINISHED" and SUPERSEDED not in new[0].data.tags
    assert new[0].data.params["num_samples"] == "2"
    old_children = [r for r in children if r.data.tags["mlflow.parentRunId"] == old_parent]
    assert old_children and all(r.data.tags.get(SUPERSEDED) == "true" for r in old_children)
    new_children = [r for r in children if r.data.tags["mlflow.parentRunId"] == new[0].info.run_id]
    assert len(new_children) == 2 and all(r.data.params["epochs"] == "1" for r in new_children)
    assert no_run_is_left_running(client, "tiny") == []
    aside = next((output / "superseded").iterdir())
    assert {p.name for p in (aside / "tune" / "classifier").glob("trial_*")} == old_trials
    assert (aside / "study.yaml").read_text() == old_text and (output / "study.yaml").read_text() == spec.read_text()
    assert load_state(output).stage("classifier").parent_run_id == new[0].info.run_id
    champion = client.get_model_version_by_alias("tiny-classifier", "champion")
    assert champion.run_id in {r.info.run_id for r in new_children}


FLAKY_MODULE = '''"""A classifier that fails while a flag file exists: a cause of failure outside the study file."""
import dataclasses
import os

from trainables import classifier


def run(config, reporter):
    if os.path.exists(os.environ["FLAKY_FLAG"]):
        raise RuntimeError("the flag file exists: failing on purpose")
    return classifier.CLASSIFIER.run(config, reporter)


FLAKY = dataclasses.replace(classifier.CLASSIFIER, name="flaky", run=run)
'''


@pytest.mark.slow
def test_a_failed_stage_is_retried_by_resume_once_its_cause_is_fixed(tmp_path):
    """Defect 3: after fixing the cause (a corrupt file restored), --resume repeated the old failure: failed
    trials were never run again. Here the cause is a flag file the trainable checks."""
    (tmp_path / "flaky_trainable.py").write_text(FLAKY_MODULE)
    flag = tmp_path / "flag"
    flag.write_text("")
    spec = edit(tiny_study(tmp_path / "tiny.yaml", num_samples=2, epochs=1, train_size=200),
                lambda s: s.update(trainable="flaky_trainable:FLAKY"))
    output = tmp_path / "out"
    env = {**launcher_env(), "PYTHONPATH": str(tmp_path), "FLAKY_FLAG": str(flag)}

    def launch(*extra):
        return subprocess.run(launcher(str(spec), "--output", str(output), *extra), cwd=REPO, capture_output=True,
                              text=True, timeout=600, env=env)

    assert launch().returncode == 1
    client = client_for(output)
    (parent,), children = stage_runs(client, "classifier")
    failed = {r.data.tags["gensearch.trial_id"] for r in children}
    assert parent.info.status == "FAILED" and len(failed) == 2

    flag.unlink()
    result = launch("--resume")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (parent_after,), children = stage_runs(client, "classifier")
    assert parent_after.info.run_id == parent.info.run_id and parent_after.info.status == "FINISHED"
    assert REASON not in parent_after.data.tags
    assert {r.data.tags["gensearch.trial_id"] for r in children} == failed  # the same trials, run again
    assert all(r.info.status == "FINISHED" and REASON not in r.data.tags for r in children)
    assert "finished (2/2 ok)" in result.stdout
    assert stage_runs(client, "evaluate")[0][0].info.status == "FINISHED"
    assert not (output / "error.log").exists()


@pytest.mark.slow
def test_an_edited_failed_stage_runs_again_with_the_edits(tmp_path):
    """Defect 3, second half: fixing the study file (here an impossible val_size) and --resume still ran the
    old settings, and failed again."""
    spec = search_only(failing_study(tmp_path / "broken.yaml", [100000]))
    edit(spec, lambda s: s["config"]["data"].update(train_size=200))
    output = tmp_path / "out"
    assert run_launcher(str(spec), "--output", str(output), timeout=600).returncode == 1
    old_parent = load_state(output).stage("classifier").parent_run_id
    edit(spec, lambda s: s["space"].update(val_size={"type": "grid", "values": [100]}))
    result = run_launcher(str(spec), "--output", str(output), "--resume", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = client_for(output)
    parents, children = stage_runs(client, "classifier")
    (old,) = [r for r in parents if r.info.run_id == old_parent]
    (new,) = [r for r in parents if r.info.run_id != old_parent]
    assert old.info.status == "FAILED" and old.data.tags[SUPERSEDED] == "true"
    assert new.info.status == "FINISHED" and REASON not in new.data.tags
    (trial,) = [r for r in children if r.data.tags["mlflow.parentRunId"] == new.info.run_id]
    assert trial.data.params["val_size"] == "100" and trial.info.status == "FINISHED"
    assert no_run_is_left_running(client, "tiny") == []


@pytest.mark.slow
def test_ctrl_c_closes_the_trials_in_flight_and_resume_clears_the_interruption(tmp_path):
    """Defect 7: Ctrl-C left the in-flight trial's run RUNNING, the resumed parent kept the tag
    `gensearch.failure_reason = interrupted...`, a resume printed `9/8 done`, and repeated Ctrl-C printed
    `Exception ignored in atexit callback ... KeyboardInterrupt`."""
    spec = search_only(tiny_study(tmp_path / "tiny.yaml", num_samples=3, epochs=4, train_size=400))
    output = tmp_path / "out"
    process = subprocess.Popen(launcher(str(spec), "--output", str(output)), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True, env=launcher_env())
    lines = []
    for line in process.stdout:
        lines.append(line)
        if re.search(r"\[classifier\] \d+ trials", line):
            break
    client = client_for(output)
    deadline = time.monotonic() + 120
    while not [r for r in stage_runs(client, "classifier")[1] if r.info.status == "RUNNING"]:
        assert time.monotonic() < deadline and process.poll() is None, "no trial started:\n" + "".join(lines)
        time.sleep(0.5)
    for _ in range(4):  # a terminal's Ctrl-C reaches the whole foreground group; pressed four times
        os.killpg(process.pid, signal.SIGINT)
        time.sleep(0.3)
    output_text = "".join(lines) + process.stdout.read()
    assert process.wait(timeout=120) == 130, output_text[-3000:]
    assert "Traceback" not in output_text and "Exception ignored" not in output_text, output_text[-3000:]
    assert no_run_is_left_running(client, "tiny") == []
    (parent,), children = stage_runs(client, "classifier")
    killed = [r for r in children if r.info.status == "KILLED"]
    assert killed and all(r.data.tags[REASON].startswith("interrupted by the user") for r in killed)

    result = run_launcher(str(spec), "--output", str(output), "--resume", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (parent,), children = stage_runs(client, "classifier")
    assert parent.info.status == "FINISHED" and REASON not in parent.data.tags
    assert len(children) == 3 and all(r.info.status == "FINISHED" and REASON not in r.data.tags for r in children)
    assert all(done <= total for done, total in progress_counts(result.stdout)), result.stdout
