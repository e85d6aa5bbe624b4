"""The cost table: reserved CPU- and GPU-hours per stage and in total, with numbered notes saying how each
figure was obtained.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.report.facts import ReportContext, StageFacts, stage_folder, stage_order, trial_seconds
from orchestrator.report.formatting import _num, _seconds, _table
from orchestrator.study_state import StageState

NOT_UTILISATION = ("CPU-h and GPU-h are **reserved** hours (what a trial asked Ray for × how long it ran), "
                   "not measured utilisation: a trial holding a CPU while waiting on I/O counts in full.")


@dataclass(frozen=True)
class StageCost:
    trial_s: float | None  # sum of the trials' time_total_s (tune); None: none recorded / not a tune stage
    cpu_h: float | None
    gpu_h: float | None
    notes: tuple[int, ...] = ()


def tune_cost(ctx: ReportContext, name: str, stage: StageState) -> StageCost:
    """Σ over trials of time_total_s × the per-trial CPU / GPU the stage asked Ray for."""
    facts = ctx.facts[name]
    folder = stage_folder(ctx.output, name, stage, "tune")
    seconds, source = trial_seconds(folder) if folder else ({}, "")
    notes = [ctx.note(f"tune stages: sum over trials of Tune's `time_total_s` (read from {source}) × the "
                      f"per-trial resources; queueing and Ray start-up are not counted")] if seconds else []
    if facts.resources_from == "assumed":
        notes.append(ctx.note("study spec not found: 1 CPU and 0 GPU per trial assumed"))
    elif facts.resources_from == "mlflow":
        notes.append(ctx.note("per-trial resources read from the stage's MLflow run (study spec not found)"))
    gpu = facts.gpu
    if facts.fallback_cpu:
        notes.append(ctx.note("no GPU on the machine: the trials ran with gpu 0 (`fallback: cpu`), "
                              "so no GPU-hours are counted"))
        gpu = 0.0
    if not seconds:
        return StageCost(None, None, None, tuple(notes))
    total = sum(seconds.values())
    return StageCost(total, total * facts.cpu / 3600, total * gpu / 3600, tuple(notes))


def driver_cost(ctx: ReportContext, stage: StageState) -> StageCost:
    """An optuna or job stage runs in the launcher's own process: its wall time × 1 CPU."""
    note = ctx.note("optuna and job stages run in the driver process: wall time × 1 CPU; Ray reserves "
                    "nothing for them, and a GPU they may use is not counted")
    return StageCost(None, stage.wall_s / 3600, 0.0, (note,))


def stage_cost(ctx: ReportContext, name: str) -> StageCost:
    stage = ctx.state.stages.get(name)
    if stage is None or stage.status == "pending":
        return StageCost(None, None, None)
    if ctx.facts[name].kind == "tune":
        return tune_cost(ctx, name, stage)
    return driver_cost(ctx, stage)


def trials_cell(kind: str, stage: StageState) -> str:
    if not stage.trials:
        return "-"
    return f"{stage.trials} ({stage.failed_trials} {'infeasible' if kind == 'optuna' else 'failed'})"


def resources_cell(facts: StageFacts) -> str:
    if facts.kind != "tune":
        return "driver, 1 CPU"
    return f"{_num(facts.cpu)} CPU, {_num(facts.gpu)} GPU / trial"


def cost_lines(ctx: ReportContext) -> list[str]:
    """The cost table (a row per stage and a total), its notes, and the reserved-not-used caveat."""
    rows, totals = [], {"wall": 0.0, "trials": 0, "failed": 0, "cpu": 0.0, "gpu": 0.0}
    for name in stage_order(ctx):
        stage, facts = ctx.state.stages.get(name, StageState()), ctx.facts[name]
        cost = stage_cost(ctx, name)
        marks = "".join(f" ({n})" for n in cost.notes)
        rows.append([f"{name}{marks}", facts.kind, stage.status, _seconds(stage.wall_s), trials_cell(facts.kind, stage),
                     resources_cell(facts), "-" if cost.trial_s is None else _seconds(cost.trial_s),
                     "-" if cost.cpu_h is None else _num(cost.cpu_h), "-" if cost.gpu_h is None else _num(cost.gpu_h)])
        totals["wall"] += stage.wall_s
        totals["trials"] += stage.trials
        totals["failed"] += stage.failed_trials
        totals["cpu"] += cost.cpu_h or 0.0
        totals["gpu"] += cost.gpu_h or 0.0
    rows.append(["**total**", "", "", _seconds(totals["wall"]),
                 f"{totals['trials']} ({totals['failed']} failed/infeasible)" if totals["trials"] else "-", "", "",
                 f"**{_num(totals['cpu'])}**", f"**{_num(totals['gpu'])}**"])
    lines = ["## Cost", ""]
    lines += _table(["stage", "kind", "status", "wall", "trials (failed)", "resources", "Σ trial time",
                     "CPU-h", "GPU-h"], rows)
    lines += ["", NOT_UTILISATION, ""]
    lines += [f"({index}) {text}  " for index, text in enumerate(ctx.notes, start=1)]
    return lines + [""]


def total_hours(ctx: ReportContext) -> dict[str, float]:
    """Reserved CPU- and GPU-hours of the whole study, logged as the report run's metrics."""
    costs = [stage_cost(ctx, name) for name in stage_order(ctx)]
    return {"reserved_cpu_hours": sum(c.cpu_h or 0.0 for c in costs),
            "reserved_gpu_hours": sum(c.gpu_h or 0.0 for c in costs)}
