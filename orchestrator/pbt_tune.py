"""A PBT stage on Ray Tune (its YAML is orchestrator/pbt.py): the first population, Tune's PBT, the exploit tags.

Why it is built this way:
- Tune's synchronous PBT: a generation is decided once every live trial has reached the same epoch, so
  a trial continues from a donor checkpoint of the epoch it has reached itself (its MLflow steps never
  jump), and the decisions do not depend on which trial arrived first. Each decision's random draws
  (which donor, which mutation) come from the study seed, the trial's place and the epoch. The stage is
  still not promised bit-reproducible: Tune's pausing and resuming around a generation is timing-driven.
- Ray refuses any Searcher with PBT, so the first population is Tune's own basic variants, drawn up front
  from the study seed (as `searcher: {type: basic}` does), each member with its own trial seed, which an
  exploit never copies from the donor.
- The trial reports the settings it trains with (`pbt.lr`, ...) with every result, and which checkpoint
  it started from (`pbt.restored_from`); MLflow's series and the exploit tags are read from the trials'
  own record, so a kill and `--resume` cannot make them disagree with what trained.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.search import BasicVariantGenerator

from orchestrator.pbt import PbtSpec
from orchestrator.seeds import SEED_FIELD, derive_seed, trial_seed
from orchestrator.tune_reporter import RESTORED_FROM

if TYPE_CHECKING:
    from orchestrator.spec import TuneStage
    from orchestrator.tracking import Tracker

EXPLOIT_TAG = "gensearch.pbt.exploit."  # + 1, 2, ...: "from trial X at iteration I"


def population(stage: TuneStage, study_seed: int, seeded: bool) -> list[dict[str, Any]]:
    """The first population, one config per trial in order: searched settings (and mutated ones the stage
    neither fixes nor searches) drawn from the study seed, as `searcher: {type: basic}` draws them, and the
    trial's seed when the study gives one."""
    from orchestrator.samplers import stage_sampler_seed
    from orchestrator.trial_order import VariantSearch
    from orchestrator.tune_domains import tune_domain

    entries = {**{name: entry for name, entry in stage.scheduler.mutations.items() if name not in stage.config},
               **stage.space}
    domains = {name: tune_domain(entry) for name, entry in entries.items()}
    variants = VariantSearch(domains, stage.num_samples, stage_sampler_seed(stage, study_seed)).variants
    return [{**variant, **({SEED_FIELD: trial_seed(study_seed, stage.name, index)} if seeded else {})}
            for index, variant in enumerate(variants)]


class PopulationSearch(BasicVariantGenerator):
    """Tune's basic variant generator, tagging its trials 1, 2, ... as Tune's SearchGenerator does (it counts
    from 0), so that `trial_order.suggestion_place` reads a PBT trial's place like any other's."""

    def add_configurations(self, experiments: Any) -> None:
        self._total_samples += 1
        super().add_configurations(experiments)
        self._total_samples -= 1


def population_search(stage: TuneStage, space: Mapping[str, Any], study_seed: int
                      ) -> tuple[PopulationSearch, dict[str, Any]]:
    """The generator handing out `population` in order, and the param space it needs (Tune only takes a
    preset value for a key the space has)."""
    from orchestrator.seeds import seeds_config
    from trainables import catalog

    config_cls = catalog.trainable(stage.trainable).config_cls
    seeded = seeds_config(config_cls, {**stage.config, **stage.inputs}, stage.space)
    from ray import tune

    members = population(stage, study_seed, seeded)
    space = {**space, **{name: tune.choice(sorted({member[name] for member in members}))
                         for name in members[0] if name not in space}}
    return PopulationSearch(points_to_evaluate=members), space


class SeededPBT(PopulationBasedTraining):
    """Ray's PBT, with each exploit's random draws taken from (study seed, stage, trial place, epoch), mutated
    numbers kept inside the YAML's bounds, and the exploiting trial's own seed kept. `last_iteration` (the
    stage's fixed `epochs`): no decision there, where a trial paused or sent back would only report its last
    epoch again."""

    def __init__(self, *, study_seed: int, stage: str, bounds: Mapping[str, tuple[float, float]],
                 last_iteration: int | None = None, **settings: Any):
        super().__init__(**settings)
        self.study_seed, self.stage, self.bounds = study_seed, stage, dict(bounds)
        self.last_iteration = last_iteration

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if self.last_iteration is not None and result.get(self._time_attr, 0) >= self.last_iteration:
            return self.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def _checkpoint_or_exploit(self, trial: Any, tune_controller: Any, upper_quantile: list, lower_quantile: list):
        from orchestrator.trial_order import suggestion_place

        try:
            place = suggestion_place(trial)
        except ValueError:
            place = trial.trial_id
        saved = random.getstate()
        random.seed(derive_seed(self.study_seed, self.stage, "pbt", place, self._trial_state[trial].last_train_time))
        try:
            super()._checkpoint_or_exploit(trial, tune_controller, upper_quantile, lower_quantile)
        finally:
            random.setstate(saved)

    def _exploit(self, tune_controller: Any, trial: Any, trial_to_clone: Any) -> None:
        super()._exploit(tune_controller, trial, trial_to_clone)
        settings = ", ".join(f"{name}={trial.config[name]:.4g}" for name in self._hyperparam_mutations)
        print(f"[{self.stage}] PBT: trial {trial.trial_id} continues from trial {trial_to_clone.trial_id} at "
              f"iteration {self._trial_state[trial_to_clone].last_train_time} with {settings}", flush=True)

    def _get_new_config(self, trial: Any, trial_to_clone: Any) -> tuple[dict, dict]:
        config, operations = super()._get_new_config(trial, trial_to_clone)
        for name, (low, high) in self.bounds.items():
            if name in config:
                value = min(max(config[name], low), high)
                config[name] = type(config[name])(value)
        if SEED_FIELD in trial.config:
            config[SEED_FIELD] = trial.config[SEED_FIELD]
        return config, operations


def make_scheduler(stage: TuneStage, study_seed: int) -> SeededPBT:
    """The stage's PBT; its metric and mode are Tune's own (the stage's `scheduler_metric`)."""
    from orchestrator.spec import Choice
    from orchestrator.tune_domains import tune_domain

    spec: PbtSpec = stage.scheduler
    mutations = {name: list(entry.values) if isinstance(entry, Choice) else tune_domain(entry)
                 for name, entry in spec.mutations.items()}
    bounds = {name: (entry.low, entry.high) for name, entry in spec.mutations.items() if not isinstance(entry, Choice)}
    epochs = stage.config.get("epochs")
    return SeededPBT(study_seed=study_seed, stage=stage.name, bounds=bounds, time_attr="training_iteration",
                     last_iteration=epochs if isinstance(epochs, int) else None,
                     perturbation_interval=spec.perturbation_interval,
                     hyperparam_mutations=mutations, quantile_fraction=spec.quantile_fraction,
                     resample_probability=spec.resample_probability, synch=True)


# ---------------------------------------------------------------- MLflow


def exploits_of(result: Any) -> list[tuple[str, int]]:
    """(donor trial id, donor's iteration) of every exploit in one trial's own record, in order: a first result
    after a restore from another trial's checkpoint folder. A step repeated after a resume counts once."""
    frame = result.metrics_dataframe
    if frame is None or RESTORED_FROM not in frame or "training_iteration" not in frame:
        return []
    own = Path(result.path).name
    found: list[tuple[str, int]] = []
    for _, row in frame.iterrows():
        folder = row[RESTORED_FROM]
        if not isinstance(folder, str) or not folder:
            continue
        donor = Path(folder).parent.name
        if donor != own:
            exploit = (donor.removeprefix("trial_"), int(row["training_iteration"]) - 1)
            if exploit not in found:
                found.append(exploit)
    return found


def tag_exploits(stage: TuneStage, results: Any, tracker: Tracker, runs: Mapping[str, str]) -> int:
    """One tag per exploit on the exploiting trial's run, `gensearch.pbt.exploit.N` = "from trial X at iteration
    I", and `gensearch.pbt.exploits` = how many; set again (to the same values) on every run or resume."""
    if not isinstance(stage.scheduler, PbtSpec):
        return 0
    total = 0
    for result in results:
        run_id = runs.get(Path(result.path).name.removeprefix("trial_"))
        if run_id is None:
            continue
        exploits = exploits_of(result)
        tags = {f"{EXPLOIT_TAG}{n}": f"from trial {donor} at iteration {iteration}"
                for n, (donor, iteration) in enumerate(exploits, 1)}
        tracker.set_tags(run_id, {**tags, "gensearch.pbt.exploits": len(exploits)})
        total += len(exploits)
    print(f"[{stage.name}] PBT: {total} exploit(s) across {len(runs)} trials", flush=True)
    return total
