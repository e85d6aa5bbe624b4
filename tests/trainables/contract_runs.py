"""Every catalog entry run for real on its tiny config, once per test module, with the inputs its definition asks for.

A definition's `contract_inputs(upstream)` names the earlier stages' results its tiny run reads (gasten: a
dcgan and a classifier checkpoint). `ContractRuns` is that `upstream` (trainables.definitions.Upstream): it
runs each named entry on its own `tiny_config` and its own inputs (asked the same way, so a chain such as
classifier + dcgan -> clustering -> prototypes -> prototype_curve is built from the real code end to end),
saves what a later stage would receive by reference, and keeps the run, so an entry's own contract case and
every entry downstream of it share one run instead of training the same tiny model again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.trainables.threads import single_threaded
from trainables import catalog
from trainables.checkpoint import save_checkpoint
from trainables.config import build_config, field_names
from trainables.reporter import ListReporter


@dataclass(frozen=True)
class TrainableRun:
    config: Any
    reporter: ListReporter
    folder: str  # the saved last checkpoint: what `STAGE.best` hands a later stage


@dataclass(frozen=True)
class JobRun:
    config: Any
    reporter: ListReporter
    returned: Mapping[str, float] | None
    workdir: Path


@dataclass(frozen=True)
class ObjectiveRun:
    config: Any
    workdir: Path  # the stage folder `prepare` may cache in
    data: Any
    picks: Mapping[str, tuple[str, Any]]
    metrics: Mapping[str, float]  # the one trial's
    folder: str  # `finalize`'s best-result folder: what `STAGE.best` hands a later stage


def tiny_settings(definition: Any, inputs: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`tiny_config`, its inputs and `changes`, on the real dataset only: a missing MNIST must fail here, not
    fall back to scikit-learn's digits."""
    values = {**definition.tiny_config, **inputs, **changes}
    if "allow_fallback" in field_names(definition.config_cls):
        values["allow_fallback"] = False
    return values


class ContractRuns:
    """The `Upstream` of the contract test: each (entry, changes) runs once, in its own folder under `scratch`."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = Path(scratch)
        self._runs: dict[tuple[str, str, str], Any] = {}
        self._folders = 0

    def config(self, definition: Any, changes: Mapping[str, Any]) -> Any:
        inputs = definition.contract_inputs(self) if definition.contract_inputs is not None else {}
        return build_config(definition.config_cls, tiny_settings(definition, inputs, changes))

    def _cached(self, kind: str, name: str, changes: Mapping[str, Any], run) -> Any:
        key = (kind, name, repr(sorted(changes.items())))
        if key not in self._runs:
            self._folders += 1  # counted before the run: its inputs' runs get folders of their own meanwhile
            self._runs[key] = run(self.scratch / f"{kind}-{name}-{self._folders}")
        return self._runs[key]

    def trainable_run(self, name: str, **changes: Any) -> TrainableRun:
        definition = catalog.trainable(name)

        def run(folder: Path) -> TrainableRun:
            config = self.config(definition, changes)
            reporter = ListReporter()
            with single_threaded():
                definition.run(config, reporter)
            assert reporter.last_checkpoint is not None, f"{name} reported no checkpoint"
            return TrainableRun(config, reporter, str(save_checkpoint(reporter.last_checkpoint, folder)))

        return self._cached("trainable", name, changes, run)

    def job_run(self, name: str, **changes: Any) -> JobRun:
        definition = catalog.job(name)

        def run(folder: Path) -> JobRun:
            config = self.config(definition, changes)
            folder.mkdir(parents=True)
            reporter = ListReporter()
            with single_threaded():
                returned = definition.run(config, reporter, folder)
            return JobRun(config, reporter, returned, folder)

        return self._cached("job", name, changes, run)

    def objective_run(self, name: str, **changes: Any) -> ObjectiveRun:
        definition = catalog.objective(name)

        def run(folder: Path) -> ObjectiveRun:
            config = self.config(definition, changes)
            picks = {branch: (option, build_config(definition.branches[branch][option], settings))
                     for branch, (option, settings) in definition.tiny_picks.items()}
            workdir = folder / "stage"
            workdir.mkdir(parents=True)
            with single_threaded():
                data = definition.prepare(config, workdir)
                metrics = definition.evaluate(config, picks, data)
                definition.finalize(config, picks, data, folder / "best")
            return ObjectiveRun(config, workdir, data, picks, metrics, str(folder / "best"))

        return self._cached("objective", name, changes, run)

    # trainables.definitions.Upstream: what a definition's contract_inputs receives
    def trainable(self, name: str, **changes: Any) -> str:
        return self.trainable_run(name, **changes).folder

    def job(self, name: str, **changes: Any) -> str:
        return str(self.job_run(name, **changes).workdir)

    def objective(self, name: str, **changes: Any) -> str:
        return self.objective_run(name, **changes).folder
