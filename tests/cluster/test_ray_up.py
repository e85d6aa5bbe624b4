"""`ray up cluster/local.yaml` for real: Ray's own CLI brings the cluster up over SSH, runs a study with
`ray job submit` as cluster/README.md says, and `ray down` takes it all away again.

The machines are two SSH servers on this computer (tests/cluster/ssh_machines.py): a head on 127.0.0.1
and a worker on 127.0.0.2, each in PID and mount namespaces of its own, both on a free port, which the
ssh client config of the machines and of the `ray` commands names (Ray's `auth` has no port setting).
The cluster file is cluster/local.yaml with only its placeholders filled (the addresses, the SSH user
and key, the shared folder: a local folder instead of an NFS export), so every setup and start command
of local.yaml runs through `ray up` exactly as written, on the head and, started by the head's
autoscaler over SSH, on the worker. The datasets come from a loopback mirror of ../shared/data through
`python -m orchestrator.data fetch`.

What differs from real machines is what each machine's environment says (sshd's SetEnv): free ports in
place of Ray's and MLflow's defaults, which other programs on this computer may hold, the worker's own
address, and no CPUs on the head (as cluster/gpu.yaml's head), so every trial has to run on the worker
the autoscaler brought up; and `~/gensearch/.venv` already holds the test's packages, so the setup's
pip install finds torch there instead of downloading it.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.cluster.ssh_machines import SshMachine, client_command, make_key, sandbox_problem, write_ssh_client_config
from tests.orchestrator.cluster_helpers import free_port
from tests.orchestrator.study_helpers import study_runs, tiny_study
from tests.trainables.mirror_helpers import SHARED as SHARED_DATA
from tests.trainables.mirror_helpers import serve_mirror

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STUDY = "ray_up"
NUM_SAMPLES = 2  # both at once on the worker's 2 CPUs
# local.yaml's placeholders, as its header lists them.
PLACEHOLDERS = {"head_ip": "192.168.1.10", "worker_ips": "[192.168.1.11, 192.168.1.12]",
                "ssh_user": "REPLACE-WITH-YOUR-USER", "ssh_private_key": "~/.ssh/id_ed25519",
                "nfs": "NFS-SERVER:/export/gensearch", "shared": "/mnt/gensearch"}

PROBLEM = sandbox_problem()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(PROBLEM is not None, reason=f"ray up over SSH: {PROBLEM}")]


def filled_local_yaml(shared: Path, key: Path) -> str:
    """cluster/local.yaml with its placeholders filled, and nothing else changed."""
    text = (REPO / "cluster" / "local.yaml").read_text()
    replacements = [
        (f"head_ip: {PLACEHOLDERS['head_ip']}", "head_ip: 127.0.0.1"),
        (f"worker_ips: {PLACEHOLDERS['worker_ips']}", "worker_ips: [127.0.0.2]"),
        (f"ssh_user: {PLACEHOLDERS['ssh_user']}", f"ssh_user: {getpass.getuser()}"),
        (f"ssh_private_key: {PLACEHOLDERS['ssh_private_key']}", f"ssh_private_key: {key}"),
        (f" {PLACEHOLDERS['nfs']}\n", ' ""\n'),  # no NFS export: the shared folder is a plain local folder
        (PLACEHOLDERS["shared"], str(shared)),
    ]
    for old, new in replacements:
        assert old in text, f"cluster/local.yaml no longer has the placeholder {old!r}: update this test"
        text = text.replace(old, new)
    return text


def ray(*args: str, cwd: Path, env: dict, ssh_client_config: Path, timeout: float,
        log: Path) -> subprocess.CompletedProcess:
    """Ray's own CLI from the test's environment, its SSH connections on the machines' port; its output is
    kept in `log` and returned."""
    result = subprocess.run(client_command(ssh_client_config, [str(BIN / "ray"), *args]), cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    log.write_text(result.stdout + result.stderr)
    return result


def readme_job_command(shared: Path, dashboard_port: int) -> list[str]:
    """The `ray job submit` of cluster/README.md, for this study, output folder and shared folder."""
    text = (REPO / "cluster" / "README.md").read_text().replace("\\\n", " ")
    commands = [line.strip() for line in text.splitlines()
                if line.strip().startswith("ray job submit") and "orchestrator.launch" in line
                and "--resume" not in line]
    assert commands, "cluster/README.md has no `ray job submit ... orchestrator.launch` command"
    command = commands[0]
    for old, new in [("search_spaces/gasten_mnist.yaml --profile paper", f"search_spaces/{STUDY}.yaml"),
                     ("/runs/gasten_mnist-paper", f"/runs/{STUDY}"), (PLACEHOLDERS["shared"], str(shared)),
                     ("http://127.0.0.1:8265", f"http://127.0.0.1:{dashboard_port}")]:
        assert old in command, f"cluster/README.md's job command no longer has {old!r}: {command}"
        command = command.replace(old, new)
    return shlex.split(command)


def ran(command: str, output: str) -> bool:
    """Whether Ray's updater ran `command` (its `Running `...`` line; the worker's are prefixed with
    `export RAY_HEAD_IP=...;`)."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", output)
    return re.search(r"Running `[^`\n]*" + re.escape(command) + "`", plain) is not None


def alive_nodes(dashboard_port: int) -> list[dict]:
    url = f"http://127.0.0.1:{dashboard_port}/api/v0/nodes?limit=100"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - the head on loopback
        nodes = json.load(response)["data"]["result"]["result"]
    return [node for node in nodes if node["state"] == "ALIVE"]


def wait_until_gone(machines: list[SshMachine], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = [f"{m.name}: {line}" for m in machines for line in m.leftovers()]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(1)


def test_ray_up_runs_a_study_on_the_cluster_it_starts_and_ray_down_stops_everything():
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="gsup-", dir="/tmp"))  # short: Ray's socket paths live under it
    shared, checkout, client_home = root / "shared", root / "checkout", root / "client"
    client_home.mkdir()
    key = make_key(root / "cluster_key")
    ssh_port, gcs_port, dashboard_port, mlflow_port = free_port(), free_port(), free_port(), free_port()
    machines: list[SshMachine] = []
    passed = False
    try:
        # The repository as `ray up` would copy it (rsync with .gitignore as the filter): Ray fingerprints
        # every file under the folder it is run from, and this one's .venv alone holds gigabytes.
        subprocess.run(["rsync", "-a", "--filter", "dir-merge,- .gitignore", "--exclude", ".git",
                        f"{REPO}/", f"{checkout}/"], check=True)
        cluster_file = filled_local_yaml(shared, key)
        (checkout / "cluster" / "local.yaml").write_text(cluster_file)
        config = yaml.safe_load(cluster_file)
        ssh_config = write_ssh_client_config(root / "ssh_config", ssh_port, ["127.0.0.1", "127.0.0.2"])
        tiny_study(checkout / "search_spaces" / f"{STUDY}.yaml", name=STUDY, num_samples=NUM_SAMPLES, epochs=2)

        with serve_mirror(SHARED_DATA) as mirror:
            head = SshMachine("head", "127.0.0.1", ssh_port, root, key.with_suffix(".pub"), ssh_config, {
                "GENSEARCH_DATA_MIRROR": mirror.url, "MLFLOW_PORT": str(mlflow_port), "MLFLOW_WORKERS": "1",
                "GENSEARCH_RAY_START_ARGS": (f"--port={gcs_port} --dashboard-port={dashboard_port} "
                                             f"--ray-client-server-port={free_port()} "
                                             f"--dashboard-agent-listen-port={free_port()} --num-cpus=0")})
            worker = SshMachine("worker", "127.0.0.2", ssh_port, root, key.with_suffix(".pub"), ssh_config, {
                "GENSEARCH_RAY_START_ARGS": (f"--address=127.0.0.1:{gcs_port} --node-ip-address=127.0.0.2 "
                                             f"--dashboard-agent-listen-port={free_port()} --num-cpus=2"),
                # After `ray down` the worker's raylet gives up on the head after 10 s instead of Ray's 60.
                "RAY_gcs_rpc_server_reconnect_timeout_s": "10"})
            machines = [head, worker]
            for machine in machines:
                machine.start()

            drop = ("RAY_", "MLFLOW_", "GENSEARCH_")
            env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
            env.update(HOME=str(client_home), TMPDIR=str(client_home), PYTHONUNBUFFERED="1")
            up = ray("up", "-y", "cluster/local.yaml", cwd=checkout, env=env, ssh_client_config=ssh_config,
                     timeout=420, log=root / "ray_up.log")
            assert up.returncode == 0, f"ray up failed:\n{(up.stdout + up.stderr)[-6000:]}"
            up_done = time.monotonic()
            print(f"\n--- ray up ({up_done - started:.0f} s since the test started) ---\n{up.stdout}{up.stderr}")
            tracking_uri = (head.home / "mlflow_tracking_uri").read_text().strip()
            assert re.fullmatch(rf"http://[\d.]+:{mlflow_port}", tracking_uri)

            command = readme_job_command(shared, dashboard_port)
            job = subprocess.run([str(BIN / "ray"), *command[1:]], cwd=checkout, env=env, capture_output=True,
                                 text=True, timeout=420)
            job_done = time.monotonic()
            print(f"--- ray job submit ({job_done - up_done:.0f} s) ---\n{job.stdout}{job.stderr}")
            assert job.returncode == 0, f"the job failed:\n{(job.stdout + job.stderr)[-6000:]}"
            assert len(alive_nodes(dashboard_port)) == 2  # the head, and the worker its autoscaler started
        # Every setup and start command of local.yaml ran: the head's through `ray up`, the worker's
        # through the head's autoscaler (its log).
        ray_up_log = up.stdout + up.stderr
        autoscaler_log = (head.root / "tmp" / "ray" / "session_latest" / "logs" / "monitor.out").read_text()
        for section, output in [("setup_commands", ray_up_log), ("head_setup_commands", ray_up_log),
                                ("head_start_ray_commands", ray_up_log), ("setup_commands", autoscaler_log),
                                ("worker_setup_commands", autoscaler_log),
                                ("worker_start_ray_commands", autoscaler_log)]:
            for command in config[section]:
                assert ran(command, output), f"{section}: {command!r} did not run"
        # (the mirror is gone: the data was fetched once, by setup_head.sh)
        assert sorted(p.name for p in (shared / "data" / "MNIST" / "raw").iterdir()) == sorted(
            p.name for p in (SHARED_DATA / "MNIST" / "raw").iterdir())

        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        _, parents, children = study_runs(client, STUDY)
        assert parents["classifier"].info.status == "FINISHED" and parents["evaluate"].info.status == "FINISHED"
        trials = children[parents["classifier"].info.run_id]
        assert len(trials) == NUM_SAMPLES and all(r.info.status == "FINISHED" for r in trials)
        assert {r.data.tags["gensearch.node_ip"] for r in trials} == {"127.0.0.2"}  # the head has no CPUs
        assert sorted(r.data.tags["gensearch.trial_id"] for r in trials) == sorted(
            p.name.removeprefix("trial_") for p in (shared / "runs" / STUDY / "tune" / "classifier").glob("trial_*"))
        version = client.get_model_version_by_alias(f"{STUDY}-classifier", "champion")
        assert version.run_id in {r.info.run_id for r in client.search_runs(
            [parents["classifier"].info.experiment_id])}
        assert any((shared / "mlflow-artifacts").rglob("MLmodel"))  # artifacts on the shared folder, via MLflow

        down = ray("down", "-y", "cluster/local.yaml", cwd=checkout, env=env, ssh_client_config=ssh_config,
                   timeout=180, log=root / "ray_down.log")
        print(f"--- ray down ---\n{down.stdout}{down.stderr}")
        assert down.returncode == 0, f"ray down failed:\n{(down.stdout + down.stderr)[-4000:]}"
        left = wait_until_gone(machines, timeout=120)
        assert not left, "still running after ray down:\n" + "\n".join(left)
        print(f"--- nothing left running {time.monotonic() - started:.0f} s after the test started ---")
        passed = True
    finally:
        for machine in machines:
            machine.stop()
        if passed:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"logs and files kept in {root}")
