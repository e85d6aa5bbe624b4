"""Search efficiency: the trial-epochs TPE + ASHA needs to reach what a full grid finds, over the grid's own.

The problem is a real one, small enough to enumerate: GASTeN's reference classifier (`arch: paper`, MNIST
7 vs 1, a reduced training set) over learning rate x width (nf) x batch size. Each seed runs one study
through `python -m orchestrator.launch`, so the real Ray Tune + Optuna + ASHA path is what is measured:

- grid: every combination (Tune's grid, `searcher: {type: basic}`), each trained for all `--epochs`;
- tpe_asha: the same points as `choice`s, Optuna's TPE (seeded from the study seed), ASHA with
  `max_t = --epochs`, `--grace-period`, `--reduction-factor`, `--trials` trials (the budget).

Both stages fix the classifier's `seed` to the benchmark seed, so one setting trains to the same numbers in
either arm: the comparison measures the search, not training noise. A trial's value is the best its epochs
reported (what gensearch keeps as a stage's best). The target is the grid's best value less one standard
error of that accuracy on the validation images, sqrt(p (1 - p) / val_size) (`--tolerance se`, the
default): a setting within it cannot be told apart from the grid's best on this validation set.
`--tolerance 0` asks for the grid's best itself; both figures are printed per seed.

Trial-epochs to reach the target: in suggestion order, every epoch of every trial suggested before the
first trial that reaches it (ASHA-stopped ones with the epochs they ran), plus that trial's epochs up to
the one that reached it. Trials run 2 at a time, so a few of those epochs may have come after the target
was reached: the count can only overstate what TPE + ASHA needed. A seed whose budget never reaches the
target counts its whole budget and is marked a miss (its ratio is then a lower bound on the truth).
The figure printed last is the mean over seeds of (TPE + ASHA trial-epochs) / (grid trial-epochs);
goal <= 0.33.

    .venv/bin/python benchmarks/search_efficiency.py                    # 3 seeds: 13 min a seed on a busy 2-core machine
    .venv/bin/python benchmarks/search_efficiency.py --seeds 0 --epochs 3 --lrs 1e-3 1e-2   # a quick look
    .venv/bin/python benchmarks/search_efficiency.py --tolerance 0      # the grid's exact best as target

Trial-epochs do not depend on how busy the machine is (reproducible mode, the default, orders the trials and
ASHA's rung decisions), so other processes only make it slower.
Nothing here asserts; the figures go to benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: benchmarks/ is importable from the repository root
from benchmarks.reproducible_cost import run_arm  # noqa: E402

GOAL = 0.33
METRIC = "val_accuracy"


@dataclass(frozen=True)
class Trial:
    """One trial of a stage in suggestion order: its setting and the metric each epoch reported."""

    index: int
    config: dict[str, float]
    values: list[float]  # the metric at epoch 1, 2, ...

    @property
    def epochs(self) -> int:
        return len(self.values)


def study(args: argparse.Namespace, seed: int) -> dict:
    """The two-stage study of one seed: the full grid, then TPE + ASHA over the same points."""
    config = {"data": {"dataset": "mnist", "classes": [7, 1], "train_size": args.train_size}, "runtime": {"seed": seed},
              "arch": "paper", "val_size": args.val_size, "epochs": args.epochs}
    points = {"lr": args.lrs, "nf": args.nfs, "batch_size": args.batch_sizes}
    common = {"kind": "tune", "trainable": "classifier", "config": config, "metric": METRIC,
              "max_concurrent_trials": 2, "resources": {"cpu": 1, "gpu": 0}}
    grid = {"name": "grid", **common, "num_samples": 1, "searcher": {"type": "basic"},
            "space": {name: {"type": "grid", "values": values} for name, values in points.items()}}
    tpe = {"name": "tpe_asha", **common, "num_samples": args.trials, "searcher": {"type": "optuna", "sampler": "tpe"},
           "space": {name: {"type": "choice", "values": values} for name, values in points.items()},
           "scheduler": {"type": "asha", "max_t": args.epochs, "grace_period": args.grace_period,
                         "reduction_factor": args.reduction_factor}}
    return {"study": f"search_efficiency_seed{seed}", "seed": seed, "stages": [grid, tpe]}


def stage_trials(output: Path, stage: str) -> list[Trial]:
    """The stage's trials in suggestion order (trials.csv), each with its per-epoch metric (progress.csv)."""
    folder = output / "tune" / stage
    trials = []
    with (folder / "trials.csv").open() as handle:
        for row in csv.DictReader(handle):
            with (folder / f"trial_{row['trial_id']}" / "progress.csv").open() as progress:
                values = [float(epoch[METRIC]) for epoch in csv.DictReader(progress) if epoch.get(METRIC)]
            config = {key.removeprefix("config/"): float(value) for key, value in row.items()
                      if key.removeprefix("config/") in ("lr", "nf", "batch_size")}
            trials.append(Trial(int(row.get("trial_index") or len(trials)), config, values))
    return sorted(trials, key=lambda trial: trial.index)


def epochs_to_reach(trials: list[Trial], target: float) -> tuple[int, Trial | None]:
    """Trial-epochs in suggestion order until the first epoch of any trial at or above `target`, and that
    trial (None, and every epoch of the budget, when none gets there)."""
    spent = 0
    for trial in trials:
        for epoch, value in enumerate(trial.values, start=1):
            if value >= target:
                return spent + epoch, trial
        spent += trial.epochs
    return spent, None


def setting(trial: Trial) -> str:
    return f"lr {trial.config['lr']:g}, nf {trial.config['nf']:g}, batch {trial.config['batch_size']:g}"


def tolerance_arg(text: str) -> str | float:
    """`se` or a number >= 0, checked before any study runs."""
    if text == "se":
        return text
    value = float(text)
    if value < 0:
        raise ValueError(text)
    return value


def tolerance_of(best: float, args: argparse.Namespace) -> float:
    if args.tolerance == "se":
        return math.sqrt(best * (1 - best) / args.val_size)
    return args.tolerance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="one study per seed: the study seed (TPE's sampler) and the classifier's seed")
    parser.add_argument("--train-size", type=int, default=1000, help="training images of the two digits")
    parser.add_argument("--val-size", type=int, default=1000, help="validation images (the accuracy's sample)")
    parser.add_argument("--epochs", type=int, default=9, help="a grid trial's epochs, ASHA's max_t")
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3, 1e-2])
    parser.add_argument("--nfs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--trials", type=int, default=24, help="the TPE + ASHA arm's budget of trials")
    parser.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before the first rung")
    parser.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA: 1 in this many goes on")
    parser.add_argument("--tolerance", type=tolerance_arg, default="se", help="'se' (one binomial standard error of the grid's "
                        "best accuracy on val_size images) or a number (0: the grid's exact best)")
    parser.add_argument("--keep", type=Path, help="keep the studies' output folders here (default: a temp folder)")
    args = parser.parse_args()
    grid_size = len(args.lrs) * len(args.nfs) * len(args.batch_sizes)
    print(f"classifier (paper, MNIST 7 vs 1, train {args.train_size}, val {args.val_size}), {METRIC}: "
          f"grid of {grid_size} x {args.epochs} epochs against TPE + ASHA ({args.trials} trials, grace "
          f"{args.grace_period}, reduction {args.reduction_factor:g}); seeds {args.seeds}", flush=True)
    ratios, exact_ratios, misses = [], [], []
    with tempfile.TemporaryDirectory(prefix="gensearch-efficiency-") as scratch:
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            spec = root / f"seed{seed}.yaml"
            spec.write_text(yaml.safe_dump(study(args, seed), sort_keys=False))
            output = root / f"seed{seed}"
            wall, stage_walls = run_arm(spec, output, [])
            grid, tpe = stage_trials(output, "grid"), stage_trials(output, "tpe_asha")
            grid_epochs = sum(trial.epochs for trial in grid)
            best = max(max(trial.values) for trial in grid)
            target = best - tolerance_of(best, args)
            spent, reached = epochs_to_reach(tpe, target)
            exact_spent, exact = epochs_to_reach(tpe, best)
            ratios.append(spent / grid_epochs)
            exact_ratios.append(exact_spent / grid_epochs)
            if reached is None:
                misses.append(seed)
            budget = sum(trial.epochs for trial in tpe)
            print(f"  seed {seed}: launcher {wall:.0f} s (grid {stage_walls['grid']:.0f} s, tpe_asha "
                  f"{stage_walls['tpe_asha']:.0f} s); grid {len(grid)} trials, {grid_epochs} trial-epochs, "
                  f"best {best:.4f}; target {target:.4f}", flush=True)
            print(f"    TPE + ASHA: {len(tpe)} trials, {budget} trial-epochs in all; target "
                  + (f"reached by trial {reached.index} ({setting(reached)}) after {spent} trial-epochs"
                     if reached else f"never reached (budget {spent} trial-epochs counted)")
                  + f": ratio {ratios[-1]:.3f}; the grid's exact best "
                  + (f"after {exact_spent} ({exact_ratios[-1]:.3f})" if exact else
                     f"never reached ({exact_ratios[-1]:.3f}, a miss)"), flush=True)
    mean = sum(ratios) / len(ratios)
    exact_mean = sum(exact_ratios) / len(exact_ratios)
    missed = f"; target missed by seed(s) {misses}, their whole budget counted" if misses else ""
    print(f"the grid's exact best as target: mean ratio {exact_mean:.3f}", flush=True)
    print(f"TPE + ASHA / grid trial-epochs to reach the grid's best (tolerance {args.tolerance}), mean over "
          f"{len(ratios)} seed(s): {mean:.3f} (goal <= {GOAL}: {'met' if mean <= GOAL and not misses else 'missed'}"
          f"{missed})", flush=True)


if __name__ == "__main__":
    main()
