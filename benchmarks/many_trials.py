"""Many short trials: N trivial trials through gensearch against the same search as a plain Ray Tune script.

Both arms run N trials of a function that reports one score (2 at a time, 1 CPU each, Optuna's TPE seeded
alike), each arm in a fresh process timed from start to exit:

- plain: the script a researcher writes. Its trainable imports torch, as a real one does, and Tune keeps its
  defaults (a fresh worker per trial, no checkpoints, no tracking).
- gensearch: `python -m orchestrator.launch` on a one-stage study of `benchmarks.trivial:TRIVIAL` (which also
  imports torch through `trainables`), with everything gensearch adds: MLflow parent and child runs, the
  trials table, the best trial's checkpoint, the report.

The ratio gensearch / plain is what the orchestration costs per trial (goal <= 1.2 at 64 trials).

    .venv/bin/python benchmarks/many_trials.py                  # 64 trials: about 3 minutes on 2 cores
    .venv/bin/python benchmarks/many_trials.py --trials 16 --repeats 2

Nothing here asserts; the figures go to benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: benchmarks/ is importable from the repository root
from benchmarks.trivial import trivial_study  # noqa: E402

GOAL = 1.2

PLAIN_SCRIPT = '''
import sys

import ray
from ray import tune
from ray.tune.search.optuna import OptunaSearch


def trainable(config):
    import torch  # a real trainable imports its framework

    tune.report({"score": -(config["x"] - 0.3) ** 2 + 0.0 * float(torch.zeros(1))})


ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
tuner = tune.Tuner(
    tune.with_resources(trainable, {"cpu": 1}),
    param_space={"x": tune.uniform(0.0, 1.0)},
    tune_config=tune.TuneConfig(metric="score", mode="max", num_samples=int(sys.argv[1]),
                                max_concurrent_trials=2, search_alg=OptunaSearch(seed=0)),
    run_config=tune.RunConfig(storage_path=sys.argv[2], name="plain", verbose=0),
)
best = tuner.fit().get_best_result()
print("best score", best.metrics["score"])
'''


def timed(command: list[str], log: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    with open(log, "w") as out:
        started = time.monotonic()
        code = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
        wall = time.monotonic() - started
    if code != 0:
        raise RuntimeError(f"{command[:3]} failed ({code}); its output:\n{log.read_text()[-3000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of both arms (alternating which goes first)")
    args = parser.parse_args()
    walls: dict[str, list[float]] = {"plain": [], "gensearch": []}
    print(f"{args.trials} trivial trials, 2 at a time, 1 CPU each; {args.repeats} round(s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="gensearch-many-") as folder:
        root = Path(folder)
        script = root / "plain.py"
        script.write_text(PLAIN_SCRIPT)
        study = trivial_study(root / "many.yaml", args.trials, name=f"many{args.trials}")
        for round_ in range(args.repeats):
            arms = ["plain", "gensearch"] if round_ % 2 == 0 else ["gensearch", "plain"]
            for arm in arms:
                out = root / f"{arm}-{round_}"
                command = ([sys.executable, str(script), str(args.trials), str(out)] if arm == "plain" else
                           [sys.executable, "-m", "orchestrator.launch", str(study), "--output", str(out)])
                wall = timed(command, root / f"{arm}-{round_}.log")
                walls[arm].append(wall)
                print(f"  round {round_ + 1} {arm:9s} {wall:6.1f} s", flush=True)
    plain, ours = (sum(walls[a]) / len(walls[a]) for a in ("plain", "gensearch"))
    ratio = ours / plain
    print(f"gensearch / plain at {args.trials} trials: {ratio:.2f} ({ours:.1f} s vs {plain:.1f} s; "
          f"goal <= {GOAL}: {'met' if ratio <= GOAL else 'missed'})", flush=True)


if __name__ == "__main__":
    main()
