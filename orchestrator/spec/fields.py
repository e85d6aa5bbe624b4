"""The small parsers every section of a study file shares (mappings, numbers, strings, search-space
entries, references to earlier stages, the searcher), each recording a problem instead of raising.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.spec.problems import _Problems
from orchestrator.spec.schema import SPACE_TYPES, IntRange, Reference, SearcherSpec, SpaceEntry
from trainables import catalog

NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
REFERENCE_PATTERN = re.compile(r"^(?P<stage>[A-Za-z][A-Za-z0-9_-]*)\.(?P<selector>[A-Za-z_]+)$")
SELECTORS = ("best",)


@dataclass(frozen=True)
class SectionContext:
    """Where a stage's section sits in its study: the study's name (a default model name) and the stage
    names before and after it (what its references may name, and what they may not yet)."""

    study: str
    earlier: list[str]
    later: list[str]


def _mapping(raw: Any, key: str, problems: _Problems) -> Mapping[str, Any] | None:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.add(key, f"expected a mapping, got {_kind(raw)}")
        return None
    return raw


def _kind(value: Any) -> str:
    return {list: "a list", str: f"the string {value!r}", int: f"the number {value!r}",
            float: f"the number {value!r}", bool: f"{str(value).lower()}", type(None): "nothing", dict: "a mapping"}.get(
        type(value), type(value).__name__)


def _unknown_keys(raw: Mapping[str, Any], allowed: tuple[str, ...], key: str, problems: _Problems) -> None:
    for name in raw:
        if name not in allowed:
            hint = _closest(str(name), allowed)
            problems.add(f"{key}.{name}" if key else str(name),
                         f"unknown key{f' (did you mean {hint!r}?)' if hint else ''}; allowed: {', '.join(allowed)}")


def _closest(name: str, options: tuple[str, ...]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(name, options, n=1, cutoff=0.7)
    return matches[0] if matches else None


def _number(raw: Mapping[str, Any], name: str, key: str, problems: _Problems, *, integer: bool = False,
            default: Any = None, required: bool = False) -> Any:
    where = f"{key}.{name}" if key else name
    if name not in raw or raw[name] is None:
        if required:
            problems.add(where, "required")
        return default
    value = raw[name]
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        problems.add(where, f"expected {'an integer' if integer else 'a number'}, got {_kind(value)}")
        return default
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite:
        problems.add(where, f"expected a finite number, got {str(value)[:20]}")
        return default
    return value


def _string(raw: Mapping[str, Any], name: str, key: str, problems: _Problems, *, default: Any = None,
            required: bool = False, choices: tuple[str, ...] | None = None) -> Any:
    if name not in raw or raw[name] is None:
        if required:
            problems.add(f"{key}.{name}" if key else name, "required")
        return default
    value = raw[name]
    if not isinstance(value, str):
        problems.add(f"{key}.{name}" if key else name, f"expected a string, got {_kind(value)}")
        return default
    if choices is not None and value not in choices:
        problems.add(f"{key}.{name}" if key else name, f"must be one of {', '.join(choices)}, got {value!r}")
        return default
    return value


def _parse_space_entry(raw: Any, key: str, problems: _Problems) -> SpaceEntry | None:
    if not isinstance(raw, Mapping):
        problems.add(key, f"expected a mapping like {{type: uniform, low: 0.1, high: 1}}, got {_kind(raw)}")
        return None
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in SPACE_TYPES:
        problems.add(f"{key}.type", f"must be one of {', '.join(SPACE_TYPES)}, got {kind!r}")
        return None
    if kind in ("choice", "grid"):
        _unknown_keys(raw, ("type", "values"), key, problems)
        values = raw.get("values")
        if not isinstance(values, list) or not values:
            problems.add(f"{key}.values", "expected a non-empty list")
            return None
        if len({repr(v) for v in values}) != len(values):
            problems.add(f"{key}.values", f"has duplicates: {values}")
            return None
        return SPACE_TYPES[kind](tuple(values))
    integer = kind == "int"
    _unknown_keys(raw, ("type", "low", "high") + (("log",) if integer else ()), key, problems)
    count = len(problems.items)
    low = _number(raw, "low", key, problems, integer=integer, required=True)
    high = _number(raw, "high", key, problems, integer=integer, required=True)
    if len(problems.items) > count:
        return None
    if integer and low > high:
        problems.add(key, f"low must be <= high ({low} > {high})")
        return None
    if not integer and low >= high:
        problems.add(key, f"low must be < high ({low} >= {high})")
        return None
    log = raw.get("log", False)
    if kind == "loguniform" or log:
        if low <= 0:
            problems.add(f"{key}.low", f"must be > 0 on a log scale, got {low}")
            return None
    if integer:
        if not isinstance(log, bool):
            problems.add(f"{key}.log", f"expected true/false, got {_kind(log)}")
            return None
        return IntRange(low, high, log)
    return SPACE_TYPES[kind](float(low), float(high))


def _parse_reference(raw: Any, key: str, earlier: list[str], later: list[str], problems: _Problems) -> Reference | None:
    match = REFERENCE_PATTERN.match(raw) if isinstance(raw, str) else None
    if match is None:
        problems.add(key, f"expected a reference like 'stage.best', got {_kind(raw)}")
        return None
    stage, selector = match["stage"], match["selector"]
    if stage not in earlier:
        where = "a later stage" if stage in later else "an unknown stage"
        known = ", ".join(earlier) if earlier else "none: this is the first stage"
        problems.add(key, f"{raw!r} refers to {where}; a stage can only use earlier stages ({known})")
        return None
    return Reference(stage, selector)


def _check_selectors(stage: Any, earlier: Sequence[Any], key: str, problems: _Problems) -> None:
    """A reference's selector is `best` or an output the referenced stage's definition declares
    (`prototypes.clustering`: stage_outputs.py), checked once the earlier stages are parsed."""
    from orchestrator.stage_outputs import declared_outputs

    parsed = {other.name: other for other in earlier}
    for name, reference in stage.inputs.items():
        source = parsed.get(reference.stage)
        if reference.selector in SELECTORS or source is None:  # no source: its own problem is reported
            continue
        try:
            outputs = tuple(declared_outputs(source))
        except LookupError:
            outputs = ()
        if reference.selector not in outputs:
            problems.add(f"{key}.inputs.{name}",
                         f"unknown selector {reference.selector!r} (use: {', '.join((*SELECTORS, *outputs))})")


def _parse_inputs(raw: Any, key: str, earlier: list[str], later: list[str], problems: _Problems) -> dict[str, Reference]:
    raw = _mapping(raw, key, problems)
    inputs = {}
    for name, value in (raw or {}).items():
        reference = _parse_reference(value, f"{key}.{name}", earlier, later, problems)
        if reference is not None:
            inputs[str(name)] = reference
    return inputs


def _parse_searcher(raw: Any, key: str, problems: _Problems, kinds: tuple[str, ...] = ("optuna", "basic"),
                    samplers: tuple[str, ...] = ("tpe", "random", "qmc")) -> SearcherSpec | None:
    raw = _mapping(raw, key, problems)
    if raw is None:
        return None
    _unknown_keys(raw, ("type", "sampler", "seed"), key, problems)
    kind = _string(raw, "type", key, problems, default="optuna", choices=kinds)
    sampler = _string(raw, "sampler", key, problems, default="tpe", choices=samplers)
    seed = _number(raw, "seed", key, problems, integer=True)
    if kind == "basic" and "sampler" in raw:
        problems.add(f"{key}.sampler", "only applies to `type: optuna`")
    return SearcherSpec(kind or "optuna", sampler or "tpe", seed)


def _catalog_entry(name: str | None, lookup: Callable[[str], Any], key: str, problems: _Problems) -> Any:
    """The catalog's definition named `name` (a trainable, objective or job), or None with the catalog's
    message recorded at `key` when there is none by that name (None `name`: already reported)."""
    if name is None:
        return None
    try:
        return lookup(name)
    except catalog.UnknownEntryError as error:
        problems.add(key, str(error))
        return None
