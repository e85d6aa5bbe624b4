"""A stage's constants, searched settings and inputs checked against its trainable's (or job's, or
objective's) config dataclass at load time, with sampled values built once, so a bad setting is refused
before the study starts rather than in the middle of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, get_type_hints

from orchestrator.spec.fields import _closest
from orchestrator.spec.problems import _Problems
from orchestrator.spec.schema import Reference, SpaceEntry, representative_values
from trainables.config import ConfigError, build_config, check_value, field_names, required_fields


def _check_config(config_cls: type, config: Mapping[str, Any], space: Mapping[str, SpaceEntry],
                  inputs: Mapping[str, Reference], key: str, what: str, problems: _Problems,
                  declared_inputs: Any = None, flat: bool = False) -> None:
    """Check names and types of constants, searched settings and inputs against `config_cls`.

    `declared_inputs` are the input names as written, valid or not: an input whose reference was
    already reported as wrong is not reported a second time as a missing setting. `flat` is for
    settings written side by side in one mapping (a branch option: `umap: {n_neighbors: ..., metric:
    cosine}`): problems are keyed `KEY.NAME` rather than `KEY.config.NAME` / `KEY.space.NAME`."""

    def where(group: str, name: str) -> str:
        return f"{key}.{name}" if flat else f"{key}.{group}.{name}"

    count = len(problems.items)
    declared = tuple(declared_inputs) if isinstance(declared_inputs, Mapping) else ()
    known = field_names(config_cls)
    hints = get_type_hints(config_cls)
    for group, names in (("config", config), ("space", space), ("inputs", inputs)):
        for name in names:
            if name not in known:
                hint = _closest(str(name), known)
                problems.add(where(group, name), f"{what} has no setting {name!r}"
                             f"{f' (did you mean {hint!r}?)' if hint else ''}; settings: {', '.join(known)}")
    for name in set(config) & set(space):
        problems.add(where("space", name), "is also set in config; keep it in one place")
    for name in set(inputs) & (set(config) | set(space)):
        problems.add(where("inputs", name), "is also set in config or space; keep it in one place")
    for name, entry in space.items():
        if name in known:
            for value in representative_values(entry):
                _, reason = check_value(name, value, hints[name])
                if reason is not None:
                    problems.add(where("space", name), f"sampled values do not fit the setting: {reason}")
                    break
    for name in inputs:
        if name in known:
            _, reason = check_value(name, "/checkpoint/folder", hints[name])
            if reason is not None:
                problems.add(where("inputs", name), f"setting {name!r} does not take a checkpoint folder")
    for name in required_fields(config_cls):
        if name not in config and name not in space and name not in inputs and name not in declared:
            problems.add(where("config", name), f"required by {what} (give it in config, space or inputs)")
    # Build once with representative values so range checks (__post_init__) run now, not mid-study.
    if len(problems.items) > count:
        return
    base = dict(config)
    base.update({name: representative_values(entry)[0] for name, entry in space.items()})
    base.update({name: "/checkpoint/folder" for name in {*inputs, *declared} if name in known})
    # Every value a sampler may produce (bounds, each choice) is checked, one setting at a time.
    samples = [(None, base)] + [(name, {**base, name: value}) for name, entry in space.items()
                                for value in representative_values(entry)[1:]]
    for searched, sample in samples:
        try:
            build_config(config_cls, sample)
        except ConfigError as error:
            for name, message in error.problems:
                if searched is not None:
                    problems.add(where("space", searched), f"the value {sample[searched]!r} fails: {message}")
                elif name in known:
                    problems.add(where("space" if name in space else "config", name), message)
                else:  # a range check in __post_init__: name the searched setting whose first value breaks it
                    culprit = _first_breaking_entry(config_cls, sample, space)
                    problems.add(where("space", culprit) if culprit else (key if flat else f"{key}.config"), message)
            if searched is None:
                return


def _first_breaking_entry(config_cls: type, sample: Mapping[str, Any], space: Mapping[str, SpaceEntry]) -> str | None:
    """The searched setting whose sampled value makes `sample` fail, if leaving it at its default fixes it."""
    defaults = {f.name for f in dataclasses.fields(config_cls)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    for name in space:
        if name in defaults:
            try:
                build_config(config_cls, {k: v for k, v in sample.items() if k != name})
            except ConfigError:
                continue
            return name
    return None
