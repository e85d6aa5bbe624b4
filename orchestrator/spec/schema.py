"""The frozen, typed objects a study file becomes (`StudySpec` and its stages); the rest of the orchestrator
reads these, never the YAML. Only plain data and the small derived facts each object answers itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float


@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float


@dataclass(frozen=True)
class IntRange:
    """Integers from `low` to `high`, both included."""

    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class Choice:
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Grid:
    """Every value is tried (num_samples times); needs `searcher: {type: basic}`."""

    values: tuple[Any, ...]


SpaceEntry = Uniform | LogUniform | IntRange | Choice | Grid
SPACE_TYPES = {"uniform": Uniform, "loguniform": LogUniform, "int": IntRange, "choice": Choice, "grid": Grid}


def describe_entry(entry: SpaceEntry) -> str:
    """`loguniform[0.0001, 0.03]`: how the plan, the parent runs' params and PBT's mutations show an entry."""
    if isinstance(entry, Uniform):
        return f"uniform[{entry.low:g}, {entry.high:g}]"
    if isinstance(entry, LogUniform):
        return f"loguniform[{entry.low:g}, {entry.high:g}]"
    if isinstance(entry, IntRange):
        return f"int[{entry.low}, {entry.high}]{' log' if entry.log else ''}"
    if isinstance(entry, Choice):
        return f"choice{list(entry.values)}"
    if isinstance(entry, Grid):
        return f"grid{list(entry.values)}"
    raise TypeError(entry)


def representative_values(entry: SpaceEntry) -> tuple[Any, ...]:
    """Values a sampler may produce, used to type-check an entry against its config field."""
    if isinstance(entry, (Choice, Grid)):
        return entry.values
    return (entry.low, entry.high)


@dataclass(frozen=True)
class Reference:
    """`gan.best`: the best result of the earlier stage `gan` (its best checkpoint folder); `prototypes.clustering`:
    an output the earlier stage `prototypes` declares and recorded (orchestrator/stage_outputs.py)."""

    stage: str
    selector: str

    def __str__(self) -> str:
        return f"{self.stage}.{self.selector}"


@dataclass(frozen=True)
class AshaSpec:
    max_t: int
    grace_period: int = 1
    reduction_factor: float = 2.0
    # ASHA compares trials on one metric. None: the stage's metric (for a stage with several, the
    # champion's objective); `scheduler: {metric: NAME}` picks another the trainable reports.
    metric: str | None = None
    mode: Literal["max", "min"] | None = None


@dataclass(frozen=True)
class PbtSpec:
    """`scheduler: {type: pbt, ...}` (orchestrator/pbt.py parses and describes it; pbt_tune.py runs it)."""

    perturbation_interval: int  # epochs (training iterations) between two exploit/explore decisions
    mutations: Mapping[str, SpaceEntry] = field(default_factory=dict)
    quantile_fraction: float = 0.25  # the bottom fraction copies the top fraction
    resample_probability: float = 0.25  # else a number is scaled by 0.8 or 1.2, a choice moves to a neighbour
    # The metric trials are ranked on; None: the stage's (as ASHA's `metric`).
    metric: str | None = None
    mode: Literal["max", "min"] | None = None

    @property
    def max_t(self) -> None:
        """PBT stops no trial early: each ends at its trainable's own `epochs`."""
        return None


@dataclass(frozen=True)
class SearcherSpec:
    """`searcher: {sampler: tpe, seed: 0}`, the one spelling of both stage kinds (orchestrator/samplers.py).

    `type: basic` (tune stages only) is Tune's own random/grid variants instead of an Optuna sampler."""

    type: Literal["optuna", "basic"] = "optuna"
    # qmc: a scrambled Halton sequence (after one random first trial): space-filling, no two trials alike;
    # for a sweep of one or two settings, where TPE on a few trials keeps re-drawing the same integer.
    sampler: Literal["tpe", "random", "qmc"] = "tpe"
    seed: int | None = None


@dataclass(frozen=True)
class ResourcesSpec:
    """What one trial asks Ray for, and what it needs of a GPU.

    A fractional `gpu` (0.25) makes Ray pack floor(1/gpu) trials on one GPU; `gpu_memory_gb`
    (what one trial needs) and `device_memory_gb` (one GPU of the target machines) let that
    packing be checked before anything starts (`packing_problem`). `fallback: cpu` runs the
    trials on CPU where the local machine has no GPU, instead of refusing to start."""

    cpu: float = 1.0
    gpu: float = 0.0
    gpu_memory_gb: float | None = None
    device_memory_gb: float | None = None
    fallback: Literal["cpu"] | None = None


@dataclass(frozen=True)
class RegisterSpec:
    name: str
    alias: str = "champion"


@dataclass(frozen=True)
class ChampionBound:
    """`fid_mnist: {max: fid_real_ambiguous}`: a bound on one metric of a point; each side is a number
    or the name of another metric read from the same result, so a bound can be a yardstick the
    trainable measures itself (GASTeN: the FID of real boundary digits)."""

    metric: str
    min: float | str | None = None
    max: float | str | None = None

    def __str__(self) -> str:
        def side(value: float | str) -> str:
            return value if isinstance(value, str) else f"{value:g}"

        if self.min is not None and self.max is not None:
            return f"{side(self.min)} <= {self.metric} <= {side(self.max)}"
        return f"{self.metric} >= {side(self.min)}" if self.min is not None else f"{self.metric} <= {side(self.max)}"


@dataclass(frozen=True)
class ChampionRule:
    """How a stage with several metrics names its champion: among every evaluated epoch of every trial,
    the best `metric` (`mode`) of the points that meet every bound in `where`."""

    metric: str
    mode: Literal["max", "min"]
    where: tuple[ChampionBound, ...] = ()

    @property
    def metrics_read(self) -> tuple[str, ...]:
        """Every metric the rule reads: its objective, each bounded metric and each metric named as a bound."""
        names = [self.metric]
        for bound in self.where:
            names += [bound.metric] + [side for side in (bound.min, bound.max) if isinstance(side, str)]
        return tuple(dict.fromkeys(names))

    def __str__(self) -> str:
        text = f"{'maximize' if self.mode == 'max' else 'minimize'} {self.metric}"
        return text + (" where " + " and ".join(map(str, self.where)) if self.where else "")


@dataclass(frozen=True)
class TuneStage:
    name: str
    trainable: str
    # The stage's metric; for a stage with several (`metrics`), the champion's objective.
    metric: str
    mode: Literal["max", "min"]
    config: Mapping[str, Any] = field(default_factory=dict)
    space: Mapping[str, SpaceEntry] = field(default_factory=dict)
    inputs: Mapping[str, Reference] = field(default_factory=dict)
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    scheduler: AshaSpec | PbtSpec | None = None  # PbtSpec: population-based training (orchestrator/pbt.py)
    searcher: SearcherSpec = SearcherSpec()
    resources: ResourcesSpec = ResourcesSpec()
    max_failures: int = 0
    register: RegisterSpec | None = None
    # Several metrics (`metric: [acd, fid_mnist]`): Optuna searches their Pareto front and `champion`
    # picks the stage's best point; both empty for a single-metric stage.
    metrics: tuple[str, ...] = ()
    modes: tuple[Literal["max", "min"], ...] = ()
    champion: ChampionRule | None = None
    kind: Literal["tune"] = "tune"

    @property
    def total_trials(self) -> int:
        grid_size = math.prod(len(e.values) for e in self.space.values() if isinstance(e, Grid))
        return self.num_samples * grid_size

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    @property
    def objectives(self) -> tuple[tuple[str, str], ...]:
        """(metric, mode) of every metric the search optimises: one for a single-metric stage."""
        return tuple(zip(self.metrics, self.modes)) if self.multi_objective else ((self.metric, self.mode),)

    @property
    def scheduler_metric(self) -> tuple[str, str]:
        """The one metric (and its mode) ASHA stops trials on, also Tune's own bookkeeping metric."""
        if self.scheduler is not None and self.scheduler.metric:
            return self.scheduler.metric, self.scheduler.mode or self.mode
        return self.metric, self.mode


@dataclass(frozen=True)
class JobStage:
    name: str
    job: str
    config: Mapping[str, Any] = field(default_factory=dict)
    inputs: Mapping[str, Reference] = field(default_factory=dict)
    kind: Literal["job"] = "job"


@dataclass(frozen=True)
class BranchOption:
    """One option of a conditional choice (`umap` under `reducer`): its searched and fixed settings."""

    space: Mapping[str, SpaceEntry] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Constraint:
    """A bound a trial's metric must meet to count (`n_clusters: {min: 2}`), so degenerate answers
    (one cluster, everything noise) cannot win however good their objective looks."""

    metric: str
    min: float | None = None
    max: float | None = None

    def violation(self, value: float | None) -> float:
        """<= 0 when met (Optuna's convention for constraints); a missing or NaN value violates."""
        if value is None or math.isnan(value):
            return 1.0
        over_min = self.min - value if self.min is not None else -math.inf
        over_max = value - self.max if self.max is not None else -math.inf
        return max(over_min, over_max)

    def __str__(self) -> str:
        bounds = [f"{self.metric} >= {self.min:g}" if self.min is not None else "",
                  f"{self.metric} <= {self.max:g}" if self.max is not None else ""]
        return " and ".join(b for b in bounds if b)


@dataclass(frozen=True)
class OptunaStage:
    """A search run by an Optuna study in the launcher process, over an objective's conditional space."""

    name: str
    objective: str
    metric: str
    mode: Literal["max", "min"]
    config: Mapping[str, Any] = field(default_factory=dict)
    inputs: Mapping[str, Reference] = field(default_factory=dict)
    branches: Mapping[str, Mapping[str, BranchOption]] = field(default_factory=dict)
    constraints: tuple[Constraint, ...] = ()
    n_trials: int = 20
    n_jobs: int = 1
    searcher: SearcherSpec = SearcherSpec()
    kind: Literal["optuna"] = "optuna"


Stage = TuneStage | JobStage | OptunaStage


@dataclass(frozen=True)
class TrackingSpec:
    uri: str | None = None  # None: embedded SQLite store under the study's output folder
    experiment: str = ""


@dataclass(frozen=True)
class StudySpec:
    name: str
    output: Path
    tracking: TrackingSpec
    stages: tuple[Stage, ...]
    source: str
    description: str = ""
    profile: str = ""  # the profile these stages were built with ("" when the file declares none)
    profiles: tuple[str, ...] = ()  # every profile the file offers, the base one first
    # Every seed of the study derives from this one (orchestrator/seeds.py); `--seed` replaces it.
    seed: int = 0
    # True: parallel trials are suggested and stopped from a history that does not depend on which trial
    # finished first, so the same seed gives the same study (orchestrator/trial_order.py); False: Tune's
    # and Optuna's own asynchronous way, which keeps every slot busy but depends on timing.
    reproducible: bool = True
    # One line per older spelling the file still uses (`file: key: deprecated ...`); the launcher prints them.
    deprecations: tuple[str, ...] = field(default=(), compare=False)

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)
