"""Failures end cleanly: the right exit code, one clear line, FAILED runs with reasons, nothing RUNNING."""

from __future__ import annotations

import socket

import pytest
import yaml

from tests.orchestrator.study_helpers import client_for, run_launcher, study_runs, tiny_study


def failing_study(path, val_sizes):
    """A classifier search over `val_size` by grid: a val_size above the training set fails inside the trial."""
    study = yaml.safe_load(tiny_study(path, num_samples=1, epochs=1).read_text())
    search = study["stages"][0]
    search["space"] = {"val_size": {"type": "grid", "values": val_sizes}}
    search["searcher"] = {"type": "basic"}
    search["scheduler"] = None
    search["config"].pop("val_size")
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def no_run_is_left_running(client, experiment):
    found = client.get_experiment_by_name(experiment)
    return [r.info.run_id for r in client.search_runs([found.experiment_id]) if r.info.status == "RUNNING"]


@pytest.mark.slow  # several seconds (a subprocess or a small training run): not part of the quick loop
def test_unreachable_tracking_server_is_one_line_before_anything_starts(tmp_path):
    with socket.socket() as probe:  # a free port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = tiny_study(tmp_path / "tiny.yaml")
    result = run_launcher(str(spec), "--output", str(tmp_path / "out"), "--tracking-uri", f"http://127.0.0.1:{port}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {spec}: tracking: MLflow tracking server http://127.0.0.1:{port} is unreachable")
    assert "Starting Ray" not in result.stdout
    assert not (tmp_path / "out" / "study_state.json").exists()


@pytest.mark.slow
def test_a_failing_trial_is_marked_failed_with_its_reason_and_the_stage_continues(tmp_path):
    spec = failing_study(tmp_path / "partial.yaml", [100, 100000])
    output = tmp_path / "out"
    result = run_launcher(str(spec), "--output", str(output))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "finished (1/2 ok)" in result.stdout
    client = client_for(output)
    _, parents, children = study_runs(client, "tiny")
    trials = {r.data.params["val_size"]: r for r in children[parents["classifier"].info.run_id]}
    assert trials["100"].info.status == "FINISHED"
    assert trials["100000"].info.status == "FAILED"
    assert "val_size 100000 leaves no training images" in trials["100000"].data.tags["gensearch.failure_reason"]
    assert client.get_model_version_by_alias("tiny-classifier", "champion").run_id == trials["100"].info.run_id
    assert no_run_is_left_running(client, "tiny") == []


@pytest.mark.slow
def test_a_stage_whose_trials_all_fail_exits_1_and_marks_its_run_failed(tmp_path):
    spec = failing_study(tmp_path / "broken.yaml", [100000])
    output = tmp_path / "out"
    result = run_launcher(str(spec), "--output", str(output))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert "stage 'classifier' failed" in error_lines[0] and "--resume" in error_lines[0]
    client = client_for(output)
    _, parents, _ = study_runs(client, "tiny")
    assert parents["classifier"].info.status == "FAILED"
    assert "all 1 trials failed" in parents["classifier"].data.tags["gensearch.failure_reason"]
    assert "evaluate" not in parents  # a later stage never starts after a failed one
    assert no_run_is_left_running(client, "tiny") == []
    assert "leaves no training images" in (output / "error.log").read_text()
