"""Dataset problems caught by the launcher before Ray starts: one line each, exit 2, nothing written.

Each of these used to surface only inside the trials (a corrupt archive, a class the dataset does not
have) or not at all (a --data-root that does not exist was skipped for the next root).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.orchestrator.study_helpers import REPO, launcher, launcher_env, tiny_study
from tests.trainables.mirror_helpers import copy_dataset


def launch(*args: str, cache: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(launcher(*args), cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**launcher_env(), "GENSEARCH_CACHE": str(cache), "GENSEARCH_OFFLINE": "1", **env})


def problem_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.mark.slow  # several seconds (a subprocess or a small training run): not part of the quick loop
def test_a_corrupt_archive_stops_the_launch_before_any_trial(tmp_path: Path) -> None:
    root = tmp_path / "data"
    raw = copy_dataset(root)
    images = raw / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-4096])  # truncated, as an interrupted copy leaves it
    spec, output = tiny_study(tmp_path / "tiny.yaml"), tmp_path / "out"
    result = launch(str(spec), "--output", str(output), "--data-root", str(root), cache=tmp_path / "cache")
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    lines = problem_lines(result)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{spec}: stages[0].config.data.dataset: MD5 checksum mismatch for {images.resolve()}")
    assert f"python -m orchestrator.data fetch mnist --to {root.resolve()}" in lines[0]
    assert not output.exists()


@pytest.mark.slow  # several seconds (a subprocess or a small training run): not part of the quick loop
def test_verified_archives_are_remembered_for_the_next_launch(tmp_path: Path) -> None:
    root, cache = tmp_path / "data", tmp_path / "cache"
    copy_dataset(root)
    spec = tiny_study(tmp_path / "tiny.yaml")
    result = launch(str(spec), "--dry-run", "--data-root", str(root), cache=cache)
    assert result.returncode == 0, result.stderr
    record = json.loads((cache / "data" / "verified.json").read_text())
    assert sorted(Path(path).name for path in record) == sorted(path.name for path in (root / "MNIST" / "raw").iterdir())  # train, and test
    assert all(Path(path).parent == (root / "MNIST" / "raw").resolve() for path in record)


@pytest.mark.slow  # several seconds (a subprocess or a small training run): not part of the quick loop
def test_a_data_root_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    spec = tiny_study(tmp_path / "tiny.yaml")
    missing = tmp_path / "nonexistent"
    result = launch(str(spec), "--output", str(tmp_path / "out"), "--data-root", str(missing), cache=tmp_path / "cache")
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert problem_lines(result) == [f"error: --data-root {missing}: no such folder. Nothing was run."]
    assert not (tmp_path / "out").exists()
    result = launch(str(spec), "--dry-run", cache=tmp_path / "cache", GENSEARCH_DATA=str(missing))
    assert result.returncode == 2
    assert problem_lines(result)[0].startswith(f"GENSEARCH_DATA={missing}: no such folder")


@pytest.mark.slow  # several seconds (a subprocess or a small training run): not part of the quick loop
def test_a_class_the_dataset_does_not_have_is_refused_by_a_dry_run(tmp_path: Path) -> None:
    spec = tiny_study(tmp_path / "tiny.yaml")
    study = yaml.safe_load(spec.read_text())
    study["stages"][0]["config"]["data"]["classes"] = [7, 12]
    spec.write_text(yaml.safe_dump(study, sort_keys=False))
    result = launch(str(spec), "--dry-run", cache=tmp_path / "cache")
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert problem_lines(result) == [
        f"{spec}: stages[0].config.data.classes: classes must be integers 0..9 (the classes of MNIST), got 12"]
