"""Where datasets are looked for: the data roots, in order, and the cache that downloads go to.

The launcher's --data-root is searched first. The launcher never writes it into its own environment: its Ray
workers get it in theirs (LAUNCH_ROOT_ENV, in the runtime_env the runner starts Ray with), and the code it runs
in its own process (jobs, Optuna objectives, the estimate, the data checks) within `first_data_root(root)`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

LAUNCH_ROOT_ENV = "GENSEARCH_LAUNCH_DATA_ROOT"
_first_root: Path | None = None

# Monkeypatched by tests to isolate them from the real shared/ folder beside the repo.
_REPO_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """Where the launcher and `fetch` download to; the last data root, so a downloaded set is found next time."""
    base = os.environ.get("GENSEARCH_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "gensearch") / "data"


@contextlib.contextmanager
def first_data_root(root: str | os.PathLike[str] | None) -> Iterator[None]:
    """Within this block, `root` (the launcher's --data-root; None: none) is searched before every other root
    by any code of this process, as LAUNCH_ROOT_ENV makes a Ray worker do, without touching os.environ."""
    global _first_root
    previous, _first_root = _first_root, None if root is None else Path(root)
    try:
        yield
    finally:
        _first_root = previous


def data_roots(data_root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Candidate roots in search order: `data_root`, the launcher's --data-root (see LAUNCH_ROOT_ENV),
    $GENSEARCH_DATA, ../shared/data beside the repository and beside the working folder, the cache.
    Missing ones are kept so an error can name them all."""
    candidates: list[Path] = []
    for first in (data_root, _first_root, os.environ.get(LAUNCH_ROOT_ENV)):
        if first:
            candidates.append(Path(first).expanduser())
    if env := os.environ.get("GENSEARCH_DATA"):
        candidates.append(Path(env).expanduser())
    candidates.append(_REPO_ROOT / ".." / "shared" / "data")
    candidates.append(Path.cwd() / ".." / "shared" / "data")
    candidates.append(cache_dir())
    roots: list[Path] = []
    for candidate in candidates:
        resolved = candidate.resolve()
        if resolved not in roots:
            roots.append(resolved)
    return roots
