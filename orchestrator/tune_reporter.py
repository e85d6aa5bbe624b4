"""The Ray Tune side of the trainables' `Reporter`: metrics via `tune.report`, checkpoints as folders."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping

from ray import tune

from trainables.checkpoint import Checkpoint, StepFiles, load_checkpoint, save_checkpoint, save_step_files
from trainables.reporter import Reporter

# The first result after a restore, when asked for: the checkpoint folder the trial started from.
RESTORED_FROM = "pbt.restored_from"
# Added to every result: the Ray node the trial runs on. Tune's own results carry `node_ip` and
# `hostname` only, which are the same for every node of a machine (and for a node replaced at the
# same address); the driver's MLflow callback tags each trial's run with this instead.
NODE_ID = "node_id"


class TuneReporter(Reporter):
    """`shown`: values added to every result (a PBT trial's settings, so its record says what it trained
    with); `note_restores`: the first result after `restore` names the checkpoint folder it came from, which
    under PBT may be another trial's (orchestrator/pbt_tune.py)."""

    def __init__(self, shown: Mapping[str, float] | None = None, note_restores: bool = False) -> None:
        self._node_id: str | None = None
        self._shown = dict(shown or {})
        self._note_restores = note_restores
        self._restored_from: str | None = None

    def _with_node(self, metrics: Mapping[str, float]) -> dict[str, object]:
        if self._node_id is None:
            import ray

            self._node_id = ray.get_runtime_context().get_node_id()
        extra = {RESTORED_FROM: self._restored_from} if self._restored_from else {}
        self._restored_from = None
        return {**metrics, **self._shown, **extra, NODE_ID: self._node_id}

    def report(self, metrics: Mapping[str, float], checkpoint: Checkpoint | None = None,
               files: StepFiles | None = None) -> None:
        metrics = self._with_node(metrics)
        if checkpoint is None and not files:
            tune.report(metrics)
            return
        # tune.report persists the folder into the experiment's storage before returning; the
        # driver's MLflow callback publishes the step's files from there.
        with tempfile.TemporaryDirectory(prefix="gensearch-ckpt-") as folder:
            if checkpoint is not None:
                save_checkpoint(checkpoint, folder)
            save_step_files(files or {}, folder)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    def restore(self) -> Checkpoint | None:
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        if self._note_restores:
            self._restored_from = checkpoint.path
        with checkpoint.as_directory() as folder:
            return load_checkpoint(folder)
