"""The whole report page: header (stages at a glance, where MLflow is), cost table, one section per stage,
and the next steps (comparing trials, promoting a model).
"""

from __future__ import annotations

from datetime import datetime

from orchestrator.estimate_record import estimate_section
from orchestrator.report.cost import cost_lines
from orchestrator.report.facts import ReportContext, stage_order
from orchestrator.report.formatting import _num
from orchestrator.report.gallery import Gallery
from orchestrator.report.stage_sections import stage_lines
from orchestrator.study_state import StageState


def stage_glance(ctx: ReportContext, name: str) -> str:
    """One line per stage for the header: status, best result, registered model."""
    stage, facts = ctx.state.stages.get(name, StageState()), ctx.facts[name]
    parts = [f"**{name}** ({facts.kind}): {stage.status}"]
    if stage.best is not None:
        parts.append(f"best {stage.best.metric}={_num(stage.best.value)} (trial `{stage.best.trial_id}`)")
    elif stage.metrics:
        parts.append(", ".join(f"{k}={_num(v)}" for k, v in list(stage.metrics.items())[:2]))
    if stage.registered is not None:
        parts.append(f"`{stage.registered.name}` v{stage.registered.version} @{stage.registered.alias}")
    if facts.failure_reason:
        parts.append(f"reason: {facts.failure_reason.splitlines()[0][:200]}")
    return "- " + " · ".join(parts)


def header_lines(ctx: ReportContext) -> list[str]:
    lines = [f"# Study `{ctx.state.study}`", ""]
    description = getattr(ctx.spec, "description", "")
    if description:
        lines += [f"> {description}", ""]
    profile = getattr(ctx.spec, "profile", "")
    lines += [f"Report written {datetime.now():%Y-%m-%d %H:%M} from `{ctx.output}`"
              + (f" (profile `{profile}`)" if profile else "") + ".", ""]
    lines += ["## Stages", ""] + [stage_glance(ctx, name) for name in stage_order(ctx)] + [""]
    experiment = f"`{ctx.experiment_name}` (id {ctx.state.experiment_id})" if ctx.experiment_name \
        else f"id {ctx.state.experiment_id or '-'}"
    lines += ["## MLflow", "", f"Tracking URI `{ctx.target.uri}`, experiment {experiment}: one parent run per "
              f"stage, one child run per trial. Open it with", "", "```sh", ctx.target.ui_command(), "```", ""]
    if ctx.target.embedded:
        lines += [f"then browse <{ctx.target.ui_url(ctx.state.experiment_id)}> (the experiment's runs).", ""]
    return lines


def footer_lines(ctx: ReportContext) -> list[str]:
    """How to go further: compare trials in the MLflow UI, move a model's alias."""
    store = f"--output {ctx.output}" if ctx.target.embedded else f"--tracking-uri {ctx.target.uri}"
    registered = [s.registered for s in ctx.state.stages.values() if s.registered is not None]
    model = registered[0].name if registered else f"{ctx.state.study}-STAGE"
    version = registered[0].version if registered else "1"
    searched = [name for name in stage_order(ctx) if ctx.facts[name].kind in ("tune", "optuna")]
    example = searched[0] if searched else "STAGE"
    return ["## Next steps", "",
            "**Compare trials in the MLflow UI.** In the experiment, expand a stage's run to see its trials (child "
            f"runs), or search ``tags.`gensearch.stage` = '{example}'``; sort by the stage's metric, tick a few "
            "trials and press *Compare* for parameter–metric plots (parallel coordinates, scatter, contour) and "
            "per-epoch curves. A trial's run holds its params, its metrics per epoch (step = epoch) and files such "
            "as samples.png.", "",
            "**Promote a model.** A stage with `register:` registers its best trial's model as a new version and "
            "points the alias `champion` at it. Promotion is the human decision afterwards: list the versions (each "
            "study run that registered one added one), then move an alias:", "",
            "```sh", "# the registered models, their versions and aliases",
            f"python -m orchestrator.promote {store}",
            f"# point @champion at version {version} of {model}",
            f"python -m orchestrator.promote {store} {model} --version {version}",
            "# give the version registered from a trial's run (its run id is in the UI) another alias",
            f"python -m orchestrator.promote {store} {model} --run RUN_ID --alias staging",
            "```", "", f"Load a registered model by its URI, e.g. `models:/{model}@champion`.", ""]


def render(ctx: ReportContext, gallery: Gallery) -> str:
    """The whole report as markdown (copies the images it shows into the gallery on the way)."""
    sections = [stage_lines(ctx, index, name, gallery) for index, name in enumerate(stage_order(ctx), start=1)]
    lines = header_lines(ctx) + cost_lines(ctx) + estimate_section(ctx)
    lines += [line for section in sections for line in section]
    return "\n".join(lines + footer_lines(ctx)).rstrip() + "\n"
