"""Study YAML -> frozen, typed, validated `StudySpec`: the one place that reads YAML.

Validation never stops at the first problem: every problem in the file is collected and reported
as one line `FILE: stages[1].space.lr: low must be < high (0.01 >= 0.0001)`, so a user fixes
the whole file in one pass. Nothing here starts Ray or touches MLflow.

One module per concern, each read on its own: `schema` (the typed objects), `yaml_loading` and
`problems` (reading the file, reporting what is wrong), `fields` (the parsers every section shares),
`config_checks` (settings against a config dataclass), `tune_section` / `optuna_section` /
`job_section` (one stage kind's YAML each), `profiles`, `gpu_packing`, and `study` (the entry point).
Callers import from `orchestrator.spec` only.
"""

from orchestrator.spec.fields import NAME_PATTERN, REFERENCE_PATTERN, SELECTORS
from orchestrator.spec.gpu_packing import packing_problem, trials_per_gpu
from orchestrator.spec.problems import SpecError
from orchestrator.spec.profiles import PROFILE_KEYS, apply_profile
from orchestrator.spec.schema import (SPACE_TYPES, AshaSpec, BranchOption, ChampionBound, ChampionRule, Choice,
                                      Constraint, Grid, IntRange, JobStage, LogUniform, OptunaStage, PbtSpec, Reference,
                                      RegisterSpec, ResourcesSpec, SearcherSpec, SpaceEntry, Stage, StudySpec,
                                      TrackingSpec, TuneStage, Uniform, describe_entry,
                                      representative_values)
from orchestrator.spec.study import MAX_STUDY_SEED, load_study, parse_study
from orchestrator.spec.yaml_loading import (MAX_DEPTH, MAX_FILE_BYTES, MAX_SCALAR_CHARS, MAX_TOTAL_CHARS, MAX_VALUES,
                                            MERGE_TAG, load_yaml)

__all__ = [
    "MAX_DEPTH", "MAX_FILE_BYTES", "MAX_SCALAR_CHARS", "MAX_STUDY_SEED", "MAX_TOTAL_CHARS", "MAX_VALUES", "MERGE_TAG",
    "NAME_PATTERN", "PROFILE_KEYS", "REFERENCE_PATTERN", "SELECTORS", "SPACE_TYPES",
    "AshaSpec", "BranchOption", "ChampionBound", "ChampionRule", "Choice", "Constraint", "Grid", "IntRange",
    "JobStage", "LogUniform", "OptunaStage", "PbtSpec", "Reference", "RegisterSpec", "ResourcesSpec", "SearcherSpec",
    "SpaceEntry", "SpecError", "Stage", "StudySpec", "TrackingSpec", "TuneStage", "Uniform",
    "apply_profile", "describe_entry", "load_study", "load_yaml", "packing_problem", "parse_study", "representative_values",
    "trials_per_gpu",
]
