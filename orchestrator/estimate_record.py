"""The estimate a launch with `--estimate` made, kept in the study folder and set beside what the stages
actually cost in the report, so an estimate can be checked against the run it was made for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ESTIMATE_FILE = "estimate.json"


def record_estimate(spec: Any, output: Path, manifest: Any, data_root: Path | None = None) -> None:
    """Estimate the study (printed as `--dry-run --estimate` prints it) and keep it as OUTPUT/estimate.json;
    `data_root`: the launcher's --data-root."""
    from orchestrator.estimate import StageEstimate, estimate_lines, estimate_study

    estimates = estimate_study(spec, data_root)
    print("\n".join(estimate_lines(spec, estimates)), flush=True)
    path = manifest.claim(output / ESTIMATE_FILE)
    if path is None:
        print(f"note: {output / ESTIMATE_FILE} is not gensearch's: the estimate is not kept", flush=True)
        return
    kept = {e.name: {"trial_epochs": e.trial_epochs.total, "wall_s": e.wall_s, "cpu_hours": e.cpu_hours,
                     "gpu_hours": e.gpu_hours}
            for e in estimates if isinstance(e, StageEstimate) and not e.problem}
    path.write_text(json.dumps(kept, indent=1))
    manifest.save()


def load_estimate(output: Path) -> dict[str, dict[str, float]]:
    """The kept estimate per stage; empty when the study was launched without `--estimate` (or it is unreadable)."""
    try:
        return json.loads((output / ESTIMATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def estimate_section(ctx: Any) -> list[str]:
    """`## Estimate vs actual`: per estimated stage, its wall time and CPU-/GPU-hours estimated / actual."""
    from orchestrator.report.cost import stage_cost
    from orchestrator.report.formatting import _num, _seconds, _table

    estimate = load_estimate(ctx.output)
    rows = []
    for name, guess in estimate.items():
        stage = ctx.state.stages.get(name)
        if stage is None or stage.status != "finished":
            rows.append([name, f"{_seconds(guess['wall_s'])} / -", "-", f"{_num(guess['cpu_hours'])} / -",
                         f"{_num(guess['gpu_hours'])} / -"])
            continue
        cost = stage_cost(ctx, name)
        rows.append([name, f"{_seconds(guess['wall_s'])} / {_seconds(stage.wall_s)}",
                     f"{guess['wall_s'] / stage.wall_s:.2f}" if stage.wall_s else "-",
                     f"{_num(guess['cpu_hours'])} / {'-' if cost.cpu_h is None else _num(cost.cpu_h)}",
                     f"{_num(guess['gpu_hours'])} / {'-' if cost.gpu_h is None else _num(cost.gpu_h)}"])
    if not rows:
        return []
    lines = ["## Estimate vs actual", "",
             f"The launch's `--estimate` ({ESTIMATE_FILE}): one epoch of each tune stage timed before the study "
             f"started, on the launching machine.", ""]
    return lines + _table(["stage", "wall: estimated / actual", "estimated ÷ actual", "CPU-h: estimated / actual",
                           "GPU-h: estimated / actual"], rows) + [""]
