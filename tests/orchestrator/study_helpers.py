"""Shared pieces of the end-to-end tests: a tiny real study, the launcher as a subprocess, MLflow reads."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml
from mlflow.tracking import MlflowClient

from tests.orchestrator.cluster_helpers import process_group

REPO = Path(__file__).resolve().parents[2]


def tiny_study(path: Path, *, num_samples: int = 4, epochs: int = 3, train_size: int = 300,
               name: str = "tiny") -> Path:
    """A real two-stage study small enough for CI: classifier search, then test-split evaluation."""
    study = {
        "study": name,
        "stages": [
            {
                "name": "classifier", "kind": "tune", "trainable": "classifier",
                "config": {"data": {"classes": [7, 1], "train_size": train_size}, "val_size": 100, "epochs": epochs,
                           "batch_size": 32},
                "space": {"lr": {"type": "loguniform", "low": 1e-3, "high": 3e-2},
                          "nf": {"type": "choice", "values": [1, 2]}},
                "metric": "val_accuracy", "num_samples": num_samples, "max_concurrent_trials": 2,
                "scheduler": {"type": "asha", "max_t": epochs, "grace_period": 1, "reduction_factor": 2},
                "searcher": {"type": "optuna", "sampler": "tpe", "seed": 0},
                "resources": {"cpu": 1},
            },
            {"name": "evaluate", "kind": "job", "job": "evaluate_classifier", "config": {"limit": 300},
             "inputs": {"checkpoint": "classifier.best"}},
        ],
    }
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def launcher(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.launch", *args]


def launcher_env() -> dict[str, str]:
    """The test process's environment minus MLflow's URI variables (mlflow.set_tracking_uri in one test
    exports one), so every launched study uses its own embedded store unless a test says otherwise."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    return {**env, "PYTHONUNBUFFERED": "1"}


def run_launcher(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The launcher run to its end; `env` replaces `launcher_env()` (e.g. with a toy trainable's folder on
    PYTHONPATH)."""
    return subprocess.run(launcher(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=env or launcher_env())


def run_until(spec: Path, output: Path, pattern: str, grace_s: float = 0.0, timeout: float = 300,
              extra_args: tuple[str, ...] = (), killed: list[int] | None = None,
              env: dict[str, str] | None = None) -> list[str]:
    """Start the launcher in its own process group and SIGKILL the whole group (the launcher and the Ray
    it started, nothing else) `grace_s` after a line of its output matches `pattern` (Tune snapshots its
    state about once a second: wait ~2.5 s after a trial ends for Tune to know it ended). Returns the
    output lines read until then; `killed`, when given, receives the pids of the group just before the kill."""
    process = subprocess.Popen(launcher(str(spec), "--output", str(output), *extra_args), cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               env=env or launcher_env())
    lines, deadline = [], time.monotonic() + timeout
    try:
        for line in process.stdout:
            lines.append(line)
            if re.search(pattern, line):
                time.sleep(grace_s)
                break
            assert time.monotonic() < deadline, "the study did not reach the kill point in time:\n" + "".join(lines)
        else:
            raise AssertionError("the launcher ended before the kill point:\n" + "".join(lines))
    finally:
        if killed is not None:
            killed.extend(p.pid for p in psutil.process_iter() if process_group(p.pid) == process.pid)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    return lines


def client_for(output: Path) -> MlflowClient:
    uri = f"sqlite:///{output.resolve() / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def study_runs(client: MlflowClient, experiment: str):
    """(experiment, parent runs by stage name, child runs by parent run id) of one study."""
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs([found.experiment_id], max_results=1000)
    parents = {r.data.tags["gensearch.stage"]: r for r in runs
               if "mlflow.parentRunId" not in r.data.tags and "gensearch.stage" in r.data.tags}  # not the report
    children: dict[str, list] = {}
    for run in runs:
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent:
            children.setdefault(parent, []).append(run)
    return found, parents, children


def best_history_value(client: MlflowClient, run_id: str, metric: str, mode: str) -> float:
    values = [m.value for m in client.get_metric_history(run_id, metric)]
    return max(values) if mode == "max" else min(values)
