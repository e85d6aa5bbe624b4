"""What changed in a stage between the study as launched and the file given now.

Compared on the validated specs, not the text: a comment, reordered keys or `1e-4` written as `0.0001` is
no change, while a profile that now patches a stage differently is one. `--resume` uses this to refuse a
study that is no longer the one whose results are in the folder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

ABSENT = "(not set)"


def stage_settings(value: Any, prefix: str = "") -> dict[str, Any]:
    """A stage spec as flat `dotted.key -> value` pairs. A nested spec object also names its class
    (`space.lr: LogUniform`), so a loguniform turned uniform with the same bounds is a change."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        flat: dict[str, Any] = {prefix.removesuffix("."): type(value).__name__} if prefix else {}
        for field in dataclasses.fields(value):
            flat.update(stage_settings(getattr(value, field.name), f"{prefix}{field.name}."))
        return flat
    if isinstance(value, Mapping) and value:
        flat = {}
        for key, item in value.items():
            flat.update(stage_settings(item, f"{prefix}{key}."))
        return flat
    return {prefix.removesuffix("."): value}


def shown(value: Any) -> str:
    if value is ABSENT:
        return ABSENT
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(shown(item) for item in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return "{}" if not value else str(dict(value))
    return str(value)


def stage_changes(launched: Any, current: Any) -> list[str]:
    """`key: old -> new` for every setting that differs, in the stage's own order."""
    old, new = stage_settings(launched), stage_settings(current)
    changes = []
    for key in list(old) + [key for key in new if key not in old]:
        before, after = old.get(key, ABSENT), new.get(key, ABSENT)
        if before != after or isinstance(before, bool) != isinstance(after, bool):  # True == 1 in Python
            changes.append(f"{key}: {shown(before)} -> {shown(after)}")
    return changes

