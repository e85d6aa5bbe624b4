"""The Ray Tune side of the trainables' `Reporter`: metrics via `tune.report`, checkpoints as folders."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping

from ray import tune

from trainables.checkpoint import load_checkpoint, save_checkpoint, save_step_files
from trainables.reporter import CheckpointState, Reporter, StepFiles


class TuneReporter(Reporter):
    def report(self, metrics: Mapping[str, float], checkpoint: CheckpointState | None = None,
               files: StepFiles | None = None) -> None:
        if checkpoint is None and not files:
            tune.report(dict(metrics))
            return
        # tune.report persists the folder into the experiment's storage before returning; the
        # driver's MLflow callback publishes the step's files from there.
        with tempfile.TemporaryDirectory(prefix="gensearch-ckpt-") as folder:
            if checkpoint is not None:
                save_checkpoint(checkpoint, folder)
            save_step_files(files or {}, folder)
            tune.report(dict(metrics), checkpoint=tune.Checkpoint.from_directory(folder))

    def restore(self) -> CheckpointState | None:
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return load_checkpoint(folder)
