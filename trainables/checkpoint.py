"""The checkpoint a trainable hands its runner, and its on-disk form shared by the orchestrator and later stages.

A checkpoint is a `Checkpoint`: the trainable's name, its full config (so a model can be rebuilt from the
checkpoint alone), the state dicts of its modules and optimizers, the epoch reached, the metrics at that
epoch and the random state to continue from. On disk it is a folder holding `state.pt`, one `torch.save`d
plain dict (`Checkpoint.to_dict`). Later stages receive such a folder by reference (`inputs: {init_from:
gan.best}`), never a hand-typed path.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "state.pt"
FILES_FOLDER = "files"  # a step's files (sample grids, ...) inside its checkpoint folder
# Small files that show the model at a step (a sample grid, say), by file name. They travel with
# the checkpoint, so whoever runs the trainable can publish them (as MLflow artifacts under Tune).
StepFiles = Mapping[str, bytes]


@dataclass(frozen=True, eq=False)  # eq=False: fields hold tensors, whose == is elementwise, not a bool
class Checkpoint:
    """What a trainable needs to resume, and what later stages need to rebuild its model.

    `config` is the trainable's config as `dataclasses.asdict` gives it (a plain dict: it reads back without
    the config class, also after that class gained or lost a field). `extras`: a trainable's own further
    state, by name (generator_nn's and conditional_nn's image `bank`, `bank_labels` and `threshold`); on disk
    they sit beside the named fields, as they always did.
    """

    trainable: str
    epoch: int
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    modules: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    optimizers: dict[str, dict[str, Any]] = field(default_factory=dict)
    rng: torch.Tensor | None = None  # torch's CPU random state after `epoch`
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = sorted(set(self.extras) & set(_FIELDS))
        if clash:
            raise ValueError(f"extras {clash} are named like Checkpoint fields; set the fields instead")

    def to_dict(self) -> dict[str, Any]:
        """The plain dict `state.pt` holds: the named fields (rng only when set) with `extras` beside them."""
        named = {name: getattr(self, name) for name in _FIELDS if name != "rng"}
        return {**named, **({"rng": self.rng} if self.rng is not None else {}), **self.extras}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> Checkpoint:
        """A checkpoint from its dict form, as every gensearch version wrote it; keys that are not fields become
        `extras`. ValueError naming `trainable` or `epoch` when the dict lacks one."""
        missing = [name for name in ("trainable", "epoch") if name not in state]
        if missing:
            raise ValueError(f"a checkpoint state without {' and '.join(missing)} (keys: {sorted(state)})")
        named = {name: state[name] for name in _FIELDS if name in state and state[name] is not None}
        return cls(**named, extras={key: value for key, value in state.items() if key not in _FIELDS})


_FIELDS = tuple(f.name for f in dataclasses.fields(Checkpoint) if f.name != "extras")  # the keys of the dict form


def save_checkpoint(state: Checkpoint, folder: str | os.PathLike) -> Path:
    """Write `state` into `folder` atomically (a crash never leaves a half-written state.pt).

    Written as the plain dict (`Checkpoint.to_dict`), not the pickled dataclass: the file then names no
    gensearch class, so it loads whatever this module becomes (a pickle records the class's import path, and
    a moved or renamed class would strand every stored checkpoint), and older gensearch versions and tools that
    index the dict (a registry's stored checkpoint read by an older checkout) keep reading it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (STATE_FILE + ".tmp")
    torch.save(state.to_dict(), tmp)
    os.replace(tmp, folder / STATE_FILE)
    return folder


def load_checkpoint(folder: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint folder, written by this or any earlier gensearch (all wrote the dict form); the error
    names the folder when it holds no state."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a gensearch checkpoint (no {STATE_FILE} inside)")
    state = torch.load(path, map_location=map_location, weights_only=False)
    try:
        return Checkpoint.from_dict(state)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


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
