"""Markdown pieces the report is built from (numbers, durations, table cells, settings), so every section
writes a value the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MAX_SETTING_CHARS = 48


def _num(value: Any) -> str:
    """A number as a person reads it: 4 significant digits; anything else as text."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value < 600 else f"{value / 60:.1f} min"


def _cell(value: Any) -> str:
    """A markdown table cell: pipes escaped, newlines flattened."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _setting(value: Any) -> str:
    """One config value, short: a path keeps its last two parts, a long value is cut."""
    if isinstance(value, float):
        text = _num(value)
    elif isinstance(value, str) and value.startswith("/") and len(value) > MAX_SETTING_CHARS:
        text = "…/" + "/".join(Path(value).parts[-2:])
    else:
        text = json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)
    return text if len(text) <= MAX_SETTING_CHARS else text[:MAX_SETTING_CHARS - 1] + "…"


def format_settings(config: Mapping[str, Any], keys: Iterable[str] | None = None) -> str:
    """`lr=0.00638, nf=2`: the named keys of a config (all of them when `keys` is None)."""
    chosen = list(config) if keys is None else [k for k in keys if k in config]
    return ", ".join(f"{k}={_setting(config[k])}" for k in chosen) or "-"


def numeric_items(values: Mapping[str, Any]) -> list[tuple[str, float]]:
    """The finite numbers of a mapping, in order (metrics.json mixes in text such as a data source)."""
    return [(k, float(v)) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
