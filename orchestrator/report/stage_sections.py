"""One section per stage, by kind: a tune or optuna stage's best trial, champion, Pareto front, importance
and plots; a job's headline metrics, tables and pictures from the outputs it recorded (the ones its
definition declares), never from file names the report knows.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

from orchestrator.report.facts import ReportContext, local_path, stage_folder
from orchestrator.report.formatting import _num, _table, format_settings, numeric_items
from orchestrator.report.gallery import CAPTIONS, Gallery
from orchestrator.stage_outputs import (IMPORTANCE_OUTPUTS, TUNE_STAGE_OUTPUTS, declared_outputs, outputs_folder,
                                        produced_outputs)
from orchestrator.study_state import BestTrial, RecordedOutput, StageState
from trainables.definitions import SHOWN_KINDS

HEADLINE_METRICS = 6  # a job's first metrics (jobs put their headline first; the rest are in MLflow)
MAX_GRIDS = 6  # a gallery's pictures (prototype grids, one per cluster): a few show what they look like
MAX_TABLE_LINES = 40  # a job's markdown table inlined; longer ones are copied and linked instead
MAX_FRONT_ROWS = 10  # a two-objective stage's Pareto front: its best rows; the whole front is in pareto_front.csv
PARETO_FRONT_FILE = TUNE_STAGE_OUTPUTS["pareto_front"].path


def best_lines(ctx: ReportContext, name: str, best: BestTrial) -> list[str]:
    """The best trial: id, metric, the other metrics at that step, and its (searched) settings."""
    facts = ctx.facts[name]
    epoch = f", step {best.epoch}" if best.epoch else ""
    lines = [f"**Best trial `{best.trial_id}`**{epoch}: **{best.metric} = {_num(best.value)}**", ""]
    others = [(k, v) for k, v in best.metrics.items() if k != best.metric and k != "epoch" and not k.endswith("_s")]
    if others:
        lines += ["Also at that step: " + ", ".join(f"{k}={_num(v)}" for k, v in others[:8]), ""]
    config = {k: v for k, v in best.config.items() if k not in facts.inputs}
    if facts.kind == "tune" and facts.searched:
        lines += [f"Searched settings: `{format_settings(config, facts.searched)}`", ""]
    elif config:
        lines += [f"Settings: `{format_settings(config)}`", ""]
    if best.child_run_id:
        lines += [f"MLflow run of the trial: `{best.child_run_id}`", ""]
    return lines


def registered_lines(stage: StageState) -> list[str]:
    reg = stage.registered
    if reg is None:
        return []
    return [f"**Registered model:** `{reg.name}` version {reg.version}, alias `@{reg.alias}` "
            f"(`models:/{reg.name}@{reg.alias}`)", ""]


def step_images(checkpoint: Path) -> list[Path]:
    """The PNG step files (samples.png, ...) of a trial's chosen checkpoint; when that checkpoint has
    none, those of the trial's latest checkpoint that has some."""
    from trainables.checkpoint import step_files

    pngs = [p for p in step_files(checkpoint) if p.suffix == ".png"]
    if pngs or not checkpoint.parent.is_dir():
        return pngs
    for folder in sorted(checkpoint.parent.glob("checkpoint_*"), reverse=True):
        pngs = [p for p in step_files(folder) if p.suffix == ".png"]
        if pngs:
            return pngs
    return []


def champion_lines(ctx: ReportContext, name: str, stage: StageState) -> list[str]:
    """A stage with several metrics: its champion rule, the chosen point and each reference point it beats
    or not (from the spec; without one, nothing: the front table still shows the chosen row)."""
    spec_stage = next((s for s in ctx.spec.stages if s.name == name), None) if ctx.spec is not None else None
    # A spec whose stage of this name is not a tune stage (edited since) has no champion rule to show.
    if getattr(spec_stage, "kind", None) != "tune" or not spec_stage.multi_objective or stage.best is None:
        return []
    from orchestrator.champion import describe_champion

    metrics = ", ".join(f"{m} ({mode})" for m, mode in spec_stage.objectives)
    chosen = describe_champion(spec_stage, stage.best)
    return [f"Searched metrics: {metrics}. Champion rule: **{spec_stage.champion}**, over every evaluated epoch "
            "of every trial.", "", f"{chosen[0].upper()}{chosen[1:]}.", ""]


def pareto_front_lines(path: Path) -> list[str]:
    """The first rows of pareto_front.csv (the front of a two-objective stage, best first) as a table."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if len(rows) < 2:
        return []
    header, body = rows[0], rows[1:]

    def cell(text: str) -> str:
        try:
            return _num(float(text))
        except ValueError:
            return text

    lines = [f"**Pareto front**: {len(body)} evaluated epoch(s) that no other epoch beats on every searched "
             f"metric (`{PARETO_FRONT_FILE}` in the stage's MLflow run)", ""]
    lines += _table(header, ([cell(c) for c in row] for row in body[:MAX_FRONT_ROWS]))
    if len(body) > MAX_FRONT_ROWS:
        lines.append(f"\n… and {len(body) - MAX_FRONT_ROWS} more rows in {PARETO_FRONT_FILE}.")
    return lines + [""]


def tune_section(ctx: ReportContext, name: str, stage: StageState, gallery: Gallery) -> list[str]:
    lines: list[str] = []
    if stage.best is not None:
        lines += best_lines(ctx, name, stage.best) + registered_lines(stage)
    lines += champion_lines(ctx, name, stage)
    outputs, _ = outputs_of(ctx, name, stage, "tune")
    paths = {key: path for key, output in outputs.items() if (path := local_path(output.path, ctx.output)).is_file()}
    if "pareto_front" in paths:  # the front table, with its picture right after it (declared in that order)
        lines += pareto_front_lines(paths["pareto_front"])
    for key, output in outputs.items():
        if key in paths and output.kind == "picture" and key not in IMPORTANCE_OUTPUTS:
            lines += gallery.image(paths[key], name, paths[key].name)
    if "importance" in paths:
        lines += importance_lines(paths["importance"].parent, name, gallery)
    if stage.best is not None and stage.best.checkpoint:
        step = f", step {stage.best.epoch}" if stage.best.epoch else ""
        for png in step_images(local_path(stage.best.checkpoint, ctx.output)):
            what = CAPTIONS.get(png.name, f"{png.stem} from the best trial's chosen checkpoint")
            lines += gallery.image(png, name, "best_trial", png.name,
                                   caption=f"{what} (trial {stage.best.trial_id}{step})")
    return lines


def importance_lines(folder: Path, name: str, gallery: Gallery) -> list[str]:
    """The stage's parameter importance (importance.py): its table, or the line saying why there is none,
    and its bar chart."""
    from orchestrator.importance import PLOT_FILE, TABLE_FILE

    if not (folder / TABLE_FILE).is_file():
        return []
    lines = (folder / TABLE_FILE).read_text(errors="replace").strip().splitlines() + [""]
    if (folder / PLOT_FILE).is_file():
        lines += gallery.image(folder / PLOT_FILE, name, PLOT_FILE)
    return lines


def optuna_section(ctx: ReportContext, name: str, stage: StageState, gallery: Gallery) -> list[str]:
    lines: list[str] = []
    if stage.best is not None:
        lines += best_lines(ctx, name, stage.best)
    folder = stage_folder(ctx.output, name, stage, "optuna")
    if folder is not None:
        if (folder / "search_history.png").is_file():
            lines += gallery.image(folder / "search_history.png", name, "search_history.png")
        lines += importance_lines(folder, name, gallery)
    outputs, _ = outputs_of(ctx, name, stage, "optuna")
    return lines + output_lines(ctx, [output for output in outputs.values() if output.kind in SHOWN_KINDS], gallery,
                                (name, "best"))


def headline_lines(metrics: Mapping[str, Any]) -> list[str]:
    """A job's first few metrics as a small table (jobs list their headline metrics first)."""
    items = numeric_items(metrics)
    if not items:
        return []
    lines = _table(["metric", "value"], [(k, _num(v)) for k, v in items[:HEADLINE_METRICS]])
    more = len(items) - HEADLINE_METRICS
    if more > 0:
        lines.append(f"\n… and {more} more in metrics.json and the stage's MLflow run.")
    return lines + [""]


def markdown_file_lines(path: Path, gallery: Gallery, *parts: str) -> list[str]:
    """A job's markdown table inline; a long one is copied next to the report and linked instead."""
    text = path.read_text(errors="replace").strip()
    lines = [f"**{path.name}**", ""]
    if len(text.splitlines()) <= MAX_TABLE_LINES:
        return lines + text.splitlines() + [""]
    link = gallery.add(path, *parts)
    return lines + text.splitlines()[:MAX_TABLE_LINES] + ["", f"… [the whole table]({link})", ""]


def text_file_lines(path: Path) -> list[str]:
    text = path.read_text(errors="replace").rstrip().splitlines()
    return [f"**{path.name}**", "", "```", *text[:MAX_TABLE_LINES], "```", ""]


def outputs_of(ctx: ReportContext, name: str, stage: StageState, kind: str) -> tuple[dict[str, RecordedOutput], str]:
    """The outputs the stage recorded, and the folder their paths start from. A state from before outputs were
    recorded: the ones its definition (named by the spec) declares that are in that folder."""
    if stage.outputs:
        return stage.outputs, outputs_folder(kind, stage)
    spec_stage = next((s for s in ctx.spec.stages if s.name == name), None) if ctx.spec is not None else None
    if spec_stage is None and kind != "tune":  # a tune stage's outputs do not depend on its spec
        return {}, ""
    recorded = outputs_folder(kind, stage)
    folder = stage_folder(ctx.output, name, stage, kind) if kind in ("job", "tune") else \
        local_path(recorded, ctx.output) if recorded else None
    if folder is None or not folder.is_dir():
        return {}, ""
    try:
        declared = TUNE_STAGE_OUTPUTS if kind == "tune" else declared_outputs(spec_stage)
        return produced_outputs(declared, folder), str(folder)
    except LookupError:  # a job or objective the catalog no longer knows
        return {}, ""


def output_groups(outputs: Mapping[str, RecordedOutput], base: str) -> dict[str, list[RecordedOutput]]:
    """The outputs the report shows, by the subfolder of the job's folder they are in ("": the folder itself;
    an evaluation writes each part into its own), the folder's own first, then the subfolders by name."""
    groups: dict[str, list[RecordedOutput]] = {"": []}
    for output in outputs.values():
        if output.kind not in SHOWN_KINDS:
            continue
        try:
            relative = PurePath(output.path).relative_to(base)
        except ValueError:
            relative = PurePath(PurePath(output.path).name)
        groups.setdefault(relative.parent.as_posix() if len(relative.parts) > 1 else "", []).append(output)
    return {sub: groups[sub] for sub in sorted(groups)}


def recorded_metrics(outputs: list[RecordedOutput], ctx: ReportContext) -> Mapping[str, Any] | None:
    """The group's metrics file (kind `metrics`) as a dict, when there is one that reads as one."""
    for output in outputs:
        path = local_path(output.path, ctx.output)
        if output.kind == "metrics" and path.is_file():
            try:
                loaded = json.loads(path.read_text())
            except json.JSONDecodeError:
                continue
            if isinstance(loaded, dict):
                return loaded
    return None


def output_lines(ctx: ReportContext, outputs: list[RecordedOutput], gallery: Gallery, parts: tuple[str, ...],
                 fallback_metrics: Mapping[str, Any] | None = None) -> list[str]:
    """One group of a job's outputs: headline metrics, then its tables, texts and pictures in the order the
    job declares them, then its galleries (a few pictures each) and the picture folders it does not show."""
    lines = headline_lines(recorded_metrics(outputs, ctx) or fallback_metrics or {})
    folders = []
    for output in outputs:
        path = local_path(output.path, ctx.output)
        if not path.exists():
            continue
        if output.kind == "table":
            lines += markdown_file_lines(path, gallery, *parts, path.name)
        elif output.kind == "text":
            lines += text_file_lines(path)
        elif output.kind == "picture":
            lines += gallery.image(path, *parts, path.name)
        elif output.kind in ("gallery", "images") and path.is_dir():
            folders.append((output, path))
    for output, path in folders:
        if output.kind == "gallery":
            lines += gallery_lines(path, output.caption, gallery, parts)
    for output, path in folders:
        count = len(list(path.glob("*.png"))) if output.kind == "images" else 0
        if count:
            lines += [f"({count} images in `{path.name}/` are not shown here.)", ""]
    return lines


def gallery_lines(folder: Path, caption: str, gallery: Gallery, parts: tuple[str, ...]) -> list[str]:
    """A gallery's pictures (prototype grids, one per cluster), at most MAX_GRIDS of them."""
    pngs = sorted(folder.glob("*.png"))
    lines = []
    for png in pngs[:MAX_GRIDS]:
        lines += gallery.image(png, *parts, folder.name, png.name, caption=caption or None)
    if len(pngs) > MAX_GRIDS:
        lines += [f"({len(pngs) - MAX_GRIDS} more {folder.name} in `{folder.name}/`.)", ""]
    return lines


def job_section(ctx: ReportContext, name: str, stage: StageState, gallery: Gallery) -> list[str]:
    """A job's headline metrics and the outputs it recorded (orchestrator/stage_outputs.py), its subfolders'
    after its own."""
    outputs, base = outputs_of(ctx, name, stage, "job")
    if not outputs:
        return headline_lines(stage.metrics)
    groups = output_groups(outputs, base)
    lines = output_lines(ctx, groups.pop(""), gallery, (name,), stage.metrics)
    for sub, members in groups.items():
        lines += [f"### {name} / {sub}", ""] + output_lines(ctx, members, gallery, (name, *PurePath(sub).parts))
    return lines


def stage_lines(ctx: ReportContext, index: int, name: str, gallery: Gallery) -> list[str]:
    """A stage's section; what it holds depends on the stage's kind and the files it left."""
    stage, facts = ctx.state.stages.get(name, StageState()), ctx.facts[name]
    lines = [f"## {index}. {name} ({facts.kind}, {stage.status})", ""]
    if facts.failure_reason:
        lines += [f"**Failed:** {facts.failure_reason.splitlines()[0][:500]}", ""]
    if stage.status == "failed" and (ctx.output / "error.log").is_file():
        lines += ["The traceback is in `error.log` in the output folder; fix the cause and re-run the launcher "
                  "with `--resume`.", ""]
    if stage.status == "pending":
        return lines + ["Not started.", ""]
    body = {"tune": tune_section, "optuna": optuna_section}.get(facts.kind, job_section)(ctx, name, stage, gallery)
    return lines + (body or ["Nothing to show.", ""])
