"""What the orchestrator needs to know about a trainable, job or objective without reading its code.

A `TrainableDef` holds its config class, the metrics it reports (and which way is better, so a
scheduler's mode is never guessed), how to rebuild its model from a checkpoint for the model registry,
the datasets it reads (so the launcher fetches and verifies them once, before any trial starts), and a
cheap `preflight` that fails fast on anything else (e.g. a missing input file). Each also declares a
seconds-long run of itself (`tiny_config`, and `contract_inputs` for the earlier stages' results it
reads), so one contract test runs every entry of the catalog for real.

These types live apart from `trainables.catalog` (the registry of built-in names) so that every
trainable can import them while the catalog imports the trainables: no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from trainables.data import DatasetUse
from trainables.reporter import CheckpointState, Reporter


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    description: str = ""
    optional: bool = False  # reported only where the machine allows (fid_inception: the weights are here)

    @property
    def mode(self) -> str:
        return "max" if self.higher_is_better else "min"


class Upstream(Protocol):
    """The results of earlier stages that a tiny run of a definition needs (its `contract_inputs` asks here).

    The contract test (tests/trainables/contract_runs.py) is the one implementation: each call really runs
    that catalog entry on its own `tiny_config` with `changes` on top (and its own inputs, asked the same
    way), once per test session, and returns what a later stage receives by reference: a trainable's
    checkpoint folder, a job's output folder, an objective's best-result folder. So every definition is
    tested on the real output of the code upstream of it, never on a hand-made stand-in.
    """

    def trainable(self, name: str, **changes: Any) -> str: ...

    def job(self, name: str, **changes: Any) -> str: ...

    def objective(self, name: str, **changes: Any) -> str: ...


# The settings that point a tiny run at its inputs, laid over `tiny_config`, e.g. gasten's
# `lambda upstream: {"generator": upstream.trainable("dcgan"), "classifier": upstream.trainable("classifier")}`.
ContractInputs = Callable[[Upstream], Mapping[str, Any]]


@dataclass(frozen=True)
class EpochCost:
    """How the cost estimate (`--dry-run --estimate`) may time one epoch on a few images and scale it to
    the configured run: the setting that caps the training images an epoch reads (set low for the timing),
    and how many an epoch reads under a config. `also_scaled`: settings an epoch reads all of besides (K+1's
    outliers), shrunk by the same share. Only the training part is scaled; evaluation is timed at the
    configured sizes."""

    size_setting: str
    images: Callable[[Any], int]
    also_scaled: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainableDef:
    """A searchable unit of training: `run(config, reporter)` returns its final metrics."""

    name: str
    config_cls: type
    run: Callable[[Any, Reporter], Mapping[str, float]]
    metrics: tuple[Metric, ...]
    description: str
    build_model: Callable[[CheckpointState], nn.Module] | None = None
    preflight: Callable[[Any], None] | None = None
    datasets: Callable[[Any], tuple[DatasetUse, ...]] | None = None  # what a config reads (trainables.data)
    tiny_config: Mapping[str, Any] = field(default_factory=dict)  # settings of a seconds-long run (the contract test)
    contract_inputs: ContractInputs | None = None  # the earlier stages' results that tiny run needs
    # Two metrics that pull against each other (GASTeN: fid_mnist vs acd): each stage of this
    # trainable gets a Pareto plot of them across its trials.
    pareto: tuple[str, str] | None = None
    # Metrics drawn per trial against the epoch (curves.png in the trial's run), and the metric
    # each is compared with (e.g. acd -> acd_step1: where fine-tuning started).
    curves: tuple[str, ...] = ()
    baselines: Mapping[str, str] = field(default_factory=dict)
    # Reference points drawn on the Pareto plot, label -> (x metric, y metric) reported by every trial,
    # e.g. GASTeN's real boundary digits: ("fid_real_ambiguous", "acd_real_ambiguous").
    pareto_references: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    epoch_cost: EpochCost | None = None  # None: the cost estimate says "not estimated" for its stages

    def metric(self, name: str) -> Metric:
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(name)


@dataclass(frozen=True)
class JobDef:
    """A one-shot step (evaluation, prototype selection): `run(config, reporter, workdir)`.

    It writes its files (tables, plots) into `workdir`; the orchestrator logs them as artifacts.
    """

    name: str
    config_cls: type
    run: Callable[[Any, Reporter, Path], Mapping[str, float]]
    metrics: tuple[Metric, ...]
    description: str
    preflight: Callable[[Any], None] | None = None
    datasets: Callable[[Any], tuple[DatasetUse, ...]] | None = None
    tiny_config: Mapping[str, Any] = field(default_factory=dict)  # as in TrainableDef
    contract_inputs: ContractInputs | None = None


# A trial's pick in one branch of a conditional space: the option's name and its built config,
# e.g. ("umap", UmapConfig(n_neighbors=12, ...)).
BranchPick = tuple[str, Any]


@dataclass(frozen=True)
class ObjectiveDef:
    """An objective an Optuna study searches in the launcher process (stage kind `optuna`).

    Its trials are cheap functions of data prepared once (clustering the embeddings of generated
    images takes seconds), so they need no Ray scheduling: `prepare(config, workdir)` runs once per
    stage and may cache in `workdir` (a resumed stage does not redo it), `evaluate(config, picks,
    data)` runs once per trial, and `finalize(config, picks, data, folder)` writes the best trial's
    result folder, which later stages receive by reference (`clustering.best`).

    `branches` declare the conditional space: {"reducer": {"umap": UmapConfig, "pca": PcaConfig}}.
    The YAML picks which options to search and each option's settings; a trial receives one
    BranchPick per branch.
    """

    name: str
    config_cls: type
    branches: Mapping[str, Mapping[str, type]]
    prepare: Callable[[Any, Path], Any]
    evaluate: Callable[[Any, Mapping[str, BranchPick], Any], Mapping[str, float]]
    finalize: Callable[[Any, Mapping[str, BranchPick], Any, Path], None]
    metrics: tuple[Metric, ...]
    description: str
    preflight: Callable[[Any], None] | None = None
    datasets: Callable[[Any], tuple[DatasetUse, ...]] | None = None
    describe_data: Callable[[Any], Mapping[str, float]] | None = None  # logged on the stage's run
    tiny_config: Mapping[str, Any] = field(default_factory=dict)  # as in TrainableDef
    contract_inputs: ContractInputs | None = None
    # The one trial a tiny run scores: per branch an option and its settings, {"reducer": ("pca", {...})}.
    tiny_picks: Mapping[str, tuple[str, Mapping[str, Any]]] = field(default_factory=dict)

    def metric(self, name: str) -> Metric:
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(name)
