"""A study's space entries as Ray Tune domains: one translation, shared by ordinary and PBT tune stages."""

from __future__ import annotations

from typing import Any

from ray import tune

from orchestrator.spec import Choice, Grid, IntRange, LogUniform, SpaceEntry, Uniform


def tune_domain(entry: SpaceEntry) -> Any:
    if isinstance(entry, Uniform):
        return tune.uniform(entry.low, entry.high)
    if isinstance(entry, LogUniform):
        return tune.loguniform(entry.low, entry.high)
    if isinstance(entry, IntRange):  # Tune's upper bound is exclusive, ours inclusive
        return tune.lograndint(entry.low, entry.high + 1) if entry.log else tune.randint(entry.low, entry.high + 1)
    if isinstance(entry, Choice):
        return tune.choice(list(entry.values))
    if isinstance(entry, Grid):
        return tune.grid_search(list(entry.values))
    raise TypeError(entry)
