"""Set an earlier attempt of some stages aside, never deleting it: `--restart-from`, or an edited failed stage.

MLflow keeps the attempt's parent and child runs, tagged `gensearch.superseded=true` with the reason (a run
left RUNNING by a dead launcher is closed as KILLED), and its registered model version gets the same tag.
The stage's folders (`tune/<stage>`, `optuna/<stage>`, `jobs/<stage>`) move to `superseded/<time>/`, beside
the study file that launched them, and the stage's record in study_state.json starts again from nothing.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from orchestrator.study_state import StudyState
from orchestrator.tracking import TAG_SUPERSEDED, Tracker, error_line

SUPERSEDED_DIR = "superseded"
STAGE_FOLDERS = ("tune", "optuna", "jobs")


def new_aside_folder(output: Path) -> Path:
    """`<output>/superseded/<UTC time>/` (not created yet): where this launch sets things aside."""
    base = output / SUPERSEDED_DIR / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    folder, number = base, 1
    while folder.exists():
        folder, number = base.with_name(f"{base.name}-{number}"), number + 1
    return folder


def set_aside(output: Path, relative: str, aside: Path) -> Path | None:
    """Move `<output>/<relative>` to `<aside>/<relative>`; None when there is nothing there."""
    source = output / relative
    if not source.exists():
        return None
    destination = aside / relative
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(destination))
    return destination


def supersede_stages(output: Path, state: StudyState, reasons: Mapping[str, str], tracker: Tracker,
                     aside: Path) -> None:
    """Set aside the earlier attempt of each stage in `reasons` (stage name -> why, for the tags)."""
    for name, reason in reasons.items():
        stage = state.stages.get(name)
        if stage is not None and stage.parent_run_id:
            runs = [run.info.run_id for run in tracker.children(stage.parent_run_id).values()]
            for run_id in [*runs, stage.parent_run_id]:
                try:
                    tracker.supersede(run_id, reason)
                except Exception as error:  # noqa: BLE001 - a run MLflow no longer has: nothing to keep
                    print(f"[{name}] MLflow run {run_id} not tagged as superseded: {error_line(error)}", flush=True)
        if stage is not None and stage.registered is not None:
            tracker.supersede_version(stage.registered.name, stage.registered.version, reason)
        moved = [path for kind in STAGE_FOLDERS if (path := set_aside(output, f"{kind}/{name}", aside))]
        where = f"; its files moved to {', '.join(str(p) for p in moved)}" if moved else ""
        print(f"[{name}] earlier attempt set aside ({reason}): its MLflow runs are kept, tagged "
              f"{TAG_SUPERSEDED}=true{where}", flush=True)
        state.stages.pop(name, None)
