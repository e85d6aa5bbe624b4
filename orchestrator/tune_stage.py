"""Run one `tune` stage: a real `ray.tune.Tuner` with Optuna sampling and ASHA early stopping.

The spec's typed search space becomes Tune domains here, the trainable is wrapped so it builds
its typed config and reports through `TuneReporter`, and on `--resume` the same Tune experiment
folder is restored: finished trials stay finished, unfinished ones continue from their last
checkpoint. After the run, MLflow is reconciled with Tune's own record of the trials, so a kill
at any moment can neither lose a child run nor leave a duplicate.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher

from orchestrator.champion import Champion, Point, choose_champion, describe_metrics, pareto_front
from orchestrator import pbt_tune
from orchestrator.tune_domains import tune_domain
from orchestrator.pbt import SETTING_PREFIX, is_pbt, mutated_settings
from orchestrator.spec import TuneStage
from orchestrator.stage_outputs import TUNE_STAGE_OUTPUTS
from orchestrator.study_state import BestTrial
from orchestrator.tracking import TAG_REASON, Tracker, last_line
from orchestrator.trial_logger import STEP_MARKER, TUNE_BOOKKEEPING, MlflowTrialLogger
from orchestrator.tune_reporter import TuneReporter
from orchestrator.tune_results import (_plain, best_value, checkpoint_at_best, evaluated_points, in_suggestion_order,
                                       metrics_at_best, trial_folder_name, trial_id_of, trials_by_place)
from orchestrator.rung_scheduler import OrderedASHA
from orchestrator.samplers import make_sampler, stage_sampler_seed
from orchestrator.seeds import seeds_config
from orchestrator.trial_order import OrderedSearch, SeededSearch, VariantSearch
from orchestrator.tune_searcher import BudgetAwareOptunaSearch
from trainables import catalog
from trainables.config import build_config


class StageFailed(RuntimeError):
    """Every trial of a stage failed: there is no best result to hand to later stages."""


@dataclasses.dataclass
class TuneOutcome:
    best: BestTrial
    trials: int
    failed_trials: int
    experiment_dir: Path
    child_runs: dict[str, str] = dataclasses.field(default_factory=dict)  # trial id -> MLflow run id
    # A stage with several metrics: how its champion was chosen, and the Pareto front of every epoch.
    champion: Champion | None = None
    front: list[Point] = dataclasses.field(default_factory=list)


def param_space(stage: TuneStage, inputs: Mapping[str, str], searched: bool = True) -> dict[str, Any]:
    """Constants, resolved references and (`searched`) searched domains in one mapping: each trial's full
    config. Without `searched`, the searcher supplies every searched setting itself (VariantSearch)."""
    domains = {name: tune_domain(entry) for name, entry in stage.space.items()} if searched else {}
    return {**stage.config, **inputs, **domains}


def make_searcher(stage: TuneStage, study_seed: int = 0) -> BudgetAwareOptunaSearch | None:
    """Optuna for a stage with something to search, over its one metric or its several (Optuna's samplers
    are multi-objective); None (Tune's own grid/random) otherwise, since OptunaSearch refuses an empty
    space (every setting a constant)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec, total_trials = stage.searcher, stage.total_trials
    if spec.type == "basic" or not stage.space:
        return None
    # Optuna's default of 10 random start-up trials would leave a small study all random.
    sampler = make_sampler(spec, stage_sampler_seed(stage, study_seed),
                           tpe={"n_startup_trials": max(2, min(10, total_trials // 2))})
    metrics, modes = zip(*stage.objectives)
    return BudgetAwareOptunaSearch(sampler=sampler, metric=list(metrics) if stage.multi_objective else metrics[0],
                                   mode=list(modes) if stage.multi_objective else modes[0],
                                   budget=stage.scheduler.max_t if stage.scheduler else None)


def make_search(stage: TuneStage, *, study_seed: int, window: int | None) -> tuple[Searcher, bool]:
    """Tune's search algorithm for the stage, and whether the param space should hold the searched domains
    (False: the searcher holds them itself). Optuna, or Tune's basic variants, wrapped to give every trial
    its seed; with a `window` (reproducible mode) also ordered (trial_order.py), else Tune limits
    concurrency itself."""
    searcher = make_searcher(stage, study_seed)
    domains_in_space = searcher is not None
    if searcher is None:
        searcher = VariantSearch({name: tune_domain(entry) for name, entry in stage.space.items()},
                                 stage.num_samples, stage_sampler_seed(stage, study_seed))
    config_cls = catalog.trainable(stage.trainable).config_cls
    seeded = seeds_config(config_cls, {**stage.config, **stage.inputs}, stage.space)
    search = SeededSearch(searcher, stage=stage.name, study_seed=study_seed if seeded else None)
    return (OrderedSearch(search, window, stage.total_trials) if window else search), domains_in_space


def make_scheduler(stage: TuneStage, window: int | None = None) -> ASHAScheduler | None:
    """Tune's ASHA; with a `window` (reproducible mode), the ordered variant whose rung decisions do not
    depend on which trial arrived first (rung_scheduler.py)."""
    if stage.scheduler is None:
        return None
    settings = {"time_attr": "training_iteration", "max_t": stage.scheduler.max_t,
                "grace_period": stage.scheduler.grace_period, "reduction_factor": stage.scheduler.reduction_factor}
    return OrderedASHA(**settings) if window else ASHAScheduler(**settings)


def use_deterministic_kernels() -> None:
    """torch's deterministic GPU kernels where it has them (a warning where it has none)."""
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts, as torch asks
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def make_trial_function(trainable_name: str, cpus: float, deterministic_gpu: bool = False,
                        settings: tuple[str, ...] = ()):
    """The function Tune runs per trial: typed config in, metrics out through `TuneReporter`.
    `deterministic_gpu`: ask torch for its deterministic kernels (cuDNN, cuBLAS) where it has them; a CPU
    trial with a fixed thread count is deterministic already. `settings` (a PBT stage's mutated ones): reported
    with every result as `pbt.NAME`, with the checkpoint each run of the trial started from (pbt_tune.py)."""

    def run_trial(config: dict[str, Any]) -> None:
        torch.set_num_threads(max(1, int(cpus)))
        if deterministic_gpu:
            use_deterministic_kernels()
        definition = catalog.trainable(trainable_name)
        shown = {f"{SETTING_PREFIX}{name}": config[name] for name in settings}
        definition.run(build_config(definition.config_cls, config), TuneReporter(shown, note_restores=bool(settings)))

    run_trial.__name__ = trainable_name.replace(":", "_").replace(".", "_")
    return run_trial


def can_restore(experiment_dir: Path) -> bool:
    """Tune says yes as soon as `tuner.pkl` exists, but a launcher killed before Tune's first snapshot of the
    experiment leaves only that, and restoring it fails on every resume ("no search space has been defined"):
    such a stage starts afresh."""
    return tune.Tuner.can_restore(str(experiment_dir)) and any(experiment_dir.glob("experiment_state-*.json"))


def run_tune_stage(*, stage: TuneStage, inputs: Mapping[str, str], storage: Path, tracker: Tracker,
                   parent_run_id: str, resume: bool, retry_failed: bool = False, study_seed: int = 0,
                   window: int | None = None) -> TuneOutcome:
    """`retry_failed` (the stage failed last time): its errored trials run again, from their last checkpoint
    (from scratch when they had none), under their own trial ids and MLflow runs. Tune's other way,
    `restart_errored`, gives them new trial ids that the restored OptunaSearch does not know (KeyError on
    the first result), so it cannot be used with a searcher. `window`: the reproducible mode's number of
    trials at a time (trial_order.py); None: Tune's asynchronous way, `max_concurrent_trials` at a time."""
    experiment_dir = storage / stage.name
    run_trial = make_trial_function(stage.trainable, stage.resources.cpu,
                                    deterministic_gpu=window is not None and stage.resources.gpu > 0,
                                    settings=mutated_settings(stage))
    trainable = tune.with_resources(run_trial, {"cpu": stage.resources.cpu, "gpu": stage.resources.gpu})
    if resume and can_restore(experiment_dir):
        print(f"[{stage.name}] resuming the Tune experiment in {experiment_dir}", flush=True)
        tuner = tune.Tuner.restore(str(experiment_dir), trainable, resume_unfinished=True,
                                   resume_errored=retry_failed)
    else:
        logger = MlflowTrialLogger(tracker.target, tracker.experiment_name, tracker.study, stage.name,
                                   parent_run_id, stage.metric, stage.mode, stage.total_trials,
                                   max_t=stage.scheduler.max_t if stage.scheduler else None,
                                   also_shown=tuple(m for m in stage.metrics if m != stage.metric),
                                   headline=f"metrics {describe_metrics(stage)}" if stage.multi_objective else "")
        # Tune's own metric is the one ASHA stops on; the searcher keeps the stage's objectives.
        metric, mode = stage.scheduler_metric
        if is_pbt(stage):
            search, space = pbt_tune.population_search(stage, param_space(stage, inputs), study_seed)
        else:
            search, domains_in_space = make_search(stage, study_seed=study_seed, window=window)
            space = param_space(stage, inputs, searched=domains_in_space)
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, num_samples=stage.total_trials,
                max_concurrent_trials=None if window else stage.max_concurrent_trials,
                search_alg=search, scheduler=pbt_tune.make_scheduler(stage, study_seed) if is_pbt(stage)
                else make_scheduler(stage, window),
                trial_dirname_creator=trial_folder_name,
                # A trial starts in a warm worker (torch and the data already imported) instead of a fresh
                # one; seeds, checkpoints and logs stay each trial's own (benchmarks/many_trials.py).
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=stage.name, storage_path=str(storage), verbose=0, callbacks=[logger],
                failure_config=tune.FailureConfig(max_failures=stage.max_failures),
                # Every checkpoint is kept: Tune's experiment snapshot can lag a few reports behind the
                # trials, and after a kill it must still find the checkpoint that snapshot names.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            ),
        )
    grid = tuner.fit()
    results = in_suggestion_order(grid)  # ties between trials are broken the same way in every run
    outcome = reconcile(stage, results, tracker, parent_run_id, experiment_dir)
    pbt_tune.tag_exploits(stage, results, tracker, outcome.child_runs)
    write_trials_table(grid, stage_file(experiment_dir, "trials"))
    if stage.multi_objective:
        write_pareto_front(stage, outcome, stage_file(experiment_dir, "pareto_front"))
        tag_front_trials(tracker, outcome)
    publish_trial_files(stage, results, tracker, outcome.child_runs)
    draw_stage_plots(stage, results, experiment_dir, outcome.best)
    write_stage_importance(stage, results, experiment_dir, tracker, parent_run_id)
    return outcome


def reconcile(stage: TuneStage, results: Any, tracker: Tracker, parent_run_id: str,
              experiment_dir: Path) -> TuneOutcome:
    """Make MLflow agree with Tune: one closed child run per trial, none for trials Tune forgot, and every
    result Tune recorded for a trial in its run (see `backfill_results`)."""
    children = tracker.children(parent_run_id)
    seen, failed, runs, finished = set(), 0, {}, []
    for result in results:
        trial_id = trial_id_of(result)
        seen.add(trial_id)
        run = children.get(trial_id)
        run_id = run.info.run_id if run else tracker.create_child(parent_run_id, stage.name, trial_id, result.config)
        runs[trial_id] = run_id
        if run is not None and not run.data.params and result.config:  # created just before an outage
            tracker.log_params(run_id, result.config)
        backfill_results(tracker, run_id, result, known=run is not None)
        close_as_tune_ended(tracker, run_id, result, new=run is None)
        if result.error is not None:
            failed += 1
            continue
        finished.append((result, run_id))
    for trial_id, run in children.items():
        if trial_id not in seen:  # a trial the interrupted Tune state never recorded: not a real trial
            tracker.delete_run(run.info.run_id)
    champion, front = None, []
    if stage.multi_objective:
        best, champion, front = champion_of(stage, finished)
    else:
        best = best_trial_of(stage, finished)
    if best is None:
        raise StageFailed(f"stage {stage.name!r}: all {len(seen)} trials failed "
                          f"(first reason: {_first_error(results)}); see the child runs in MLflow")
    return TuneOutcome(best=best, trials=len(seen), failed_trials=failed, experiment_dir=experiment_dir,
                       child_runs=runs, champion=champion, front=front)


def best_trial_of(stage: TuneStage, finished: list[tuple[Any, str]]) -> BestTrial | None:
    """A single-metric stage's best trial: the best value any of its epochs reported, at the last epoch
    that reported it (`checkpoint_at_best`)."""
    best: tuple[float, Any, str] | None = None
    for result, run_id in finished:
        value = best_value(result, stage.metric, stage.mode)
        if value is not None and (best is None or (value > best[0] if stage.mode == "max" else value < best[0])):
            best = (value, result, run_id)
    if best is None:
        return None
    value, result, run_id = best
    checkpoint = checkpoint_at_best(result, stage.metric, value) or result.checkpoint
    epoch, metrics = metrics_at_best(result, stage.metric, value)
    return BestTrial(trial_id=trial_id_of(result), metric=stage.metric, value=value, checkpoint=checkpoint.path,
                     config=dict(result.config), child_run_id=run_id, epoch=epoch, metrics=metrics)


def champion_of(stage: TuneStage, finished: list[tuple[Any, str]]
                ) -> tuple[BestTrial | None, Champion | None, list[Point]]:
    """A stage with several metrics: its champion by the stage's rule among every evaluated epoch of
    every trial that did not fail, with THAT epoch's checkpoint, and the Pareto front of those epochs."""
    candidates = [(point, checkpoint, result, run_id) for result, run_id in finished
                  for point, checkpoint in evaluated_points(result)]
    points = [point for point, *_ in candidates]
    champion = choose_champion(points, stage.champion)
    if champion is None:
        return None, None, []
    _, checkpoint, result, run_id = candidates[points.index(champion.point)]
    checkpoint = checkpoint or result.checkpoint
    point = champion.point
    if not champion.feasible:
        print(f"[{stage.name}] no evaluated epoch met the champion rule ({stage.champion}); the champion is the "
              f"closest one: trial {point.trial}, epoch {point.epoch} (relative violation "
              f"{champion.violation:.3g})", flush=True)
    best = BestTrial(trial_id=point.trial, metric=stage.metric, value=float(point.metrics[stage.metric]),
                     checkpoint=checkpoint.path if checkpoint is not None else "", config=dict(result.config),
                     child_run_id=run_id, epoch=point.epoch, metrics=dict(point.metrics), rule_met=champion.feasible)
    return best, champion, pareto_front(points, stage.objectives)


def close_as_tune_ended(tracker: Tracker, run_id: str, result: Any, new: bool = False) -> None:
    """Give a trial's run the status Tune ended the trial with. A run closed KILLED by an interrupt, or FAILED
    before a retry, may have ended otherwise since (or Tune's snapshot had it done already); its old reason
    goes when it FINISHED. `new`: the run was just made, so MLflow need not be asked what it holds."""
    status = "FAILED" if result.error is not None else "FINISHED"
    current = None if new else tracker.run(run_id)
    if current is not None and current.info.status == status:
        return
    stale_reason = current is not None and status == "FINISHED" and TAG_REASON in current.data.tags
    tracker.finish(run_id, status, _reason_from_error(result.error) if result.error is not None else None,
                   clear_reason=stale_reason)


def backfill_results(tracker: Tracker, run_id: str, result: Any, known: bool = True) -> int:
    """Log every step of Tune's own record of a trial that its MLflow run lacks; returns how many.

    The driver's callback logs results as they arrive, but not while the tracking server is down, nor
    for a trial whose run it never made (a kill between Tune's snapshot and the callback). Tune wrote
    each result to the trial's folder regardless, so this makes MLflow whole again: the first record
    of a step counts (a trial resumed from an older checkpoint repeats steps), a step already in MLflow
    is left alone, and the same keys as the live callback are logged. `known=False` (a run just made)
    skips asking MLflow what it already has."""
    frame = result.metrics_dataframe
    if frame is None or frame.empty or "training_iteration" not in frame:
        return 0
    logged = tracker.logged_steps(run_id, STEP_MARKER) if known else set()
    names = [name for name in (result.metrics or {}) if name not in TUNE_BOOKKEEPING and name in frame]
    count = 0
    for _, row in frame.drop_duplicates("training_iteration", keep="first").iterrows():
        step = int(row["training_iteration"])
        if step in logged:
            continue
        metrics = {name: _plain(row[name]) for name in names}  # numpy scalars are not int/float
        metrics[STEP_MARKER] = _plain(row.get("time_total_s", 0.0))
        tracker.log_metrics(run_id, metrics, step=step)
        count += 1
    return count


def _reason_from_error(error: BaseException) -> str:
    return last_line(error, type(error).__name__)


def _first_error(results: Any) -> str:
    for result in results:
        if result.error is not None:
            return _reason_from_error(result.error)
    return "no trial reported the metric"


def write_trials_table(grid: Any, path: Path) -> None:
    """trials.csv: one row per trial (its last result and config), in suggestion order, its place first."""
    frame = grid.get_dataframe()
    by_place = trials_by_place(grid)
    # A trial the ordered ASHA held at a rung and then stopped (rung_scheduler.py) ends on a line written before
    # the verdict, `done` False; Tune marks one it stops at once True. Every trial that ended is done.
    ended = [trial.trial_id for _, trial, _ in by_place if trial is not None and trial.status == "TERMINATED"]
    if "done" in frame and "trial_id" in frame:
        frame.loc[frame["trial_id"].isin(ended), "done"] = True
    places = {getattr(trial, "trial_id", None): place for place, trial, _ in by_place}
    if "trial_id" in frame and places:
        frame.insert(0, "trial_index", frame["trial_id"].map(places))
        frame = frame.sort_values("trial_index", kind="stable")
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def publish_trial_files(stage: TuneStage, results: Any, tracker: Tracker, runs: Mapping[str, str]) -> None:
    """Each trial's run gets its last step files (e.g. samples.png) and, when the trainable names
    curve metrics, curves.png. Done after the stage as well as live (the callback), so a trial
    resumed or recreated after a kill still ends with them."""
    from orchestrator.stage_plots import trial_curves_png

    definition = catalog.trainable(stage.trainable)
    for result in results:
        run_id = runs.get(trial_id_of(result))
        if run_id is None:
            continue
        if result.checkpoint is not None:
            tracker.log_step_files(run_id, result.checkpoint.path)
        if definition.curves and result.metrics_dataframe is not None:
            png = trial_curves_png(result.metrics_dataframe, definition.curves,
                                   f"{stage.name} trial {trial_id_of(result)}", definition.baselines)
            if png is not None:
                tracker.log_files(run_id, {"curves.png": png})


def draw_stage_plots(stage: TuneStage, results: Any, experiment_dir: Path, best: BestTrial) -> None:
    """search_history.png for every stage; parameter_sweep.png (the metric against each searched setting)
    when it searches something; pareto.png when the trainable names two rival metrics or the stage
    searches several (a stage with several metrics plots its `metric`, the champion's objective, in
    the other two)."""
    from orchestrator.champion import pareto_axes
    from orchestrator.stage_plots import plot_parameter_sweep, plot_pareto, plot_search_history

    started = []
    for result in results:
        frame = result.metrics_dataframe
        value = best_value(result, stage.metric, stage.mode) if result.error is None else None
        started.append((frame["timestamp"].min() if frame is not None and "timestamp" in frame else 0, value))
    started.sort(key=lambda row: row[0])
    plot_search_history([value for _, value in started], stage.metric, stage.mode, stage.name,
                        stage_file(experiment_dir, "search_history"))
    sweep = {name: [((result.config or {}).get(name), best_value(result, stage.metric, stage.mode)
                     if result.error is None else None) for result in results] for name in stage.space}
    best_config = next((result.config for result in results if trial_id_of(result) == best.trial_id), None)
    plot_parameter_sweep({name: [(x, y) for x, y in values if x is not None] for name, values in sweep.items()},
                         stage.metric, stage.mode, stage.name, stage_file(experiment_dir, "parameter_sweep"),
                         best_config)
    definition = catalog.trainable(stage.trainable)
    axes = pareto_axes(stage, definition)
    if axes is not None:
        plot_pareto({trial_id_of(r): r.metrics_dataframe for r in results}, *axes, stage.name,
                    stage_file(experiment_dir, "pareto"), best_trial=best.trial_id, baselines=definition.baselines,
                    modes=tuple(definition.metric(axis).mode for axis in axes), chosen=best.metrics,
                    references=definition.pareto_references)


def write_stage_importance(stage: TuneStage, results: Any, experiment_dir: Path, tracker: Tracker,
                           parent_run_id: str) -> None:
    """Parameter importance over the trials that did not fail, each by its best value of every objective
    (importance.py). A setting PBT mutates has no one value per trial: it is left out."""
    from orchestrator.importance import trials_from_configs, write_importance

    rows = []
    for result in results:
        values = [best_value(result, metric, mode) for metric, mode in stage.objectives] \
            if result.error is None else [None]
        if None not in values:
            rows.append((result.config or {}, values))
    space = {name: entry for name, entry in stage.space.items() if name not in mutated_settings(stage)}
    write_importance(stage.name, trials_from_configs(space, rows), stage.objectives, experiment_dir,
                     tracker, parent_run_id)


def stage_file(experiment_dir: Path, output: str) -> Path:
    """Where the stage writes the output it declares under `output` (stage_outputs.TUNE_STAGE_OUTPUTS)."""
    return experiment_dir / TUNE_STAGE_OUTPUTS[output].path


def write_pareto_front(stage: TuneStage, outcome: TuneOutcome, path: Path) -> None:
    """pareto_front.csv: the epochs no other epoch beats on every metric of the stage, best first by
    its first metric, with the metrics the champion rule reads, whether each meets the rule and which
    one is the champion. The champion is added last when it is not on the front (`on_front` false): when
    no epoch met the rule, or when a bound on another metric ruled the front's points out."""
    from orchestrator.champion import signed, violation

    rule = stage.champion
    fixed = ("trial", "epoch", "feasible", "chosen", "on_front")  # a metric of the same name is the epoch's own
    columns = [m for m in dict.fromkeys([*stage.metrics, *rule.metrics_read]) if m not in fixed]
    first, first_mode = stage.objectives[0]
    chosen = outcome.champion.point if outcome.champion else None
    rows = sorted(outcome.front, key=lambda p: signed(p.metrics[first], first_mode))
    rows += [chosen] if chosen is not None and chosen not in outcome.front else []
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", "epoch", *columns, "feasible", "chosen", "on_front"])
        for point in rows:
            writer.writerow([point.trial, point.epoch, *(point.metrics.get(c, "") for c in columns),
                             violation(rule, point.metrics) == 0, point == chosen, point in outcome.front])


def tag_front_trials(tracker: Tracker, outcome: TuneOutcome) -> None:
    """`gensearch.pareto_front=true` on the run of every trial with an epoch on the front, so the MLflow UI
    can filter them (``tags.`gensearch.pareto_front` = 'true'``)."""
    for trial in sorted({point.trial for point in outcome.front}):
        run_id = outcome.child_runs.get(trial)
        if run_id is not None:
            tracker.set_tags(run_id, {"gensearch.pareto_front": "true"})
