"""The Optuna sampler a stage's `searcher:` setting names, for tune and optuna stages alike.

One factory, so `searcher: {sampler: tpe, seed: 0}` means the same sampler with the same seed in both
stage kinds; each kind passes only its own TPE settings (a tune stage's short start-up, an optuna
stage's grouped conditional space).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from orchestrator.seeds import sampler_seed
from orchestrator.spec import OptunaStage, SearcherSpec, TuneStage


def stage_sampler_seed(stage: TuneStage | OptunaStage, study_seed: int) -> int:
    """The stage's `searcher.seed` when the YAML pins one, else one derived from the study seed."""
    return stage.searcher.seed if stage.searcher.seed is not None else sampler_seed(study_seed, stage.name)


def make_sampler(searcher: SearcherSpec, seed: int | None, tpe: Mapping[str, Any] | None = None) -> Any:
    """Optuna's sampler for `searcher.sampler`, seeded with `seed`; `tpe`: TPESampler's settings besides
    the seed. Optuna is imported here: a launcher that runs no search does not pay for it."""
    import optuna

    if searcher.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():  # QMC, and TPE's `group`, are "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if searcher.sampler == "qmc":  # the sequence itself is scipy's
            return optuna.samplers.QMCSampler(qmc_type="halton", scramble=True, seed=seed)
        return optuna.samplers.TPESampler(seed=seed, **(tpe or {}))
