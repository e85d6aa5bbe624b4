"""The Ray Tune side of the trainables' `Reporter`: metrics via `tune.report`, checkpoints as folders."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping

from ray import tune

from trainables.checkpoint import load_checkpoint, save_checkpoint, save_step_files
from trainables.reporter import CheckpointState, Reporter, StepFiles

# Added to every result: the Ray node the trial runs on. Tune's own results carry `node_ip` and
# `hostname` only, which are the same for every node of a machine (and for a node replaced at the
# same address); the driver's MLflow callback tags each trial's run with this instead.
NODE_ID = "node_id"


class TuneReporter(Reporter):
    def __init__(self) -> None:
        self._node_id: str | None = None

    def _with_node(self, metrics: Mapping[str, float]) -> dict[str, object]:
        if self._node_id is None:
            import ray

            self._node_id = ray.get_runtime_context().get_node_id()
        return {**metrics, NODE_ID: self._node_id}

    def report(self, metrics: Mapping[str, float], checkpoint: CheckpointState | None = None,
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

    def restore(self) -> CheckpointState | None:
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return load_checkpoint(folder)
