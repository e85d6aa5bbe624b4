"""One launcher per study folder: an exclusive lock on `<output>/gensearch.lock`, held for the launcher's life.

Two launchers on one folder would each start a parent run per stage, restore the same Tune experiment
and delete each other's child runs. `flock` is released by the kernel when the process ends in any way
(SIGKILL included), so a dead launcher never leaves a stale lock to clean by hand. The file holds the
holder's pid and host, for the message the second launcher prints. (`flock` on a network file system
may only exclude launchers on the same machine: see the README.)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = "gensearch.lock"


class FolderInUse(RuntimeError):
    """Another launcher holds the folder's lock."""


class StudyLock:
    """The held lock; `release(undo=True)` also removes what taking it created (the file, new folders),
    for a launch that stops before writing anything else."""

    def __init__(self, fd: int, path: Path, created: list[Path]) -> None:
        self.fd, self.path, self.created = fd, path, created

    def release(self, undo: bool = False) -> None:
        if self.fd < 0:
            return
        if undo:
            if self.path in self.created:
                self.path.unlink(missing_ok=True)  # while still held: a launcher waiting on it sees it gone
            for folder in (p for p in self.created if p != self.path):
                try:
                    folder.rmdir()  # deepest first; only if empty
                except OSError:
                    break
        os.close(self.fd)
        self.fd = -1


def holder(path: Path) -> str:
    """`pid 123 on host (since 2026-12-01 10:00:00)` from a lock file, or a phrase when it says nothing yet."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info.get("pid"):
        return "another launcher (it has not written its pid yet)"
    return f"pid {info['pid']} on {info.get('host', '?')} (since {info.get('since', '?')})"


def lock_study_folder(output: Path) -> StudyLock:
    """Create `output` if needed and take its lock, or raise FolderInUse naming the holder."""
    created = [p for p in (output, *output.parents) if not p.exists()]
    output.mkdir(parents=True, exist_ok=True)
    path = output / LOCK_FILE
    if not path.exists():
        created.insert(0, path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUse(f"{output} is in use by another launcher: {holder(path)}; wait for it to end or "
                              f"stop it (a launcher that dies frees the folder at once). Nothing was run.") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else a launcher that gave up removed the file between our open and our lock: take the new one
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
    return StudyLock(fd, path, created)
