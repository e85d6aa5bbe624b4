"""How the orchestrator scales on one machine: across Ray nodes, and in the driver's memory with more trials.

1. nodes: the same small classifier study (seeded random sampler, no early stopping, so both arms train
   the same configurations) joined with `--address` to one local Ray node with 2 CPUs, then to two local
   nodes with 1 CPU each (a head and a worker, each a `ray start --block` process, started exactly as
   tests/orchestrator/test_multinode.py starts them). Prints each launcher's wall time, the stage's own
   wall time (study_state.json) and throughput = trials / stage wall, and the ratio two-node / one-node.
   Both arms have the same 2 CPUs, so this measures what splitting them over two nodes costs (a second
   raylet, GCS traffic, trials scheduled across nodes): a ratio near 1 means the split costs nothing. More nodes add
   throughput only with more machines, which one machine cannot show.
2. memory: the driver's peak RSS (the launcher process: the kernel's high-water mark from wait4, and a
   psutil sample every 0.1 s as a cross-check) for 8 and for 512 trials of `benchmarks.trivial:TRIVIAL`
   on the launcher's own local Ray with the embedded MLflow store, and the ratio 512 / 8 (goal <= 1.2:
   the driver must not keep per-trial state that grows with the study).

    .venv/bin/python benchmarks/scaling.py                   # both parts: 6-10 minutes on the 2-core machine
    .venv/bin/python benchmarks/scaling.py --only nodes      # about 3 minutes per --repeats
    .venv/bin/python benchmarks/scaling.py --only memory     # 512 trials in warm workers: minutes
    .venv/bin/python benchmarks/scaling.py --only memory --memory-trials 8,32   # a quicker look

Nothing here asserts; the figures go to benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: benchmarks/ is importable from the repository root
from benchmarks.trivial import trivial_study  # noqa: E402

MEMORY_GOAL = 1.2


def _cluster_helpers():
    """tests/orchestrator/cluster_helpers.py, loaded by path: `tests` is not importable as a package outside
    pytest (a dependency installs its own `tests` package into site-packages)."""
    spec = importlib.util.spec_from_file_location("gensearch_cluster_helpers",
                                                  REPO / "tests" / "orchestrator" / "cluster_helpers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class LaunchRun:
    wall_s: float
    stage_wall_s: float
    peak_rss_mb: float  # wait4's ru_maxrss: the launcher's high-water mark (or a reaped child's: Ray's are smaller)
    sampled_rss_mb: float  # the largest RSS psutil saw while sampling the launcher


def launch(spec: Path, output: Path, env: dict[str, str], *extra: str) -> LaunchRun:
    """Run the launcher to its end; its wall time, the stage's wall time and the launcher's peak RSS."""
    log = output.with_suffix(".log")
    with open(log, "w") as out:
        started = time.monotonic()
        process = subprocess.Popen([sys.executable, "-m", "orchestrator.launch", str(spec), "--output", str(output),
                                    *extra], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
        sampled, done = [0], threading.Event()

        def sample() -> None:
            watched = psutil.Process(process.pid)
            while not done.is_set():
                try:
                    sampled[0] = max(sampled[0], watched.memory_info().rss)
                except psutil.Error:
                    return
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        wall = time.monotonic() - started
        done.set()
        sampler.join()
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"the launcher failed ({process.returncode}); its output:\n{log.read_text()[-4000:]}")
    state = json.loads((output / "study_state.json").read_text())
    stage_wall = sum(stage["wall_s"] for stage in state["stages"].values())
    return LaunchRun(wall, stage_wall, usage.ru_maxrss / 1024, sampled[0] / 2**20)


def launcher_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    drop = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAY_ADDRESS")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "PYTHONUNBUFFERED": "1", **(extra or {})}


# ---------------------------------------------------------------- 1. one node with 2 CPUs vs two with 1 each


def classifier_study(path: Path, trials: int, epochs: int, train_size: int) -> Path:
    stage = {"name": "classifier", "kind": "tune", "trainable": "classifier",
             "config": {"data": {"classes": [7, 1], "train_size": train_size}, "val_size": 200, "epochs": epochs,
                        "batch_size": 32},
             "space": {"lr": {"type": "loguniform", "low": 1e-3, "high": 3e-2},
                       "nf": {"type": "choice", "values": [1, 2]}},
             "metric": "val_accuracy", "num_samples": trials, "max_concurrent_trials": 2,
             "searcher": {"type": "optuna", "sampler": "random", "seed": 0}, "resources": {"cpu": 1},
             "register": False}
    path.write_text(yaml.safe_dump({"study": "scaling", "stages": [stage]}, sort_keys=False))
    return path


def nodes_arm(helpers, folder: Path, spec: Path, worker_cpus: tuple[int, ...], head_cpus: int) -> LaunchRun:
    cluster = helpers.LocalRayCluster()
    try:
        cluster.start(worker_cpus=worker_cpus, head_cpus=head_cpus)
        return launch(spec, folder / "out", cluster.launcher_env(), "--address", cluster.address)
    finally:
        cluster.stop()


def compare_nodes(args, root: Path) -> None:
    helpers = _cluster_helpers()
    spec = classifier_study(root / "scaling.yaml", args.trials, args.epochs, args.train_size)
    print(f"nodes: {args.trials} classifier trials x {args.epochs} epochs (train_size {args.train_size}), "
          f"1 CPU each, 2 at a time, joined with --address; {args.repeats} round(s)", flush=True)
    runs: dict[str, list[LaunchRun]] = {"one node, 2 CPUs": [], "two nodes, 1 CPU each": []}
    arms = [("one node, 2 CPUs", (), 2), ("two nodes, 1 CPU each", (1,), 1)]
    for round_ in range(args.repeats):
        for name, workers, head in arms if round_ % 2 == 0 else arms[::-1]:  # alternate: no arm always goes first
            folder = root / f"nodes-{round_}-{len(workers) + 1}"
            folder.mkdir()
            run = nodes_arm(helpers, folder, spec, workers, head)
            runs[name].append(run)
            print(f"  {name:22s} launcher {run.wall_s:6.1f} s, stage {run.stage_wall_s:6.1f} s: "
                  f"{args.trials / run.stage_wall_s:.3f} trials/s", flush=True)
    throughput = {name: args.trials / (sum(r.stage_wall_s for r in rs) / len(rs)) for name, rs in runs.items()}
    one, two = throughput.values()
    print(f"  throughput two-node / one-node: {two / one:.2f} ({two:.3f} vs {one:.3f} trials/s, stage walls "
          f"averaged over {args.repeats} round(s))", flush=True)


# ---------------------------------------------------------------- 2. driver memory, 8 vs 512 trials


def compare_memory(args, root: Path) -> None:
    counts = [int(n) for n in args.memory_trials.split(",")]
    print(f"memory: driver (launcher) peak RSS, benchmarks.trivial:TRIVIAL, local Ray, embedded MLflow, "
          f"2 trials at a time", flush=True)
    peaks = {}
    for count in counts:
        folder = root / f"memory-{count}"
        folder.mkdir()
        run = launch(trivial_study(folder / "trivial.yaml", count), folder / "out", launcher_env())
        peaks[count] = run.peak_rss_mb
        print(f"  {count:4d} trials: peak {run.peak_rss_mb:6.0f} MB (sampled {run.sampled_rss_mb:.0f} MB), "
              f"launcher {run.wall_s:.0f} s", flush=True)
    low, high = min(counts), max(counts)
    ratio = peaks[high] / peaks[low]
    verdict = "met" if ratio <= MEMORY_GOAL else "missed"
    print(f"  peak RSS {high} / {low} trials: {ratio:.3f} (goal <= {MEMORY_GOAL}: {verdict})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("nodes", "memory"), help="run one part only")
    parser.add_argument("--trials", type=int, default=8, help="classifier trials per arm (nodes)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of both arms (nodes)")
    parser.add_argument("--memory-trials", default="8,512", help="trial counts for the memory part")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gensearch-scaling-") as folder:
        root = Path(folder)
        if args.only in (None, "nodes"):
            compare_nodes(args, root)
        if args.only in (None, "memory"):
            compare_memory(args, root)


if __name__ == "__main__":
    main()
