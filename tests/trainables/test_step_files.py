"""Step files (sample grids): drawn as PNGs, kept beside the checkpoint, found again by name."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from trainables.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, save_step_files, step_files
from trainables.reporter import ListReporter
from trainables.sample_grid import sample_grid_png


def test_sample_grid_is_a_png_sized_by_its_layout():
    with_scores = Image.open(io.BytesIO(sample_grid_png(torch.rand(10, 1, 28, 28), torch.rand(10), "t", columns=5)))
    plain = Image.open(io.BytesIO(sample_grid_png(torch.rand(10, 1, 28, 28), columns=5)))
    assert with_scores.format == plain.format == "PNG"
    assert with_scores.width > with_scores.height  # 5 columns, 2 rows
    assert with_scores.height > plain.height  # room for a score under every image
    with pytest.raises(ValueError, match="at least one image"):
        sample_grid_png(torch.rand(0, 1, 28, 28))


def test_step_files_live_beside_the_state_and_later_steps_win(tmp_path):
    save_checkpoint(Checkpoint(trainable="toy", epoch=1), tmp_path)
    assert step_files(tmp_path) == []
    save_step_files({"samples.png": b"one", "notes.txt": b"a"}, tmp_path)
    save_step_files({"samples.png": b"two"}, tmp_path)
    assert [p.name for p in step_files(tmp_path)] == ["notes.txt", "samples.png"]
    assert (tmp_path / "files" / "samples.png").read_bytes() == b"two"
    assert load_checkpoint(tmp_path).to_dict() == Checkpoint(trainable="toy", epoch=1).to_dict()
    with pytest.raises(ValueError, match="plain file names"):
        save_step_files({"../escape.png": b"x"}, tmp_path)


def test_list_reporter_keeps_the_latest_file_of_each_name():
    reporter = ListReporter()
    reporter.report({"a": 1.0}, files={"x.png": b"1"})
    reporter.report({"a": 2.0})
    reporter.report({"a": 3.0}, files={"x.png": b"3", "y.png": b"y"})
    assert reporter.files == {"x.png": b"3", "y.png": b"y"}
