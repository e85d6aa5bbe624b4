"""Every seed of a study, derived from its one `seed`: the same study seed gives the same seeds, another
study seed changes all of them.

A seed is a hash of (study seed, stage name, what it seeds), not `study seed + index`: with sums, seed 1's
trial 0 would be seed 0's trial 1, and two studies of neighbouring seeds would share most of their
trials' randomness. The fixed evaluation noise of the trainables (ACD/FID latents, sample grids:
constants such as `ACD_NOISE_SEED`) is not derived from anything here, so scores stay comparable
across study seeds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from trainables.config import field_names

SEED_FIELD = "seed"  # the config field a trainable, job or objective reads its randomness from
MAX_SEED = 2**31 - 1  # numpy, torch, sklearn and Optuna all take seeds below 2**31


def derive_seed(study_seed: int, stage: str, *purpose: Any) -> int:
    """A seed in [0, 2**31) for `purpose` (a trial index, "sampler", ...) of `stage` under `study_seed`."""
    text = "/".join(str(part) for part in (study_seed, stage, *purpose))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % MAX_SEED


def trial_seed(study_seed: int, stage: str, index: int) -> int:
    """The `seed` of a stage's trial `index` (0-based, in the order the trials were suggested); a job or an
    Optuna objective, which has one config for the whole stage, gets index 0."""
    return derive_seed(study_seed, stage, "trial", index)


def sampler_seed(study_seed: int, stage: str) -> int:
    """The seed of a stage's Optuna sampler, when its YAML pins none."""
    return derive_seed(study_seed, stage, "sampler")


def seeds_config(config_cls: type, fixed: Mapping[str, Any], searched: Mapping[str, Any] = ()) -> bool:
    """Whether the study gives this config its seed: it has a `seed` field that the stage's YAML neither
    fixes (`config`, `inputs`) nor searches (`space`)."""
    return SEED_FIELD in field_names(config_cls) and SEED_FIELD not in fixed and SEED_FIELD not in searched


def with_stage_seed(config_cls: type, config: Mapping[str, Any], study_seed: int, stage: str) -> dict[str, Any]:
    """A job's or an objective's config with the stage's derived seed, unless it has no `seed` field or the
    YAML fixes one."""
    if not seeds_config(config_cls, config):
        return dict(config)
    return {**config, SEED_FIELD: trial_seed(study_seed, stage, 0)}
