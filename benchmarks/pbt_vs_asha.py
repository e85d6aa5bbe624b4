"""PBT against TPE + ASHA on GASTeN step 1 (the DCGAN stage) at the same budget of trial-epochs, on this machine.

- PBT: the `gan` stage of search_spaces/dcgan_pbt.yaml, a population of P trials x E epochs. An exploit
  continues at the epoch the trial has reached (synchronous PBT), so every epoch is trained once: P x E
  trial-epochs.
- TPE + ASHA: the same stage searched as gasten_mnist.yaml's `gan` stage is (Optuna TPE, seeded), over the
  ranges PBT's mutations may reach (lr, beta1), under ASHA (max_t E, grace E/4, reduction 2), with as many
  trials as ASHA's rungs are expected to fit into P x E trial-epochs (`asha_trial_epochs`).

Each arm is one fresh launcher (`python -m orchestrator.launch`), one CPU per trial, as many at once as the
machine fits. Prints each arm's best fid_mnist (lower is better), the trial-epochs it actually spent (the sum of
its trials' last training_iteration, tune/gan/trials.csv) and its wall time; the last line compares them.

    .venv/bin/python benchmarks/pbt_vs_asha.py                                   # the study's sizes
    .venv/bin/python benchmarks/pbt_vs_asha.py --train-size 3000 --fid-images 500   # a quick look
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

STUDY = REPO / "search_spaces" / "dcgan_pbt.yaml"
STAGE = "gan"


def asha_trial_epochs(trials: float, max_t: int, grace: int, reduction: float) -> float:
    """Expected trial-epochs of ASHA over `trials`: all reach the first rung, 1/reduction of them each next one."""
    spent, reached, rung, share = 0.0, 0, grace, 1.0
    while True:
        rung = min(rung, max_t)
        spent += trials * share * (rung - reached)
        if rung >= max_t:
            return spent
        reached, rung, share = rung, int(rung * reduction), share / reduction


def asha_trials_for(budget: float, max_t: int, grace: int, reduction: float) -> int:
    """The most ASHA trials whose expected trial-epochs fit `budget` (at least 2)."""
    trials = 2
    while asha_trial_epochs(trials + 1, max_t, grace, reduction) <= budget:
        trials += 1
    return trials


def arms(args: argparse.Namespace) -> dict[str, dict]:
    """The two one-stage studies, sized by the options."""
    study = yaml.safe_load(STUDY.read_text())
    study.pop("profiles", None)
    stage = next(s for s in study["stages"] if s["name"] == STAGE)
    study["stages"], study["seed"] = [stage], args.seed
    stage.pop("register", None)
    stage["config"].update({"epochs": args.epochs, "fid_images": args.fid_images, "train_size": args.train_size})
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=4, help="PBT trials (default 4)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per trial, ASHA's max_t (default 8)")
    parser.add_argument("--interval", type=int, default=2, help="PBT's perturbation_interval (default 2)")
    parser.add_argument("--train-size", type=int, default=0, help="training images, 0: all (~13k, default)")
    parser.add_argument("--fid-images", type=int, default=1000, help="images per per-epoch fid_mnist (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="the study seed of both arms (default 0)")
    parser.add_argument("--keep", type=Path, help="keep both studies' output folders here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gensearch-pbt-vs-asha-") as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        results = {}
        for name, study in arms(args).items():
            slug = "pbt" if name == "PBT" else "asha"
            spec = folder / f"{slug}.yaml"
            spec.write_text(yaml.safe_dump(study, sort_keys=False))
            trials = study["stages"][0]["num_samples"]
            print(f"{name}: {trials} trials x up to {args.epochs} epochs ...", flush=True)
            wall, _ = run_arm(spec, folder / slug, [])
            output = folder / slug
            results[name] = (best_value(output), trial_epochs(output)[STAGE], wall)
            print(f"{name:11s} best fid_mnist {results[name][0]:8.3f}  trial-epochs {results[name][1]:4d}  "
                  f"trials {trials:3d}  wall {wall:6.0f} s", flush=True)
    (pbt, pbt_epochs, _), (asha, asha_epochs, _) = results["PBT"], results["TPE + ASHA"]
    winner = "PBT" if pbt < asha else "TPE + ASHA" if asha < pbt else "neither"
    print(f"best fid_mnist (lower is better): PBT {pbt:.3f} in {pbt_epochs} trial-epochs, TPE + ASHA {asha:.3f} in "
          f"{asha_epochs} trial-epochs; PBT / ASHA {pbt / asha:.3f}: {winner} better")


if __name__ == "__main__":
    main()
