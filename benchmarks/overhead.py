"""What does gensearch cost on top of a hand-written Ray Tune script doing the same search?

Both arms run the same classifier trainable code, the same search space, number of trials and
concurrency, each in a fresh Python process (so both pay the imports and the Ray start). The
sampler is Optuna's seeded RandomSampler and there is no early stopping, so both arms train exactly
the same configurations for the same epochs: TPE and ASHA decide from the order in which results
arrive, which would make the two arms do different work and the ratio measure luck, not overhead. gensearch additionally creates its MLflow store, logs every trial as
a child run, writes the study state, and registers the best model. Prints wall times and the ratio.

    python benchmarks/overhead.py [--trials 8] [--epochs 3] [--train-size 2000] [--concurrency 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
GOAL = 1.05


def constants(args) -> dict:
    return {"classes": [7, 1], "train_size": args.train_size, "val_size": 500, "epochs": args.epochs}


def sectioned(config: dict) -> dict:
    """`config` as a study file writes it: the shared data settings under `data:` (README "Config sections")."""
    data = {key: value for key, value in config.items() if key in ("classes", "train_size")}
    return {"data": data, **{key: value for key, value in config.items() if key not in data}}


def plain_search(args, storage: str) -> None:
    """The hand-written script a researcher would write without gensearch."""
    import optuna
    import ray
    import torch
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from orchestrator.tune_reporter import TuneReporter
    from trainables.classifier import ClassifierConfig, train
    from trainables.config import build_config

    def trial(config):
        torch.set_num_threads(1)
        train(build_config(ClassifierConfig, config), TuneReporter())

    ray.init(include_dashboard=False, log_to_driver=False)
    sampler = optuna.samplers.RandomSampler(seed=0)
    tuner = tune.Tuner(
        tune.with_resources(trial, {"cpu": 1}),
        param_space={**constants(args), "lr": tune.loguniform(1e-4, 3e-2),
                     "batch_size": tune.choice([32, 64, 128]), "nf": tune.choice([1, 2])},
        tune_config=tune.TuneConfig(metric="val_accuracy", mode="max", num_samples=args.trials,
                                    max_concurrent_trials=args.concurrency, search_alg=OptunaSearch(sampler=sampler)),
        run_config=tune.RunConfig(storage_path=storage, verbose=0),
    )
    best = tuner.fit().get_best_result()
    print(f"plain best val_accuracy={best.metrics['val_accuracy']:.4f}")
    ray.shutdown()


def study_yaml(args, folder: Path) -> Path:
    study = {"study": "overhead", "stages": [{
        "name": "classifier", "kind": "tune", "trainable": "classifier", "config": sectioned(constants(args)),
        "space": {"lr": {"type": "loguniform", "low": 1e-4, "high": 3e-2},
                  "batch_size": {"type": "choice", "values": [32, 64, 128]},
                  "nf": {"type": "choice", "values": [1, 2]}},
        "metric": "val_accuracy", "num_samples": args.trials, "max_concurrent_trials": args.concurrency,
        "searcher": {"type": "optuna", "sampler": "random", "seed": 0}, "resources": {"cpu": 1},
    }]}
    path = folder / "overhead.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def timed(command: list[str]) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {result.returncode}:\n{(result.stdout + result.stderr)[-3000:]}")
    return elapsed, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--plain-only", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_only:
        plain_search(args, args.plain_only)
        return

    shared = ["--trials", str(args.trials), "--epochs", str(args.epochs), "--train-size", str(args.train_size),
              "--concurrency", str(args.concurrency)]
    times: dict[str, list[float]] = {"plain Ray Tune": [], "gensearch": []}
    stage_wall = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="gensearch-overhead-") as folder:
            folder = Path(folder)
            plain = [sys.executable, __file__, *shared, "--plain-only", str(folder / "plain")]
            ours = [sys.executable, "-m", "orchestrator.launch", str(study_yaml(args, folder)),
                    "--output", str(folder / "out")]
            order = [("plain Ray Tune", plain), ("gensearch", ours)]
            for mode, command in (order if repeat % 2 == 0 else order[::-1]):
                elapsed, stdout = timed(command)
                times[mode].append(elapsed)
                print(f"repeat {repeat + 1}: {mode:<15} {elapsed:6.1f} s", flush=True)
                found = re.search(r"^classifier\s+finished.*?(\d+)s\s*$", stdout, re.MULTILINE)
                if mode == "gensearch" and found:
                    stage_wall.append(float(found.group(1)))

    plain_mean, ours_mean = statistics.mean(times["plain Ray Tune"]), statistics.mean(times["gensearch"])
    ratio = ours_mean / plain_mean
    print()
    print(f"{'mode':<16}{'wall s (each)':<24}{'mean s':>8}")
    for mode, values in times.items():
        print(f"{mode:<16}{', '.join(f'{v:.1f}' for v in values):<24}{statistics.mean(values):>8.1f}")
    print(f"\n{args.trials} trials x {args.epochs} epochs (Optuna random sampler, seed 0, no early stopping), "
          f"{args.concurrency} at once, train_size {args.train_size}")
    print(f"ratio gensearch / plain: {ratio:.2f}   (goal: ratio <= {GOAL:.2f}: {'met' if ratio <= GOAL else 'NOT met'})")
    if stage_wall:
        print(f"gensearch's own stage wall time (Tune search + MLflow + registration): "
              f"{statistics.mean(stage_wall):.0f} s; the rest is process start, imports, MLflow store creation, Ray start")


if __name__ == "__main__":
    main()
