"""What reproducible mode costs: the same study run with `reproducible: true` (the default) and with
`reproducible: false` (Tune's and Optuna's asynchronous way), each in a fresh launcher, on this machine.

Reproducible mode suggests each window of trials from the same history and decides an ASHA rung only when
it is complete, so a trial can wait for a slower neighbour; the Optuna stage draws in fixed batches. This
prints each stage's wall time (from study_state.json) in both modes, the launchers' wall times and their
ratio (goal <= 1.10 on the flagship quick profile).

    .venv/bin/python benchmarks/reproducible_cost.py                       # flagship quick: ~30 min on 2 cores
    .venv/bin/python benchmarks/reproducible_cost.py --study search_spaces/smoke.yaml --repeats 2

Run it on an otherwise idle machine: other processes on the two cores move each arm by minutes.
Nothing here asserts; the figures go to benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
GOAL = 1.10
MODES = {"reproducible": True, "asynchronous": False}


def study_in_mode(source: Path, folder: Path, reproducible: bool) -> Path:
    """A copy of the study file with `reproducible` set; `profile:` and everything else as written."""
    study = yaml.safe_load(source.read_text())
    study["reproducible"] = reproducible
    path = folder / f"{source.stem}-{'reproducible' if reproducible else 'asynchronous'}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def run_arm(spec: Path, output: Path, extra: list[str]) -> tuple[float, dict[str, float]]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    log = output.with_suffix(".log")
    with open(log, "w") as out:
        started = time.monotonic()
        code = subprocess.run([sys.executable, "-m", "orchestrator.launch", str(spec), "--output", str(output),
                               *extra], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
        wall = time.monotonic() - started
    if code != 0:
        raise RuntimeError(f"the launcher failed ({code}); see {log}:\n{log.read_text()[-3000:]}")
    state = json.loads((output / "study_state.json").read_text())
    return wall, {name: stage["wall_s"] for name, stage in state["stages"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=REPO / "search_spaces" / "gasten_mnist.yaml")
    parser.add_argument("--profile", help="a profile of the study (default: the file's own)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of both arms (alternating which goes first)")
    parser.add_argument("--keep", type=Path, help="keep the studies' output folders here (default: a temp folder)")
    args = parser.parse_args()
    extra = ["--profile", args.profile] if args.profile else []
    walls: dict[str, list[float]] = {mode: [] for mode in MODES}
    stages: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="gensearch-repro-cost-") as scratch:
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        print(f"{args.study.name}{' --profile ' + args.profile if args.profile else ''}: "
              f"{args.repeats} round(s) of both modes, outputs under {root}", flush=True)
        for round_ in range(args.repeats):
            order = list(MODES) if round_ % 2 == 0 else list(MODES)[::-1]
            for mode in order:
                spec = study_in_mode(args.study, root, MODES[mode])
                wall, per_stage = run_arm(spec, root / f"{mode}-{round_}", extra)
                walls[mode].append(wall)
                stages[mode].append(per_stage)
                print(f"  round {round_ + 1} {mode:12s} launcher {wall:7.1f} s  "
                      + ", ".join(f"{name} {seconds:.0f}" for name, seconds in per_stage.items()), flush=True)
    names = list(stages["reproducible"][0])
    print(f"\n{'stage':16s} {'reproducible s':>15s} {'asynchronous s':>15s} {'ratio':>6s}")
    for name in names:
        mean = {mode: sum(run[name] for run in stages[mode]) / args.repeats for mode in MODES}
        ratio = mean["reproducible"] / mean["asynchronous"] if mean["asynchronous"] else float("nan")
        print(f"{name:16s} {mean['reproducible']:15.1f} {mean['asynchronous']:15.1f} {ratio:6.2f}")
    repro, asyn = (sum(walls[mode]) / args.repeats for mode in MODES)
    ratio = repro / asyn
    print(f"reproducible / asynchronous, whole launcher: {ratio:.3f} ({repro:.0f} s vs {asyn:.0f} s; "
          f"goal <= {GOAL}: {'met' if ratio <= GOAL else 'missed'})", flush=True)


if __name__ == "__main__":
    main()
