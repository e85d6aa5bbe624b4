"""A real multi-node Ray cluster and a real MLflow server on this one machine, owned by the test that starts them.

Why not `ray stop` or Ray's own `cluster_utils`: `ray stop` kills every Ray on the machine (other people's
studies too), and `cluster_utils` starts nodes inside the test process, where killing one is not what a
crashed machine looks like. Here every node is a `ray start --block` in its own session: its GCS, raylet
and agents share that process group, so killing the group (and the raylet's worker processes, which Ray
puts in groups of their own) stops exactly that node, like pulling its plug. The MLflow server is a real
`mlflow server` process, so the launcher talks to it over HTTP exactly as on a cluster.

All nodes get `--node-ip-address 127.0.0.1` and their own CPU count, a temp dir of their own under one
short folder in /tmp (the plasma socket path must stay under the 107 characters a Unix socket allows), and
one shared random auth token: Ray 2.60 turns token auth on for `ray start --head` when ~/.ray/auth_token
exists but not for `ray start --address`, so without an explicit token the second node could not join.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psutil
import yaml

# No imports from tests/: benchmarks/scaling.py loads this file by path to start the same nodes (a
# `tests` package that some dependency installs into site-packages shadows ours outside pytest).
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The GCS declares a killed node dead after period x threshold (Ray's defaults: 3 s x 5 plus an initial
# delay); a fault test waits for that, so the head checks every second and gives up after 3 misses.
FAST_HEALTH_CHECKS = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
                      "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_group(pid: int) -> int | None:
    """The process group of `pid`, or None once it is gone."""
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


class Daemon:
    """A process we started in its own session, with everything it started: stopped by its group and pids,
    never by name."""

    def __init__(self, name: str, args: list[str], log: Path, env: Mapping[str, str]) -> None:
        self.name, self.log = name, log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, env=dict(env), cwd=REPO)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def processes(self) -> list[psutil.Process]:
        """Every live process of its group, and their descendants in other groups (Ray's workers)."""
        members = []
        for process in psutil.process_iter():
            if process_group(process.pid) == self.pid:
                members.append(process)
        found = {p.pid: p for p in members}
        for process in members:
            try:
                found.update({child.pid: child for child in process.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
        return list(found.values())

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 30.0) -> None:
        """Signal the group and every descendant; wait until all are gone (SIGKILL the rest at the deadline)."""
        processes = self.processes()
        for process in processes:
            try:
                process.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        _, alive = psutil.wait_procs(processes, timeout=timeout)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def wait_for_line(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}) before '{text}':\n"
                                   f"{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no '{text}' after {timeout:.0f}s:\n{self.output()[-3000:]}")
            time.sleep(0.2)


class RayNode(Daemon):
    @property
    def node_id(self) -> str:
        """The node's Ray id, read from its raylet's command line (no call into the cluster needed)."""
        for process in self.processes():
            try:
                args = process.cmdline()
            except psutil.NoSuchProcess:
                continue
            if args and Path(args[0]).name == "raylet":
                for arg in args:
                    if arg.startswith("--node_id="):
                        return arg.split("=", 1)[1]
        raise RuntimeError(f"{self.name}: no raylet running")


class LocalRayCluster:
    """A head node and worker nodes, each a separate `ray start --block`, all on 127.0.0.1."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="gsray-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        token = uuid.uuid4().hex
        self.client_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}  # what a driver needs to join
        self.head: RayNode | None = None
        self.workers: list[RayNode] = []

    def _env(self, extra: Mapping[str, str] = ()) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        return {**env, **self.client_env, **dict(extra)}

    def _start(self, name: str, args: list[str], extra_env: Mapping[str, str] = ()) -> RayNode:
        temp = self.root / name
        node = RayNode(name, [str(BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1",
                              "--disable-usage-stats", "--temp-dir", str(temp),
                              "--dashboard-agent-listen-port", str(free_port()), *args],
                       self.root / f"{name}.log", self._env(extra_env))
        return node

    def start_head(self, num_cpus: int = 1) -> RayNode:
        self.head = self._start("head", ["--head", "--port", str(self.port), "--num-cpus", str(num_cpus),
                                         "--include-dashboard=false"], FAST_HEALTH_CHECKS)
        return self.head

    def add_worker(self, num_cpus: int = 1) -> RayNode:
        worker = self._start(f"worker{len(self.workers) + 1}",
                             ["--address", self.address, "--num-cpus", str(num_cpus)])
        self.workers.append(worker)
        return worker

    def start(self, worker_cpus: tuple[int, ...] = (1,), head_cpus: int = 1, timeout: float = 90) -> None:
        """Head first (the workers need its GCS), then the workers side by side; returns once every node is
        registered and alive."""
        head = self.start_head(head_cpus)
        head.wait_for_line("Ray runtime started", timeout)
        workers = [self.add_worker(cpus) for cpus in worker_cpus]
        for worker in workers:
            worker.wait_for_line("Ray runtime started", timeout)
        self.wait_for_alive(1 + len(workers), timeout)

    def alive_nodes(self) -> dict[str, dict[str, float]]:
        """Node id -> total resources of every node the GCS counts alive (a fresh process: the test
        process itself never connects to Ray)."""
        code = ("import json, sys\nfrom ray._raylet import GcsClient\n"
                "infos = GcsClient(address=sys.argv[1]).get_all_node_info(timeout=10)\n"
                "print(json.dumps({i.hex(): dict(n.resources_total) for i, n in infos.items() if n.state == 0}))")
        result = subprocess.run([sys.executable, "-c", code, self.address], capture_output=True, text=True,
                                env=self._env(), timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"cannot list the nodes of {self.address}:\n{result.stderr[-2000:]}")
        import json

        return json.loads(result.stdout.strip().splitlines()[-1])

    def wait_for_alive(self, count: int, timeout: float = 60) -> dict[str, dict[str, float]]:
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.alive_nodes()
            if len(nodes) == count:
                return nodes
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(nodes)} alive nodes, not {count}, after {timeout:.0f}s: {nodes}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Workers first, then the head; then the temp dirs. Only what this object started."""
        for node in [*reversed(self.workers), *([self.head] if self.head else [])]:
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def launcher_env(self) -> dict[str, str]:
        """The launcher's environment to join this cluster (the auth token; no stray RAY_ADDRESS)."""
        drop = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        return {**env, **self.client_env, "PYTHONUNBUFFERED": "1"}


class MlflowServer:
    """`mlflow server` over a SQLite store and an artifact folder of its own; stop and start it again on the
    same port and store to play an outage."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.daemon: Daemon | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        # --artifacts-destination: the server proxies artifacts (experiments get mlflow-artifacts:/ locations),
        # so the launcher uploads over HTTP as it would to a remote head; one worker keeps its memory small.
        args = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination", str(self.root / "artifacts")]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        self.daemon = Daemon("mlflow", args, self.root / "server.log", env)
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if not self.daemon.alive():
                raise RuntimeError(f"mlflow server exited:\n{self.daemon.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow server not healthy after {timeout:.0f}s:\n{self.daemon.output()[-3000:]}")
            time.sleep(0.3)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.uri + "/health", timeout=2) as response:  # noqa: S310 - local
                return response.status == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.daemon is not None:
            self.daemon.kill(sig, timeout=15)
            self.daemon = None

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)


@contextmanager
def cluster_and_server(root: Path,
                       worker_cpus: tuple[int, ...] = (1,)) -> Iterator[tuple[LocalRayCluster, MlflowServer]]:
    """A head (1 CPU) and workers, and an MLflow server, booted side by side (each takes 10-20 s on two
    busy cores); everything is stopped on the way out, whatever happened."""
    cluster, server = LocalRayCluster(), MlflowServer(root / "mlflow-server")
    try:
        with ThreadPoolExecutor(2) as pool:
            booting = [pool.submit(cluster.start, worker_cpus), pool.submit(server.start)]
            for future in booting:
                future.result()
        yield cluster, server
    finally:
        server.stop(signal.SIGKILL)
        cluster.stop()


_SHARED: dict[str, tuple[LocalRayCluster, MlflowServer]] = {}


def shared_cluster_and_server(config, root_factory) -> tuple[LocalRayCluster, MlflowServer]:
    """One head + one worker (1 CPU each) and one MLflow server for the whole pytest run, for the modules
    that need them (test_multinode, test_faults), each through a module-scoped fixture: booting a pair
    costs 20-30 s on two busy cores, the whole budget of a test. Stopped when pytest ends (a cleanup
    registered on `config`, run even after a failure or Ctrl-C). A module gets it back whole: a server a
    test stopped is started again on its port and store, a worker a test killed is replaced."""
    if "pair" not in _SHARED:
        context = cluster_and_server(root_factory.mktemp("cluster"))
        _SHARED["pair"] = context.__enter__()
        config.add_cleanup(lambda: (_SHARED.pop("pair", None), context.__exit__(None, None, None)))
    cluster, server = _SHARED["pair"]
    if not server.healthy():
        server.stop(signal.SIGKILL)
        server.start()
    if not any(worker.alive() for worker in cluster.workers):
        cluster.add_worker(1).wait_for_line("Ray runtime started", 90)
        cluster.wait_for_alive(2)
    return cluster, server


def classifier_study(path: Path, name: str, *, num_samples: int = 4, epochs: int = 2, train_size: int = 300,
                     max_failures: int = 0, asha: bool = True) -> Path:
    """One tune stage (the classifier on 7 vs 1), 1 CPU per trial, 2 at once: on a head and a worker of
    1 CPU each, two running trials are necessarily on different nodes."""
    stage = {
        "name": "classifier", "kind": "tune", "trainable": "classifier",
        "config": {"data": {"classes": [7, 1], "train_size": train_size}, "val_size": 100, "epochs": epochs,
                   "batch_size": 32},
        "space": {"lr": {"type": "loguniform", "low": 1e-3, "high": 3e-2}, "nf": {"type": "choice", "values": [1, 2]}},
        "metric": "val_accuracy", "num_samples": num_samples, "max_concurrent_trials": 2,
        "scheduler": ({"type": "asha", "max_t": epochs, "grace_period": 1, "reduction_factor": 2} if asha else None),
        "searcher": {"type": "optuna", "sampler": "tpe", "seed": 0},
        "resources": {"cpu": 1}, "max_failures": max_failures,
    }
    path.write_text(yaml.safe_dump({"study": name, "stages": [stage]}, sort_keys=False))
    return path
