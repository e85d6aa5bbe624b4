"""The `scheduler: {type: pbt, ...}` block of a tune stage: its typed spec, its checks, its plan line and params.

`scheduler: {type: pbt, perturbation_interval: 2, mutations: {lr: {type: loguniform, low: 1e-4, high: 1e-2}}}`
trains a population side by side; every `perturbation_interval` epochs the worst `quantile_fraction` of it
continues from the weights of one of the best (exploit) with that trial's settings, mutated (explore).
`mutations` entries are written like `space` entries (uniform, loguniform, int, choice). How it runs on
Ray Tune, and how MLflow records it, is orchestrator/pbt_tune.py. Nothing here imports Ray.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from orchestrator.seeds import SEED_FIELD

from orchestrator.spec.schema import PbtSpec, describe_entry

if TYPE_CHECKING:
    from orchestrator.spec.problems import _Problems
    from orchestrator.spec.schema import TuneStage

SETTING_PREFIX = "pbt."  # each trial's metric series of a mutated setting: `pbt.lr`
PBT_KEYS = ("type", "perturbation_interval", "mutations", "quantile_fraction", "resample_probability", "metric")


def is_pbt(stage: Any) -> bool:
    return isinstance(getattr(stage, "scheduler", None), PbtSpec)


# ---------------------------------------------------------------- YAML


def parse_pbt(raw: Mapping[str, Any], key: str, problems: _Problems) -> PbtSpec | None:
    """The `scheduler: {type: pbt, ...}` block; None (and the problems recorded) when it is invalid."""
    from orchestrator.spec.fields import _mapping, _number, _parse_space_entry, _string, _unknown_keys
    from orchestrator.spec.schema import Choice

    count = len(problems.items)
    _unknown_keys(raw, PBT_KEYS, key, problems)
    interval = _number(raw, "perturbation_interval", key, problems, integer=True, required=True)
    quantile = _number(raw, "quantile_fraction", key, problems, default=0.25)
    resample = _number(raw, "resample_probability", key, problems, default=0.25)
    metric = _string(raw, "metric", key, problems)
    if interval is not None and interval < 1:
        problems.add(f"{key}.perturbation_interval", f"must be >= 1 (epochs between two exploit steps), got {interval}")
    if quantile is not None and not 0 < quantile <= 0.5:
        problems.add(f"{key}.quantile_fraction", f"must be in (0, 0.5]: the share of trials that copy the best, "
                     f"got {quantile}")
    if resample is not None and not 0 <= resample <= 1:
        problems.add(f"{key}.resample_probability", f"must be in [0, 1], got {resample}")
    mutations_raw = _mapping(raw.get("mutations"), f"{key}.mutations", problems)
    if mutations_raw is not None and not mutations_raw:
        problems.add(f"{key}.mutations", "required: the settings PBT may change while trials train, e.g. "
                     "{lr: {type: loguniform, low: 1e-4, high: 1e-2}}")
    mutations = {}
    for name, entry_raw in (mutations_raw or {}).items():
        where = f"{key}.mutations.{name}"
        if isinstance(entry_raw, Mapping) and entry_raw.get("type") == "grid":
            problems.add(f"{where}.type", "a grid is not mutated; use choice (PBT moves to a neighbouring value)")
            continue
        entry = _parse_space_entry(entry_raw, where, problems)
        if isinstance(entry, Choice) and not all(_is_number(v) for v in entry.values):
            problems.add(f"{where}.values", f"must be numbers (each trial logs a mutated setting as a metric "
                         f"series), got {list(entry.values)}")
        elif entry is not None:
            mutations[str(name)] = entry
    if len(problems.items) > count:
        return None
    return PbtSpec(interval, mutations, float(quantile), float(resample), metric)


def check_pbt_stage(raw: Mapping[str, Any], key: str, scheduler: PbtSpec, config_cls: type | None,
                    problems: _Problems) -> None:
    """What a PBT stage may not combine with: an Optuna searcher (Ray refuses any searcher with PBT), a cap on
    concurrent trials (the whole population must exist to be compared), and mutations of settings the trainable
    does not have, does not accept, or that the study hands out itself (`seed`) or reads from another stage."""
    from orchestrator.spec.schema import representative_values
    from trainables.config import check_value, field_names

    searcher = raw.get("searcher")
    if isinstance(searcher, Mapping) and searcher.get("type", "optuna") != "basic":
        problems.add(f"{key}.searcher", "a pbt stage draws its first population at random (Ray Tune allows no "
                     "searcher with PBT): write searcher: {type: basic} or drop it")
    if raw.get("max_concurrent_trials") is not None:
        problems.add(f"{key}.max_concurrent_trials", "a pbt stage trains its whole population side by side, as many "
                     "at once as resources fit; drop it (raise resources.cpu to run fewer at once)")
    if config_cls is None:
        return
    from typing import get_type_hints

    known, hints = field_names(config_cls), get_type_hints(config_cls)
    inputs = raw.get("inputs") if isinstance(raw.get("inputs"), Mapping) else {}
    for name, entry in scheduler.mutations.items():
        where = f"{key}.scheduler.mutations.{name}"
        if name == SEED_FIELD or name in inputs:
            problems.add(where, f"{name!r} is not mutated: every trial keeps its own"
                         + (" seed" if name == SEED_FIELD else " input"))
        elif name not in known:
            problems.add(where, f"the trainable has no setting {name!r}; settings: {', '.join(known)}")
        else:
            for value in representative_values(entry):
                _, reason = check_value(name, value, hints[name])
                if reason is not None:
                    problems.add(where, f"mutated values do not fit the setting: {reason}")
                    break


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def describe(spec: PbtSpec) -> str:
    """The plan line's scheduler part."""

    mutations = ", ".join(f"{name} {describe_entry(entry)}" for name, entry in spec.mutations.items())
    return (f"PBT every {spec.perturbation_interval} epoch(s), quantile {spec.quantile_fraction:g}, resample "
            f"{spec.resample_probability:g}; mutates {mutations} (not bit-reproducible: see README)")


def run_params(spec: PbtSpec) -> dict[str, Any]:
    """The stage's parent-run params for its scheduler."""

    return {"scheduler": "pbt", "pbt.perturbation_interval": spec.perturbation_interval,
            "pbt.quantile_fraction": spec.quantile_fraction, "pbt.resample_probability": spec.resample_probability,
            **{f"pbt.mutations.{name}": describe_entry(entry) for name, entry in spec.mutations.items()}}


def mutated_settings(stage: TuneStage) -> tuple[str, ...]:
    """The settings each trial reports as `pbt.NAME` with every result (none outside PBT)."""
    return tuple(stage.scheduler.mutations) if is_pbt(stage) else ()
