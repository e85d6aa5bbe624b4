"""A fresh machine: the launcher fetches a study's datasets into an empty cache, from a real HTTP mirror.

No internet is needed: the archives of ../shared/data are served on 127.0.0.1 (GENSEARCH_DATA_MIRROR).
The launcher runs from a copy of the code in a temporary folder, so no `../shared/data` sits beside it
(nor beside its working directory), GENSEARCH_DATA is unset and the cache starts empty: the only way
to the data is the download, as on a user's own machine after `git clone`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.orchestrator.study_helpers import REPO, launcher_env, tiny_study
from tests.trainables.mirror_helpers import SHARED, copy_dataset, flip_byte, leftovers, md5_of, serve_mirror
from trainables import data

MNIST_ORDER = [name for folder, name in data._MD5 if folder == "MNIST"]  # the order they are fetched in
MNIST_FILES = sorted(MNIST_ORDER)


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory) -> Path:
    """The code as a fresh clone has it, in a folder with no `shared/` beside it."""
    clone = tmp_path_factory.mktemp("machine") / "gensearch"
    for package in ("orchestrator", "trainables"):
        shutil.copytree(REPO / package, clone / package, ignore=shutil.ignore_patterns("__pycache__"))
    assert not (clone.parent / "shared").exists()
    return clone


def fresh_machine(clone: Path, cache: Path, mirror_url: str, *args: str,
                  extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The launcher of `clone` (its workers import it too, through PYTHONPATH) with only the cache as a
    data root and the mirror as the internet."""
    env = {k: v for k, v in launcher_env().items()
           if k not in ("GENSEARCH_DATA", "GENSEARCH_OFFLINE", data.MIRROR_ENV)}
    env.update({"PYTHONPATH": str(clone), "GENSEARCH_CACHE": str(cache), data.MIRROR_ENV: mirror_url,
                **(extra_env or {})})
    return subprocess.run([sys.executable, "-m", "orchestrator.launch", *args], cwd=clone, capture_output=True,
                          text=True, timeout=600, env=env)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.mark.slow
def test_a_study_runs_from_an_empty_cache_filled_once_from_the_mirror(fresh_clone: Path, tmp_path: Path) -> None:
    spec = tiny_study(tmp_path / "tiny.yaml", num_samples=2, epochs=1)
    cache, output = tmp_path / "cache", tmp_path / "out"
    with serve_mirror(SHARED) as mirror:
        result = fresh_machine(fresh_clone, cache, mirror.url, str(spec), "--output", str(output))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        asked_by_the_run = list(mirror.requests)
        again = fresh_machine(fresh_clone, cache, mirror.url, str(spec), "--output", str(tmp_path / "b"), "--dry-run")
    assert again.returncode == 0, again.stderr
    downloads = [line for line in result.stdout.splitlines() if line.startswith("data: MNIST/raw/")]
    print("\n".join(line for line in result.stdout.splitlines() if line.startswith("data:")))
    assert [line.split()[1] for line in downloads] == [f"MNIST/raw/{name}" for name in MNIST_ORDER]
    assert all(f"<- {mirror.url}/MNIST/raw/" in line and line.endswith("MD5 ok") for line in downloads)
    assert sorted(asked_by_the_run) == [f"/MNIST/raw/{name}" for name in MNIST_FILES]  # once: not per trial
    assert len(mirror.requests) == len(asked_by_the_run)  # the second launch found it all in the cache
    assert "data:" not in again.stdout

    raw = cache / "data" / "MNIST" / "raw"
    assert {path.name: md5_of(path) for path in raw.iterdir()} == {
        name: md5 for (folder, name), md5 in data._MD5.items() if folder == "MNIST"}
    assert leftovers(cache) == []
    assert sorted(Path(p).name for p in json.loads((cache / "data" / "verified.json").read_text())) == MNIST_FILES
    evaluated = json.loads((output / "jobs" / "evaluate" / "metrics.json").read_text())
    assert evaluated["source"] == f"MNIST test from {raw.resolve()}"  # read from the cache, nowhere else


# On PYTHONPATH as `sitecustomize`: every Python process started with GENSEARCH_TEST_ENV_DUMP writes its own
# environment, as it is when the process ends, to <that folder>/<pid>.json.
ENV_AT_EXIT = """import atexit, json, os

def _write(folder=os.environ.get("GENSEARCH_TEST_ENV_DUMP")):
    with open(os.path.join(folder, f"{os.getpid()}.json"), "w") as handle:
        json.dump(dict(os.environ), handle)

if os.environ.get("GENSEARCH_TEST_ENV_DUMP"):
    atexit.register(_write)
"""


@pytest.mark.slow
def test_a_data_root_reaches_trials_and_jobs_without_entering_the_launchers_environment(fresh_clone: Path,
                                                                                         tmp_path: Path) -> None:
    """--data-root is the only place the data is (no shared/ beside the code, an empty cache, offline): the
    trials (Ray workers) and the evaluation job (run in the launcher) read MNIST from there, while the
    launcher's own environment, as it was when it exited, holds neither GENSEARCH_DATA nor the workers' variable."""
    root = tmp_path / "data"
    raw = copy_dataset(root)
    hooks, dumps = tmp_path / "hooks", tmp_path / "environments"
    hooks.mkdir()
    dumps.mkdir()
    (hooks / "sitecustomize.py").write_text(ENV_AT_EXIT)
    spec, output = tiny_study(tmp_path / "tiny.yaml", num_samples=2, epochs=1), tmp_path / "out"
    env = {k: v for k, v in launcher_env().items()
           if k not in ("GENSEARCH_DATA", "GENSEARCH_OFFLINE", data.MIRROR_ENV, data.LAUNCH_ROOT_ENV)}
    env.update({"PYTHONPATH": os.pathsep.join((str(fresh_clone), str(hooks))), "GENSEARCH_CACHE": str(tmp_path / "c"),
                "GENSEARCH_TEST_ENV_DUMP": str(dumps)})
    process = subprocess.Popen([sys.executable, "-m", "orchestrator.launch", str(spec), "--output", str(output),
                                "--data-root", str(root), "--offline"], cwd=fresh_clone, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    state = json.loads((output / "study_state.json").read_text())
    assert state["stages"]["classifier"]["status"] == "finished"
    assert (state["stages"]["classifier"]["trials"], state["stages"]["classifier"]["failed_trials"]) == (2, 0)
    evaluated = json.loads((output / "jobs" / "evaluate" / "metrics.json").read_text())
    assert evaluated["source"] == f"MNIST test from {raw.resolve()}"
    launcher_environment = json.loads((dumps / f"{process.pid}.json").read_text())
    assert "GENSEARCH_DATA" not in launcher_environment and data.LAUNCH_ROOT_ENV not in launcher_environment
    assert launcher_environment["GENSEARCH_CACHE"] == str(tmp_path / "c")  # the hook saw the launcher's own


@pytest.mark.slow  # several seconds (a subprocess or a small training run): not part of the quick loop
def test_a_corrupt_mirror_file_stops_the_launch_before_anything_runs(fresh_clone: Path, tmp_path: Path) -> None:
    flip_byte(copy_dataset(tmp_path / "mirror") / "train-labels-idx1-ubyte.gz")
    spec = tiny_study(tmp_path / "tiny.yaml")
    cache, output = tmp_path / "cache", tmp_path / "out"
    with serve_mirror(tmp_path / "mirror") as mirror:
        result = fresh_machine(fresh_clone, cache, mirror.url, str(spec), "--output", str(output))
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    lines = error_lines(result)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{spec}: stages[0].config.data.dataset: MNIST train split not found")
    assert f"{mirror.url}/MNIST/raw/train-labels-idx1-ubyte.gz: MD5 checksum mismatch" in lines[0]
    assert "nothing kept" in lines[0]
    assert not output.exists()  # nothing ran, nothing was written
    assert leftovers(cache) == []  # the train images before it are complete and verified; no partial file
    assert not (cache / "data" / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz").exists()


@pytest.mark.slow  # several seconds (a subprocess or a small training run): not part of the quick loop
@pytest.mark.parametrize("how", ["--offline", "GENSEARCH_OFFLINE=1", "unreachable"])
def test_without_downloads_the_error_names_the_fetch_command(how: str, fresh_clone: Path, tmp_path: Path) -> None:
    spec = tiny_study(tmp_path / "tiny.yaml")
    with serve_mirror(tmp_path) as mirror:
        url = mirror.url
        if how != "unreachable":
            result = fresh_machine(fresh_clone, tmp_path / "cache", url, str(spec), "--output", str(tmp_path / "out"),
                                   *(["--offline"] if how == "--offline" else []),
                                   extra_env={"GENSEARCH_OFFLINE": "1"} if how.startswith("GENSEARCH") else None)
            assert mirror.requests == []
    if how == "unreachable":  # the server has stopped: its port refuses connections, like a machine offline
        result = fresh_machine(fresh_clone, tmp_path / "cache", url, str(spec), "--output", str(tmp_path / "out"))
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    lines = error_lines(result)
    assert len(lines) == 1, lines
    assert "MNIST train split not found" in lines[0]
    assert "python -m orchestrator.data fetch mnist --to DIR" in lines[0]
    assert ("Connection refused" if how == "unreachable" else "Downloading is off") in lines[0]
    assert not (tmp_path / "out").exists()


def fetch_cli(cache: Path, mirror_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**launcher_env(), "GENSEARCH_CACHE": str(cache), data.MIRROR_ENV: mirror_url}
    return subprocess.run([sys.executable, "-m", "orchestrator.data", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=env)


@pytest.mark.slow  # several seconds (a subprocess or a small training run): not part of the quick loop
def test_fetch_prepares_a_data_root_ahead_of_time(tmp_path: Path) -> None:
    target, cache = tmp_path / "shared_storage", tmp_path / "cache"
    with serve_mirror(SHARED) as mirror:
        first = fetch_cli(cache, mirror.url, "fetch", "mnist", "--to", str(target))
        second = fetch_cli(cache, mirror.url, "fetch", "mnist", "--to", str(target))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert sorted(mirror.requests) == [f"/MNIST/raw/{name}" for name in MNIST_FILES]  # the second run asked nothing
    assert sum(line.endswith("MD5 ok") and mirror.url in line for line in first.stdout.splitlines()) == 4
    assert sum("already in" in line for line in second.stdout.splitlines()) == 4
    assert f"--data-root {target}" in first.stdout
    assert {path.name: md5_of(path) for path in (target / "MNIST" / "raw").iterdir()} == {
        name: md5 for (folder, name), md5 in data._MD5.items() if folder == "MNIST"}
    assert all(os.stat(path).st_mode & 0o044 for path in (target / "MNIST" / "raw").iterdir())  # others may read


def test_fetch_reports_a_bad_mirror_and_keeps_going(tmp_path: Path) -> None:
    copy_dataset(tmp_path / "mirror", "KMNIST")  # the shared copy has the KMNIST test split only
    copy_dataset(tmp_path / "mirror", "FashionMNIST")
    with serve_mirror(tmp_path / "mirror") as mirror:
        mirror.cut.add("t10k-labels-idx1-ubyte.gz")
        result = fetch_cli(tmp_path / "cache", mirror.url, "fetch", "kmnist", "fashion_mnist", "--to",
                           str(tmp_path / "root"))
    assert result.returncode == 1
    errors = error_lines(result)
    assert len(errors) == 2, errors
    assert "KMNIST/raw/train-images-idx3-ubyte.gz" in errors[0] and "HTTP Error 404" in errors[0]
    assert "FashionMNIST/raw/t10k-labels-idx1-ubyte.gz" in errors[1] and "truncated" in errors[1]
    assert leftovers(tmp_path / "root") == []


@pytest.mark.slow  # several seconds (a subprocess or a small training run): not part of the quick loop
def test_fetch_help_teaches_where_from_and_where_to() -> None:
    result = subprocess.run([sys.executable, "-m", "orchestrator.data", "fetch", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for needle in ("--to DIR", "GENSEARCH_DATA_MIRROR", "--data-root", "MD5", "mnist, fashion_mnist, kmnist"):
        assert needle in result.stdout, needle
    unknown = subprocess.run([sys.executable, "-m", "orchestrator.data", "fetch", "cifar10"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "unknown dataset 'cifar10'" in unknown.stderr
