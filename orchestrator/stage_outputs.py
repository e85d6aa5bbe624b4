"""What a stage produced, as its definition declares it: recorded in the study state after it runs, and
found again by name when a later stage takes it by reference (`prototypes.clustering`).

A job or objective definition lists its outputs (`trainables.definitions.Output`); after the run, those
that exist are recorded (`StageState.outputs`) with their kind and path. A state from before outputs were recorded
falls back on the declaration itself: the same files in the stage's folder, and a passed-on result
traced through the stage's own inputs in the spec, so an old study folder still resumes and reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.study_state import RecordedOutput, StageState, StudyState
from trainables.definitions import Output

BEST = "best"  # the selector every stage has: its best trial's checkpoint (a job: its folder)

# What every tune stage writes into its experiment folder besides its trials (tune_stage.py, importance.py),
# pictures in the order the report shows them. Recorded after the run like a job's outputs.
TUNE_STAGE_OUTPUTS = {
    "trials": Output("data", "trials.csv"),
    "pareto_front": Output("data", "pareto_front.csv"),  # a stage with several metrics
    "pareto": Output("picture", "pareto.png"),
    "search_history": Output("picture", "search_history.png"),
    "parameter_sweep": Output("picture", "parameter_sweep.png"),
    "importance": Output("table", "importance.md"),
    "importance_plot": Output("picture", "importance.png"),
}
# Of those, what importance.py writes and logs to MLflow itself (its table, or why there is none, and its
# picture): the stage does not log them again, and the report shows them together.
IMPORTANCE_OUTPUTS = frozenset({"importance", "importance_plot"})


def declared_outputs(stage: Any) -> Mapping[str, Output]:
    """The outputs a stage spec declares: a job's (its definition's), written into its folder; an objective's, into
    its best trial's result folder (`outputs_folder`); a tune stage's, the search's own tables and pictures."""
    from trainables import catalog

    if stage.kind == "job":
        return catalog.job(stage.job).outputs
    if stage.kind == "optuna":
        return catalog.objective(stage.objective).outputs
    return TUNE_STAGE_OUTPUTS


def outputs_folder(kind: str, state: StageState) -> str:
    """The folder a stage's declared output paths start from: a job's own, an optuna stage's best result."""
    if kind == "optuna":
        return state.best.checkpoint if state.best else ""
    return state.output


def produced_outputs(declared: Mapping[str, Output], folder: Path, config: Any = None) -> dict[str, RecordedOutput]:
    """The declared outputs a run left: files and folders that exist under `folder`, and passed-on results
    named by a non-empty `config` field (`config` None: those are left out)."""
    recorded = {}
    for name, output in declared.items():
        if output.from_config:
            value = getattr(config, output.from_config, "") if config is not None else ""
            if value:
                recorded[name] = RecordedOutput(output.kind, str(value), output.caption)
        elif (folder / output.path).exists():
            recorded[name] = RecordedOutput(output.kind, str(folder / output.path), output.caption)
    return recorded


def reference_path(stage_name: str, selector: str, state: StudyState, stages: Sequence[Any] = ()) -> str:
    """Where `stage_name.selector` points: `best` -> the best checkpoint (a job: its folder), another name ->
    the output the stage recorded under it. Raises LookupError naming what is missing."""
    source = state.stage(stage_name)
    if selector == BEST:
        return source.best.checkpoint if source.best else source.output
    if selector in source.outputs:
        return source.outputs[selector].path
    return _declared_path(stage_name, selector, source, state, stages)


def _declared_path(stage_name: str, selector: str, source: StageState, state: StudyState,
                   stages: Sequence[Any]) -> str:
    """A state from before outputs were recorded: the output as the stage's spec declares it."""
    spec = next((stage for stage in stages if stage.name == stage_name), None)
    output = declared_outputs(spec).get(selector) if spec is not None else None
    missing = f"stage {stage_name!r} recorded no output {selector!r}"
    if output is None:
        raise LookupError(missing)
    if output.from_config in spec.inputs:
        reference = spec.inputs[output.from_config]
        return reference_path(reference.stage, reference.selector, state, stages)
    if output.from_config:
        if spec.config.get(output.from_config):
            return str(spec.config[output.from_config])
        raise LookupError(missing)
    base = outputs_folder(spec.kind, source)
    path = Path(base) / output.path
    if base and path.exists():
        return str(path)
    raise LookupError(f"{missing} and {path} does not exist")
