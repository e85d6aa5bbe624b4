"""Study YAML -> frozen, typed, validated `StudySpec`: the one place that reads YAML.

Validation never stops at the first problem: every problem in the file is collected and reported
as one line `FILE: stages[1].space.lr: low must be < high (0.01 >= 0.0001)`, so a user fixes
the whole file in one pass. Nothing here starts Ray or touches MLflow.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_type_hints

import yaml

from orchestrator.pbt import PbtSpec, check_pbt_stage, parse_pbt
from trainables import catalog
from trainables.config import ConfigError, build_config, check_value, field_names, required_fields

NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
REFERENCE_PATTERN = re.compile(r"^(?P<stage>[A-Za-z][A-Za-z0-9_-]*)\.(?P<selector>[A-Za-z_]+)$")
SELECTORS = ("best",)
MAX_STUDY_SEED = 2**31 - 1


# ---------------------------------------------------------------- errors


class SpecError(ValueError):
    """All problems of one study file; `str()` is one line per problem."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{self.source}: {key}: {message}" if key else f"{self.source}: {message}"
                for key, message in self.problems]


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.deprecations: list[tuple[str, str]] = []  # still accepted, said once by the launcher

    def add(self, key: str, message: str) -> None:
        self.items.append((key, message))

    def deprecated(self, key: str, message: str) -> None:
        self.deprecations.append((key, message))


# ---------------------------------------------------------------- space entries


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


def representative_values(entry: SpaceEntry) -> tuple[Any, ...]:
    """Values a sampler may produce, used to type-check an entry against its config field."""
    if isinstance(entry, (Choice, Grid)):
        return entry.values
    return (entry.low, entry.high)


# ---------------------------------------------------------------- stage parts


@dataclass(frozen=True)
class Reference:
    """`gan.best`: the best result of the earlier stage `gan` (its best checkpoint folder)."""

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


def trials_per_gpu(gpu_fraction: float) -> int:
    """How many trials asking for `gpu_fraction` of a GPU Ray puts on one GPU (1 for whole GPUs)."""
    if gpu_fraction >= 1:
        return 1
    return math.floor(1 / gpu_fraction + 1e-9)  # 1/0.1 is 10.000000000000002, 1/(1/3) may be 2.9999999999999996


def packing_problem(gpu_fraction: float, trial_memory_gb: float | None, device_memory_gb: float | None, *,
                    device: str = "device_memory_gb") -> str | None:
    """Why trials asking for `gpu_fraction` of a GPU and `trial_memory_gb` of its memory each cannot
    share a GPU of `device_memory_gb`, or None when they fit (or when a figure is not known).

    `device` says where the GPU's size comes from; it is named in the message in parentheses."""
    if gpu_fraction <= 0 or trial_memory_gb is None or device_memory_gb is None:
        return None
    if trial_memory_gb > device_memory_gb + 1e-9:
        return (f"each trial needs {trial_memory_gb:g} GB of GPU memory (gpu_memory_gb) but a GPU has "
                f"{device_memory_gb:g} GB ({device}): it does not fit even alone on a whole GPU")
    packed = trials_per_gpu(gpu_fraction)
    if packed * trial_memory_gb <= device_memory_gb + 1e-9:
        return None
    fitting = math.floor(device_memory_gb / trial_memory_gb + 1e-9)  # >= 1: a single trial fits (checked above)
    # 1/fitting rounded down to Ray's 4 decimals, so that it packs exactly `fitting` trials (1/6 -> 0.1666).
    suggestion = "1" if fitting == 1 else f"{math.floor(10_000 / fitting) / 10_000:g}"
    return (f"{packed} trials per GPU (gpu: {gpu_fraction:g}) x {trial_memory_gb:g} GB = "
            f"{packed * trial_memory_gb:g} GB do not fit a {device_memory_gb:g} GB GPU ({device}); use gpu: "
            f"{suggestion} ({fitting} per GPU) or lower gpu_memory_gb to {device_memory_gb / packed:.3g}")


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


# ---------------------------------------------------------------- YAML loading

# Bounds on what a study file may make the loader build. A real study is a few hundred values a few
# levels deep; without bounds, a few lines of aliases (each a list of the one before) expand to 10^8
# values and deep nesting overflows Python's recursion, so every later step (profiles, validation,
# the plan) would eat memory or crash instead of answering.
MAX_FILE_BYTES = 256_000
MAX_DEPTH = 100  # levels of nesting, aliases expanded
MAX_VALUES = 100_000  # keys, values and list items, aliases expanded
MAX_SCALAR_CHARS = 10_000  # one value
MAX_TOTAL_CHARS = 1_000_000  # every value together, aliases expanded


class _TooLarge(yaml.YAMLError):
    """A document past one of the bounds above; `mark` says where, when known."""

    def __init__(self, message: str, mark: Any = None) -> None:
        super().__init__(message)
        self.message, self.mark = message, mark


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expanded(root: yaml.Node) -> None:
    """Size, depth and text of the document as its aliases expand it, without expanding it: each node is
    measured once (an alias is the same node object as its anchor), bottom-up, without recursion."""
    measured: dict[int, tuple[int, int, int]] = {}  # id(node) -> (values, depth, characters)
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            parts = [measured[id(child)] for child in _children(node)]
            own = len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            values = min(1 + sum(p[0] for p in parts), MAX_VALUES + 1)
            depth = 1 + max((p[1] for p in parts), default=0)
            chars = min(own + sum(p[2] for p in parts), MAX_TOTAL_CHARS + 1)
            measured[key] = (values, depth, chars)
            on_path.discard(key)
            if values > MAX_VALUES:
                raise _TooLarge(f"the document expands to more than {MAX_VALUES:,} values through its aliases "
                                f"(*name); a study needs far fewer: check its anchors and aliases", node.start_mark)
            if depth > MAX_DEPTH:
                raise _TooLarge(f"the document nests more than {MAX_DEPTH} levels deep once its aliases are "
                                f"expanded", node.start_mark)
            if chars > MAX_TOTAL_CHARS:
                raise _TooLarge(f"the document's values add up to more than {MAX_TOTAL_CHARS:,} characters once "
                                f"its aliases are expanded", node.start_mark)
            continue
        if key in measured:
            continue
        if key in on_path:
            raise _TooLarge("an alias refers to a value that contains it (a loop)", node.start_mark)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in measured)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (YAML 1.1 insists on `1.0e-4`), refuses duplicate keys
    (a merged `<<: *anchor` key overridden by an explicit one is no duplicate) and stops at the bounds above
    while composing, before anything is built from the document."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        # `[[[[...`: stopped while scanning, before the scanner's look-ahead over thousands of open brackets
        if self.flow_level >= MAX_DEPTH:
            raise _TooLarge(f"nested more than {MAX_DEPTH} levels deep", self.get_mark())
        super().fetch_flow_collection_start(token_class)

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooLarge(f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_scalar_node(self, anchor: Any) -> Any:
        node = super().compose_scalar_node(anchor)
        if len(node.value) > MAX_SCALAR_CHARS:
            raise _TooLarge(f"a value of {len(node.value):,} characters; at most {MAX_SCALAR_CHARS:,} are "
                            f"accepted", node.start_mark)
        return node

    def compose_document(self) -> Any:
        node = super().compose_document()
        _check_expanded(node)
        return node


MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """A key written twice is refused (the later one would silently win). Keys merged in by `<<: *anchor`
    are not checked against the explicit ones: YAML says an explicit key overrides a merged one."""
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            continue  # an unhashable key is reported by PyYAML itself below
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (the later one would silently win)", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)  # merges first, then the explicit keys over them


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_without_duplicates)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(path: Path, source: str) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SpecError(source, [("", f"{size:,} bytes; a study file is at most {MAX_FILE_BYTES:,}")])
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(source, [("", "file not found")]) from None
    except UnicodeDecodeError as error:
        raise SpecError(source, [("", f"not UTF-8 text (byte {error.start}): save the file as UTF-8")]) from None
    except OSError as error:
        raise SpecError(source, [("", f"cannot read: {error.strerror}")]) from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except _TooLarge as error:
        where = f"line {error.mark.line + 1}, column {error.mark.column + 1}: " if error.mark else ""
        raise SpecError(source, [("", f"{where}{error.message}")]) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SpecError(source, [("", f"{where}YAML syntax error: {problem}")]) from None


# ---------------------------------------------------------------- parsing helpers


def _mapping(raw: Any, key: str, problems: _Problems) -> Mapping[str, Any] | None:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.add(key, f"expected a mapping, got {_kind(raw)}")
        return None
    return raw


def _kind(value: Any) -> str:
    return {list: "a list", str: f"the string {value!r}", int: f"the number {value!r}",
            float: f"the number {value!r}", bool: f"{str(value).lower()}", type(None): "nothing", dict: "a mapping"}.get(
        type(value), type(value).__name__)


def _unknown_keys(raw: Mapping[str, Any], allowed: tuple[str, ...], key: str, problems: _Problems) -> None:
    for name in raw:
        if name not in allowed:
            hint = _closest(str(name), allowed)
            problems.add(f"{key}.{name}" if key else str(name),
                         f"unknown key{f' (did you mean {hint!r}?)' if hint else ''}; allowed: {', '.join(allowed)}")


def _closest(name: str, options: tuple[str, ...]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(name, options, n=1, cutoff=0.7)
    return matches[0] if matches else None


def _number(raw: Mapping[str, Any], name: str, key: str, problems: _Problems, *, integer: bool = False,
            default: Any = None, required: bool = False) -> Any:
    where = f"{key}.{name}" if key else name
    if name not in raw or raw[name] is None:
        if required:
            problems.add(where, "required")
        return default
    value = raw[name]
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        problems.add(where, f"expected {'an integer' if integer else 'a number'}, got {_kind(value)}")
        return default
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite:
        problems.add(where, f"expected a finite number, got {str(value)[:20]}")
        return default
    return value


def _string(raw: Mapping[str, Any], name: str, key: str, problems: _Problems, *, default: Any = None,
            required: bool = False, choices: tuple[str, ...] | None = None) -> Any:
    if name not in raw or raw[name] is None:
        if required:
            problems.add(f"{key}.{name}" if key else name, "required")
        return default
    value = raw[name]
    if not isinstance(value, str):
        problems.add(f"{key}.{name}" if key else name, f"expected a string, got {_kind(value)}")
        return default
    if choices is not None and value not in choices:
        problems.add(f"{key}.{name}" if key else name, f"must be one of {', '.join(choices)}, got {value!r}")
        return default
    return value


# ---------------------------------------------------------------- parts


def _parse_space_entry(raw: Any, key: str, problems: _Problems) -> SpaceEntry | None:
    if not isinstance(raw, Mapping):
        problems.add(key, f"expected a mapping like {{type: uniform, low: 0.1, high: 1}}, got {_kind(raw)}")
        return None
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in SPACE_TYPES:
        problems.add(f"{key}.type", f"must be one of {', '.join(SPACE_TYPES)}, got {kind!r}")
        return None
    if kind in ("choice", "grid"):
        _unknown_keys(raw, ("type", "values"), key, problems)
        values = raw.get("values")
        if not isinstance(values, list) or not values:
            problems.add(f"{key}.values", "expected a non-empty list")
            return None
        if len({repr(v) for v in values}) != len(values):
            problems.add(f"{key}.values", f"has duplicates: {values}")
            return None
        return SPACE_TYPES[kind](tuple(values))
    integer = kind == "int"
    _unknown_keys(raw, ("type", "low", "high") + (("log",) if integer else ()), key, problems)
    count = len(problems.items)
    low = _number(raw, "low", key, problems, integer=integer, required=True)
    high = _number(raw, "high", key, problems, integer=integer, required=True)
    if len(problems.items) > count:
        return None
    if integer and low > high:
        problems.add(key, f"low must be <= high ({low} > {high})")
        return None
    if not integer and low >= high:
        problems.add(key, f"low must be < high ({low} >= {high})")
        return None
    log = raw.get("log", False)
    if kind == "loguniform" or log:
        if low <= 0:
            problems.add(f"{key}.low", f"must be > 0 on a log scale, got {low}")
            return None
    if integer:
        if not isinstance(log, bool):
            problems.add(f"{key}.log", f"expected true/false, got {_kind(log)}")
            return None
        return IntRange(low, high, log)
    return SPACE_TYPES[kind](float(low), float(high))


def _parse_reference(raw: Any, key: str, earlier: list[str], later: list[str], problems: _Problems) -> Reference | None:
    match = REFERENCE_PATTERN.match(raw) if isinstance(raw, str) else None
    if match is None:
        problems.add(key, f"expected a reference like 'stage.best', got {_kind(raw)}")
        return None
    stage, selector = match["stage"], match["selector"]
    if selector not in SELECTORS:
        problems.add(key, f"unknown selector {selector!r} (use: {', '.join(SELECTORS)})")
        return None
    if stage not in earlier:
        where = "a later stage" if stage in later else "an unknown stage"
        known = ", ".join(earlier) if earlier else "none: this is the first stage"
        problems.add(key, f"{raw!r} refers to {where}; a stage can only use earlier stages ({known})")
        return None
    return Reference(stage, selector)


def _parse_inputs(raw: Any, key: str, earlier: list[str], later: list[str], problems: _Problems) -> dict[str, Reference]:
    raw = _mapping(raw, key, problems)
    inputs = {}
    for name, value in (raw or {}).items():
        reference = _parse_reference(value, f"{key}.{name}", earlier, later, problems)
        if reference is not None:
            inputs[str(name)] = reference
    return inputs


def _check_config(config_cls: type, config: Mapping[str, Any], space: Mapping[str, SpaceEntry],
                  inputs: Mapping[str, Reference], key: str, what: str, problems: _Problems,
                  declared_inputs: Any = None, flat: bool = False) -> None:
    """Check names and types of constants, searched settings and inputs against `config_cls`.

    `declared_inputs` are the input names as written, valid or not: an input whose reference was
    already reported as wrong is not reported a second time as a missing setting. `flat` is for
    settings written side by side in one mapping (a branch option: `umap: {n_neighbors: ..., metric:
    cosine}`): problems are keyed `KEY.NAME` rather than `KEY.config.NAME` / `KEY.space.NAME`."""

    def where(group: str, name: str) -> str:
        return f"{key}.{name}" if flat else f"{key}.{group}.{name}"

    count = len(problems.items)
    declared = tuple(declared_inputs) if isinstance(declared_inputs, Mapping) else ()
    known = field_names(config_cls)
    hints = get_type_hints(config_cls)
    for group, names in (("config", config), ("space", space), ("inputs", inputs)):
        for name in names:
            if name not in known:
                hint = _closest(str(name), known)
                problems.add(where(group, name), f"{what} has no setting {name!r}"
                             f"{f' (did you mean {hint!r}?)' if hint else ''}; settings: {', '.join(known)}")
    for name in set(config) & set(space):
        problems.add(where("space", name), "is also set in config; keep it in one place")
    for name in set(inputs) & (set(config) | set(space)):
        problems.add(where("inputs", name), "is also set in config or space; keep it in one place")
    for name, entry in space.items():
        if name in known:
            for value in representative_values(entry):
                _, reason = check_value(name, value, hints[name])
                if reason is not None:
                    problems.add(where("space", name), f"sampled values do not fit the setting: {reason}")
                    break
    for name in inputs:
        if name in known:
            _, reason = check_value(name, "/checkpoint/folder", hints[name])
            if reason is not None:
                problems.add(where("inputs", name), f"setting {name!r} does not take a checkpoint folder")
    for name in required_fields(config_cls):
        if name not in config and name not in space and name not in inputs and name not in declared:
            problems.add(where("config", name), f"required by {what} (give it in config, space or inputs)")
    # Build once with representative values so range checks (__post_init__) run now, not mid-study.
    if len(problems.items) > count:
        return
    base = dict(config)
    base.update({name: representative_values(entry)[0] for name, entry in space.items()})
    base.update({name: "/checkpoint/folder" for name in {*inputs, *declared} if name in known})
    # Every value a sampler may produce (bounds, each choice) is checked, one setting at a time.
    samples = [(None, base)] + [(name, {**base, name: value}) for name, entry in space.items()
                                for value in representative_values(entry)[1:]]
    for searched, sample in samples:
        try:
            build_config(config_cls, sample)
        except ConfigError as error:
            for name, message in error.problems:
                if searched is not None:
                    problems.add(where("space", searched), f"the value {sample[searched]!r} fails: {message}")
                elif name in known:
                    problems.add(where("space" if name in space else "config", name), message)
                else:  # a range check in __post_init__: name the searched setting whose first value breaks it
                    culprit = _first_breaking_entry(config_cls, sample, space)
                    problems.add(where("space", culprit) if culprit else (key if flat else f"{key}.config"), message)
            if searched is None:
                return


def _first_breaking_entry(config_cls: type, sample: Mapping[str, Any], space: Mapping[str, SpaceEntry]) -> str | None:
    """The searched setting whose sampled value makes `sample` fail, if leaving it at its default fixes it."""
    defaults = {f.name for f in dataclasses.fields(config_cls)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    for name in space:
        if name in defaults:
            try:
                build_config(config_cls, {k: v for k, v in sample.items() if k != name})
            except ConfigError:
                continue
            return name
    return None


def _parse_tune_stage(raw: Mapping[str, Any], key: str, study: str, earlier: list[str], later: list[str],
                      problems: _Problems) -> TuneStage | None:
    allowed = ("name", "kind", "trainable", "config", "space", "inputs", "metric", "mode", "champion", "num_samples",
               "max_concurrent_trials", "scheduler", "searcher", "resources", "max_failures", "register")
    _unknown_keys(raw, allowed, key, problems)
    name = raw["name"]
    trainable_name = _string(raw, "trainable", key, problems, required=True)
    definition = None
    if trainable_name is not None:
        try:
            definition = catalog.trainable(trainable_name)
        except catalog.UnknownEntryError as error:
            problems.add(f"{key}.trainable", str(error))
    config = _mapping(raw.get("config"), f"{key}.config", problems) or {}
    space_raw = _mapping(raw.get("space"), f"{key}.space", problems) or {}
    space = {}
    for param, entry_raw in space_raw.items():
        entry = _parse_space_entry(entry_raw, f"{key}.space.{param}", problems)
        if entry is not None:
            space[str(param)] = entry
    inputs = _parse_inputs(raw.get("inputs"), f"{key}.inputs", earlier, later, problems)

    metrics, modes = _parse_tune_metrics(raw, key, trainable_name, definition, problems)
    if definition is not None:
        _check_config(definition.config_cls, config, space, inputs, key, f"trainable {trainable_name!r}", problems,
                      declared_inputs=raw.get("inputs"))
    champion = _parse_champion(raw.get("champion"), f"{key}.champion", metrics, trainable_name, definition, problems)
    metric, mode = (metrics[0], modes[0]) if len(metrics) == 1 else (None, "max")
    if champion is not None:  # several metrics: the stage's one metric is the champion's objective
        metric, mode = champion.metric, champion.mode

    num_samples = _number(raw, "num_samples", key, problems, integer=True, default=1)
    if num_samples is not None and num_samples < 1:
        problems.add(f"{key}.num_samples", f"must be >= 1, got {num_samples}")
    max_concurrent = _number(raw, "max_concurrent_trials", key, problems, integer=True)
    if max_concurrent is not None and max_concurrent < 1:
        problems.add(f"{key}.max_concurrent_trials", f"must be >= 1, got {max_concurrent}")
    max_failures = _number(raw, "max_failures", key, problems, integer=True, default=0)
    if max_failures is not None and max_failures < -1:
        problems.add(f"{key}.max_failures", f"must be >= 0 (or -1 for unlimited), got {max_failures}")

    scheduler = _parse_scheduler(raw.get("scheduler"), f"{key}.scheduler", problems)
    if scheduler is not None and scheduler.metric is not None:
        scheduler_mode = _metric_mode(scheduler.metric, f"{key}.scheduler.metric", trainable_name, definition,
                                      problems)
        scheduler = dataclasses.replace(scheduler, mode=scheduler_mode)
    if isinstance(scheduler, PbtSpec):
        check_pbt_stage(raw, key, scheduler, definition.config_cls if definition else None, problems)
    searcher = _parse_searcher(raw.get("searcher"), f"{key}.searcher", problems)
    if isinstance(scheduler, PbtSpec) and searcher is not None:  # a random first population (pbt_tune.py)
        searcher = dataclasses.replace(searcher, type="basic")
    if searcher is not None and searcher.type == "optuna":
        for param, entry in space.items():
            if isinstance(entry, Grid):
                problems.add(f"{key}.space.{param}", "grid needs `searcher: {type: basic}` (Optuna samples, it "
                             "does not enumerate); use `type: choice` to let Optuna pick")
    resources = _parse_resources(raw.get("resources"), f"{key}.resources", problems)
    register = _parse_register(raw.get("register"), f"{key}.register", f"{study}-{name}", definition, problems)
    if not space and (num_samples or 1) > 1 and searcher is not None and searcher.type == "optuna":
        problems.add(f"{key}.space", "is empty: Optuna has nothing to search; add a space or set num_samples: 1")
    return TuneStage(
        name=name, trainable=trainable_name or "", metric=metric or "", mode=mode, config=dict(config),
        space=space, inputs=inputs, num_samples=num_samples or 1, max_concurrent_trials=max_concurrent,
        scheduler=scheduler, searcher=searcher or SearcherSpec(),
        resources=resources or ResourcesSpec(), max_failures=max_failures or 0, register=register,
        metrics=metrics if len(metrics) > 1 else (), modes=modes if len(metrics) > 1 else (), champion=champion,
    )


def _metric_mode(name: str, key: str, trainable_name: str | None, definition: catalog.TrainableDef | None,
                 problems: _Problems) -> Literal["max", "min"] | None:
    """The direction the trainable declares for its metric `name`; None (and a problem) when it has none."""
    if definition is None:
        return None
    try:
        return definition.metric(name).mode
    except KeyError:
        known = tuple(m.name for m in definition.metrics)
        hint = _closest(name, known)
        problems.add(key, f"trainable {trainable_name!r} does not report {name!r}"
                     f"{f' (did you mean {hint!r}?)' if hint else ''}; it reports: {', '.join(known)}")
        return None


def _parse_tune_metrics(raw: Mapping[str, Any], key: str, trainable_name: str | None,
                        definition: catalog.TrainableDef | None,
                        problems: _Problems) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`metric: NAME` or `metric: [A, B]` (a two-objective search), and their directions.

    The trainable declares which way each metric is better; an optional `mode` (a string, or a list
    matching the metrics) only restates it, and one that contradicts it is refused."""
    raw_metric = raw.get("metric")
    if raw_metric is None:
        problems.add(f"{key}.metric", "required")
        return (), ()
    if isinstance(raw_metric, str):
        named = [(f"{key}.metric", raw_metric)]
    elif isinstance(raw_metric, list):
        named = [(f"{key}.metric[{i}]", name) for i, name in enumerate(raw_metric)]
        if len(raw_metric) < 2:
            problems.add(f"{key}.metric", f"a list names two or more metrics to search together; for one, "
                         f"write metric: NAME (got {raw_metric})")
            return (), ()
        for where, name in named:
            if not isinstance(name, str):
                problems.add(where, f"expected a metric name, got {_kind(name)}")
                return (), ()
        if len(set(raw_metric)) != len(raw_metric):
            problems.add(f"{key}.metric", f"names a metric twice: {raw_metric}")
            return (), ()
    else:
        problems.add(f"{key}.metric", f"expected a metric name or a list of them, got {_kind(raw_metric)}")
        return (), ()
    metrics = tuple(name for _, name in named)
    modes = tuple(_metric_mode(name, where, trainable_name, definition, problems) for where, name in named)
    if None in modes:
        return metrics, tuple(mode or "max" for mode in modes)
    _check_declared_modes(raw.get("mode"), key, metrics, modes, trainable_name, problems)
    return metrics, modes


def _check_declared_modes(raw_mode: Any, key: str, metrics: tuple[str, ...], modes: tuple[str, ...],
                          trainable_name: str | None, problems: _Problems) -> None:
    if raw_mode is None:
        return
    if len(metrics) == 1:
        stated = [(f"{key}.mode", raw_mode)]
    elif isinstance(raw_mode, list) and len(raw_mode) == len(metrics):
        stated = [(f"{key}.mode[{i}]", mode) for i, mode in enumerate(raw_mode)]
    else:
        problems.add(f"{key}.mode", f"expected a list of {len(metrics)} modes matching metric {list(metrics)}, "
                     f"got {_kind(raw_mode)}")
        return
    for (where, stated_mode), metric, mode in zip(stated, metrics, modes):
        if stated_mode not in ("max", "min"):
            problems.add(where, f"must be max or min, got {_kind(stated_mode)}")
        elif stated_mode != mode:
            problems.add(where, f"{stated_mode!r} contradicts trainable {trainable_name!r}, which declares {metric} "
                         f"{'higher' if mode == 'max' else 'lower'}-is-better; write {mode} or drop mode "
                         f"(it comes from the trainable)")


def _parse_champion(raw: Any, key: str, metrics: tuple[str, ...], trainable_name: str | None,
                    definition: catalog.TrainableDef | None, problems: _Problems) -> ChampionRule | None:
    """`champion: {minimize: acd, where: {fid_mnist: {max: fid_real_ambiguous}}}`: required for a stage with
    several metrics (which point of the front is its champion), refused on a single-metric one."""
    if len(metrics) < 2:
        if raw is not None and metrics:
            problems.add(key, "only for a stage with several metrics (metric: [A, B]); a single-metric stage's "
                         "champion is the best value of its metric")
        return None
    if raw is None:
        problems.add(key, f"required for a stage with several metrics: which point of their front is the champion, "
                     f"e.g. {{minimize: {metrics[0]}, where: {{{metrics[1]}: {{max: 40}}}}}}")
        return None
    raw = _mapping(raw, key, problems)
    if raw is None:
        return None
    _unknown_keys(raw, ("minimize", "maximize", "where"), key, problems)
    goals = [(verb, raw[verb]) for verb in ("minimize", "maximize") if verb in raw]
    if len(goals) != 1:
        what = "only one of minimize, maximize" if goals else "minimize: METRIC or maximize: METRIC"
        problems.add(key, f"give {what}: the metric the champion is best at (one of {', '.join(metrics)})")
        return None
    verb, objective = goals[0]
    mode = "min" if verb == "minimize" else "max"
    if not isinstance(objective, str) or objective not in metrics:
        problems.add(f"{key}.{verb}", f"must be one of the stage's metrics ({', '.join(metrics)}), "
                     f"got {_kind(objective)}")
        return None
    declared = _metric_mode(objective, f"{key}.{verb}", trainable_name, definition, problems)
    if declared is not None and declared != mode:
        other = "maximize" if declared == "max" else "minimize"
        problems.add(f"{key}.{verb}", f"trainable {trainable_name!r} declares {objective} "
                     f"{'higher' if declared == 'max' else 'lower'}-is-better: write {other}: {objective}")
    where_raw = _mapping(raw.get("where"), f"{key}.where", problems) or {}
    bounds = []
    for metric, sides in where_raw.items():
        where = f"{key}.where.{metric}"
        if _metric_mode(str(metric), where, trainable_name, definition, problems) is None and definition is not None:
            continue
        sides = _mapping(sides, where, problems)
        if sides is None:
            continue
        count = len(problems.items)
        _unknown_keys(sides, ("min", "max"), where, problems)
        values = {side: _bound_side(sides, side, where, trainable_name, definition, problems) for side in ("min", "max")}
        if "min" not in sides and "max" not in sides:
            if len(problems.items) == count:  # a misspelt side was named already
                problems.add(where, "give min, max or both; each a number or another metric's name, like "
                             "{max: 40} or {max: OTHER_METRIC}")
        elif all(isinstance(values[side], (int, float)) for side in ("min", "max")) and values["min"] > values["max"]:
            problems.add(where, f"min must be <= max ({values['min']:g} > {values['max']:g})")
        else:
            bounds.append(ChampionBound(str(metric), values["min"], values["max"]))
    return ChampionRule(objective, mode, tuple(bounds))


def _bound_side(sides: Mapping[str, Any], side: str, key: str, trainable_name: str | None,
                definition: catalog.TrainableDef | None, problems: _Problems) -> float | str | None:
    """One side of a champion bound: a finite number, or the name of a metric the trainable reports."""
    if sides.get(side) is None:
        return None
    value = sides[side]
    if isinstance(value, str):
        known = _metric_mode(value, f"{key}.{side}", trainable_name, definition, problems) is not None
        return value if known or definition is None else None
    number = _number(sides, side, key, problems)
    return None if number is None else float(number)


def _parse_scheduler(raw: Any, key: str, problems: _Problems) -> AshaSpec | PbtSpec | None:
    """None means no early stopping (or an invalid block, already recorded in `problems`)."""
    if raw is None or raw == "none":
        return None
    raw = _mapping(raw, key, problems)
    if raw is None:
        return None
    kind = _string(raw, "type", key, problems, required=True, choices=("asha", "pbt"))
    if kind is None:
        return None
    if kind == "pbt":
        return parse_pbt(raw, key, problems)
    _unknown_keys(raw, ("type", "max_t", "grace_period", "reduction_factor", "metric"), key, problems)
    max_t = _number(raw, "max_t", key, problems, integer=True, required=True)
    grace = _number(raw, "grace_period", key, problems, integer=True, default=1)
    factor = _number(raw, "reduction_factor", key, problems, default=2.0)
    if max_t is None or grace is None or factor is None:
        return None
    if max_t < 1:
        problems.add(f"{key}.max_t", f"must be >= 1, got {max_t}")
    elif not 1 <= grace <= max_t:
        problems.add(f"{key}.grace_period", f"must be between 1 and max_t ({max_t}), got {grace}")
    if factor <= 1:
        problems.add(f"{key}.reduction_factor", f"must be > 1, got {factor}")
    metric = _string(raw, "metric", key, problems)
    return AshaSpec(max_t, grace, float(factor), metric)


def _parse_searcher(raw: Any, key: str, problems: _Problems, kinds: tuple[str, ...] = ("optuna", "basic"),
                    samplers: tuple[str, ...] = ("tpe", "random", "qmc")) -> SearcherSpec | None:
    raw = _mapping(raw, key, problems)
    if raw is None:
        return None
    _unknown_keys(raw, ("type", "sampler", "seed"), key, problems)
    kind = _string(raw, "type", key, problems, default="optuna", choices=kinds)
    sampler = _string(raw, "sampler", key, problems, default="tpe", choices=samplers)
    seed = _number(raw, "seed", key, problems, integer=True)
    if kind == "basic" and "sampler" in raw:
        problems.add(f"{key}.sampler", "only applies to `type: optuna`")
    return SearcherSpec(kind or "optuna", sampler or "tpe", seed)


def _parse_resources(raw: Any, key: str, problems: _Problems) -> ResourcesSpec | None:
    raw = _mapping(raw, key, problems)
    if raw is None:
        return None
    _unknown_keys(raw, ("cpu", "gpu", "gpu_memory_gb", "device_memory_gb", "fallback"), key, problems)
    count = len(problems.items)
    cpu = _number(raw, "cpu", key, problems, default=1.0)
    gpu = _number(raw, "gpu", key, problems, default=0.0)
    if cpu is not None and cpu <= 0:
        problems.add(f"{key}.cpu", f"must be > 0, got {cpu}")
    if gpu is not None and (gpu < 0 or (gpu > 1 and gpu != int(gpu))):
        problems.add(f"{key}.gpu", f"must be >= 0, and a whole number when above 1 (got {gpu})")
    memory = {}
    for name in ("gpu_memory_gb", "device_memory_gb"):
        memory[name] = _number(raw, name, key, problems)
        if memory[name] is not None and memory[name] <= 0:
            problems.add(f"{key}.{name}", f"must be > 0 (GB), got {memory[name]}")
            memory[name] = None
    fallback = _string(raw, "fallback", key, problems, choices=("cpu", "none"))
    if len(problems.items) == count:  # the packing is judged only on valid figures
        problem = packing_problem(float(gpu or 0.0), memory["gpu_memory_gb"], memory["device_memory_gb"])
        if problem:
            problems.add(key, problem)
    return ResourcesSpec(float(cpu or 1.0), float(gpu or 0.0),
                         gpu_memory_gb=None if memory["gpu_memory_gb"] is None else float(memory["gpu_memory_gb"]),
                         device_memory_gb=None if memory["device_memory_gb"] is None
                         else float(memory["device_memory_gb"]),
                         fallback="cpu" if fallback == "cpu" else None)


def _parse_register(raw: Any, key: str, default_name: str, definition: catalog.TrainableDef | None,
                    problems: _Problems) -> RegisterSpec | None:
    can_register = definition is not None and definition.build_model is not None
    if raw is False:
        return None
    if raw is None or raw is True:
        if raw is True and definition is not None and not can_register:
            problems.add(key, f"trainable {definition.name!r} has no model to register")
        return RegisterSpec(default_name) if can_register else None
    raw = _mapping(raw, key, problems)
    if raw is None:
        return None
    _unknown_keys(raw, ("name", "alias"), key, problems)
    name = _string(raw, "name", key, problems, default=default_name)
    alias = _string(raw, "alias", key, problems, default="champion")
    for field_name, value in (("name", name), ("alias", alias)):
        if value is not None and not NAME_PATTERN.match(value):
            problems.add(f"{key}.{field_name}", f"use letters, digits, '_', '-', '.' (got {value!r})")
    if definition is not None and not can_register:
        problems.add(key, f"trainable {definition.name!r} has no model to register")
        return None
    return RegisterSpec(name or default_name, alias or "champion")


def _parse_job_stage(raw: Mapping[str, Any], key: str, earlier: list[str], later: list[str],
                     problems: _Problems) -> JobStage | None:
    _unknown_keys(raw, ("name", "kind", "job", "config", "inputs"), key, problems)
    job_name = _string(raw, "job", key, problems, required=True)
    config = _mapping(raw.get("config"), f"{key}.config", problems) or {}
    inputs = _parse_inputs(raw.get("inputs"), f"{key}.inputs", earlier, later, problems)
    if job_name is not None:
        try:
            definition = catalog.job(job_name)
        except catalog.UnknownEntryError as error:
            problems.add(f"{key}.job", str(error))
        else:
            _check_config(definition.config_cls, config, {}, inputs, key, f"job {job_name!r}", problems,
                          declared_inputs=raw.get("inputs"))
    return JobStage(name=raw["name"], job=job_name or "", config=dict(config), inputs=inputs)


def _parse_branch_option(raw: Any, option_cls: type, key: str, what: str, problems: _Problems) -> BranchOption | None:
    """`umap: {n_neighbors: {type: int, low: 5, high: 50}, metric: cosine}`: a mapping is searched, the rest fixed."""
    raw = _mapping(raw, key, problems)
    if raw is None:
        return None
    space, fixed = {}, {}
    for name, value in raw.items():
        if isinstance(value, Mapping):
            entry = _parse_space_entry(value, f"{key}.{name}", problems)
            if isinstance(entry, Grid):
                problems.add(f"{key}.{name}", "grid is for Tune's basic searcher; Optuna samples: use `type: choice`")
            elif entry is not None:
                space[str(name)] = entry
        else:
            fixed[str(name)] = value
    _check_config(option_cls, fixed, space, {}, key, what, problems, flat=True)
    return BranchOption(space=space, fixed=fixed)


def _parse_constraints(raw: Any, key: str, definition: catalog.ObjectiveDef | None,
                       problems: _Problems) -> tuple[Constraint, ...]:
    raw = _mapping(raw, key, problems) or {}
    constraints = []
    for metric, bounds in raw.items():
        where = f"{key}.{metric}"
        if definition is not None and metric not in {m.name for m in definition.metrics}:
            problems.add(where, f"objective {definition.name!r} does not report {metric!r} "
                         f"(it reports: {', '.join(m.name for m in definition.metrics)})")
            continue
        bounds = _mapping(bounds, where, problems)
        if bounds is None:
            continue
        _unknown_keys(bounds, ("min", "max"), where, problems)
        low, high = _number(bounds, "min", where, problems), _number(bounds, "max", where, problems)
        if low is None and high is None:
            problems.add(where, "give min, max or both, like {min: 2}")
        elif low is not None and high is not None and low > high:
            problems.add(where, f"min must be <= max ({low} > {high})")
        else:
            constraints.append(Constraint(str(metric), low, high))
    return tuple(constraints)


def _parse_optuna_stage(raw: Mapping[str, Any], key: str, earlier: list[str], later: list[str],
                        problems: _Problems) -> OptunaStage | None:
    allowed = ("name", "kind", "objective", "config", "space", "inputs", "metric", "constraints", "n_trials",
               "n_jobs", "searcher", "sampler")
    _unknown_keys(raw, allowed, key, problems)
    objective_name = _string(raw, "objective", key, problems, required=True)
    definition = None
    if objective_name is not None:
        try:
            definition = catalog.objective(objective_name)
        except catalog.UnknownEntryError as error:
            problems.add(f"{key}.objective", str(error))
    config = _mapping(raw.get("config"), f"{key}.config", problems) or {}
    inputs = _parse_inputs(raw.get("inputs"), f"{key}.inputs", earlier, later, problems)
    space_raw = _mapping(raw.get("space"), f"{key}.space", problems) or {}
    branches: dict[str, dict[str, BranchOption]] = {}
    mode = "max"
    metric = _string(raw, "metric", key, problems, required=True)
    if definition is not None:
        what = f"objective {objective_name!r}"
        _check_config(definition.config_cls, config, {}, inputs, key, what, problems,
                      declared_inputs=raw.get("inputs"))
        for branch, options_raw in space_raw.items():
            where = f"{key}.space.{branch}"
            known = definition.branches.get(branch)
            if known is None:
                names = ", ".join(definition.branches) or "none"
                problems.add(where, f"{what} searches no {branch!r} (its branches: {names}); fixed settings go "
                             f"in config")
                continue
            options_raw = _mapping(options_raw, where, problems)
            if options_raw is None:
                continue
            if not options_raw:
                problems.add(where, f"name at least one {branch} to try ({', '.join(known)})")
            options = {}
            for option, settings in options_raw.items():
                if option not in known:
                    hint = _closest(str(option), tuple(known))
                    problems.add(f"{where}.{option}", f"unknown {branch} {option!r}"
                                 f"{f' (did you mean {hint!r}?)' if hint else ''}; known: {', '.join(known)}")
                    continue
                parsed = _parse_branch_option(settings, known[option], f"{where}.{option}",
                                              f"{branch} {option!r}", problems)
                if parsed is not None:
                    options[str(option)] = parsed
            branches[str(branch)] = options
        for branch in definition.branches:
            if branch not in space_raw:
                problems.add(f"{key}.space.{branch}", f"required: the {branch} options to search "
                             f"(from: {', '.join(definition.branches[branch])})")
        if metric is not None:
            try:
                mode = definition.metric(metric).mode
            except KeyError:
                problems.add(f"{key}.metric", f"objective {objective_name!r} does not report {metric!r} "
                             f"(it reports: {', '.join(m.name for m in definition.metrics)})")
    constraints = _parse_constraints(raw.get("constraints"), f"{key}.constraints", definition, problems)
    n_trials = _number(raw, "n_trials", key, problems, integer=True, default=20)
    if n_trials is not None and n_trials < 1:
        problems.add(f"{key}.n_trials", f"must be >= 1, got {n_trials}")
    n_jobs = _number(raw, "n_jobs", key, problems, integer=True, default=1)
    if n_jobs is not None and n_jobs < 1:
        problems.add(f"{key}.n_jobs", f"must be >= 1 (trials run in that many threads), got {n_jobs}")
    searcher = (_parse_old_sampler(raw, key, problems) if "sampler" in raw else
                _parse_searcher(raw.get("searcher"), f"{key}.searcher", problems, kinds=("optuna",),
                                samplers=("tpe", "random")))
    return OptunaStage(name=raw["name"], objective=objective_name or "", metric=metric or "", mode=mode,
                       config=dict(config), inputs=inputs, branches=branches, constraints=constraints,
                       n_trials=n_trials or 20, n_jobs=n_jobs or 1, searcher=searcher or SearcherSpec())


def _parse_old_sampler(raw: Mapping[str, Any], key: str, problems: _Problems) -> SearcherSpec:
    """An optuna stage's older spelling `sampler: {type: tpe, seed: 0}`: still accepted, with a line saying
    how to write it now."""
    if "searcher" in raw:
        problems.add(f"{key}.sampler", "give `searcher:` alone (`sampler: {type: ..., seed: ...}` is its older "
                                       "spelling)")
    old = _mapping(raw["sampler"], f"{key}.sampler", problems) or {}
    _unknown_keys(old, ("type", "seed"), f"{key}.sampler", problems)
    sampler = _string(old, "type", f"{key}.sampler", problems, default="tpe", choices=("tpe", "random")) or "tpe"
    seed = _number(old, "seed", f"{key}.sampler", problems, integer=True)
    written = f"sampler: {sampler}" + (f", seed: {seed}" if seed is not None else "")
    problems.deprecated(f"{key}.sampler", f"deprecated spelling, write `searcher: {{{written}}}` (as tune stages do)")
    return SearcherSpec("optuna", sampler, seed)


# ---------------------------------------------------------------- profiles

PROFILE_KEYS = ("extends", "output", "description", "stages")


def _deep_merge(base: Any, patch: Any, replace_children: bool = False) -> Any:
    """`patch` over `base`: mappings merge key by key, anything else is replaced.

    Under `space`, an entry is replaced whole (merging `{type: choice, values: ...}` into a
    `{type: loguniform, low: ...}` entry would make a chimera of both)."""
    if not isinstance(base, Mapping) or not isinstance(patch, Mapping):
        return patch
    merged = dict(base)
    for key, value in patch.items():
        if replace_children or key not in merged:
            merged[key] = value
        else:
            merged[key] = _deep_merge(merged[key], value, replace_children=key == "space")
    return merged


def apply_profile(raw: Any, source: str, profile: str | None) -> tuple[Any, str, tuple[str, ...]]:
    """The study document with profile `profile` applied, the profile's name, and every name offered.

    A study file describes its default (base) profile directly in `stages`, names it with
    `profile: quick`, and lists other profiles as patches keyed by stage name:

        profiles:
          paper:
            output: runs/gasten_mnist-paper
            stages:
              gan: {config: {epochs: 10}, num_samples: 8}

    A patch may change `output`, `description` and any stage key, and may start from another
    profile (`extends: paper`); without its own `output` a non-base profile writes to
    `<output>-<profile>`, so two profiles never share a folder.
    """
    if not isinstance(raw, Mapping) or ("profiles" not in raw and "profile" not in raw):
        if profile:
            raise SpecError(source, [("profiles", f"the file defines no profiles, so --profile {profile} "
                                                  "cannot be applied; add a `profiles:` section")])
        return raw, "", ()
    problems = _Problems()
    base_name = _string(raw, "profile", "", problems, default="default")
    patches = _mapping(raw.get("profiles"), "profiles", problems) or {}
    if base_name is not None and base_name in patches:
        problems.add(f"profiles.{base_name}", f"is the base profile (`profile: {base_name}`): its settings are the "
                     "stages themselves; give other profiles a different name")
    names = (base_name or "default", *[str(name) for name in patches if name != base_name])
    chosen = profile or base_name or "default"
    if chosen not in names:
        problems.add("profiles", f"no profile {chosen!r} (this file has: {', '.join(names)})")
    document = {k: v for k, v in raw.items() if k not in ("profile", "profiles")}
    if problems.items:
        raise SpecError(source, problems.items)
    if chosen == names[0]:
        return document, chosen, names
    chain = _profile_chain(chosen, patches, names[0], problems)  # `extends` first, `chosen` last
    stages = document.get("stages")
    stage_names = [s.get("name") for s in stages if isinstance(s, Mapping)] if isinstance(stages, list) else []
    own_output = False
    for name in chain:
        key = f"profiles.{name}"
        patch = _mapping(patches[name], key, problems) or {}
        _unknown_keys(patch, PROFILE_KEYS, key, problems)
        stage_patches = _mapping(patch.get("stages"), f"{key}.stages", problems) or {}
        for stage_name, stage_patch in stage_patches.items():
            if stage_name not in stage_names:
                problems.add(f"{key}.stages.{stage_name}",
                             f"no stage named {stage_name!r} (stages: {', '.join(map(str, stage_names))})")
            elif not isinstance(stage_patch, Mapping):
                problems.add(f"{key}.stages.{stage_name}",
                             f"expected a mapping of stage settings, got {_kind(stage_patch)}")
            elif "name" in stage_patch or "kind" in stage_patch:
                problems.add(f"{key}.stages.{stage_name}", "a profile cannot rename a stage or change its kind")
        if problems.items:
            continue
        if isinstance(stages, list):
            stages = [_deep_merge(s, stage_patches[s["name"]])
                      if isinstance(s, Mapping) and s.get("name") in stage_patches else s for s in stages]
        for field_name in ("description", "output"):
            if field_name in patch:
                document[field_name] = patch[field_name]
                own_output = own_output or field_name == "output"
    if problems.items:
        raise SpecError(source, problems.items)
    if isinstance(stages, list):
        document["stages"] = stages
    if not own_output and isinstance(document.get("output"), str):
        document["output"] = f"{document['output']}-{chosen}"
    return document, chosen, names


def _profile_chain(chosen: str, patches: Mapping[str, Any], base: str, problems: _Problems) -> list[str]:
    """`chosen` and the profiles it `extends`, oldest ancestor first (the base profile is implicit)."""
    chain: list[str] = []
    name = chosen
    while name != base:
        if name in chain:
            problems.add(f"profiles.{chosen}.extends", f"profiles extend each other in a loop: "
                         f"{' -> '.join([*chain, name])}")
            return []
        chain.append(name)
        patch = patches.get(name)
        parent = patch.get("extends", base) if isinstance(patch, Mapping) else base
        if parent != base and parent not in patches:
            problems.add(f"profiles.{name}.extends", f"no profile {parent!r} to extend "
                         f"(this file has: {', '.join([base, *map(str, patches)])})")
            return []
        name = parent
    return chain[::-1]


# ---------------------------------------------------------------- entry point


def parse_study(raw: Any, source: str, default_output: Path | None = None, profile: str | None = None) -> StudySpec:
    """Validate an already-loaded YAML document; raise SpecError listing every problem."""
    raw, profile_name, profile_names = apply_profile(raw, source, profile)
    # A problem may come from the profile's patch: say which profile was applied.
    label = f"{source} (profile {profile_name})" if profile_name and profile_name != profile_names[0] else source
    problems = _Problems()
    if not isinstance(raw, Mapping):
        raise SpecError(label, [("", f"expected a mapping with keys study, stages, ... at the top, got {_kind(raw)}")])
    _unknown_keys(raw, ("study", "description", "output", "tracking", "seed", "reproducible", "stages"), "",
                  problems)
    study = _string(raw, "study", "", problems, required=True)
    seed = _number(raw, "seed", "", problems, integer=True, default=0)
    if seed is not None and not 0 <= seed <= MAX_STUDY_SEED:
        problems.add("seed", f"must be an integer from 0 to {MAX_STUDY_SEED}, got {seed}")
    reproducible = raw.get("reproducible", True)
    if not isinstance(reproducible, bool):
        problems.add("reproducible", f"expected true (the same seed gives the same study) or false (asynchronous: "
                                     f"every slot kept busy, results depend on timing), got {_kind(reproducible)}")
    if study is not None and not NAME_PATTERN.match(study):
        problems.add("study", f"use letters, digits, '_', '-', '.' and start with a letter (got {study!r})")
    description = _string(raw, "description", "", problems, default="")
    output = _string(raw, "output", "", problems)
    tracking_raw = _mapping(raw.get("tracking"), "tracking", problems) or {}
    _unknown_keys(tracking_raw, ("uri", "experiment"), "tracking", problems)
    tracking = TrackingSpec(
        uri=_string(tracking_raw, "uri", "tracking", problems),
        experiment=_string(tracking_raw, "experiment", "tracking", problems, default=study or ""),
    )

    stages_raw = raw.get("stages")
    stages: list[Stage] = []
    if not isinstance(stages_raw, list) or not stages_raw:
        problems.add("stages", "expected a non-empty list of stages")
        stages_raw = []
    names = [s.get("name") if isinstance(s, Mapping) else None for s in stages_raw]
    for index, stage_raw in enumerate(stages_raw):
        key = f"stages[{index}]"
        if not isinstance(stage_raw, Mapping):
            problems.add(key, f"expected a mapping, got {_kind(stage_raw)}")
            continue
        name = stage_raw.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.match(name) or "." in name:
            problems.add(f"{key}.name", f"required: letters, digits, '_', '-' starting with a letter (got {name!r})")
            continue
        if name in names[:index]:
            problems.add(f"{key}.name", f"duplicate stage name {name!r}")
            continue
        earlier = [n for n in names[:index] if isinstance(n, str)]
        later = [n for n in names[index + 1:] if isinstance(n, str)]
        kind = stage_raw.get("kind")
        if kind == "tune":
            stage = _parse_tune_stage(stage_raw, key, study or "study", earlier, later, problems)
        elif kind == "job":
            stage = _parse_job_stage(stage_raw, key, earlier, later, problems)
        elif kind == "optuna":
            stage = _parse_optuna_stage(stage_raw, key, earlier, later, problems)
        else:
            problems.add(f"{key}.kind", f"must be one of tune, optuna, job, got {kind!r}")
            continue
        if stage is not None:
            stages.append(stage)

    if problems.items:
        raise SpecError(label, problems.items)
    default = default_output or Path("runs") / (study if not profile_name or profile_name == profile_names[0]
                                                 else f"{study}-{profile_name}")
    output_path = Path(output) if output else default
    return StudySpec(name=study, output=output_path, tracking=tracking, stages=tuple(stages), source=source,
                     description=description, profile=profile_name, profiles=profile_names, seed=seed or 0,
                     reproducible=reproducible,
                     deprecations=tuple(f"{label}: {key}: {message}" for key, message in problems.deprecations))


def load_study(path: str | Path, profile: str | None = None) -> StudySpec:
    """Read and validate a study file (with `profile` applied); SpecError lines name this file."""
    source = str(path)
    return parse_study(load_yaml(Path(path), source), source, profile=profile)
