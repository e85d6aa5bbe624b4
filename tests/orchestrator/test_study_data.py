"""orchestrator.data.data_problems in-process: what a study reads, and what is said when it is not here."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.data import data_problems
from orchestrator.spec import load_study
from tests.trainables.mirror_helpers import copy_dataset, flip_byte
from trainables import data
from trainables import data_roots as data_roots_module


@pytest.fixture
def no_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No data root holds anything: the shared folder is out of reach and the cache is empty."""
    monkeypatch.delenv("GENSEARCH_DATA", raising=False)
    monkeypatch.setenv("GENSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data_roots_module, "_REPO_ROOT", tmp_path / "repo")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def study(path: Path, stages: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"study": "s", "stages": stages}, sort_keys=False))
    return path


FEWSHOT = {"name": "fs", "kind": "job", "job": "fewshot", "config": {"classifier": "/x"}}
CLASSIFIER = {"name": "c", "kind": "tune", "trainable": "classifier", "metric": "val_accuracy", "num_samples": 1,
              "config": {"data": {"allow_fallback": True}}, "space": {"lr": {"type": "choice", "values": [0.01]}}}


def test_an_unknown_dataset_name_is_named_at_its_key(tmp_path: Path) -> None:
    fewshot = {**FEWSHOT, "config": {"classifier": "/x", "data": {"dataset": "mnsit"}}}
    spec = load_study(study(tmp_path / "s.yaml", [fewshot]))
    assert data_problems(spec, offline=True, dry_run=True) == [
        f"{spec.source}: stages[0].config.data.dataset: unknown dataset 'mnsit'; known datasets: mnist, fashion_mnist, kmnist"]


def test_a_dry_run_says_what_the_launch_would_download(no_data: Path) -> None:
    spec = load_study(study(no_data / "s.yaml", [FEWSHOT]))
    said: list[str] = []
    assert data_problems(spec, offline=False, dry_run=True, say=said.append) == []
    assert said == [f"data: MNIST (train and test) is on none of the data roots: the launch downloads it into "
                    f"{no_data / 'cache' / 'data'}"]
    assert not (no_data / "cache").exists()


def test_offline_a_stage_that_allows_the_digits_fallback_is_no_problem(no_data: Path) -> None:
    spec = load_study(study(no_data / "s.yaml", [CLASSIFIER]))
    said: list[str] = []
    assert data_problems(spec, offline=True, dry_run=False, say=said.append) == []
    assert len(said) == 1 and "scikit-learn's digits (allow_fallback)" in said[0]
    spec = load_study(study(no_data / "s.yaml", [CLASSIFIER, FEWSHOT]))  # one stage cannot fall back: a problem
    problems = data_problems(spec, offline=True, dry_run=False, say=said.append)
    assert len(problems) == 1 and problems[0].startswith(f"{spec.source}: stages[1].config.data.dataset: MNIST train")


def test_only_the_archives_a_study_reads_are_checked(no_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = copy_dataset(no_data / "root", "FashionMNIST")
    monkeypatch.setenv("GENSEARCH_DATA", str(no_data / "root"))
    ood = {"name": "ood", "kind": "job", "job": "evaluate_ood",
           "config": {"classifier": "/x", "test_sets": ["fashion_mnist"]}}
    spec = load_study(study(no_data / "s.yaml", [ood]))
    flip_byte(raw / "train-images-idx3-ubyte.gz")  # a split this study never reads
    assert data_problems(spec, offline=True, dry_run=False) == []
    flip_byte(raw / "t10k-labels-idx1-ubyte.gz")
    problems = data_problems(spec, offline=True, dry_run=False)
    assert len(problems) == 1
    assert problems[0].startswith(f"{spec.source}: stages[0].config.test_sets: MD5 checksum mismatch for {raw.resolve()}")
