"""What the orchestrator needs to know about a trainable, job or objective without reading its code.

A `TrainableDef` holds its config class, the metrics it reports (and which way is better, so a
scheduler's mode is never guessed), how to rebuild its model from a checkpoint for the model registry,
the datasets it reads (so the launcher fetches and verifies them once, before any trial starts), and a
cheap `preflight` that fails fast on anything else (e.g. a missing input file). Each also declares a
seconds-long run of itself (`tiny_config`, and `contract_inputs` for the earlier stages' results it
reads), so one contract test runs every entry of the catalog for real.

A job or objective also declares its `outputs`: the files it writes (tables, pictures, data) and the results
it passes on (the clustering its prototypes were picked from), by name and kind. The orchestrator records the ones a run
produced in the study state; later stages take them by reference (`prototypes.clustering`) and the report
shows them, so neither ever looks for file names.

These types live apart from `trainables.catalog` (the registry of built-in names) so that every
trainable can import them while the catalog imports the trainables: no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from trainables.checkpoint import Checkpoint
from trainables.data import DatasetUse
from trainables.reporter import Reporter


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
# What an output is. The report shows the first six kinds; the others are recorded for later stages (and
# for people), not shown.
SHOWN_KINDS = ("metrics", "table", "picture", "gallery", "images", "text")
OUTPUT_KINDS = {
    "metrics": "a JSON object of a job's metrics, headline first (a subfolder's headline table)",
    "table": "a markdown table, shown inline (linked when long)",
    "picture": "a PNG, shown",
    "gallery": "a folder of PNGs, the first few shown with the output's caption",
    "images": "a folder of PNGs, counted and not shown",
    "text": "a text file, shown as a block",
    "data": "a data file for code (parquet, npz)",
    "clustering": "a clustering result folder (trainables.prototypes.load_clustering_result)",
}


@dataclass(frozen=True)
class Output:
    """A file or folder a job writes into its folder (an objective: into its best trial's result folder), `path`
    relative to that folder; or a result it passes on, `from_config` naming the config field that holds it (the
    clustering a prototypes job picked from, which a later stage takes as `prototypes.clustering` instead of
    reading it out of a text file)."""

    kind: str
    path: str = ""
    caption: str = ""  # a gallery's caption under each picture
    from_config: str = ""

    def __post_init__(self) -> None:
        if self.kind not in OUTPUT_KINDS:
            raise ValueError(f"unknown output kind {self.kind!r} (known: {', '.join(OUTPUT_KINDS)})")
        if bool(self.path) == bool(self.from_config):
            raise ValueError("an output has a path in the job's folder or a from_config field, exactly one")


def under(folder: str, outputs: Mapping[str, Output]) -> dict[str, Output]:
    """Another job's outputs as written into `folder` of this job's folder (an evaluation running its parts
    in subfolders): names prefixed `folder.`, paths `folder/`; passed-on results are left out."""
    return {f"{folder}.{name}": replace(output, path=f"{folder}/{output.path}")
            for name, output in outputs.items() if output.path}


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
    build_model: Callable[[Checkpoint], nn.Module] | None = None
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
    # name -> Output, in the order the report shows them (a subfolder's after the job folder's own)
    outputs: Mapping[str, Output] = field(default_factory=dict)


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
    # name -> Output: what `finalize` writes into the best trial's result folder (paths relative to it)
    outputs: Mapping[str, Output] = field(default_factory=dict)

    def metric(self, name: str) -> Metric:
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(name)
