"""What reproducible mode costs: the same study run with `reproducible: true` (the default) and with
`reproducible: false` (Tune's and Optuna's asynchronous way), each in a fresh launcher, on this machine.

Reproducible mode suggests each window of trials from the same history and judges a trial at an ASHA rung
only once every earlier trial has reached it or ended, so a trial can wait for a slower neighbour; the
Optuna stage draws in fixed batches. This
prints each stage's wall time (from study_state.json) in both modes, the launchers' wall times and their
ratio (goal <= 1.10 on the flagship quick profile).

    .venv/bin/python benchmarks/reproducible_cost.py                       # flagship quick: ~50 min on 2 cores
    .venv/bin/python benchmarks/reproducible_cost.py --study search_spaces/smoke.yaml --repeats 2
    .venv/bin/python benchmarks/reproducible_cost.py --seeds 1 2          # one round per study seed

Early stopping makes one round a draw: which sampled settings ASHA stops at the first rung decides most
of a tune stage's trial-epochs, in either mode. Rounds over several `--seeds` average that out; each
round's trial-epochs per tune stage are printed beside its wall time so the two effects can be told apart.

Run it on an otherwise idle machine: other processes on the two cores move each arm by minutes.
Nothing here asserts; the figures go to benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import csv
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


def trial_epochs(output: Path) -> dict[str, int]:
    """Epochs trained per tune stage: the sum of its trials' last `training_iteration` (tune/STAGE/trials.csv)."""
    counts = {}
    for table in sorted(output.glob("tune/*/trials.csv")):
        with table.open() as handle:
            counts[table.parent.name] = sum(int(float(row.get("training_iteration") or 0))
                                            for row in csv.DictReader(handle))
    return counts


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--study", type=Path, default=REPO / "search_spaces" / "gasten_mnist.yaml")
    parser.add_argument("--profile", help="a profile of the study (default: the file's own)")
    parser.add_argument("--seeds", type=int, nargs="+", help="study seeds, one round of both arms each "
                        "(default: the file's own seed)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of both arms per seed "
                        "(alternating which goes first)")
    parser.add_argument("--keep", type=Path, help="keep the studies' output folders here (default: a temp folder)")
    args = parser.parse_args()
    profile = ["--profile", args.profile] if args.profile else []
    rounds = [(seed, repeat) for seed in (args.seeds or [None]) for repeat in range(args.repeats)]
    walls: dict[str, list[float]] = {mode: [] for mode in MODES}
    stages: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    epochs: dict[str, list[dict[str, int]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="gensearch-repro-cost-") as scratch:
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        print(f"{args.study.name}{' --profile ' + args.profile if args.profile else ''}: "
              f"{len(rounds)} round(s) of both modes, outputs under {root}", flush=True)
        for number, (seed, repeat) in enumerate(rounds):
            order = list(MODES) if number % 2 == 0 else list(MODES)[::-1]
            seeded = ["--seed", str(seed)] if seed is not None else []
            for mode in order:
                spec = study_in_mode(args.study, root, MODES[mode])
                output = root / f"{mode}-{'' if seed is None else f'seed{seed}-'}{repeat}"
                wall, per_stage = run_arm(spec, output, [*profile, *seeded])
                walls[mode].append(wall)
                stages[mode].append(per_stage)
                epochs[mode].append(trial_epochs(output))
                print(f"  round {number + 1}{'' if seed is None else f' (seed {seed})'} {mode:12s} "
                      f"launcher {wall:7.1f} s  " + ", ".join(f"{name} {seconds:.0f}" for name, seconds
                                                              in per_stage.items())
                      + "; trial-epochs " + ", ".join(f"{name} {count}" for name, count
                                                      in epochs[mode][-1].items()), flush=True)
    count = len(rounds)
    print(f"\n{'stage':16s} {'reproducible s':>15s} {'asynchronous s':>15s} {'ratio':>6s} "
          f"{'trial-epochs (r/a)':>19s}")
    for name in stages["reproducible"][0]:
        mean = {mode: sum(run[name] for run in stages[mode]) / count for mode in MODES}
        ratio = mean["reproducible"] / mean["asynchronous"] if mean["asynchronous"] else float("nan")
        trained = {mode: sum(run.get(name, 0) for run in epochs[mode]) for mode in MODES}
        shown = f"{trained['reproducible']}/{trained['asynchronous']}" if trained["reproducible"] else ""
        print(f"{name:16s} {mean['reproducible']:15.1f} {mean['asynchronous']:15.1f} {ratio:6.2f} {shown:>19s}")
    repro, asyn = (sum(walls[mode]) / count for mode in MODES)
    ratio = repro / asyn
    print(f"reproducible / asynchronous, whole launcher, mean over {count} round(s): {ratio:.3f} "
          f"({repro:.0f} s vs {asyn:.0f} s; goal <= {GOAL}: {'met' if ratio <= GOAL else 'missed'})", flush=True)


if __name__ == "__main__":
    main()
