"""Every problem of one study file, collected rather than raised at the first one, so the user fixes the
whole file in one pass; each is reported as one line `FILE: KEY: message`.
"""

from __future__ import annotations


class SpecError(ValueError):
    """All problems of one study file; `str()` is one line per problem."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{self.source}: {key}: {message}" if key else f"{self.source}: {message}"
                for key, message in self.problems]


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.deprecations: list[tuple[str, str]] = []  # still accepted, said once by the launcher
        # (stage's config key, shared settings it writes flat): said in one deprecation line for the whole file
        self.flat_settings: list[tuple[str, tuple[str, ...]]] = []

    def add(self, key: str, message: str) -> None:
        self.items.append((key, message))

    def deprecated(self, key: str, message: str) -> None:
        self.deprecations.append((key, message))
