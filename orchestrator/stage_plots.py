"""The pictures a researcher looks at instead of tables: search history, per-trial curves, Pareto front.

Each function takes plain data (values, pandas frames of reported metrics) and writes or returns
a PNG; Tune's result objects stay in `tune_stage.py`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.champion import dominates
from trainables.plotting import pyplot


def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


def plot_search_history(values: Sequence[float | None], metric: str, mode: str, stage: str, path: Path,
                        missing_label: str = "failed") -> None:
    """Each trial's best value in start order (None: failed, or `missing_label`), with the running best:
    did the search converge?"""
    plt = pyplot()
    running, best = [], None
    for value in values:
        if value is not None and (best is None or _better(value, best, mode)):
            best = value
        running.append(best)
    figure, axis = plt.subplots(figsize=(6, 3.5))
    xs = range(1, len(values) + 1)
    axis.scatter([x for x, v in zip(xs, values) if v is not None], [v for v in values if v is not None],
                 label="trial (best epoch)", color="tab:blue")
    axis.plot([x for x, v in zip(xs, running) if v is not None], [v for v in running if v is not None],
              label="best so far", color="tab:orange", drawstyle="steps-post")
    failed = [x for x, v in zip(xs, values) if v is None]
    if failed:
        finite = [v for v in values if v is not None]
        axis.scatter(failed, [min(finite) if finite else 0] * len(failed), marker="x", color="tab:red",
                     label=missing_label)
    axis.set_xlabel("trial (in start order)")
    axis.set_ylabel(f"{metric} ({'higher' if mode == 'max' else 'lower'} is better)")
    axis.set_title(f"{stage}: search history")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def trial_curves_png(frame: Any, metrics: Sequence[str], title: str,
                     baselines: Mapping[str, str] | None = None) -> bytes | None:
    """One small panel per metric against the epoch, with the metric's baseline as a dashed line.

    `frame` is the trial's reported results (a pandas frame with `training_iteration`); metrics it
    never reported are left out. None when there is nothing to draw.
    """
    shown = [m for m in metrics if m in frame and frame[m].notna().any()]
    if not shown:
        return None
    plt = pyplot()
    steps = frame["training_iteration"] if "training_iteration" in frame else range(1, len(frame) + 1)
    figure, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 2.6), squeeze=False)
    for axis, metric in zip(axes[0], shown):
        axis.plot(steps, frame[metric], marker="o", markersize=3)
        baseline = (baselines or {}).get(metric)
        if baseline and baseline in frame and frame[baseline].notna().any():
            axis.axhline(float(frame[baseline].dropna().iloc[0]), color="grey", linestyle="--", linewidth=1,
                         label=baseline)
            axis.legend(fontsize=7)
        axis.set_xlabel("epoch")
        axis.set_title(metric, fontsize=9)
        axis.grid(alpha=0.3)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def pareto_front(points: Sequence[tuple[float, float]], modes: Sequence[str] = ("min", "min")
                 ) -> list[tuple[float, float]]:
    """The points no other point beats on both coordinates (each lower- or higher-is-better by `modes`), by x."""
    signs = [1.0 if mode == "min" else -1.0 for mode in modes]
    signed = [(x * signs[0], y * signs[1]) for x, y in points]
    return sorted({p for p, s in zip(points, signed) if not any(dominates(other, s) for other in signed)})


def _first_value(trials: Mapping[str, Any], metric: str) -> float | None:
    """A metric every trial reports alike (a baseline, a reference point): its first finite value."""
    for frame in trials.values():
        if frame is not None and metric in frame:
            finite = [float(v) for v in frame[metric] if isinstance(v, (int, float)) and math.isfinite(v)]
            if finite:
                return finite[0]
    return None


def plot_pareto(trials: Mapping[str, Any], x: str, y: str, stage: str, path: Path, *,
                best_trial: str | None = None, baselines: Mapping[str, str] | None = None,
                modes: Sequence[str] = ("min", "min"), chosen: Mapping[str, float] | None = None,
                references: Mapping[str, tuple[str, str]] | None = None) -> bool:
    """Every (trial, epoch) in the plane of two rival metrics (`modes`: which way each is better), the
    Pareto front through them, each trial's last epoch bold, the chosen point circled (`chosen`: its
    metrics; else the best trial's last epoch), the baseline (e.g. the step-1 generator) as a star and
    each reference point (label -> the metrics holding its x and y, e.g. real boundary digits) as a
    labelled diamond. `trials` maps trial id -> its results frame. False: nothing to draw."""
    points = {trial: [(float(a), float(b)) for a, b in zip(frame[x], frame[y]) if math.isfinite(a) and math.isfinite(b)]
              for trial, frame in trials.items() if frame is not None and x in frame and y in frame}
    points = {trial: values for trial, values in points.items() if values}
    if not points:
        return False
    circled = (chosen[x], chosen[y]) if chosen is not None and x in chosen and y in chosen else None
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4.5))
    colours = plt.get_cmap("tab10")
    for index, (trial, values) in enumerate(sorted(points.items())):
        colour = colours(index % 10)
        axis.plot(*zip(*values), color=colour, alpha=0.35, linewidth=0.8, marker=".", markersize=4)
        axis.scatter(*values[-1], color=colour, s=30, label=trial if len(points) <= 12 else None, zorder=3)
        if trial == best_trial:
            axis.scatter(*(circled or values[-1]), s=160, facecolors="none", edgecolors="black", linewidths=1.5,
                         zorder=4, label=f"chosen ({trial})")
    front = pareto_front([p for values in points.values() for p in values], modes)
    axis.plot(*zip(*front), color="black", drawstyle="steps-post" if tuple(modes) == ("min", "min") else "default",
              linewidth=1, label="Pareto front (all epochs)")
    base_x, base_y = (baselines or {}).get(x), (baselines or {}).get(y)
    start = (_first_value(trials, base_x), _first_value(trials, base_y)) if base_x and base_y else (None, None)
    if None not in start:
        axis.scatter(*start, marker="*", s=200, color="gold", edgecolors="black", zorder=5, label="baseline (start)")
    for index, (label, (ref_x, ref_y)) in enumerate((references or {}).items()):
        where = (_first_value(trials, ref_x), _first_value(trials, ref_y))
        if None not in where:
            axis.scatter(*where, marker="D", s=90, color=plt.get_cmap("Set1")(index % 9), edgecolors="black",
                         zorder=5, label=label)
            axis.annotate(label, where, textcoords="offset points", xytext=(6, 6), fontsize=7)
    axis.set_xlabel(f"{x} ({'lower' if modes[0] == 'min' else 'higher'} is better)")
    axis.set_ylabel(f"{y} ({'lower' if modes[1] == 'min' else 'higher'} is better)")
    axis.set_title(f"{stage}: {y} vs {x}, every trial and epoch (dots), last epoch bold")
    axis.title.set_fontsize(9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def plot_parameter_sweep(points: Mapping[str, Sequence[tuple[Any, float | None]]], metric: str, mode: str,
                         stage: str, path: Path, best: Mapping[str, Any] | None = None) -> bool:
    """One panel per searched setting: each trial's best value against that setting's value (a
    diffusion step t, a latent size), the best trial ringed. Where is the optimum: at an end of the
    range (widen it) or inside? `points` maps setting -> [(value, metric or None = failed)]; a
    setting with text values gets its categories as x positions. False: nothing to draw."""
    panels = {name: [(x, y) for x, y in values if y is not None and math.isfinite(y)]
              for name, values in points.items()}
    panels = {name: values for name, values in panels.items() if values}
    if not panels:
        return False
    plt = pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for axis, (name, values) in zip(axes[0], panels.items()):
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in values)
        categories = [] if numeric else sorted({str(x) for x, _ in values})
        position = (lambda x: x) if numeric else (lambda x: categories.index(str(x)))
        axis.scatter([position(x) for x, _ in values], [y for _, y in values], color="tab:blue", label="trial")
        if best is not None and name in best:
            chosen = [y for x, y in values if x == best[name]]
            if chosen:
                axis.scatter([position(best[name])], [chosen[0]], s=160, facecolors="none", edgecolors="black",
                             linewidths=1.5, label="best", zorder=3)
        if not numeric:
            axis.set_xticks(range(len(categories)))
            axis.set_xticklabels(categories)
        elif len({x for x, _ in values}) > 2 and min(x for x, _ in values) > 0 and \
                max(x for x, _ in values) / min(x for x, _ in values) >= 50:
            axis.set_xscale("log")
        axis.set_xlabel(name)
        axis.set_ylabel(f"{metric} ({'higher' if mode == 'max' else 'lower'} is better)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"{stage}: {metric} against each searched setting", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def plot_importance(importances: Mapping[str, Mapping[str, float]], stage: str, path: Path) -> None:
    """One horizontal bar chart per objective: each searched setting's share of the metric's variance
    (fANOVA), most important on top. Which settings are worth searching next time, which could be fixed?"""
    plt = pyplot()
    settings = max(len(values) for values in importances.values())
    figure, axes = plt.subplots(1, len(importances), figsize=(4.5 * len(importances), 1.2 + 0.45 * settings),
                                squeeze=False)
    for axis, (metric, values) in zip(axes[0], importances.items()):
        ranked = sorted(values.items(), key=lambda item: item[1])  # barh draws bottom-up
        axis.barh([name for name, _ in ranked], [value for _, value in ranked], color="tab:blue")
        for y, (_, value) in enumerate(ranked):
            axis.annotate(f"{value:.2f}", (value, y), textcoords="offset points", xytext=(3, 0), va="center",
                          fontsize=8)
        axis.set_xlim(0, 1.1)
        axis.set_xlabel(f"importance for {metric}")
        axis.grid(alpha=0.3, axis="x")
    figure.suptitle(f"{stage}: parameter importance (fANOVA)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
