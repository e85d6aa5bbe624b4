"""Run one `optuna` stage: an Optuna study over an objective's conditional space, in this process.

Why not Ray Tune: these trials (reduce and cluster a few thousand embeddings) take seconds and all
read one prepared data set held in memory; shipping it to Ray workers would cost more than the
trials. They run in `n_jobs` threads of the launcher (UMAP's numba loops, hdbscan and BLAS do their
heavy work outside the GIL), and TPE then uses `constant_liar` so parallel trials do not all
sample the same point. UMAP's numba compilation is paid once per launcher, not once per trial.

Reproducible mode (the default): Optuna's own `n_jobs` threads ask the sampler whenever a thread is
free, so a trial's settings depend on which trial finished first. Here (`run_in_order`) trials are
drawn one at a time in the launcher's thread, each by a sampler seeded for that trial's place in the
study (`gensearch.position`), after the results of every trial at least `n_jobs` places earlier were
told, in trial order; the trials between are running (TPE's constant liar counts them as such). A
trial's settings are drawn on a copy of the study in memory and written in one step, so a stop never
leaves one half drawn. Trials are evaluated in `n_jobs` threads and told back in trial order. So
`n_jobs: 2` keeps two trials running, and gives the same study every time.

Persistence and resume: the study lives in `<workdir>/optuna.db` (SQLite) under the name
`<study>.<stage>`. A resumed stage loads it and runs only the trials still missing, so the count
of completed trials reaches `n_trials` exactly. A trial that was running when the launcher died
cannot be continued (Optuna keeps no mid-trial state): in reproducible mode its settings (all drawn
before it started) are evaluated again under the same trial number and MLflow run, as the uninterrupted
study would have (so is a trial drawn but not yet started); in asynchronous mode it is marked FAIL and
its parameters are queued again, re-using its MLflow child run, so MLflow never holds two runs for one
trial. A trial that raised (which fails the stage) is queued again the same way when the stage is retried.
"""

from __future__ import annotations

import csv
import math
import shutil
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.samplers import make_sampler, stage_sampler_seed
from orchestrator.seeds import derive_seed, with_stage_seed
from orchestrator.spec import Choice, Constraint, IntRange, LogUniform, OptunaStage, SpaceEntry, Uniform
from orchestrator.study_state import BestTrial
from orchestrator.tracking import TAG_RUN_NAME, TAG_TRIAL, Tracker, last_line
from trainables import catalog
from trainables.config import build_config
from trainables.data import first_data_root
from trainables.definitions import BranchPick

CHILD_RUN = "gensearch.child_run_id"  # trial user attribute: its MLflow child run
RETRY_OF = "gensearch.retry_of"  # trial user attribute: the number of the killed trial it re-runs
METRICS = "gensearch.metrics"  # trial user attribute: everything the objective returned
VIOLATIONS = "gensearch.constraint_violations"  # trial user attribute: <= 0 means met
POSITION = "gensearch.position"  # trial user attribute (reproducible mode): its place in the study
TAG_FEASIBLE = "gensearch.feasible"
TAG_RETRY_OF = "gensearch.retry_of"
BEST_FOLDER = "best"


@dataclass(frozen=True)
class OptunaOutcome:
    best: BestTrial
    trials: int  # completed trials
    infeasible: int  # completed trials that broke a constraint
    workdir: Path


def suggest(trial: Any, name: str, entry: SpaceEntry) -> Any:
    if isinstance(entry, Uniform):
        return trial.suggest_float(name, entry.low, entry.high)
    if isinstance(entry, LogUniform):
        return trial.suggest_float(name, entry.low, entry.high, log=True)
    if isinstance(entry, IntRange):
        return trial.suggest_int(name, entry.low, entry.high, log=entry.log)
    if isinstance(entry, Choice):
        return trial.suggest_categorical(name, list(entry.values))
    raise TypeError(f"{name}: Optuna stages cannot search {type(entry).__name__}")


def sample_picks(trial: Any, stage: OptunaStage) -> dict[str, tuple[str, dict[str, Any]]]:
    """One option per branch, then that option's settings (named `branch.option.setting`, so
    two options' `n_components` are separate parameters with their own ranges)."""
    picks = {}
    for branch, options in stage.branches.items():
        option = trial.suggest_categorical(branch, list(options))
        settings = dict(options[option].fixed)
        for name, entry in options[option].space.items():
            settings[name] = suggest(trial, f"{branch}.{option}.{name}", entry)
        picks[branch] = (option, settings)
    return picks


def describe_picks(picks: Mapping[str, tuple[str, Mapping[str, Any]]]) -> str:
    """`umap(n_neighbors=12, min_dist=0.05) + hdbscan(min_cluster_size=8)`: a trial in one line."""
    def value(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return " + ".join(f"{option}({', '.join(f'{k}={value(v)}' for k, v in settings.items())})"
                      for option, settings in picks.values())


def flat_params(picks: Mapping[str, tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for branch, (option, settings) in picks.items():
        params[branch] = option
        params.update({f"{branch}.{option}.{name}": value for name, value in settings.items()})
    return params


def violations(constraints: tuple[Constraint, ...], metrics: Mapping[str, float]) -> list[float]:
    return [constraint.violation(metrics.get(constraint.metric)) for constraint in constraints]


def picks_from_params(params: Mapping[str, Any], stage: OptunaStage) -> dict[str, tuple[str, dict[str, Any]]]:
    """A trial's flat Optuna params (`reducer`, `reducer.pca.n_components`, ...) back as picks, with each option's
    fixed settings: what `sample_picks` drew for it."""
    return {branch: (params[branch], {**stage.branches[branch][params[branch]].fixed,
                                      **{name.split(".", 2)[2]: value for name, value in params.items()
                                         if name.startswith(f"{branch}.{params[branch]}.")}})
            for branch in stage.branches}


def tpe_settings(stage: OptunaStage) -> dict[str, Any]:
    """TPE over a conditional space: each option's settings sampled as a group, and with several threads
    the running trials counted as if they had scored badly (constant liar), so threads spread out."""
    return {"multivariate": True, "group": True, "constant_liar": stage.n_jobs > 1}


def requeue_unfinished_trials(study: Any, stage: OptunaStage, tracker: Tracker, parent_run_id: str,
                              keep_drawn: bool = False, storage: Any = None) -> list[Any]:
    """Trials left RUNNING by a killed launcher, and trials that raised (the stage failed on them, so this
    is its retry): FAIL them and queue their parameters again, with their MLflow child run, which the
    re-run reuses; each is queued once. `keep_drawn` (reproducible mode): a trial `draw` made (it carries
    its place) that a stop cut off, running or not yet started, is kept, to be evaluated in place
    (returned, RUNNING, in trial order). Child runs no trial refers to any more (the kill came between
    creating the run and recording it) are closed as KILLED. `storage`: the study's, to start a kept trial."""
    from optuna.trial import TrialState

    if keep_drawn and storage is not None:  # drawn, then cut off before `ask` started it: start it now, in its place
        for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            if POSITION in trial.user_attrs:
                storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING)
    stale, resumed = [], []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if keep_drawn and POSITION in trial.user_attrs:
            resumed.append(trial)
            continue
        study.tell(trial.number, state=TrialState.FAIL)
        stale.append(trial)
    # A stop between creating a trial's child run and recording it in the trial leaves the run unreferenced
    # but tagged with the trial's number: the trial's re-run adopts it, so no empty KILLED run is left behind.
    referenced = {t.user_attrs.get(CHILD_RUN) for t in study.get_trials(deepcopy=False)}
    children = tracker.children(parent_run_id)  # one query: the statuses below are those of the start
    orphans = {number: run.info.run_id for number, run in children.items()
               if run.info.status == "RUNNING" and run.info.run_id not in referenced}
    for trial in resumed:
        if not trial.user_attrs.get(CHILD_RUN) and str(trial.number) in orphans and storage is not None:
            storage.set_trial_user_attr(trial._trial_id, CHILD_RUN, orphans.pop(str(trial.number)))
    retried = {t.user_attrs.get(RETRY_OF) for t in study.get_trials(deepcopy=False)}
    stale_numbers = {trial.number for trial in stale}
    again = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number not in retried]
    for trial in again:
        attrs = {RETRY_OF: trial.number}
        child_run = trial.user_attrs.get(CHILD_RUN) or orphans.pop(str(trial.number), None)
        if child_run:
            attrs[CHILD_RUN] = child_run
        study.enqueue_trial(dict(trial.params), user_attrs=attrs)
        why = "was cut off by the last stop" if trial.number in stale_numbers else "failed"
        print(f"[{stage.name}] trial {trial.number} {why}: queued again", flush=True)
    waiting = {t.user_attrs.get(CHILD_RUN) for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))}
    waiting |= {t.user_attrs.get(CHILD_RUN) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    for run in children.values():
        if run.info.status == "RUNNING" and run.info.run_id not in waiting:
            tracker.finish(run.info.run_id, "KILLED", "cut off by a stop before its trial was recorded")
    return sorted(resumed, key=lambda t: t.number)


class TrialRunner:
    """The objective Optuna calls: one trial = sample, evaluate, check constraints, log to MLflow."""

    def __init__(self, stage: OptunaStage, definition: catalog.ObjectiveDef, config: Any, data: Any,
                 tracker: Tracker, parent_run_id: str, completed: int) -> None:
        self.stage, self.definition, self.config, self.data = stage, definition, config, data
        self.tracker, self.parent_run_id = tracker, parent_run_id
        self.done, self.best = completed, None
        self.lock = threading.Lock()

    def child_run(self, trial: Any, params: Mapping[str, Any]) -> tuple[str, set[str]]:
        """The trial's MLflow run and the metrics it holds already (a re-run's run may have them)."""
        run_id = trial.user_attrs.get(CHILD_RUN)
        trial_id = str(trial.number)
        if run_id:  # the re-run of a trial a stop cut off (or that failed): same run, now under this trial's number
            logged = set(self.tracker.run(run_id).data.metrics)
            self.tracker.reopen(run_id)
            self.tracker.set_tags(run_id, {TAG_TRIAL: trial_id, TAG_RUN_NAME: f"{self.stage.name}-{trial_id}",
                                           TAG_RETRY_OF: trial.user_attrs.get(RETRY_OF, "")})
            return run_id, logged
        run_id = self.tracker.create_child(self.parent_run_id, self.stage.name, trial_id, params)
        trial.set_user_attr(CHILD_RUN, run_id)
        return run_id, set()

    def __call__(self, trial: Any) -> float:
        return self.evaluate(trial, sample_picks(trial, self.stage))

    def evaluate(self, trial: Any, raw_picks: Mapping[str, tuple[str, dict[str, Any]]]) -> float:
        """Evaluate settings already drawn for `trial`, log them to its MLflow run, return its objective. A
        metric its run holds already (a trial evaluated again after a stop) is not logged twice."""
        params = flat_params(raw_picks)
        run_id, logged = self.child_run(trial, params)
        try:
            picks: dict[str, BranchPick] = {
                branch: (option, build_config(self.definition.branches[branch][option], settings))
                for branch, (option, settings) in raw_picks.items()}
            metrics = {k: float(v) for k, v in self.definition.evaluate(self.config, picks, self.data).items()}
        except BaseException as error:
            status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
            self.tracker.finish(run_id, status, last_line(error, type(error).__name__))
            raise
        broken = violations(self.stage.constraints, metrics)
        feasible = all(v <= 0 for v in broken)
        trial.set_user_attr(METRICS, metrics)
        trial.set_user_attr(VIOLATIONS, broken)
        for constraint, violation in zip(self.stage.constraints, broken):
            trial.set_constraint(str(constraint), violation)  # TPE learns where the feasible region is
        self.tracker.log_metrics(run_id, {k: v for k, v in {**metrics, "feasible": float(feasible)}.items()
                                          if k not in logged})
        self.tracker.set_tags(run_id, {TAG_FEASIBLE: str(feasible).lower()})
        self.tracker.finish(run_id)
        value = metrics.get(self.stage.metric, math.nan)
        if not math.isfinite(value):  # an undefined score (one cluster): the worst, not a failure
            value = -math.inf if self.stage.mode == "max" else math.inf
        self.progress(trial.number, raw_picks, metrics, value, feasible)
        return value

    def progress(self, number: int, picks: Mapping[str, Any], metrics: Mapping[str, float], value: float,
                 feasible: bool) -> None:
        with self.lock:
            self.done += 1
            if feasible and math.isfinite(value) and (self.best is None or (
                    value > self.best if self.stage.mode == "max" else value < self.best)):
                self.best = value
            shown = [f"{k}={v:.3g}" for k, v in metrics.items() if not k.endswith("_s")][:5]
            broken = [str(c) for c, v in zip(self.stage.constraints, violations(self.stage.constraints, metrics))
                      if v > 0]
            verdict = f" · breaks {', '.join(broken)}" if broken else ""
            best = f" · best {self.best:.4g}" if self.best is not None else ""
            print(f"[{self.stage.name}] {self.done}/{self.stage.n_trials} trial {number}: {describe_picks(picks)} -> "
                  f"{', '.join(shown)}{verdict}{best}", flush=True)


def best_trial(trials: list[Any], stage: OptunaStage) -> Any | None:
    """The best completed trial that meets every constraint (Optuna's own best ignores constraints)."""
    candidates = [t for t in trials if feasible_value(t)]
    if not candidates:
        return None
    sign = -1 if stage.mode == "max" else 1
    return min(candidates, key=lambda t: (sign * t.value, t.number))


def feasible_value(trial: Any) -> bool:
    """A completed trial with a finite objective that met every constraint: what the best trial is chosen
    from, the search history plots and parameter importance reads."""
    return trial.value is not None and math.isfinite(trial.value) and \
        all(v <= 0 for v in trial.user_attrs.get(VIOLATIONS, []))


def write_trials_csv(trials: list[Any], path: Path) -> None:
    rows = []
    for trial in trials:
        metrics = trial.user_attrs.get(METRICS, {})
        rows.append({"trial": trial.number, "state": trial.state.name, "value": trial.value,
                     "feasible": all(v <= 0 for v in trial.user_attrs.get(VIOLATIONS, [1.0])),
                     **trial.params, **metrics})
    names = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)


def next_position(study: Any) -> int:
    """The place of the next trial to draw: one after the last trial drawn."""
    return 1 + max((t.user_attrs.get(POSITION, -1) for t in study.get_trials(deepcopy=False)), default=-1)


def draw(study: Any, stage: OptunaStage, base_seed: int) -> Any:
    """The next trial, its settings all drawn now, in this thread, by a sampler seeded for its place, over
    a copy of the study in memory: what it gets depends only on the seed, its place and the trials told so
    far (and, with constant liar, the ones running), never on another thread's timing or on where an
    earlier run stopped. The settings land in the study in one write (a queued trial carrying its place),
    so a stop never leaves a trial half drawn; `ask` then starts it."""
    import optuna

    position = next_position(study)
    sampler = make_sampler(stage.searcher, derive_seed(base_seed, stage.name, "sampler", position), tpe_settings(stage))
    scratch = optuna.create_study(direction=study.direction, sampler=sampler)
    scratch.add_trials(study.get_trials(deepcopy=False))
    study.enqueue_trial(flat_params(sample_picks(scratch.ask(), stage)), user_attrs={POSITION: position})
    return study.ask()


def run_in_order(study: Any, runner: TrialRunner, stage: OptunaStage, base_seed: int, new: int,
                 resumed: list[Any]) -> None:
    """Evaluate `resumed` trials (RUNNING ones a stop cut off, settings all drawn) and `new` fresh ones,
    `n_jobs` at a time in threads; trial k is drawn once trials 0 .. k-n_jobs are told, and results are
    told in trial order (module docstring). The first error is raised once the trials in flight are told."""
    import optuna
    from concurrent.futures import ThreadPoolExecutor
    from optuna.trial import TrialState

    in_flight: deque[tuple[Any, Any]] = deque()
    failure: BaseException | None = None

    def tell_oldest() -> None:
        nonlocal failure
        trial, future = in_flight.popleft()
        try:
            study.tell(trial, future.result())
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # noqa: BLE001 - told FAIL; raised once the others in flight are told
            study.tell(trial, state=TrialState.FAIL)
            failure = failure or error

    work = [optuna.trial.Trial(study, t._trial_id) for t in resumed]
    pool = ThreadPoolExecutor(max_workers=stage.n_jobs, thread_name_prefix=f"optuna-{stage.name}")
    try:
        while failure is None and (work or new > 0):
            while len(in_flight) >= stage.n_jobs:
                tell_oldest()
            if failure is not None:
                break
            if work:
                trial = work.pop(0)
            else:
                trial = draw(study, stage, base_seed)
                new -= 1
            # Its settings were drawn already: this reads them back (and records any a stop cut off).
            in_flight.append((trial, pool.submit(runner.evaluate, trial, sample_picks(trial, stage))))
        while in_flight:
            tell_oldest()
    finally:
        pool.shutdown(wait=failure is not None or not in_flight, cancel_futures=True)
    if failure is not None:
        raise failure


def run_optuna_stage(*, stage: OptunaStage, inputs: Mapping[str, str], workdir: Path, tracker: Tracker,
                     parent_run_id: str, study_name: str, study_seed: int = 0, reproducible: bool = True,
                     data_root: Path | None = None) -> OptunaOutcome:
    """`study_seed`: the objective's `seed` and the sampler's derive from it unless the YAML fixes them;
    `reproducible`: trials drawn and told in order (`run_in_order`), else Optuna's own `n_jobs` threads;
    `data_root`: the launcher's --data-root, searched first by the objective's data code (it runs here)."""
    with first_data_root(data_root):
        return run_optuna_study(stage, inputs, workdir, tracker, parent_run_id, study_name, study_seed, reproducible)


def run_optuna_study(stage: OptunaStage, inputs: Mapping[str, str], workdir: Path, tracker: Tracker,
                     parent_run_id: str, study_name: str, study_seed: int, reproducible: bool) -> OptunaOutcome:
    """The stage's Optuna study, run or resumed (see run_optuna_stage)."""
    import optuna
    from optuna.trial import TrialState

    from orchestrator.importance import write_importance
    from orchestrator.stage_plots import plot_search_history

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our one line per trial says more
    definition = catalog.objective(stage.objective)
    config = build_config(definition.config_cls,
                          with_stage_seed(definition.config_cls, {**stage.config, **inputs}, study_seed, stage.name))
    workdir.mkdir(parents=True, exist_ok=True)
    data = definition.prepare(config, workdir)
    if definition.describe_data is not None:
        tracker.log_metrics(parent_run_id, definition.describe_data(data))

    storage = optuna.storages.RDBStorage(f"sqlite:///{(workdir / 'optuna.db').resolve()}",
                                         engine_kwargs={"connect_args": {"timeout": 60}})
    try:
        previous = optuna.load_study(study_name=study_name, storage=storage)
        completed = len(previous.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    except KeyError:  # a first run: no such study yet
        completed = 0
    base_seed = stage_sampler_seed(stage, study_seed)
    # Asynchronous mode: a resumed study gets a different seed, or it would replay the first run's random
    # start-up points. (The reproducible mode seeds a sampler per trial: see `draw`.)
    study = optuna.create_study(study_name=study_name, storage=storage,
                                sampler=make_sampler(stage.searcher, base_seed + completed, tpe_settings(stage)),
                                direction="maximize" if stage.mode == "max" else "minimize", load_if_exists=True)
    resumed = requeue_unfinished_trials(study, stage, tracker, parent_run_id, keep_drawn=reproducible,
                                        storage=storage)
    remaining = stage.n_trials - completed
    where = f"{workdir / 'optuna.db'} (study {study_name!r})"
    if remaining > 0:
        print(f"[{stage.name}] {remaining} of {stage.n_trials} trials to run, {stage.n_jobs} at a time; "
              f"Optuna {stage.searcher.sampler} on {stage.metric} ({stage.mode}); storage {where}", flush=True)
        runner = TrialRunner(stage, definition, config, data, tracker, parent_run_id, completed)
        kept = best_trial(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), stage)
        runner.best = None if kept is None else kept.value  # the progress line's "best" counts the kept trials
        # Queued re-runs go first, one at a time: on SQLite two threads can pop the same queued trial.
        queued = min(remaining, len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))))
        if queued:
            study.optimize(runner, n_trials=queued, n_jobs=1, catch=())
        if reproducible:
            resumed = resumed[:remaining - queued]
            run_in_order(study, runner, stage, base_seed, remaining - queued - len(resumed), resumed)
        elif remaining > queued:
            study.optimize(runner, n_trials=remaining - queued, n_jobs=stage.n_jobs, catch=())
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = best_trial(trials, stage)
    if best is None:
        rules = "; ".join(map(str, stage.constraints)) or "a finite objective"
        raise RuntimeError(f"none of the {len(trials)} trials met the constraints ({rules}); loosen `constraints` "
                           f"or widen the space")
    picks = picks_from_params(best.params, stage)
    built = {branch: (option, build_config(definition.branches[branch][option], settings))
             for branch, (option, settings) in picks.items()}
    folder = workdir / BEST_FOLDER
    scratch = workdir / f"{BEST_FOLDER}.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    definition.finalize(config, built, data, scratch)
    shutil.rmtree(folder, ignore_errors=True)
    scratch.rename(folder)  # a kill never leaves half a result folder for a later stage to read

    write_trials_csv(study.get_trials(deepcopy=False), workdir / "trials.csv")
    values = [t.value if feasible_value(t) else None for t in sorted(trials, key=lambda t: t.number)]
    plot_search_history(values, stage.metric, stage.mode, stage.name, workdir / "search_history.png",
                        missing_label="broke a constraint")
    write_importance(stage.name, [t for t in trials if feasible_value(t)], ((stage.metric, stage.mode),), workdir,
                     tracker, parent_run_id)
    child = best.user_attrs.get(CHILD_RUN)
    if child:
        tracker.log_artifacts(child, folder, BEST_FOLDER)
    infeasible = sum(1 for t in trials if any(v > 0 for v in t.user_attrs.get(VIOLATIONS, [])))
    return OptunaOutcome(
        best=BestTrial(trial_id=str(best.number), metric=stage.metric, value=float(best.value), checkpoint=str(folder),
                       config=flat_params(picks), child_run_id=child, metrics=dict(best.user_attrs.get(METRICS, {}))),
        trials=len(trials), infeasible=infeasible, workdir=workdir)

