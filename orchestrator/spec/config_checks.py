"""A stage's constants, searched settings and inputs checked against its trainable's (or job's, or
objective's) config dataclass at load time, with sampled values built once, so a bad setting is refused
before the study starts rather than in the middle of it. `stage_config` reads a stage's `config:`, whose shared
settings may be grouped (`data:`, `runtime:`), into the flat settings the stage spec keeps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, get_type_hints

from orchestrator.spec.fields import _closest, _mapping
from orchestrator.spec.problems import _Problems
from orchestrator.spec.schema import Reference, SpaceEntry, representative_values
from trainables.config import ConfigError, build_config, check_value, field_names, flatten_sections, required_fields
from trainables.settings import section_of

CONFIG_SECTIONS_DOC = 'README "Config sections"'


def stage_config(raw: Mapping[str, Any], key: str, config_cls: type | None,
                 problems: _Problems) -> tuple[dict[str, Any], dict[str, str]]:
    """A stage's `config:` as flat settings, and where each was written (`data.classes`), its groups opened by
    `trainables.config.flatten_sections` (without a config class, as far as the group names tell).

    A shared setting written flat (`config: {dataset: mnist}`, the older spelling) is still read; the stage
    and its keys are remembered for the one deprecation line of the file (`flat_spelling_deprecation`)."""
    config = _mapping(raw.get("config"), f"{key}.config", problems) or {}
    if config_cls is None:
        return dict(config), {str(name): str(name) for name in config}
    settings = flatten_sections(config_cls, config)
    for name, message in settings.problems:
        problems.add(f"{key}.config.{name}", message)
    if settings.flat_shared:
        problems.flat_settings.append((f"{key}.config", settings.flat_shared))
    return settings.values, settings.written


def flat_spelling_deprecation(flat_settings: list[tuple[str, tuple[str, ...]]]) -> tuple[str, str] | None:
    """One (key, message) for every stage of a file that writes shared settings flat, or None."""
    if not flat_settings:
        return None
    names = [name for _, names in flat_settings for name in names]
    sections = list(dict.fromkeys(section_of(name) for name in names))
    under = " and ".join(f"{section}:" for section in sections)
    if len(flat_settings) == 1:
        where, names = flat_settings[0]
        return where, (f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} read from the flat config for one "
                       f"more release; write {'it' if len(names) == 1 else 'them'} under {under} "
                       f"(see {CONFIG_SECTIONS_DOC})")
    where = ", ".join(f"{stage} ({', '.join(names)})" for stage, names in flat_settings)
    return where, (f"these settings are read from the flat config for one more release; write them under {under} "
                   f"(see {CONFIG_SECTIONS_DOC})")


def _check_config(config_cls: type, config: Mapping[str, Any], space: Mapping[str, SpaceEntry],
                  inputs: Mapping[str, Reference], key: str, what: str, problems: _Problems,
                  declared_inputs: Any = None, flat: bool = False, written: Mapping[str, str] | None = None) -> None:
    """Check names and types of constants, searched settings and inputs against `config_cls`.

    `declared_inputs` are the input names as written, valid or not: an input whose reference was
    already reported as wrong is not reported a second time as a missing setting. `flat` is for
    settings written side by side in one mapping (a branch option: `umap: {n_neighbors: ..., metric:
    cosine}`): problems are keyed `KEY.NAME` rather than `KEY.config.NAME` / `KEY.space.NAME`. `written` (from
    `stage_config`) names a constant where the file wrote it (`KEY.config.data.classes`)."""

    def where(group: str, name: str) -> str:
        if group == "config" and written:
            name = written.get(name, name)
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
