"""The on-disk checkpoint format shared by trainables, the orchestrator and later stages.

A checkpoint is a folder holding `state.pt`: one `torch.save`d dict with at least the trainable's
name, its full config (so a model can be rebuilt from the folder alone), the state dicts of its
modules and optimizers, the epoch reached and the metrics at that epoch. Later stages receive such
a folder by reference (`inputs: {init_from: gan.best}`), never a hand-typed path.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from trainables.reporter import CheckpointState, StepFiles

STATE_FILE = "state.pt"
FILES_FOLDER = "files"  # a step's files (sample grids, ...) inside its checkpoint folder


def save_checkpoint(state: CheckpointState, folder: str | os.PathLike) -> Path:
    """Write `state` into `folder` atomically (a crash never leaves a half-written state.pt)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, folder / STATE_FILE)
    return folder


def load_checkpoint(folder: str | os.PathLike, map_location: str | torch.device = "cpu") -> CheckpointState:
    """Read a checkpoint folder; the error names the folder when it holds no state."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a gensearch checkpoint (no {STATE_FILE} inside)")
    return torch.load(path, map_location=map_location, weights_only=False)


def save_step_files(files: StepFiles, folder: str | os.PathLike) -> list[Path]:
    """Write a step's files into `folder/files/`, where `step_files` finds them again."""
    written = []
    for name, content in files.items():
        if Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"step file names are plain file names, got {name!r}")
        path = Path(folder) / FILES_FOLDER / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(path)
    return written


def step_files(folder: str | os.PathLike) -> list[Path]:
    """The step files kept in a checkpoint folder (none for a checkpoint written without any)."""
    files_dir = Path(folder) / FILES_FOLDER
    return sorted(path for path in files_dir.iterdir() if path.is_file()) if files_dir.is_dir() else []
