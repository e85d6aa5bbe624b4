"""The stage kinds, one module each (tune.py, optuna.py, job.py) behind one interface (base.StageKind).

Everything that differs between kinds (how a stage's YAML becomes its spec, its plan lines, how it runs
and resumes, its MLflow parent-run params, its summary lines, what the report and the data checks read
of it, whether the estimate times it) is asked of `kind_of(stage)`; no other module tests a stage's class.
A new kind is a module with its spec dataclass (with a `kind` attribute), its section parser and a
StageKind, plus one line here and one in orchestrator/spec/study.py's SECTION_PARSERS
(tests/orchestrator/test_stage_kinds.py walks through one).
"""

from __future__ import annotations

from typing import Any

from orchestrator.stages.base import Runner, StageKind
from orchestrator.stages.job import JobKind
from orchestrator.stages.optuna import OptunaKind
from orchestrator.stages.tune import TuneKind

KINDS: dict[str, StageKind] = {"tune": TuneKind(), "optuna": OptunaKind(), "job": JobKind()}


def kind_of(stage: Any) -> StageKind:
    """The kind of a stage spec, by its `kind` attribute (`tune`, `optuna`, `job`, ...)."""
    return KINDS[stage.kind]


__all__ = ["KINDS", "Runner", "StageKind", "kind_of"]
