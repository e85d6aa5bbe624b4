"""orchestrator/report/: the study report, on hand-made output folders (fast) and on a real tiny study.

The hand-made folders mimic what the launcher leaves (study_state.json written with the real
dataclasses, Tune's trials.csv and result.json, job folders with tables, pictures and subfolders),
so each rule of the report is checked in milliseconds; one real study checks that the report agrees
with Tune's own records and lands in MLflow exactly once.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

from orchestrator.report import (MAX_GRIDS, REPORT_DIR, TAG_REPORT, format_settings, local_path, main,
                                 study_target, trial_seconds, varying_config_keys,
                                 write_report)
from orchestrator.study_folder import MANIFEST_FILE
from orchestrator.study_state import (BestTrial, RecordedOutput, RegisteredVersion, StageState, StudyState, load_state,
                                      save_state)
from tests.orchestrator.study_helpers import REPO, client_for, run_launcher, study_runs

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16  # the report copies pictures, it never decodes them
LINK = re.compile(r"\]\(([^)\s]+)\)")

# trial id -> the time_total_s of each report (result.json lines); trial c3 died mid-write
TRIAL_TIMES = {"a1": [5.0, 12.5], "b2": [20.0], "c3": [7.0]}
TRIAL_CONFIG = {"a1": {"lr": 0.01, "nf": 2}, "b2": {"lr": 0.003, "nf": 1}, "c3": {"lr": 0.02, "nf": 1}}
FIXED = {"epochs": 3, "classes": [7, 1]}
JOB_METRICS = {"auroc": 0.91, "aupr": 0.88, "fpr95": 0.2, "accuracy": 0.97, "source": "mnist", "a": 1, "b": 2,
               "c": 3, "d": 4}


def _write(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return path


def fake_tune_stage(output: Path) -> Path:
    folder = output / "tune" / "search"
    rows = ["trial_id,time_total_s,config/lr,config/nf,config/epochs"]
    for trial, times in TRIAL_TIMES.items():
        lines = [json.dumps({"training_iteration": i + 1, "time_total_s": t}) for i, t in enumerate(times)]
        if trial == "c3":
            lines.append('{"training_iteration": 2, "time_to')  # a kill mid-write
        _write(folder / f"trial_{trial}" / "result.json", "\n".join(lines) + "\n")
        rows.append(f"{trial},{times[-1]},{TRIAL_CONFIG[trial]['lr']},{TRIAL_CONFIG[trial]['nf']},3")
    _write(folder / "trials.csv", "\n".join(rows) + "\n")
    for name in ("search_history.png", "parameter_sweep.png"):
        _write(folder / name, PNG)
    _write(folder / "trial_a1" / "checkpoint_000001" / "state.pt", b"")
    _write(folder / "trial_a1" / "checkpoint_000001" / "files" / "samples.png", PNG)
    return folder


def fake_job_stage(output: Path) -> Path:
    folder = output / "jobs" / "evaluate"
    _write(folder / "metrics.json", json.dumps(JOB_METRICS))
    _write(folder / "ood_table.md", "| method | auroc |\n|---|---|\n| msp | 0.91 |\n")
    _write(folder / "long.md", "\n".join(f"| row {i} |" for i in range(60)) + "\n")
    for name in ("roc_curves.png", "scatter.png", "extra.png"):
        _write(folder / name, PNG)
    for cluster in range(MAX_GRIDS + 2):
        _write(folder / "grids" / f"cluster_{cluster:02d}.png", PNG)
    _write(folder / "images" / "c00_medoid_0.png", PNG)
    _write(folder / "fewshot" / "fewshot.md", "Few-shot test accuracy:\n\n| k | acc |\n|---|---|\n| 16 | 0.8 |\n")
    _write(folder / "fewshot" / "fewshot_curves.png", PNG)
    _write(folder / "fewshot" / "metrics.json", json.dumps({"pixels.lin.k16": 0.8}))
    return folder


# What the launcher records for such a job (its definition's declared outputs that exist), in declared order.
JOB_OUTPUTS = {"metrics": ("metrics", "metrics.json"), "ood_table": ("table", "ood_table.md"),
               "roc_curves": ("picture", "roc_curves.png"), "scatter": ("picture", "scatter.png"),
               "long": ("table", "long.md"), "extra": ("picture", "extra.png"), "grids": ("gallery", "grids"),
               "images": ("images", "images"), "fewshot.metrics": ("metrics", "fewshot/metrics.json"),
               "fewshot.table": ("table", "fewshot/fewshot.md"),
               "fewshot.curves": ("picture", "fewshot/fewshot_curves.png")}


def recorded_outputs(folder: Path) -> dict[str, RecordedOutput]:
    return {name: RecordedOutput(kind, str(folder / path), "prototypes of one cluster" if kind == "gallery" else "")
            for name, (kind, path) in JOB_OUTPUTS.items()}


def fake_state(output: Path, **tune_fields) -> StudyState:
    tune_dir, job_dir = fake_tune_stage(output), fake_job_stage(output)
    _write(output / "optuna" / "cluster" / "search_history.png", PNG)
    best = BestTrial(trial_id="a1", metric="val_accuracy", value=0.985,
                     checkpoint=str(tune_dir / "trial_a1" / "checkpoint_000001"),
                     config={**FIXED, **TRIAL_CONFIG["a1"]}, child_run_id="child123", epoch=2,
                     metrics={"val_accuracy": 0.985, "val_loss": 0.05, "epoch": 2.0, "time_this_iter_s": 1.0})
    state = StudyState(study="fake", tracking_uri=f"sqlite:///{output.resolve() / 'mlflow.db'}", experiment_id="7")
    state.stages["search"] = StageState(
        status="finished", kind="tune", parent_run_id="p1", best=best, trials=3, failed_trials=1, wall_s=40.0,
        output=str(tune_dir), registered=RegisteredVersion("fake-search", "3", "champion", "child123"), **tune_fields)
    state.stages["cluster"] = StageState(
        status="finished", kind="optuna", wall_s=36.0, trials=30, failed_trials=5,
        output=str(output / "optuna" / "cluster"),
        best=BestTrial(trial_id="15", metric="silhouette", value=0.5, checkpoint=str(output / "optuna/cluster/best"),
                       config={"reducer": "umap", "reducer.n_neighbors": 50}, metrics={"silhouette": 0.5}))
    state.stages["evaluate"] = StageState(status="finished", kind="job", wall_s=7.2, output=str(job_dir),
                                          metrics={k: v for k, v in JOB_METRICS.items() if k != "source"},
                                          outputs=recorded_outputs(job_dir))
    state.stages["broken"] = StageState(status="failed", wall_s=1.0)  # as a state from before kinds were recorded
    save_state(output, state)
    return state


@pytest.fixture
def fake_output(tmp_path) -> Path:
    output = tmp_path / "out"
    fake_state(output)
    return output


def cost_row(report: str, stage: str) -> list[str]:
    """The cells of a stage's row in the cost table (its first cell may carry note marks)."""
    cost = report.split("## Cost", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in cost.splitlines() if line.startswith(f"| {stage}"))
    return [cell.strip() for cell in row.strip("|").split(" | ")]


def assert_links_exist(output: Path, report: str) -> list[str]:
    links = LINK.findall(report)
    links = [link for link in links if not link.startswith(("http://", "https://"))]
    assert links, "the report shows no file"
    for link in links:
        assert not Path(unquote(link)).is_absolute(), link
        assert (output / unquote(link)).is_file(), link
        assert unquote(link).startswith(f"{REPORT_DIR}/"), link
    return links


# ---------------------------------------------------------------- helpers


def test_trial_seconds_sources_agree(tmp_path):
    folder = fake_tune_stage(tmp_path)
    from_table, source = trial_seconds(folder)
    assert source == "trials.csv" and from_table == {t: times[-1] for t, times in TRIAL_TIMES.items()}
    (folder / "trials.csv").unlink()  # an interrupted stage: no table yet
    from_results, source = trial_seconds(folder)
    assert source == "result.json" and from_results == from_table


def test_searched_settings_are_the_ones_that_vary_between_trials(tmp_path):
    folder = fake_tune_stage(tmp_path)
    assert varying_config_keys(folder) == ("lr", "nf")
    assert format_settings({"lr": 0.0063806, "nf": 2, "classes": [7, 1]}, ["lr", "nf"]) == "lr=0.006381, nf=2"
    assert format_settings({"path": "/very/long/" + "x" * 60 + "/trial_a1/checkpoint_000001"}) == \
        "path=…/trial_a1/checkpoint_000001"


def test_a_moved_output_folder_is_found_again(tmp_path):
    (tmp_path / "new" / "tune" / "s" / "trial_a").mkdir(parents=True)
    assert local_path("/gone/old/tune/s/trial_a", tmp_path / "new") == tmp_path / "new" / "tune" / "s" / "trial_a"


# ---------------------------------------------------------------- the report on a hand-made folder


def test_cost_table_has_a_row_per_stage_and_a_total(fake_output, capsys):
    report = write_report(fake_output, log_to_mlflow=False).read_text()
    assert capsys.readouterr().out == ""  # not logging is what was asked: nothing to say
    total_s = sum(times[-1] for times in TRIAL_TIMES.values())
    search = cost_row(report, "search")
    assert search[1:5] == ["tune", "finished", "40 s", "3 (1 failed)"]
    assert float(search[7]) == pytest.approx(total_s / 3600, rel=1e-3) and search[8] == "0"
    cluster = cost_row(report, "cluster")
    assert cluster[4] == "30 (5 infeasible)" and float(cluster[7]) == pytest.approx(36 / 3600, rel=1e-3)
    assert float(cost_row(report, "evaluate")[7]) == pytest.approx(7.2 / 3600, rel=1e-3)
    total = cost_row(report, "**total**")
    assert cost_row(report, "broken")[2:4] == ["failed", "1 s"]  # no folder, no run: priced as driver time
    assert float(total[7].strip("*")) == pytest.approx((total_s + 36 + 7.2 + 1) / 3600, rel=1e-3)
    assert "**reserved** hours" in report and "not measured utilisation" in report
    assert "study spec not found: 1 CPU and 0 GPU per trial assumed" in report
    assert "driver process" in report


def test_recorded_trial_resources_price_the_trials(tmp_path):
    output = tmp_path / "out"
    fake_state(output, trial_cpu=2.0, trial_gpu=0.5)
    report = write_report(output, log_to_mlflow=False).read_text()
    total_s = sum(times[-1] for times in TRIAL_TIMES.values())
    row = cost_row(report, "search")
    assert row[5] == "2 CPU, 0.5 GPU / trial"
    assert float(row[7]) == pytest.approx(2 * total_s / 3600, rel=1e-3)
    assert float(row[8]) == pytest.approx(0.5 * total_s / 3600, rel=1e-3)
    assert "study spec not found" not in report


def write_spec(output: Path, state: StudyState) -> None:
    """A study YAML beside the results, as the launcher keeps it, recorded in the state."""
    spec = {"study": "fake", "description": "a hand-made study",
            "stages": [{"name": "search", "kind": "tune", "trainable": "classifier",
                        "config": {"classes": [7, 1], "epochs": 3},
                        "space": {"lr": {"type": "loguniform", "low": 1e-3, "high": 3e-2},
                                  "nf": {"type": "choice", "values": [1, 2]}},
                        "metric": "val_accuracy", "num_samples": 3,
                        "resources": {"cpu": 2, "gpu": 1, "fallback": "cpu"}},
                       {"name": "evaluate", "kind": "job", "job": "evaluate_classifier",
                        "inputs": {"checkpoint": "search.best"}},
                       {"name": "later", "kind": "job", "job": "evaluate_classifier",
                        "inputs": {"checkpoint": "search.best"}}]}
    _write(output / "study.yaml", yaml.safe_dump(spec, sort_keys=False))
    state.spec_file = str(output / "study.yaml")
    save_state(output, state)


def test_the_spec_gives_description_order_and_resources(tmp_path):
    output = tmp_path / "out"
    state = fake_state(output)
    write_spec(output, state)
    report = write_report(output, log_to_mlflow=False).read_text()
    assert "> a hand-made study" in report
    order = ["## 1. search", "## 2. evaluate", "## 3. later (job, pending)", "## 4. cluster", "## 5. broken"]
    assert [report.index(heading) for heading in order] == sorted(report.index(heading) for heading in order)
    assert "Not started." in report and cost_row(report, "later")[2:4] == ["pending", "0 s"]
    row = cost_row(report, "search")
    total_s = sum(times[-1] for times in TRIAL_TIMES.values())
    assert row[5] == "2 CPU, 1 GPU / trial" and float(row[8]) == pytest.approx(total_s / 3600, rel=1e-3)
    assert "Searched settings: `lr=0.01, nf=2`" in report


def test_a_cpu_fallback_counts_no_gpu_hours(tmp_path):
    output = tmp_path / "out"
    state = fake_state(output, trial_cpu=2.0, trial_gpu=0.0)  # the spec asks for a GPU; none was there
    write_spec(output, state)
    report = write_report(output, log_to_mlflow=False).read_text()
    assert cost_row(report, "search")[8] == "0"
    assert "fallback: cpu" in report


def test_stage_sections_show_best_trial_registry_and_pictures(fake_output):
    report = write_report(fake_output, log_to_mlflow=False).read_text()
    search = report.split("## 1. search", 1)[1].split("\n## ", 1)[0]
    assert "**Best trial `a1`**, step 2: **val_accuracy = 0.985**" in search
    assert "Searched settings: `lr=0.01, nf=2`" in search  # not the fixed epochs and classes
    assert "val_loss=0.05" in search and "time_this_iter_s" not in search
    assert "`fake-search` version 3, alias `@champion`" in search
    assert f"]({REPORT_DIR}/search/search_history.png)" in search
    assert f"]({REPORT_DIR}/search/best_trial/samples.png)" in search
    cluster = report.split("## 2. cluster", 1)[1].split("\n## ", 1)[0]
    assert "**Best trial `15`**" in cluster and "reducer=umap" in cluster
    assert f"]({REPORT_DIR}/cluster/search_history.png)" in cluster
    assert "## 4. broken (?, failed)" in report
    assert_links_exist(fake_output, report)


def test_job_sections_show_headline_tables_pictures_and_subfolders(fake_output):
    report = write_report(fake_output, log_to_mlflow=False).read_text()
    job = report.split("## 3. evaluate", 1)[1].split("\n## 4.", 1)[0]
    assert "| auroc | 0.91 |" in job and "| b | 2 |" in job and "| c | 3 |" not in job  # the first 6 numbers
    assert "… and 2 more in metrics.json" in job
    assert "| msp | 0.91 |" in job  # ood_table.md inlined
    assert f"[the whole table]({REPORT_DIR}/evaluate/long.md)" in job  # too long to inline
    grids = re.findall(r"evaluate/grids/cluster_\d+\.png", job)
    assert len(grids) == MAX_GRIDS and "(2 more grids in `grids/`.)" in job
    assert "(1 images in `images/` are not shown here.)" in job
    assert job.index("roc_curves.png") < job.index("scatter.png") < job.index("extra.png")
    assert "### evaluate / fewshot" in job and "| 16 | 0.8 |" in job and "pixels.lin.k16" in job
    assert f"]({REPORT_DIR}/evaluate/fewshot/fewshot_curves.png)" in job
    assert_links_exist(fake_output, report)


def test_a_rerun_removes_the_pictures_it_copied_before_and_nothing_else(fake_output):
    """Issue 19, defect 1: report/ was removed whole (rmtree), with whatever a user kept there."""
    write_report(fake_output, log_to_mlflow=False)
    copied = fake_output / REPORT_DIR / "search" / "parameter_sweep.png"
    assert copied.read_bytes() == PNG
    figure = _write(fake_output / REPORT_DIR / "figure1.png", b"a user's figure")
    taken = _write(fake_output / REPORT_DIR / "search" / "pareto.png", b"a user's file where a new picture goes")
    (fake_output / "tune" / "search" / "parameter_sweep.png").unlink()  # the stage no longer has this picture
    _write(fake_output / "tune" / "search" / "pareto.png", PNG)  # and has this one now
    report = write_report(fake_output, log_to_mlflow=False).read_text()
    assert not copied.exists()  # gensearch's own stale copy went
    assert figure.read_bytes() == b"a user's figure"
    assert taken.read_bytes() == b"a user's file where a new picture goes"
    assert f"]({REPORT_DIR}/search/pareto-1.png)" in report  # gensearch's copy took another name
    assert_links_exist(fake_output, report)


def test_a_report_md_gensearch_did_not_write_is_left_alone(fake_output):
    _write(fake_output / MANIFEST_FILE, "[]")  # a study folder of today's launcher, before its first report
    user_report = _write(fake_output / "report.md", "my own notes")
    with pytest.raises(FileExistsError, match="not written by gensearch"):
        write_report(fake_output, log_to_mlflow=False)
    assert user_report.read_text() == "my own notes"


def test_a_moved_study_still_finds_its_files(fake_output, tmp_path):
    moved = tmp_path / "moved"
    fake_output.rename(moved)
    report = write_report(moved, log_to_mlflow=False).read_text()
    assert_links_exist(moved, report)
    assert f"]({REPORT_DIR}/search/best_trial/samples.png)" in report


def test_a_moved_embedded_store_is_recognised(tmp_path):
    _write(tmp_path / "mlflow.db", b"")
    state = StudyState(study="s", tracking_uri="sqlite:////gone/old/mlflow.db")
    target = study_target(tmp_path, state, None)
    assert target.embedded and target.uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert "--default-artifact-root file://" in target.ui_command()
    assert not study_target(tmp_path, state, "http://head:5000").embedded


def test_an_unreachable_server_costs_one_line_and_no_report(fake_output, capsys):
    with socket.socket() as probe:  # a free port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    report = write_report(fake_output, tracking_uri=f"http://127.0.0.1:{port}")
    out = capsys.readouterr()
    assert report.is_file() and "Traceback" not in out.err
    lines = out.out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("report not logged to MLflow:") and str(port) in lines[0]


def test_cli_without_a_study_exits_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "orchestrator.report", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path} holds no study_state.json: pass a study's output folder (e.g. runs/smoke)"]


def test_cli_help_shows_examples_and_writes_the_report(fake_output, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "python -m orchestrator.report runs/smoke" in capsys.readouterr().out
    assert main([str(fake_output), "--no-mlflow"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {fake_output.resolve() / 'report.md'}"


# ---------------------------------------------------------------- a real tiny study

TINY = {
    "study": "tinyreport",
    "description": "report test: classifier search and its evaluation",
    "stages": [
        {"name": "classifier", "kind": "tune", "trainable": "classifier",
         "config": {"classes": [7, 1], "train_size": 200, "val_size": 100, "epochs": 1, "batch_size": 32},
         "space": {"lr": {"type": "loguniform", "low": 1e-3, "high": 3e-2},
                   "nf": {"type": "choice", "values": [1, 2]}},
         "metric": "val_accuracy", "num_samples": 2, "max_concurrent_trials": 2,
         "searcher": {"type": "optuna", "sampler": "tpe", "seed": 0}, "resources": {"cpu": 1},
         "register": {"name": "tinyreport-classifier"}},
        {"name": "evaluate", "kind": "job", "job": "evaluate_classifier", "config": {"limit": 300},
         "inputs": {"checkpoint": "classifier.best"}},
    ],
}


@pytest.fixture(scope="module")
def real_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    spec = folder / "tinyreport.yaml"
    spec.write_text(yaml.safe_dump(TINY, sort_keys=False))
    output = folder / "out"
    result = run_launcher(str(spec), "--output", str(output))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    write_report(output)
    return output, write_report(output).read_text()  # twice: the second reuses the report run


def tune_seconds_from_results(folder: Path) -> float:
    """Independently of the report: the last time_total_s in each trial's result.json, summed."""
    total = 0.0
    for result in folder.glob("trial_*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        total += rows[-1]["time_total_s"]
    return total


@pytest.mark.slow
def test_real_cost_matches_tunes_own_records(real_study):
    output, report = real_study
    expected = tune_seconds_from_results(output / "tune" / "classifier") / 3600  # 1 CPU per trial
    row = cost_row(report, "classifier")
    assert row[4] == "2 (0 failed)"
    assert expected > 0 and float(row[7]) == pytest.approx(expected, rel=1e-3)
    assert float(cost_row(report, "evaluate")[7]) > 0


@pytest.mark.slow
def test_real_report_names_the_best_trial_and_shows_existing_pictures(real_study):
    output, report = real_study
    state = load_state(output)
    best = state.stages["classifier"].best
    assert f"**Best trial `{best.trial_id}`**" in report
    assert "tinyreport-classifier` v1 @champion" in report
    assert "> report test: classifier search and its evaluation" in report
    links = assert_links_exist(output, report)
    assert f"{REPORT_DIR}/classifier/search_history.png" in links
    assert f"{REPORT_DIR}/evaluate/confusion_matrix.png" in links
    assert "| test_accuracy |" in report


@pytest.mark.slow
def test_real_report_is_one_mlflow_run_that_is_not_a_stage(real_study):
    output, _ = real_study
    client = client_for(output)
    experiment = client.get_experiment_by_name("tinyreport")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{TAG_REPORT}` = 'true'")
    assert len(runs) == 1
    (run,) = runs
    assert run.info.run_name == "report" and run.info.status == "FINISHED"
    assert "gensearch.stage" not in run.data.tags and "mlflow.parentRunId" not in run.data.tags
    assert run.data.metrics["reserved_cpu_hours"] > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", REPORT_DIR} <= artifacts
    _, parents, children = study_runs(client, "tinyreport")
    assert sorted(parents) == ["classifier", "evaluate"]
    assert run.info.run_id not in {r.info.run_id for runs in children.values() for r in runs}
