"""What a study has done so far, kept in `<output>/study_state.json` so `--resume` knows.

Later stages find earlier results here by stage name (`gan.best` -> the best checkpoint folder),
never by globbing folders. The file is rewritten atomically after every change, so a kill at any
moment leaves either the old or the new state, never half of one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "study_state.json"


@dataclass
class BestTrial:
    trial_id: str
    metric: str
    value: float
    checkpoint: str  # folder; for a job stage, its output folder
    config: dict[str, Any]
    child_run_id: str | None = None
    epoch: int | None = None  # the reported step of the chosen checkpoint
    metrics: dict[str, float] = field(default_factory=dict)  # everything reported at that step
    # A stage with several metrics: False when no evaluated epoch met its champion rule and this one broke
    # it least; None for a single-metric stage.
    rule_met: bool | None = None


@dataclass
class RegisteredVersion:
    name: str
    version: str
    alias: str
    run_id: str


@dataclass
class RecordedOutput:
    """A file, folder or result a stage produced, as its definition declares it (trainables.definitions.Output):
    what it is (`kind`: table, picture, clustering, ...) and where. Later stages take it by reference
    (`prototypes.clustering`) and the report shows it, by name, never by looking for file names."""

    kind: str
    path: str
    caption: str = ""


@dataclass
class StageState:
    status: str = "pending"  # pending | running | finished | failed
    kind: str = ""  # tune | optuna | job; "" in a state from before kinds were recorded
    parent_run_id: str | None = None
    best: BestTrial | None = None
    registered: RegisteredVersion | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    trials: int = 0
    failed_trials: int = 0
    wall_s: float = 0.0
    output: str = ""
    # What each trial of a tune stage was given (after a CPU fallback: gpu 0), for cost accounting.
    trial_cpu: float = 0.0
    trial_gpu: float = 0.0
    # Output name -> what it is and where (the declared outputs that exist after the stage ran); empty in a
    # state from before outputs were recorded.
    outputs: dict[str, RecordedOutput] = field(default_factory=dict)


@dataclass
class StudyState:
    study: str
    tracking_uri: str
    experiment_id: str = ""
    stages: dict[str, StageState] = field(default_factory=dict)
    spec_file: str = ""  # the study YAML as launched, copied into the output folder (see launch.py)
    profile: str = ""
    # The study seed the stages ran with (the file's `seed`, or --seed) and whether they ran reproducibly;
    # None in a folder from before seeds were recorded. --resume keeps both.
    seed: int | None = None
    reproducible: bool | None = None

    def stage(self, name: str) -> StageState:
        return self.stages.setdefault(name, StageState())

    @property
    def started(self) -> bool:
        return any(stage.status != "pending" for stage in self.stages.values())


def state_path(output: Path) -> Path:
    return output / STATE_FILE


def load_state(output: Path) -> StudyState | None:
    path = state_path(output)
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    stages = {}
    for name, stage in raw.get("stages", {}).items():
        best = BestTrial(**stage.pop("best")) if stage.get("best") else None
        registered = RegisteredVersion(**stage.pop("registered")) if stage.get("registered") else None
        outputs = {key: RecordedOutput(**value) for key, value in (stage.pop("outputs", None) or {}).items()}
        stage.pop("best", None)
        stage.pop("registered", None)
        stages[name] = StageState(best=best, registered=registered, outputs=outputs, **stage)
    return StudyState(study=raw["study"], tracking_uri=raw["tracking_uri"],
                      experiment_id=raw.get("experiment_id", ""), stages=stages,
                      spec_file=raw.get("spec_file", ""), profile=raw.get("profile", ""), seed=raw.get("seed"),
                      reproducible=raw.get("reproducible"))


def save_state(output: Path, state: StudyState) -> None:
    output.mkdir(parents=True, exist_ok=True)
    path = state_path(output)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2, default=str))
    os.replace(tmp, path)
