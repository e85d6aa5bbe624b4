"""Faults a real study meets: a Ray node dies mid-study, the MLflow server dies mid-study, a trial raises or
diverges. Each is played for real (processes killed with signals, a real server stopped and restarted on the
same port and store), and the outcome is checked in MLflow and in Tune's own records."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.orchestrator.cluster_helpers import classifier_study, shared_cluster_and_server
from tests.orchestrator.study_helpers import REPO, client_for, launcher, study_runs
from tests.orchestrator.test_failures import no_run_is_left_running


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    """One head + one worker (1 CPU each) and one MLflow server (shared with test_multinode when both run).
    The tests below use it in file order: the outage test restarts the server it stopped, the NaN test
    needs both nodes, the node-kill test leaves only the head."""
    return shared_cluster_and_server(request.config, tmp_path_factory)


def tune_steps(trial_dir: Path) -> list[int]:
    """Tune's own record of a trial's results: the step of every result it received, in order."""
    path = trial_dir / "result.json"
    return [json.loads(line)["training_iteration"] for line in path.read_text().splitlines()] if path.exists() else []


def tune_results(experiment_dir: Path) -> dict[str, list[dict]]:
    """Trial id -> the results in its result.json so far (complete lines only: Tune may be writing one)."""
    results = {}
    for trial_dir in experiment_dir.glob("trial_*"):
        path = trial_dir / "result.json"
        lines = path.read_text().split("\n")[:-1] if path.exists() else []
        if lines:
            results[trial_dir.name.removeprefix("trial_")] = [json.loads(line) for line in lines]
    return results


def assert_every_result_in_mlflow_once(client, trials, experiment_dir: Path, epochs: int) -> None:
    """Each trial's MLflow history holds steps 1..epochs exactly once, with Tune's first value for every step
    Tune's result.json still holds. (After a trial is restored on another node, Tune can replace its
    result.json by the copy it last synced to storage, which may predate the lost steps: MLflow, logged as
    results arrived, is then the more complete record, and the check is one of inclusion.)"""
    for run in trials:
        trial_id = run.data.tags["gensearch.trial_id"]
        recorded = {}
        for result in tune_results(experiment_dir)[trial_id]:
            recorded.setdefault(result["training_iteration"], result["val_accuracy"])
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        steps = sorted(m.step for m in history)
        assert steps == list(range(1, epochs + 1)), f"trial {trial_id}: results lost or logged twice: {steps}"
        logged = {m.step: m.value for m in history}
        assert {step: logged[step] for step in recorded} == pytest.approx(recorded), f"trial {trial_id}"


# ---------------------------------------------------------------- the MLflow server dies


@pytest.mark.slow
def test_a_dead_tracking_server_is_one_line_and_resume_loses_no_result(cluster, tmp_path):
    """Runs before the node-kill test (file order), while both nodes are up: two trials at a time."""
    ray_cluster, server = cluster
    spec = classifier_study(tmp_path / "outage.yaml", "outage", num_samples=3, epochs=3, train_size=1500, asha=False)
    output = tmp_path / "out"
    args = [str(spec), "--output", str(output), "--tracking-uri", server.uri, "--address", ray_cluster.address]
    errors_log = tmp_path / "stderr.log"  # a file: Ray may write plenty there while the test reads stdout
    with open(errors_log, "w") as errors_out:
        process = subprocess.Popen(launcher(*args), cwd=REPO, stdout=subprocess.PIPE, stderr=errors_out, text=True,
                                   env=ray_cluster.launcher_env(), start_new_session=True)
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if re.search(r"\[classifier\] 1/3 done", line):
                server.stop(signal.SIGKILL)  # a crash, not a clean shutdown
                break
        else:
            raise AssertionError("the study ended before the first trial finished:\n" + "".join(lines))
        rest, _ = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    stdout, stderr = "".join(lines) + rest, errors_log.read_text()
    assert process.returncode == 1, stdout[-3000:] + stderr[-3000:]
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert f"tracking: MLflow tracking server {server.uri} stopped answering" in errors[0]
    assert "--resume" in errors[0]
    outage_lines = [line for line in stdout.splitlines() if "stopped answering" in line]
    assert len(outage_lines) == 1, stdout  # said once, not once per result
    # Every trial ran to its end while MLflow was down; Tune kept the results and the checkpoints.
    experiment_dir = output / "tune" / "classifier"
    assert {len(set(tune_steps(d))) for d in experiment_dir.glob("trial_*")} == {3}
    assert len(list(experiment_dir.glob("trial_*"))) == 3
    assert all(any(d.glob("checkpoint_*")) for d in experiment_dir.glob("trial_*"))
    assert json.loads((output / "study_state.json").read_text())["stages"]["classifier"]["status"] == "running"

    server.start()  # the same port and the same store
    client = server.client()
    _, parents, children = study_runs(client, "outage")
    in_mlflow = sum(len(client.get_metric_history(r.info.run_id, "val_accuracy"))
                    for r in children.get(parents["classifier"].info.run_id, []))
    assert in_mlflow < 3 * 3, "no result was missing from MLflow: the outage came too late to test anything"
    result = subprocess.run(launcher(*args, "--resume"), cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=ray_cluster.launcher_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _, parents, children = study_runs(client, "outage")
    assert parents["classifier"].info.status == "FINISHED"
    trials = children[parents["classifier"].info.run_id]
    trial_ids = [r.data.tags["gensearch.trial_id"] for r in trials]
    assert len(trials) == 3 and len(set(trial_ids)) == 3, f"duplicate child runs: {trial_ids}"
    assert all(r.info.status == "FINISHED" for r in trials)
    assert all({"lr", "nf"} <= set(r.data.params) for r in trials)
    assert_every_result_in_mlflow_once(client, trials, experiment_dir, epochs=3)
    assert client.get_model_version_by_alias("outage-classifier", "champion").run_id in {r.info.run_id for r in trials}


# ---------------------------------------------------------------- a trial diverges


@pytest.mark.slow
def test_a_diverging_trial_is_marked_failed_with_its_reason_and_the_stage_continues(cluster, tmp_path):
    """test_failures covers a trial that raises (an impossible val_size); this is the NaN case: the training
    loop turns a non-finite metric into TrainingDiverged, and the trial fails like any raising trial. On the
    cluster (no Ray to boot) with the embedded store: neither is what is tested here."""
    ray_cluster, _ = cluster
    study = yaml.safe_load(classifier_study(tmp_path / "nan.yaml", "nan", num_samples=1, epochs=1).read_text())
    stage = study["stages"][0]
    stage["space"] = {"lr": {"type": "grid", "values": [0.01, 1e12]}}  # Adam at lr 1e12: NaN loss at once
    stage["searcher"], stage["scheduler"] = {"type": "basic"}, None
    (tmp_path / "nan.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    output = tmp_path / "out"
    result = subprocess.run(launcher(str(tmp_path / "nan.yaml"), "--output", str(output), "--address",
                                     ray_cluster.address), cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=ray_cluster.launcher_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "finished (1/2 ok)" in result.stdout
    client = client_for(output)
    _, parents, children = study_runs(client, "nan")
    trials = {float(r.data.params["lr"]): r for r in children[parents["classifier"].info.run_id]}
    assert trials[0.01].info.status == "FINISHED"
    assert trials[1e12].info.status == "FAILED"
    reason = trials[1e12].data.tags["gensearch.failure_reason"]
    assert "TrainingDiverged" in reason or "non-finite" in reason, reason
    assert "train_loss" in reason and "lower the learning rate" in reason
    assert client.get_model_version_by_alias("nan-classifier", "champion").run_id == trials[0.01].info.run_id
    assert no_run_is_left_running(client, "nan") == []


# ---------------------------------------------------------------- a Ray node dies


@pytest.mark.slow
def test_a_killed_worker_node_fails_only_its_trial_which_is_retried_elsewhere(cluster, tmp_path):
    ray_cluster, server = cluster
    worker = ray_cluster.workers[-1]
    worker_id, head_id = worker.node_id, ray_cluster.head.node_id
    # Two trials at once, one per node. No early stopping, and epochs long enough (1-3 s each on two busy
    # cores) that the kill lands inside the worker's trial, after its first checkpoint and before its last.
    epochs = 4
    spec = classifier_study(tmp_path / "nodekill.yaml", "nodekill", num_samples=2, epochs=epochs, train_size=3000,
                            max_failures=2, asha=False)
    output = tmp_path / "out"
    experiment_dir = output / "tune" / "classifier"
    log = tmp_path / "launcher.log"  # a file, not a pipe nobody reads while the test polls
    with open(log, "w") as out:
        process = subprocess.Popen(launcher(str(spec), "--output", str(output), "--address", ray_cluster.address,
                                            "--tracking-uri", server.uri),
                                   cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True,
                                   env=ray_cluster.launcher_env(), start_new_session=True)
    victim = None
    try:
        deadline = time.monotonic() + 180
        while victim is None:  # Tune's result.json of a trial says where it runs and how far it got
            assert process.poll() is None, "the study ended before a trial ran on the worker:\n" + log.read_text()
            assert time.monotonic() < deadline, "no trial reached its first epoch on the worker node"
            for trial_id, results in tune_results(experiment_dir).items():
                last = results[-1]
                running_early = not last.get("done") and last["training_iteration"] < epochs - 1
                if last.get("node_id") == worker_id and running_early:
                    victim = trial_id
                    break
            time.sleep(0.2)
        worker.kill(signal.SIGKILL)  # the node's GCS client, raylet, agents and the trial's worker process
        killed_at = tune_steps(experiment_dir / f"trial_{victim}")[-1]
        process.wait(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    stdout = log.read_text()
    assert process.returncode == 0, stdout[-4000:]
    assert ray_cluster.alive_nodes().keys() == {head_id}  # the GCS saw the node go

    client = server.client()
    _, parents, children = study_runs(client, "nodekill")
    assert parents["classifier"].info.status == "FINISHED"
    trials = children[parents["classifier"].info.run_id]
    trial_ids = [r.data.tags["gensearch.trial_id"] for r in trials]
    assert len(trials) == 2 and len(set(trial_ids)) == 2, f"duplicate child runs: {trial_ids}"
    assert all(r.info.status == "FINISHED" for r in trials)
    retried = next(r for r in trials if r.data.tags["gensearch.trial_id"] == victim)
    assert retried.data.tags["gensearch.node_id"] == head_id  # its last attempt ran on the head
    # Resumed from its last checkpoint, not restarted: Tune counts the steps since the restore apart.
    last = tune_results(experiment_dir)[victim][-1]
    assert last["training_iteration"] == epochs
    assert last["iterations_since_restore"] < epochs, f"restarted from scratch (killed after step {killed_at})"
    assert_every_result_in_mlflow_once(client, trials, experiment_dir, epochs=epochs)
    assert f"trial {victim} FAILED" not in stdout


# ---------------------------------------------------------------- the server comes back mid-stage


class FlakyTracker:
    """Stands in for `Tracker`: records every MLflow call, and fails every call while `down`."""

    def __init__(self) -> None:
        self.down, self.calls, self.runs = False, [], {}

    def _call(self, what):
        if self.down:
            raise ConnectionError("Connection refused")
        self.calls.append(what)

    def children(self, parent):
        self._call("children")
        return {trial_id: SimpleNamespace(info=SimpleNamespace(run_id=run_id, status="RUNNING"))
                for trial_id, run_id in self.runs.items()}

    def create_child(self, parent, stage, trial_id, params):
        self._call(("create", trial_id))
        self.runs[trial_id] = f"run-{trial_id}"
        return self.runs[trial_id]

    def logged_steps(self, run_id, metric):
        self._call("history")
        return set()

    def log_metrics(self, run_id, metrics, step=0):
        self._call(("log", run_id, step))

    def set_tags(self, run_id, tags):
        self._call(("tags", run_id))

    def finish(self, run_id, status="FINISHED", reason=None):
        self._call(("finish", run_id, status))


def test_the_trial_logger_rides_out_an_outage_says_so_once_and_resumes_without_duplicates(monkeypatch, capsys):
    """The callback's side of an outage, without Ray: no call reaches MLflow while it is down (each would
    stall Tune's loop for the client's retries), one line says so, and when the server answers again the
    runs created just before the outage are found rather than created twice."""
    from orchestrator import tracking, trial_logger

    tracker = FlakyTracker()
    monkeypatch.setattr(trial_logger, "OUTAGE_PROBE_S", 0.0)
    for module in (tracking, trial_logger):  # the health probe: refused while down
        monkeypatch.setattr(module, "unreachable_reason", lambda target, timeout_s: "refused" if tracker.down else None)
    target = tracking.TrackingTarget("http://tracking:5000", None, False)
    logger = trial_logger.MlflowTrialLogger(target, "exp", "study", "stage", "parent", "score", "max", total_trials=3)
    logger._tracker = tracker
    trial = {name: SimpleNamespace(trial_id=name, config={"x": 1}, last_result={"score": 1.0, "training_iteration": 2},
                                   path=None) for name in "abc"}

    def result(step):
        return {"score": 1.0, "training_iteration": step, "time_total_s": float(step), "node_id": "n1"}

    logger.setup()
    logger.on_trial_start(0, [], trial["a"])
    logger.on_trial_result(0, [], trial["a"], result(1))
    tracker.down = True
    logger.on_trial_result(0, [], trial["a"], result(2))
    logger.on_trial_start(0, [], trial["b"])
    logger.on_trial_result(0, [], trial["b"], result(1))
    logger.on_trial_complete(0, [], trial["a"])
    during = len(tracker.calls)
    tracker.down = False
    tracker.runs["c"] = "run-c"  # created on the server; the reply was lost with the connection
    logger.on_trial_result(0, [], trial["b"], result(2))
    logger.on_trial_start(0, [], trial["c"])

    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "stopped answering" in line] == [
        "[stage] tracking: MLflow tracking server http://tracking:5000 stopped answering (refused); the trials go on "
        "and Tune keeps every result, which is copied to MLflow once the server answers again"]
    assert "[stage] 1/3 done · trial a" in out  # progress goes on during the outage
    assert "answers again" in out
    assert tracker.calls[:during] == ["children", ("create", "a"), "history", ("log", "run-a", 1), ("tags", "run-a")]
    assert ("create", "b") in tracker.calls and ("log", "run-b", 2) in tracker.calls
    assert ("create", "c") not in tracker.calls


def test_a_resumed_stage_keeps_the_best_of_the_trials_finished_before_the_stop(capsys):
    """Progress lines after --resume say the best over every finished trial, not only the new ones."""
    from orchestrator import tracking, trial_logger

    def run(run_id, status, value):
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id, status=status),
                               data=SimpleNamespace(metrics={"score": value}))

    tracker = FlakyTracker()
    tracker.children = lambda parent: {"a": run("run-a", "FINISHED", 0.9), "b": run("run-b", "RUNNING", 0.99)}
    target = tracking.TrackingTarget("sqlite:///unused.db", None, True)
    logger = trial_logger.MlflowTrialLogger(target, "exp", "study", "stage", "parent", "score", "max", total_trials=3)
    logger._tracker = tracker
    logger.setup()
    trial = SimpleNamespace(trial_id="c", config={}, last_result={"score": 0.5, "training_iteration": 1}, path=None)
    logger.on_trial_complete(0, [], trial)
    out = capsys.readouterr().out
    assert "resuming with 1 already done" in out
    assert "[stage] 2/3 done · trial c after 1 step(s): score=0.5 (best 0.9)" in out  # b has not finished


def test_progress_never_counts_a_trial_twice_or_past_the_total(capsys):
    """Issue 19, defect 7: a resume printed `9/8 done`. Tune's snapshot can predate a trial's end (it is
    saved about once a second), so a trial whose run MLflow has as FINISHED may run and end once more."""
    from orchestrator import tracking, trial_logger

    def run(run_id, status):
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id, status=status), data=SimpleNamespace(metrics={}))

    tracker = FlakyTracker()
    tracker.children = lambda parent: {"a": run("run-a", "FINISHED"), "b": run("run-b", "FINISHED")}
    target = tracking.TrackingTarget("sqlite:///unused.db", None, True)
    logger = trial_logger.MlflowTrialLogger(target, "exp", "study", "stage", "parent", "score", "max", total_trials=2)
    logger._tracker = tracker
    logger.setup()
    trial = SimpleNamespace(trial_id="b", config={}, last_result={"score": 0.5, "training_iteration": 1}, path=None)
    logger.on_trial_complete(0, [], trial)  # b again, restored from a snapshot taken before it ended
    out = capsys.readouterr().out
    assert "[stage] 2/2 done · trial b" in out
