"""Several finished runs of one study under different seeds, side by side: does a conclusion survive the seed?

    python -m orchestrator.compare runs/gasten_mnist-seed0 runs/gasten_mnist-seed1 runs/gasten_mnist-seed2

Per searched stage, the champion's metric as mean ± std over the runs and each run's value; per job stage
(the evaluation), every metric it recorded the same way, with a plot of the means and their error bars.
The runs must be the same study but for the seed: where their study files (as launched, kept beside the
results) differ in anything else, the comparison says so at the top, since a difference could then come
from the edit rather than the seed. Written as `compare.md` + `compare.png` in `--to` (default
`<parent of the first run>/<study>-compare`) and logged to the first run's MLflow experiment as one run
named "compare" (tag gensearch.compare=true).

Everything is read from what the studies left on disk (`study_state.json`, `study.yaml`).
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.study_state import STATE_FILE, StudyState, load_state

COMPARE_FILE = "compare.md"
COMPARE_PLOT = "compare.png"
CURVES_PLOT = "compare_curves.png"
CURVE_POINT = re.compile(r"^(?P<prefix>.+)\.(?P<axis>[a-z])(?P<x>\d+)$")  # fewshot.pixels.lin.k16, ....n4
COMPARE_RUN_NAME = "compare"
TAG_COMPARE = "gensearch.compare"


@dataclass(frozen=True)
class Run:
    output: Path
    state: StudyState
    spec: Any  # the StudySpec as launched, or None when the folder keeps none that validates

    @property
    def seed(self) -> str:
        return "?" if self.state.seed is None else str(self.state.seed)


def load_run(output: Path) -> Run:
    from orchestrator.report import spec_from_state

    output = output.resolve()
    state = load_state(output)
    if state is None:
        raise FileNotFoundError(f"{output} holds no {STATE_FILE}: not a study output folder")
    return Run(output=output, state=state, spec=spec_from_state(state, output))


def differences(runs: Sequence[Run]) -> list[str]:
    """What sets each run apart from the first besides the seed: study, mode, profile, stages and their
    settings, stages that did not finish. Empty when they differ in the seed only."""
    from orchestrator.spec_diff import stage_changes

    first, found = runs[0], []
    for run in runs:
        name = run.output.name
        unfinished = [stage for stage, record in run.state.stages.items() if record.status != "finished"]
        if unfinished:
            found.append(f"{name}: not finished: {', '.join(unfinished)}")
    for run in runs[1:]:
        name = run.output.name
        if run.state.study != first.state.study:
            found.append(f"{name}: study {run.state.study!r}, not {first.state.study!r}")
        if run.state.reproducible != first.state.reproducible:
            found.append(f"{name}: reproducible {run.state.reproducible}, not {first.state.reproducible}")
        if run.state.profile != first.state.profile:
            found.append(f"{name}: profile {run.state.profile or '(none)'!r}, not {first.state.profile or '(none)'!r}")
        if run.state.seed is not None and run.state.seed == first.state.seed:
            found.append(f"{name}: the same seed ({run.seed}) as {first.output.name}")
        if run.spec is None or first.spec is None:
            found.append(f"{name}: no study file as launched to compare settings with")
            continue
        ours = {stage.name: stage for stage in first.spec.stages}
        theirs = {stage.name: stage for stage in run.spec.stages}
        if list(ours) != list(theirs):
            found.append(f"{name}: stages {', '.join(theirs)}, not {', '.join(ours)}")
        for stage in ours.keys() & theirs.keys():
            found += [f"{name}: {stage}.{change}" for change in stage_changes(ours[stage], theirs[stage])]
    return found


def spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of the finite values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def number(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4g}"


@dataclass(frozen=True)
class Row:
    stage: str
    metric: str
    values: tuple[float | None, ...]  # one per run, in the order given

    @property
    def mean_std(self) -> tuple[float, float]:
        return spread(self.values)


def champion_rows(runs: Sequence[Run]) -> list[Row]:
    """One row per searched stage (tune, optuna): its champion's metric in each run."""
    rows = []
    for stage in stage_names(runs):
        bests = [run.state.stages[stage].best if stage in run.state.stages else None for run in runs]
        if not any(bests):
            continue
        metric = next(best.metric for best in bests if best)
        rows.append(Row(stage, metric, tuple(float(best.value) if best and best.metric == metric else None
                                             for best in bests)))
    return rows


def job_rows(runs: Sequence[Run]) -> list[Row]:
    """One row per metric a job stage recorded (its headline first), in each run."""
    rows = []
    for stage in stage_names(runs):
        records = [run.state.stages.get(stage) for run in runs]
        if any(record is not None and record.best is not None for record in records):
            continue  # a searched stage: its champion is in champion_rows
        metrics = list(dict.fromkeys(name for record in records if record for name in record.metrics))
        rows += [Row(stage, metric, tuple(record.metrics.get(metric) if record else None for record in records))
                 for metric in metrics]
    return rows


def stage_names(runs: Sequence[Run]) -> list[str]:
    return list(dict.fromkeys(name for run in runs for name in run.state.stages))


def table(rows: Sequence[Row], runs: Sequence[Run], what: str) -> list[str]:
    header = ["stage", what, "mean ± std", *[f"{run.output.name} (seed {run.seed})" for run in runs]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        mean, std = row.mean_std
        lines.append("| " + " | ".join([row.stage, row.metric, f"{number(mean)} ± {number(std)}",
                                        *map(number, row.values)]) + " |")
    return lines


def render(runs: Sequence[Run], champions: Sequence[Row], jobs: Sequence[Row], warnings: Sequence[str],
           plotted: bool, curved: bool = False) -> str:
    lines = [f"# {runs[0].state.study}: {len(runs)} runs compared (seeds {', '.join(run.seed for run in runs)})", "",
             "Runs: " + ", ".join(f"`{run.output}`" for run in runs) + ". Mean ± sample standard deviation over "
             "the runs; a `-` is a value a run does not have.", ""]
    if warnings:
        lines += ["**Warning: these runs are not one study under different seeds**, so a difference below may "
                  "come from what follows rather than from the seed:", "", *[f"- {line}" for line in warnings], ""]
    if champions:
        lines += ["## Champions of the searched stages", "", *table(champions, runs, "metric"), ""]
    if jobs:
        lines += ["## Job metrics (the evaluation)", "", *table(jobs, runs, "metric"), ""]
    if plotted:
        lines += [f"![mean ± std over the runs]({COMPARE_PLOT})", ""]
    if curved:
        lines += [f"![curves: mean ± std over the runs]({CURVES_PLOT})", ""]
    if not champions and not jobs:
        lines += ["No stage recorded a champion or a metric.", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class Curve:
    """Points of one job metric measured at several sizes (few-shot accuracy at k shots, the prototype curve
    at n images): each point's x and its row."""

    panel: str  # e.g. "evaluation: fewshot.lin (k)"
    label: str  # the line within the panel, e.g. "pixels"
    points: tuple[tuple[int, Row], ...]


def curves(rows: Sequence[Row]) -> list[Curve]:
    """Job metrics named `<family>.<line>.<rest>.<axis><x>` (e.g. fewshot.pixels.lin.k16,
    prototype_curve.prototypes.test_accuracy.n4), grouped into lines (one per <line>) on panels (one per
    stage, family, rest and axis); a prefix with fewer than two sizes is not a curve."""
    grouped: dict[tuple[str, str, str], list[tuple[int, Row]]] = {}
    for row in rows:
        found = CURVE_POINT.match(row.metric)
        parts = found.group("prefix").split(".") if found else []
        if len(parts) < 2:
            continue
        family, line, rest = parts[0], parts[1], ".".join(parts[2:])
        panel = f"{row.stage}: {family}{'.' + rest if rest else ''} ({found.group('axis')})"
        grouped.setdefault((panel, line, found.group("axis")), []).append((int(found.group("x")), row))
    return [Curve(panel, line, tuple(sorted(points, key=lambda point: point[0])))
            for (panel, line, _), points in grouped.items() if len(points) >= 2]


def plot_curves(found: Sequence[Curve], runs: Sequence[Run], path: Path) -> None:
    """One panel per curve family: each line's mean against its size, with ± std error bars over the runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(curve.panel for curve in found))
    figure, axes = plt.subplots(len(panels), 1, figsize=(7, 3.2 * len(panels)), squeeze=False)
    for axis, panel in zip(axes[:, 0], panels):
        for curve in (c for c in found if c.panel == panel):
            xs = [x for x, _ in curve.points]
            means, stds = zip(*(row.mean_std for _, row in curve.points))
            axis.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=curve.label)
        sizes = sorted({x for c in found if c.panel == panel for x, _ in c.points})
        axis.set_xscale("log", base=2)
        axis.set_xticks(sizes, [str(x) for x in sizes])
        axis.minorticks_off()
        axis.set_title(f"{panel}: mean ± std over {len(runs)} runs", loc="left", fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot(rows_by_stage: Mapping[str, Sequence[Row]], runs: Sequence[Run], path: Path) -> None:
    """One panel per stage: each metric's mean with a ± std error bar, and each run's value as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(stage, rows) for stage, rows in rows_by_stage.items() if rows]
    height = sum(0.8 + 0.35 * len(rows) for _, rows in panels)
    figure, axes = plt.subplots(len(panels), 1, figsize=(7, max(2.5, height)), squeeze=False)
    for axis, (stage, rows) in zip(axes[:, 0], panels):
        positions = range(len(rows))
        means, stds = zip(*(row.mean_std for row in rows))
        axis.errorbar(means, positions, xerr=stds, fmt="o", color="black", capsize=4, label="mean ± std")
        for index, run in enumerate(runs):
            axis.scatter([row.values[index] for row in rows], positions, s=14, alpha=0.6, label=f"seed {run.seed}")
        axis.set_yticks(list(positions), [row.metric for row in rows])
        axis.invert_yaxis()
        axis.set_title(stage, loc="left", fontsize=10)
        axis.grid(axis="x", alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def log_to_mlflow(run: Run, folder: Path, tracking_uri: str | None,
                  rows: Sequence[Row]) -> str | None:
    """The comparison as one MLflow run in the first study's experiment; None (and one printed line) when
    its store cannot be used."""
    from orchestrator.report import open_store, study_target
    from orchestrator.tracking import TAG_STUDY, error_line

    target = study_target(run.output, run.state, tracking_uri)
    try:
        tracker, why_not = open_store(target, run.state, True)
        if tracker is None or not run.state.experiment_id:
            print(f"comparison not logged to MLflow: {why_not or 'the study has no MLflow experiment'}", flush=True)
            return None
        created = tracker.create_run(COMPARE_RUN_NAME, {TAG_STUDY: run.state.study, TAG_COMPARE: "true"})
        for row in rows:
            mean, std = row.mean_std
            if math.isfinite(mean):
                tracker.log_metrics(created, {f"{row.stage}.{row.metric}.mean": mean,
                                              f"{row.stage}.{row.metric}.std": std})
        for path in (folder / COMPARE_FILE, folder / COMPARE_PLOT, folder / CURVES_PLOT):
            if path.is_file():
                tracker.log_file(created, path)
        tracker.close(created)
        return created
    except Exception as error:  # noqa: BLE001 - the files are written; MLflow failing is one line
        print(f"comparison not logged to MLflow ({target.uri}): {error_line(error)}", flush=True)
        return None


def compare(outputs: Sequence[Path], to: Path | None = None, tracking_uri: str | None = None,
            log: bool = True) -> Path:
    """Write the comparison of `outputs` into `to` and return the markdown's path."""
    runs = [load_run(Path(output)) for output in outputs]
    folder = Path(to) if to else runs[0].output.parent / f"{runs[0].state.study}-compare"
    folder.mkdir(parents=True, exist_ok=True)
    champions, jobs = champion_rows(runs), job_rows(runs)
    found = curves(jobs)
    on_curves = {row for curve in found for _, row in curve.points}
    by_stage: dict[str, list[Row]] = {}
    for row in [*champions, *jobs]:
        if row not in on_curves:  # a curve's points are drawn as curves, not as a stack of dots
            by_stage.setdefault(row.stage, []).append(row)
    if by_stage:
        plot(by_stage, runs, folder / COMPARE_PLOT)
    (folder / CURVES_PLOT).unlink(missing_ok=True)
    if found:
        plot_curves(found, runs, folder / CURVES_PLOT)
    warnings = differences(runs)
    markdown = folder / COMPARE_FILE
    markdown.write_text(render(runs, champions, jobs, warnings, plotted=bool(by_stage), curved=bool(found)))
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    if log:
        log_to_mlflow(runs[0], folder, tracking_uri, [*champions, *jobs])
    return markdown


EXAMPLES = textwrap.dedent("""\
    examples:
      for seed in 0 1 2; do
        python -m orchestrator.launch search_spaces/gasten_mnist.yaml --seed $seed --output runs/gasten-seed$seed
      done
      python -m orchestrator.compare runs/gasten-seed0 runs/gasten-seed1 runs/gasten-seed2

    Writes compare.md and compare.png (per stage: the champion's metric, or each metric a job recorded, as
    mean ± std over the runs and each run's value) into --to, and logs them to the first run's MLflow
    experiment as one run named "compare". Runs that differ in more than the seed get a warning listing
    each difference.
    """)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.compare",
                                     description="Compare finished runs of one study under different seeds.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outputs", metavar="OUTPUT_DIR", nargs="+",
                        help="the studies' output folders (each holds study_state.json)")
    parser.add_argument("--to", metavar="DIR", help="where to write compare.md and compare.png (default: "
                                                    "<parent of the first OUTPUT_DIR>/<study>-compare)")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow store to log to (default: the first study's)")
    parser.add_argument("--no-mlflow", action="store_true", help="write the files only")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    missing = [output for output in args.outputs if not (Path(output) / STATE_FILE).is_file()]
    if missing:
        print(f"error: {missing[0]} holds no {STATE_FILE}: pass finished studies' output folders "
              f"(e.g. runs/smoke-seed0 runs/smoke-seed1)", file=sys.stderr)
        return 2
    from orchestrator.tracking import apply_client_defaults

    apply_client_defaults()
    markdown = compare([Path(output) for output in args.outputs], Path(args.to) if args.to else None,
                       args.tracking_uri, log=not args.no_mlflow)
    print(f"comparison: {markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
