"""The output folder is the user's too: one launcher at a time, a foreign folder untouched, and every path or
store that cannot work refused in one line before Ray starts, with nothing written (issue 19, defects 1, 2, 6)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.study_lock import FolderInUse, lock_study_folder
from tests.orchestrator.study_helpers import REPO, launcher, launcher_env, run_launcher, tiny_study


def folder_snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused_in_one_line(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr[-3000:]
    assert "Starting Ray" not in result.stdout


@contextlib.contextmanager
def read_only_folder(path: Path):
    """A folder nobody can write in, root included (an immutable folder: chattr +i), else skip."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root where chattr +i is not available: no folder is read-only to root")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_folder_of_someone_elses_files_is_refused_and_left_untouched(tmp_path):
    """Defect 1: the launcher ran into the folder, deleted error.log and report/figure1.png, overwrote the rest."""
    spec = tiny_study(tmp_path / "tiny.yaml", num_samples=1, epochs=1)
    output = tmp_path / "mine"
    for name, text in {"notes.txt": "notes", "error.log": "my log", "report/figure1.png": "figure",
                       "report.md": "my report", "summary.md": "my summary", "study.yaml": "mine: true"}.items():
        (output / name).parent.mkdir(parents=True, exist_ok=True)
        (output / name).write_text(text)
    before = folder_snapshot(output)
    result = run_launcher(str(spec), "--output", str(output), timeout=300)
    assert_refused_in_one_line(result, "not a gensearch study (error.log, notes.txt, report and 3 more)")
    assert folder_snapshot(output) == before


def under_a_file(tmp_path: Path) -> list[str]:
    (tmp_path / "a_file").write_text("x")
    return ["--output", str(tmp_path / "a_file" / "out")]


@pytest.mark.parametrize("arguments,fragment", [
    (lambda tmp: ["--output", "/etc/hostname/x"], "/etc/hostname is a file, not a folder"),
    (under_a_file, "a_file is a file, not a folder"),
    (lambda tmp: ["--output", str(tmp / "out"), "--tracking-uri", "sqlite:////etc/hostname/x.db"],
     "tracking URI sqlite:////etc/hostname/x.db: /etc/hostname is a file, not a folder"),
    (lambda tmp: ["--output", str(tmp / "out"), "--tracking-uri", f"sqlite:///{tmp}/missing/x.db"],
     f"the folder {{tmp}}/missing does not exist"),
], ids=["output-under-etc-hostname", "output-under-a-file", "sqlite-under-a-file", "sqlite-folder-missing"])
@pytest.mark.slow  # several seconds (a subprocess or a small training run): not part of the quick loop
def test_an_unusable_output_or_tracking_path_is_one_line_before_ray_and_writes_nothing(tmp_path, arguments, fragment):
    """Defect 6: NotADirectoryError / FileExistsError tracebacks, or Ray started first and ~100 lines of two
    tracebacks, exit 1, and a stray study.yaml."""
    spec = tiny_study(tmp_path / "tiny.yaml", num_samples=1, epochs=1)
    arguments = arguments(tmp_path)
    before = folder_snapshot(tmp_path)
    result = run_launcher(str(spec), *arguments, timeout=300)
    assert_refused_in_one_line(result, fragment.format(tmp=tmp_path))
    assert "Traceback" not in result.stderr
    assert folder_snapshot(tmp_path) == before and not (tmp_path / "out").exists()


@pytest.mark.slow  # several seconds (a subprocess or a small training run): not part of the quick loop
@pytest.mark.parametrize("where", ["output", "tracking"])
def test_a_read_only_folder_is_one_line_and_writes_nothing(tmp_path, where):
    """Defect 6: a read-only folder ended in a PermissionError traceback on study.yaml."""
    spec = tiny_study(tmp_path / "tiny.yaml", num_samples=1, epochs=1)
    with read_only_folder(tmp_path / "locked") as locked:
        arguments = ["--output", str(locked / "out")] if where == "output" else \
            ["--output", str(tmp_path / "out"), "--tracking-uri", f"sqlite:///{locked}/mlflow.db"]
        result = run_launcher(str(spec), *arguments, timeout=300)
        assert_refused_in_one_line(result, f"cannot write in {locked}")
        assert not any(locked.iterdir()) and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_sqlite_store_outside_the_output_keeps_its_artifacts_beside_the_database(tmp_path):
    """Defect 6: with `--tracking-uri sqlite:///elsewhere/mlflow.db` artifacts landed in ./mlruns of the folder
    the command was typed in (the repository, untracked)."""
    study = yaml.safe_load(tiny_study(tmp_path / "tiny.yaml", num_samples=1, epochs=1, train_size=200).read_text())
    study["stages"] = study["stages"][:1]  # the search alone: it logs and registers a model
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    (tmp_path / "store").mkdir()
    typed_in = tmp_path / "typed_in"
    typed_in.mkdir()
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    result = subprocess.run(launcher(str(tmp_path / "tiny.yaml"), "--output", str(tmp_path / "out"),
                                     "--tracking-uri", uri), cwd=typed_in, capture_output=True, text=True,
                            timeout=600, env={**launcher_env(), "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not any(typed_in.iterdir()), list(typed_in.iterdir())
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert runs and all(r.info.artifact_uri.startswith((tmp_path / "store" / "mlartifacts").as_uri()) for r in runs)
    assert any((tmp_path / "store" / "mlartifacts").rglob("*.png"))


@pytest.mark.slow
def test_a_second_launcher_exits_2_at_once_naming_the_first_and_a_dead_one_frees_the_folder(tmp_path):
    """Defect 2: two launchers 5 s apart both ran (two parent runs per stage, 16 child runs, versions 1 and 2),
    and a --resume beside a running launcher had its child runs deleted under it."""
    spec = tiny_study(tmp_path / "tiny.yaml", num_samples=2, epochs=1)
    output = tmp_path / "out"
    first = subprocess.Popen(launcher(str(spec), "--output", str(output)), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True, env=launcher_env())
    try:
        for line in first.stdout:
            if "Starting Ray" in line:
                break
        else:
            raise AssertionError("the first launcher ended before starting Ray")
        for extra in ((), ("--resume",)):
            started = time.monotonic()
            second = subprocess.run(launcher(str(spec), "--output", str(output), *extra), cwd=REPO,
                                    capture_output=True, text=True, timeout=60, env=launcher_env())
            took = time.monotonic() - started
            assert_refused_in_one_line(second, f"{output} is in use by another launcher: pid {first.pid} on ")
            assert took < 15, f"the second launcher took {took:.0f} s to say so"
        assert first.poll() is None, "the first launcher was disturbed"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    lock_study_folder(output).release()  # SIGKILL: the kernel freed the lock, nobody had to clean up


@pytest.mark.slow  # several seconds (a subprocess or a small training run): not part of the quick loop
def test_a_launch_refused_under_the_lock_leaves_no_folder_behind(tmp_path):
    spec = tiny_study(tmp_path / "tiny.yaml", num_samples=1, epochs=1)
    result = run_launcher(str(spec), "--output", str(tmp_path / "new" / "out"), "--restart-from", "classifier",
                          timeout=300)
    assert_refused_in_one_line(result, "holds no study that ran")
    assert not (tmp_path / "new").exists()
    spec.write_text(spec.read_text().replace("num_samples: 1", "num_samples: 0"))  # the folder is claimed first
    result = run_launcher(str(spec), "--output", str(tmp_path / "new" / "out"), timeout=300)
    assert result.returncode == 2 and "num_samples" in result.stderr, result.stderr
    assert not (tmp_path / "new").exists()


def test_the_lock_names_its_holder_and_a_dead_holder_frees_it(tmp_path):
    output = tmp_path / "out"
    code = ("import sys, time; from pathlib import Path; from orchestrator.study_lock import lock_study_folder; "
            "lock_study_folder(Path(sys.argv[1])); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(output)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUse, match=rf"pid {holder.pid} on \S+ \(since "):
            lock_study_folder(output)
    finally:
        holder.kill()
        holder.wait()
    lock = lock_study_folder(output)  # the dead holder's lock went with it
    with pytest.raises(FolderInUse, match=f"pid {os.getpid()} on "):
        lock_study_folder(output)
    lock.release()
