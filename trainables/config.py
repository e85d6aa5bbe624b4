"""Turning loose values (from YAML, from a sampler) into a trainable's typed, frozen config.

Each trainable declares its settings as a frozen dataclass. `build_config` is the one place that
fills one from a mapping: an unknown key or a value of the wrong type is an error naming the key,
never a silent default. Integers are accepted for float fields and lists for tuple fields, because
that is what YAML and samplers produce. The settings many configs share may come grouped as they are written
in a study file (`data: {dataset: mnist}`, `runtime: {seed: 0}`, see trainables/settings.py); `flatten_sections`
is the one place that turns the groups into the flat settings the dataclass has.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from trainables.settings import SECTIONS, section_of

C = TypeVar("C")


class ConfigError(ValueError):
    """Every problem with one config, each as (key, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {message}" for key, message in problems))


def field_names(config_cls: type) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(config_cls))


def required_fields(config_cls: type) -> tuple[str, ...]:
    return tuple(
        field.name
        for field in dataclasses.fields(config_cls)
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    )


@dataclasses.dataclass(frozen=True)
class FlatSettings:
    """A config's settings with its `data:` / `runtime:` groups opened up.

    `written` maps each setting to where it was written (`data.classes`, or `epochs`), so a problem found
    later names the key the user typed; `flat_shared` lists the shared settings written outside their group
    (the older spelling, still read); `problems` are (key as written, message)."""

    values: dict[str, Any]
    written: dict[str, str]
    flat_shared: tuple[str, ...]
    problems: tuple[tuple[str, str], ...]


def flatten_sections(config_cls: type, values: Mapping[str, Any]) -> FlatSettings:
    """Open the `data:` and `runtime:` groups of `values` into `config_cls`'s flat settings.

    A group's setting that `config_cls` lacks, a name no group holds, and a setting given both flat and in its
    group are problems; everything else (unknown flat names, wrong types) is left to `build_config`."""
    known = field_names(config_cls)
    flat: dict[str, Any] = {}
    written: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    for key, value in values.items():
        if key in SECTIONS and key not in known:
            continue
        flat[key], written[key] = value, str(key)
    for section, names in SECTIONS.items():
        if section not in values or section in known:
            continue
        group = values[section]
        have = [name for name in names if name in known]
        if not isinstance(group, Mapping):
            problems.append((section, f"expected a mapping of {section} settings ({', '.join(names)}), "
                                      f"got {'null' if group is None else type(group).__name__}"))
            continue
        for name, value in group.items():
            key = f"{section}.{name}"
            if name not in names:
                other = section_of(name)
                hint = difflib.get_close_matches(str(name), names, n=1)
                problems.append((key, f"{name!r} belongs under {other}:" if other else
                                      f"unknown {section} setting{f' (did you mean {hint[0]!r}?)' if hint else ''}; "
                                      f"{section}: holds {', '.join(names)}"))
            elif name not in known:
                problems.append((key, f"this config has no setting {name!r} (its {section} settings: "
                                      f"{', '.join(have) or 'none'})"))
            elif name in flat:
                problems.append((key, f"is also given as {name} outside {section}:; keep it in one place"))
            else:
                flat[name], written[name] = value, key
    flat_shared = tuple(key for key in flat if section_of(key) and written[key] == key and key in known)
    return FlatSettings(flat, written, flat_shared, tuple(problems))


def check_value(key: str, value: Any, annotation: Any) -> tuple[Any, str | None]:
    """Coerce `value` to `annotation`; return (value, None) or (value, reason it does not fit)."""
    origin = get_origin(annotation)
    if annotation is Any:
        return value, None
    if origin in (typing.Union, types.UnionType):
        reasons = []
        for option in get_args(annotation):
            coerced, reason = check_value(key, value, option)
            if reason is None:
                return coerced, None
            reasons.append(reason)
        return value, " or ".join(dict.fromkeys(reasons))
    if annotation is type(None):
        return value, None if value is None else "expected null"
    if origin is Literal:
        allowed = get_args(annotation)
        return value, None if value in allowed else f"expected one of {list(allowed)}, got {value!r}"
    if annotation is bool:
        return value, None if isinstance(value, bool) else f"expected true/false, got {value!r}"
    if annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return value, None if ok else f"expected an integer, got {value!r}"
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return (float(value), None) if math.isfinite(value) else (value, f"expected a finite number, got {value}")
            except OverflowError:
                return value, f"expected a finite number, got an integer of {len(str(value))} digits"
        return value, f"expected a number, got {value!r}"
    if annotation is str:
        return value, None if isinstance(value, str) else f"expected a string, got {value!r}"
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return value, f"expected a list, got {value!r}"
        args = get_args(annotation)
        item_type = args[0] if args else Any
        items = []
        for index, item in enumerate(value):
            coerced, reason = check_value(f"{key}[{index}]", item, item_type)
            if reason is not None:
                return value, f"item {index}: {reason}"
            items.append(coerced)
        return tuple(items), None
    raise TypeError(f"config field {key!r} has an annotation gensearch cannot check: {annotation!r}")


def build_config(config_cls: type[C], values: Mapping[str, Any]) -> C:
    """A `config_cls` instance from `values` (flat, or with `data:` / `runtime:` groups); ConfigError lists every
    problem at once, each under the key as written (`data.dataset`)."""
    hints = get_type_hints(config_cls)
    known = field_names(config_cls)
    settings = flatten_sections(config_cls, values)
    problems: list[tuple[str, str]] = list(settings.problems)
    kwargs: dict[str, Any] = {}
    for key, value in settings.values.items():
        if key not in known:
            problems.append((key, f"unknown setting (known: {', '.join(known)})"))
            continue
        coerced, reason = check_value(key, value, hints[key])
        if reason is not None:
            problems.append((settings.written[key], reason))
        kwargs[key] = coerced
    for key in required_fields(config_cls):
        if key not in settings.values:
            problems.append((key, "required setting is missing"))
    if not problems:
        try:
            return config_cls(**kwargs)
        except ValueError as error:  # __post_init__ range checks
            problems.append(("config", str(error)))
    raise ConfigError(problems)
