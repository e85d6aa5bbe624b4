"""A `kind: tune` stage's YAML section -> `TuneStage`: its metrics and champion rule, scheduler,
resources (with the GPU packing check) and model registration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from orchestrator.pbt import check_pbt_stage, parse_pbt
from orchestrator.spec.config_checks import _check_config, stage_config
from orchestrator.spec.fields import (NAME_PATTERN, SectionContext, _catalog_entry, _closest, _kind, _mapping, _number,
                                      _parse_inputs, _parse_searcher, _parse_space_entry, _string, _unknown_keys)
from orchestrator.spec.gpu_packing import packing_problem
from orchestrator.spec.problems import _Problems
from orchestrator.spec.schema import (AshaSpec, ChampionBound, ChampionRule, Grid, PbtSpec, RegisterSpec,
                                      ResourcesSpec, SearcherSpec, TuneStage)
from trainables import catalog


def _parse_tune_stage(raw: Mapping[str, Any], key: str, where: SectionContext, problems: _Problems) -> TuneStage | None:
    allowed = ("name", "kind", "trainable", "config", "space", "inputs", "metric", "mode", "champion", "num_samples",
               "max_concurrent_trials", "scheduler", "searcher", "resources", "max_failures", "register")
    _unknown_keys(raw, allowed, key, problems)
    name = raw["name"]
    trainable_name = _string(raw, "trainable", key, problems, required=True)
    definition = _catalog_entry(trainable_name, catalog.trainable, f"{key}.trainable", problems)
    config, written = stage_config(raw, key, definition.config_cls if definition else None, problems)
    space_raw = _mapping(raw.get("space"), f"{key}.space", problems) or {}
    space = {}
    for param, entry_raw in space_raw.items():
        entry = _parse_space_entry(entry_raw, f"{key}.space.{param}", problems)
        if entry is not None:
            space[str(param)] = entry
    inputs = _parse_inputs(raw.get("inputs"), f"{key}.inputs", where.earlier, where.later, problems)

    metrics, modes = _parse_tune_metrics(raw, key, trainable_name, definition, problems)
    if definition is not None:
        _check_config(definition.config_cls, config, space, inputs, key, f"trainable {trainable_name!r}", problems,
                      declared_inputs=raw.get("inputs"), written=written)
    champion = _parse_champion(raw.get("champion"), f"{key}.champion", metrics, trainable_name, definition, problems)
    metric, mode = (metrics[0], modes[0]) if len(metrics) == 1 else (None, "max")
    if champion is not None:  # several metrics: the stage's one metric is the champion's objective
        metric, mode = champion.metric, champion.mode

    num_samples = _number(raw, "num_samples", key, problems, integer=True, default=1)
    if num_samples is not None and num_samples < 1:
        problems.add(f"{key}.num_samples", f"must be >= 1, got {num_samples}")
    max_concurrent = _number(raw, "max_concurrent_trials", key, problems, integer=True)
    if max_concurrent is not None and max_concurrent < 1:
        problems.add(f"{key}.max_concurrent_trials", f"must be >= 1, got {max_concurrent}")
    max_failures = _number(raw, "max_failures", key, problems, integer=True, default=0)
    if max_failures is not None and max_failures < -1:
        problems.add(f"{key}.max_failures", f"must be >= 0 (or -1 for unlimited), got {max_failures}")

    scheduler = _parse_scheduler(raw.get("scheduler"), f"{key}.scheduler", problems)
    if scheduler is not None and scheduler.metric is not None:
        scheduler_mode = _metric_mode(scheduler.metric, f"{key}.scheduler.metric", trainable_name, definition,
                                      problems)
        scheduler = dataclasses.replace(scheduler, mode=scheduler_mode)
    if isinstance(scheduler, PbtSpec):
        check_pbt_stage(raw, key, scheduler, definition.config_cls if definition else None, problems)
    searcher = _parse_searcher(raw.get("searcher"), f"{key}.searcher", problems)
    if isinstance(scheduler, PbtSpec) and searcher is not None:  # a random first population (pbt_tune.py)
        searcher = dataclasses.replace(searcher, type="basic")
    if searcher is not None and searcher.type == "optuna":
        for param, entry in space.items():
            if isinstance(entry, Grid):
                problems.add(f"{key}.space.{param}", "grid needs `searcher: {type: basic}` (Optuna samples, it "
                             "does not enumerate); use `type: choice` to let Optuna pick")
    resources = _parse_resources(raw.get("resources"), f"{key}.resources", problems)
    register = _parse_register(raw.get("register"), f"{key}.register", f"{where.study}-{name}", definition, problems)
    if not space and (num_samples or 1) > 1 and searcher is not None and searcher.type == "optuna":
        problems.add(f"{key}.space", "is empty: Optuna has nothing to search; add a space or set num_samples: 1")
    return TuneStage(
        name=name, trainable=trainable_name or "", metric=metric or "", mode=mode, config=dict(config),
        space=space, inputs=inputs, num_samples=num_samples or 1, max_concurrent_trials=max_concurrent,
        scheduler=scheduler, searcher=searcher or SearcherSpec(),
        resources=resources or ResourcesSpec(), max_failures=max_failures or 0, register=register,
        metrics=metrics if len(metrics) > 1 else (), modes=modes if len(metrics) > 1 else (), champion=champion,
    )


def _metric_mode(name: str, key: str, trainable_name: str | None, definition: catalog.TrainableDef | None,
                 problems: _Problems) -> Literal["max", "min"] | None:
    """The direction the trainable declares for its metric `name`; None (and a problem) when it has none."""
    if definition is None:
        return None
    try:
        return definition.metric(name).mode
    except KeyError:
        known = tuple(m.name for m in definition.metrics)
        hint = _closest(name, known)
        problems.add(key, f"trainable {trainable_name!r} does not report {name!r}"
                     f"{f' (did you mean {hint!r}?)' if hint else ''}; it reports: {', '.join(known)}")
        return None


def _parse_tune_metrics(raw: Mapping[str, Any], key: str, trainable_name: str | None,
                        definition: catalog.TrainableDef | None,
                        problems: _Problems) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`metric: NAME` or `metric: [A, B]` (a two-objective search), and their directions.

    The trainable declares which way each metric is better; an optional `mode` (a string, or a list
    matching the metrics) only restates it, and one that contradicts it is refused."""
    raw_metric = raw.get("metric")
    if raw_metric is None:
        problems.add(f"{key}.metric", "required")
        return (), ()
    if isinstance(raw_metric, str):
        named = [(f"{key}.metric", raw_metric)]
    elif isinstance(raw_metric, list):
        named = [(f"{key}.metric[{i}]", name) for i, name in enumerate(raw_metric)]
        if len(raw_metric) < 2:
            problems.add(f"{key}.metric", f"a list names two or more metrics to search together; for one, "
                         f"write metric: NAME (got {raw_metric})")
            return (), ()
        for where, name in named:
            if not isinstance(name, str):
                problems.add(where, f"expected a metric name, got {_kind(name)}")
                return (), ()
        if len(set(raw_metric)) != len(raw_metric):
            problems.add(f"{key}.metric", f"names a metric twice: {raw_metric}")
            return (), ()
    else:
        problems.add(f"{key}.metric", f"expected a metric name or a list of them, got {_kind(raw_metric)}")
        return (), ()
    metrics = tuple(name for _, name in named)
    modes = tuple(_metric_mode(name, where, trainable_name, definition, problems) for where, name in named)
    if None in modes:
        return metrics, tuple(mode or "max" for mode in modes)
    _check_declared_modes(raw.get("mode"), key, metrics, modes, trainable_name, problems)
    return metrics, modes


def _check_declared_modes(raw_mode: Any, key: str, metrics: tuple[str, ...], modes: tuple[str, ...],
                          trainable_name: str | None, problems: _Problems) -> None:
    if raw_mode is None:
        return
    if len(metrics) == 1:
        stated = [(f"{key}.mode", raw_mode)]
    elif isinstance(raw_mode, list) and len(raw_mode) == len(metrics):
        stated = [(f"{key}.mode[{i}]", mode) for i, mode in enumerate(raw_mode)]
    else:
        problems.add(f"{key}.mode", f"expected a list of {len(metrics)} modes matching metric {list(metrics)}, "
                     f"got {_kind(raw_mode)}")
        return
    for (where, stated_mode), metric, mode in zip(stated, metrics, modes):
        if stated_mode not in ("max", "min"):
            problems.add(where, f"must be max or min, got {_kind(stated_mode)}")
        elif stated_mode != mode:
            problems.add(where, f"{stated_mode!r} contradicts trainable {trainable_name!r}, which declares {metric} "
                         f"{'higher' if mode == 'max' else 'lower'}-is-better; write {mode} or drop mode "
                         f"(it comes from the trainable)")


def _parse_champion(raw: Any, key: str, metrics: tuple[str, ...], trainable_name: str | None,
                    definition: catalog.TrainableDef | None, problems: _Problems) -> ChampionRule | None:
    """`champion: {minimize: acd, where: {fid_mnist: {max: fid_real_ambiguous}}}`: required for a stage with
    several metrics (which point of the front is its champion), refused on a single-metric one."""
    if len(metrics) < 2:
        if raw is not None and metrics:
            problems.add(key, "only for a stage with several metrics (metric: [A, B]); a single-metric stage's "
                         "champion is the best value of its metric")
        return None
    if raw is None:
        problems.add(key, f"required for a stage with several metrics: which point of their front is the champion, "
                     f"e.g. {{minimize: {metrics[0]}, where: {{{metrics[1]}: {{max: 40}}}}}}")
        return None
    raw = _mapping(raw, key, problems)
    if raw is None:
        return None
    _unknown_keys(raw, ("minimize", "maximize", "where"), key, problems)
    goals = [(verb, raw[verb]) for verb in ("minimize", "maximize") if verb in raw]
    if len(goals) != 1:
        what = "only one of minimize, maximize" if goals else "minimize: METRIC or maximize: METRIC"
        problems.add(key, f"give {what}: the metric the champion is best at (one of {', '.join(metrics)})")
        return None
    verb, objective = goals[0]
    mode = "min" if verb == "minimize" else "max"
    if not isinstance(objective, str) or objective not in metrics:
        problems.add(f"{key}.{verb}", f"must be one of the stage's metrics ({', '.join(metrics)}), "
                     f"got {_kind(objective)}")
        return None
    declared = _metric_mode(objective, f"{key}.{verb}", trainable_name, definition, problems)
    if declared is not None and declared != mode:
        other = "maximize" if declared == "max" else "minimize"
        problems.add(f"{key}.{verb}", f"trainable {trainable_name!r} declares {objective} "
                     f"{'higher' if declared == 'max' else 'lower'}-is-better: write {other}: {objective}")
    where_raw = _mapping(raw.get("where"), f"{key}.where", problems) or {}
    bounds = []
    for metric, sides in where_raw.items():
        where = f"{key}.where.{metric}"
        if _metric_mode(str(metric), where, trainable_name, definition, problems) is None and definition is not None:
            continue
        sides = _mapping(sides, where, problems)
        if sides is None:
            continue
        count = len(problems.items)
        _unknown_keys(sides, ("min", "max"), where, problems)
        values = {side: _bound_side(sides, side, where, trainable_name, definition, problems) for side in ("min", "max")}
        if "min" not in sides and "max" not in sides:
            if len(problems.items) == count:  # a misspelt side was named already
                problems.add(where, "give min, max or both; each a number or another metric's name, like "
                             "{max: 40} or {max: OTHER_METRIC}")
        elif all(isinstance(values[side], (int, float)) for side in ("min", "max")) and values["min"] > values["max"]:
            problems.add(where, f"min must be <= max ({values['min']:g} > {values['max']:g})")
        else:
            bounds.append(ChampionBound(str(metric), values["min"], values["max"]))
    return ChampionRule(objective, mode, tuple(bounds))


def _bound_side(sides: Mapping[str, Any], side: str, key: str, trainable_name: str | None,
                definition: catalog.TrainableDef | None, problems: _Problems) -> float | str | None:
    """One side of a champion bound: a finite number, or the name of a metric the trainable reports."""
    if sides.get(side) is None:
        return None
    value = sides[side]
    if isinstance(value, str):
        known = _metric_mode(value, f"{key}.{side}", trainable_name, definition, problems) is not None
        return value if known or definition is None else None
    number = _number(sides, side, key, problems)
    return None if number is None else float(number)


def _parse_scheduler(raw: Any, key: str, problems: _Problems) -> AshaSpec | PbtSpec | None:
    """None means no early stopping (or an invalid block, already recorded in `problems`)."""
    if raw is None or raw == "none":
        return None
    raw = _mapping(raw, key, problems)
    if raw is None:
        return None
    kind = _string(raw, "type", key, problems, required=True, choices=("asha", "pbt"))
    if kind is None:
        return None
    if kind == "pbt":
        return parse_pbt(raw, key, problems)
    _unknown_keys(raw, ("type", "max_t", "grace_period", "reduction_factor", "metric"), key, problems)
    max_t = _number(raw, "max_t", key, problems, integer=True, required=True)
    grace = _number(raw, "grace_period", key, problems, integer=True, default=1)
    factor = _number(raw, "reduction_factor", key, problems, default=2.0)
    if max_t is None or grace is None or factor is None:
        return None
    if max_t < 1:
        problems.add(f"{key}.max_t", f"must be >= 1, got {max_t}")
    elif not 1 <= grace <= max_t:
        problems.add(f"{key}.grace_period", f"must be between 1 and max_t ({max_t}), got {grace}")
    if factor <= 1:
        problems.add(f"{key}.reduction_factor", f"must be > 1, got {factor}")
    metric = _string(raw, "metric", key, problems)
    return AshaSpec(max_t, grace, float(factor), metric)


def _parse_resources(raw: Any, key: str, problems: _Problems) -> ResourcesSpec | None:
    raw = _mapping(raw, key, problems)
    if raw is None:
        return None
    _unknown_keys(raw, ("cpu", "gpu", "gpu_memory_gb", "device_memory_gb", "fallback"), key, problems)
    count = len(problems.items)
    cpu = _number(raw, "cpu", key, problems, default=1.0)
    gpu = _number(raw, "gpu", key, problems, default=0.0)
    if cpu is not None and cpu <= 0:
        problems.add(f"{key}.cpu", f"must be > 0, got {cpu}")
    if gpu is not None and (gpu < 0 or (gpu > 1 and gpu != int(gpu))):
        problems.add(f"{key}.gpu", f"must be >= 0, and a whole number when above 1 (got {gpu})")
    memory = {}
    for name in ("gpu_memory_gb", "device_memory_gb"):
        memory[name] = _number(raw, name, key, problems)
        if memory[name] is not None and memory[name] <= 0:
            problems.add(f"{key}.{name}", f"must be > 0 (GB), got {memory[name]}")
            memory[name] = None
    fallback = _string(raw, "fallback", key, problems, choices=("cpu", "none"))
    if len(problems.items) == count:  # the packing is judged only on valid figures
        problem = packing_problem(float(gpu or 0.0), memory["gpu_memory_gb"], memory["device_memory_gb"])
        if problem:
            problems.add(key, problem)
    return ResourcesSpec(float(cpu or 1.0), float(gpu or 0.0),
                         gpu_memory_gb=None if memory["gpu_memory_gb"] is None else float(memory["gpu_memory_gb"]),
                         device_memory_gb=None if memory["device_memory_gb"] is None
                         else float(memory["device_memory_gb"]),
                         fallback="cpu" if fallback == "cpu" else None)


def _parse_register(raw: Any, key: str, default_name: str, definition: catalog.TrainableDef | None,
                    problems: _Problems) -> RegisterSpec | None:
    can_register = definition is not None and definition.build_model is not None
    if raw is False:
        return None
    if raw is None or raw is True:
        if raw is True and definition is not None and not can_register:
            problems.add(key, f"trainable {definition.name!r} has no model to register")
        return RegisterSpec(default_name) if can_register else None
    raw = _mapping(raw, key, problems)
    if raw is None:
        return None
    _unknown_keys(raw, ("name", "alias"), key, problems)
    name = _string(raw, "name", key, problems, default=default_name)
    alias = _string(raw, "alias", key, problems, default="champion")
    for field_name, value in (("name", name), ("alias", alias)):
        if value is not None and not NAME_PATTERN.match(value):
            problems.add(f"{key}.{field_name}", f"use letters, digits, '_', '-', '.' (got {value!r})")
    if definition is not None and not can_register:
        problems.add(key, f"trainable {definition.name!r} has no model to register")
        return None
    return RegisterSpec(name or default_name, alias or "champion")
