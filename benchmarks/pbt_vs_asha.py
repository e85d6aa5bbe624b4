"""PBT against TPE + ASHA on GASTeN step 1 (the DCGAN stage) at the same budget of trial-epochs, on this machine.

- PBT: the `gan` stage of search_spaces/dcgan_pbt.yaml, a population of P trials x E epochs. An exploit
  continues at the epoch the trial has reached (synchronous PBT), so every epoch is trained once: P x E
  trial-epochs.
- TPE + ASHA: the same stage searched as gasten_mnist.yaml's `gan` stage is (Optuna TPE, seeded), over the
  ranges PBT's mutations may reach (lr, beta1), under ASHA (max_t E, grace E/4, reduction 2), with as many
  trials as ASHA's rungs are expected to fit into P x E trial-epochs (orchestrator/trial_epochs.py, the model
  `--estimate` uses: Tune's ASHA lets the first trial at a rung on, so more go on than 1/reduction).

ASHA's spend is an expectation, so the arms rarely end at exactly the same trial-epochs. The fair figure is
therefore each arm's best fid_mnist among the results it reported within its first B trial-epochs, in the
order they were reported (B: the smaller arm's spend): the last line compares those.

Each arm is one fresh launcher (`python -m orchestrator.launch`), one CPU per trial, as many at once as the
machine fits. Prints each arm's best fid_mnist (lower is better), the trial-epochs it actually spent (the sum of
its trials' last training_iteration, tune/gan/trials.csv) and its wall time; the last line compares them.

    .venv/bin/python benchmarks/pbt_vs_asha.py                                   # the study's sizes
    .venv/bin/python benchmarks/pbt_vs_asha.py --train-size 3000 --fid-images 500   # a quick look
    .venv/bin/python benchmarks/pbt_vs_asha.py --read DIR   # the figures of a run kept with --keep DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: benchmarks/ is importable from the repository root
from benchmarks.reproducible_cost import run_arm, trial_epochs  # noqa: E402
from orchestrator.trial_epochs import expected_trial_epochs  # noqa: E402

STUDY = REPO / "search_spaces" / "dcgan_pbt.yaml"
STAGE = "gan"


def asha_trials_for(budget: float, max_t: int, grace: int, reduction: float) -> int:
    """The most ASHA trials whose expected trial-epochs fit `budget` (at least 2)."""
    trials = 2
    while expected_trial_epochs(trials + 1, max_t, (grace, reduction, max_t)).total <= budget:
        trials += 1
    return trials


def arms(args: argparse.Namespace) -> dict[str, dict]:
    """The two one-stage studies, sized by the options."""
    study = yaml.safe_load(STUDY.read_text())
    study.pop("profiles", None)
    stage = next(s for s in study["stages"] if s["name"] == STAGE)
    study["stages"], study["seed"] = [stage], args.seed
    stage.pop("register", None)
    stage["config"].update({"epochs": args.epochs, "fid_images": args.fid_images})
    stage["config"]["data"]["train_size"] = args.train_size
    stage["num_samples"] = args.population
    stage["scheduler"]["perturbation_interval"] = args.interval
    mutations = stage["scheduler"]["mutations"]
    pbt = json.loads(json.dumps(study))

    grace = max(1, args.epochs // 4)
    budget = args.population * args.epochs
    asha_stage = {**stage, "space": mutations, "num_samples": asha_trials_for(budget, args.epochs, grace, 2.0),
                  "max_concurrent_trials": 2, "searcher": {"type": "optuna", "sampler": "tpe", "seed": 0},
                  "scheduler": {"type": "asha", "max_t": args.epochs, "grace_period": grace, "reduction_factor": 2}}
    asha = {**json.loads(json.dumps(study)), "stages": [asha_stage]}
    return {"PBT": pbt, "TPE + ASHA": asha}


def best_value(output: Path) -> float:
    return json.loads((output / "study_state.json").read_text())["stages"][STAGE]["best"]["value"]


def reported(output: Path) -> list[float]:
    """Every fid_mnist the stage's trials reported, in the order they were reported (one per trial-epoch)."""
    results = [json.loads(line) for log in (output / "tune" / STAGE).glob("trial_*/result.json")
               for line in log.read_text().splitlines() if line.strip()]
    return [r["fid_mnist"] for r in sorted(results, key=lambda r: (r["timestamp"], r["training_iteration"]))]


def best_within(values: list[float], budget: int) -> float:
    return min(values[:budget])


def figures(folder: Path) -> dict[str, tuple[float, int, float, list[float]]]:
    """Per arm: best fid_mnist, trial-epochs spent, the stage's wall time and its fid_mnist in report order."""
    found = {}
    for name, slug in (("PBT", "pbt"), ("TPE + ASHA", "asha")):
        output = folder / slug
        wall = json.loads((output / "study_state.json").read_text())["stages"][STAGE]["wall_s"]
        found[name] = (best_value(output), trial_epochs(output)[STAGE], wall, reported(output))
    return found


def print_comparison(results: dict[str, tuple[float, int, float, list[float]]]) -> None:
    for name, (best, spent, wall, _) in results.items():
        print(f"{name:11s} best fid_mnist {best:8.3f}  trial-epochs {spent:4d}  stage wall {wall:6.0f} s", flush=True)
    budget = min(len(values) for *_, values in results.values())
    pbt, asha = (best_within(results[name][3], budget) for name in ("PBT", "TPE + ASHA"))
    winner = "PBT" if pbt < asha else "TPE + ASHA" if asha < pbt else "neither"
    print(f"best fid_mnist within the first {budget} trial-epochs of each arm (lower is better): PBT {pbt:.3f}, "
          f"TPE + ASHA {asha:.3f}; PBT / ASHA {pbt / asha:.3f}: {winner} better")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=4, help="PBT trials (default 4)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per trial, ASHA's max_t (default 8)")
    parser.add_argument("--interval", type=int, default=2, help="PBT's perturbation_interval (default 2)")
    parser.add_argument("--train-size", type=int, default=0, help="training images, 0: all (~13k, default)")
    parser.add_argument("--fid-images", type=int, default=1000, help="images per per-epoch fid_mnist (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="the study seed of both arms (default 0)")
    parser.add_argument("--keep", type=Path, help="keep both studies' output folders here")
    parser.add_argument("--read", type=Path, help="run nothing: print the figures of a run kept with --keep")
    args = parser.parse_args()
    if args.read:
        print_comparison(figures(args.read))
        return

    with tempfile.TemporaryDirectory(prefix="gensearch-pbt-vs-asha-") as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for name, study in arms(args).items():
            slug = "pbt" if name == "PBT" else "asha"
            spec = folder / f"{slug}.yaml"
            spec.write_text(yaml.safe_dump(study, sort_keys=False))
            print(f"{name}: {study['stages'][0]['num_samples']} trials x up to {args.epochs} epochs ...", flush=True)
            run_arm(spec, folder / slug, [])
        print_comparison(figures(folder))


if __name__ == "__main__":
    main()
