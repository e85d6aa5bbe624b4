"""A `kind: optuna` stage's YAML section -> `OptunaStage`: its objective's conditional space (branches and
their options), constraints, and the older `sampler:` spelling still accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.spec.config_checks import _check_config, stage_config
from orchestrator.spec.fields import (SectionContext, _catalog_entry, _closest, _mapping, _number, _parse_inputs,
                                      _parse_searcher, _parse_space_entry, _string, _unknown_keys)
from orchestrator.spec.problems import _Problems
from orchestrator.spec.schema import BranchOption, Constraint, Grid, OptunaStage, SearcherSpec
from trainables import catalog


def _parse_branch_option(raw: Any, option_cls: type, key: str, what: str, problems: _Problems) -> BranchOption | None:
    """`umap: {n_neighbors: {type: int, low: 5, high: 50}, metric: cosine}`: a mapping is searched, the rest fixed."""
    raw = _mapping(raw, key, problems)
    if raw is None:
        return None
    space, fixed = {}, {}
    for name, value in raw.items():
        if isinstance(value, Mapping):
            entry = _parse_space_entry(value, f"{key}.{name}", problems)
            if isinstance(entry, Grid):
                problems.add(f"{key}.{name}", "grid is for Tune's basic searcher; Optuna samples: use `type: choice`")
            elif entry is not None:
                space[str(name)] = entry
        else:
            fixed[str(name)] = value
    _check_config(option_cls, fixed, space, {}, key, what, problems, flat=True)
    return BranchOption(space=space, fixed=fixed)


def _parse_constraints(raw: Any, key: str, definition: catalog.ObjectiveDef | None,
                       problems: _Problems) -> tuple[Constraint, ...]:
    raw = _mapping(raw, key, problems) or {}
    constraints = []
    for metric, bounds in raw.items():
        where = f"{key}.{metric}"
        if definition is not None and metric not in {m.name for m in definition.metrics}:
            problems.add(where, f"objective {definition.name!r} does not report {metric!r} "
                         f"(it reports: {', '.join(m.name for m in definition.metrics)})")
            continue
        bounds = _mapping(bounds, where, problems)
        if bounds is None:
            continue
        _unknown_keys(bounds, ("min", "max"), where, problems)
        low, high = _number(bounds, "min", where, problems), _number(bounds, "max", where, problems)
        if low is None and high is None:
            problems.add(where, "give min, max or both, like {min: 2}")
        elif low is not None and high is not None and low > high:
            problems.add(where, f"min must be <= max ({low} > {high})")
        else:
            constraints.append(Constraint(str(metric), low, high))
    return tuple(constraints)


def _parse_optuna_stage(raw: Mapping[str, Any], key: str, where: SectionContext,
                        problems: _Problems) -> OptunaStage | None:
    allowed = ("name", "kind", "objective", "config", "space", "inputs", "metric", "constraints", "n_trials",
               "n_jobs", "searcher", "sampler")
    _unknown_keys(raw, allowed, key, problems)
    objective_name = _string(raw, "objective", key, problems, required=True)
    definition = _catalog_entry(objective_name, catalog.objective, f"{key}.objective", problems)
    config, written = stage_config(raw, key, definition.config_cls if definition else None, problems)
    inputs = _parse_inputs(raw.get("inputs"), f"{key}.inputs", where.earlier, where.later, problems)
    space_raw = _mapping(raw.get("space"), f"{key}.space", problems) or {}
    branches: dict[str, dict[str, BranchOption]] = {}
    mode = "max"
    metric = _string(raw, "metric", key, problems, required=True)
    if definition is not None:
        what = f"objective {objective_name!r}"
        _check_config(definition.config_cls, config, {}, inputs, key, what, problems,
                      declared_inputs=raw.get("inputs"), written=written)
        for branch, options_raw in space_raw.items():
            where = f"{key}.space.{branch}"
            known = definition.branches.get(branch)
            if known is None:
                names = ", ".join(definition.branches) or "none"
                problems.add(where, f"{what} searches no {branch!r} (its branches: {names}); fixed settings go "
                             f"in config")
                continue
            options_raw = _mapping(options_raw, where, problems)
            if options_raw is None:
                continue
            if not options_raw:
                problems.add(where, f"name at least one {branch} to try ({', '.join(known)})")
            options = {}
            for option, settings in options_raw.items():
                if option not in known:
                    hint = _closest(str(option), tuple(known))
                    problems.add(f"{where}.{option}", f"unknown {branch} {option!r}"
                                 f"{f' (did you mean {hint!r}?)' if hint else ''}; known: {', '.join(known)}")
                    continue
                parsed = _parse_branch_option(settings, known[option], f"{where}.{option}",
                                              f"{branch} {option!r}", problems)
                if parsed is not None:
                    options[str(option)] = parsed
            branches[str(branch)] = options
        for branch in definition.branches:
            if branch not in space_raw:
                problems.add(f"{key}.space.{branch}", f"required: the {branch} options to search "
                             f"(from: {', '.join(definition.branches[branch])})")
        if metric is not None:
            try:
                mode = definition.metric(metric).mode
            except KeyError:
                problems.add(f"{key}.metric", f"objective {objective_name!r} does not report {metric!r} "
                             f"(it reports: {', '.join(m.name for m in definition.metrics)})")
    constraints = _parse_constraints(raw.get("constraints"), f"{key}.constraints", definition, problems)
    n_trials = _number(raw, "n_trials", key, problems, integer=True, default=20)
    if n_trials is not None and n_trials < 1:
        problems.add(f"{key}.n_trials", f"must be >= 1, got {n_trials}")
    n_jobs = _number(raw, "n_jobs", key, problems, integer=True, default=1)
    if n_jobs is not None and n_jobs < 1:
        problems.add(f"{key}.n_jobs", f"must be >= 1 (trials run in that many threads), got {n_jobs}")
    searcher = (_parse_old_sampler(raw, key, problems) if "sampler" in raw else
                _parse_searcher(raw.get("searcher"), f"{key}.searcher", problems, kinds=("optuna",),
                                samplers=("tpe", "random")))
    return OptunaStage(name=raw["name"], objective=objective_name or "", metric=metric or "", mode=mode,
                       config=dict(config), inputs=inputs, branches=branches, constraints=constraints,
                       n_trials=n_trials or 20, n_jobs=n_jobs or 1, searcher=searcher or SearcherSpec())


def _parse_old_sampler(raw: Mapping[str, Any], key: str, problems: _Problems) -> SearcherSpec:
    """An optuna stage's older spelling `sampler: {type: tpe, seed: 0}`: still accepted, with a line saying
    how to write it now."""
    if "searcher" in raw:
        problems.add(f"{key}.sampler", "give `searcher:` alone (`sampler: {type: ..., seed: ...}` is its older "
                                       "spelling)")
    old = _mapping(raw["sampler"], f"{key}.sampler", problems) or {}
    _unknown_keys(old, ("type", "seed"), f"{key}.sampler", problems)
    sampler = _string(old, "type", f"{key}.sampler", problems, default="tpe", choices=("tpe", "random")) or "tpe"
    seed = _number(old, "seed", f"{key}.sampler", problems, integer=True)
    written = f"sampler: {sampler}" + (f", seed: {seed}" if seed is not None else "")
    problems.deprecated(f"{key}.sampler", f"deprecated spelling, write `searcher: {{{written}}}` (as tune stages do)")
    return SearcherSpec("optuna", sampler, seed)
