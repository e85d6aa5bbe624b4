"""The output folder of a study: may gensearch write there, and which files in it are gensearch's.

A launch never writes into a folder it cannot use (a path under a file, a read-only place) and never into
a non-empty folder that is not a gensearch study: there, every name gensearch would write (`report/`,
`summary.md`, `error.log`...) may be a user's file. Inside a study folder, the files gensearch writes at
fixed names are listed in `gensearch_files.json` (the manifest) as they are written, and only listed files
are ever replaced or removed: a figure a user drops into `report/` survives the next report.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from orchestrator.study_lock import LOCK_FILE
from orchestrator.study_state import STATE_FILE

MANIFEST_FILE = "gensearch_files.json"


def is_study_folder(output: Path) -> bool:
    return (output / STATE_FILE).is_file() or (output / LOCK_FILE).is_file()


def output_problem(output: Path) -> str | None:
    """Why a study cannot be written to `output`, in one sentence, or None. Checks only; writes nothing
    that stays (the write test makes and removes one temporary file)."""
    blocking = blocking_file(output)
    if blocking is not None:
        return f"--output {output}: {blocking} is a file, not a folder"
    nearest = next(p for p in (output, *output.parents) if p.exists())
    problem = write_problem(nearest)
    if problem:
        return f"--output {output}: {problem}"
    if output.is_dir() and not is_study_folder(output):
        entries = sorted(p.name for p in output.iterdir())
        if entries:
            shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
            return (f"--output {output}: the folder holds files that are not a gensearch study ({shown}); "
                    f"gensearch writes only into a new or empty folder or its own study folder: pass another "
                    f"--output. Nothing was changed")
    return None


def blocking_file(path: Path) -> Path | None:
    """The first part of `path` that exists but is not a folder: nothing can be made at or under it."""
    return next((part for part in reversed((path, *path.parents)) if part.exists() and not part.is_dir()), None)


def write_problem(folder: Path) -> str | None:
    """Why no file can be made in `folder`, or None. Tried for real (a temporary file, removed at once):
    permission bits say yes to root even on a read-only mount or an immutable folder."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".gensearch-write-test-", dir=folder)
    except OSError as error:
        return f"cannot write in {folder} ({error.strerror or error})"
    os.close(handle)
    os.unlink(probe)
    return None


class Manifest:
    """The files (paths relative to the study folder) gensearch wrote there.

    A study folder from before the manifest existed has its state file but no manifest: there the files at
    gensearch's own paths are taken as gensearch's (`legacy`), and the manifest starts from them."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.path = output / MANIFEST_FILE
        try:
            self.files = set(json.loads(self.path.read_text()))
            self.legacy = False
        except (OSError, ValueError):
            self.files = set()
            self.legacy = (output / STATE_FILE).is_file()

    def key(self, path: Path) -> str:
        return path.resolve().relative_to(self.output.resolve()).as_posix()

    def ours(self, path: Path) -> bool:
        """May gensearch replace `path`: it is free, or gensearch wrote it."""
        return not path.exists() or self.key(path) in self.files or self.legacy

    def claim(self, path: Path) -> Path | None:
        """`path` recorded as gensearch's, when it may write it; None when a file gensearch did not write is there."""
        if not self.ours(path):
            return None
        self.files.add(self.key(path))
        return path

    def remove(self, path: Path) -> None:
        """Delete `path` if gensearch wrote it; anything else is left alone."""
        if self.key(path) in self.files:
            path.unlink(missing_ok=True)
            self.files.discard(self.key(path))

    def under(self, folder: Path) -> list[Path]:
        prefix = self.key(folder) + "/"
        return [self.output / name for name in sorted(self.files) if name.startswith(prefix)]

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(sorted(self.files), indent=1))
        os.replace(tmp, self.path)
        self.legacy = False


def write_owned(output: Path, name: str, text: str) -> Path | None:
    """Write `<output>/<name>` when it is free or gensearch's; None (nothing written) when a user's file is there."""
    manifest = Manifest(output)
    path = manifest.claim(output / name)
    if path is None:
        return None
    path.write_text(text)
    manifest.save()
    return path
