"""The typed study record: each stage's kind and the outputs its definition declares, recorded in
study_state.json, taken by later stages by reference (`prototypes.clustering`) and shown by the report;
and a study folder from before they were recorded, which must still resume and report.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from orchestrator.report import facts_from_run, write_report
from orchestrator.spec import SpecError, load_study, parse_study
from orchestrator.stage_outputs import TUNE_STAGE_OUTPUTS, produced_outputs, reference_path
from orchestrator.study_state import (STATE_FILE, BestTrial, RecordedOutput, StageState, StudyState, load_state,
                                      save_state)
from tests.orchestrator import toy_trainables as toy
from tests.orchestrator.study_helpers import REPO, client_for, launcher_env, run_launcher
from trainables import catalog
from trainables.definitions import Output

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
FLAGSHIP = REPO / "search_spaces" / "gasten_mnist.yaml"


def old_format(output: Path) -> None:
    """Rewrite a study's state as a launcher from before kinds and outputs were recorded left it."""
    path = output / STATE_FILE
    raw = json.loads(path.read_text())
    for stage in raw["stages"].values():
        stage.pop("kind", None)
        stage.pop("outputs", None)
    path.write_text(json.dumps(raw, indent=2))


def test_a_state_file_without_kinds_or_outputs_loads_and_a_new_one_round_trips(tmp_path):
    state = StudyState(study="s", tracking_uri="sqlite:///x.db")
    state.stages["evaluate"] = StageState(status="finished", kind="job", output=str(tmp_path / "jobs" / "evaluate"),
                                          outputs={"table": RecordedOutput("table", "/x/jobs/evaluate/t.md")})
    save_state(tmp_path, state)
    assert load_state(tmp_path) == state
    old_format(tmp_path)
    old = load_state(tmp_path).stages["evaluate"]
    assert (old.kind, old.outputs, old.status) == ("", {}, "finished")


def test_only_the_declared_outputs_a_run_left_are_recorded(tmp_path):
    (tmp_path / "grids").mkdir()
    (tmp_path / "scatter.png").write_bytes(PNG)
    (tmp_path / "unknown.png").write_bytes(PNG)  # not declared: not recorded
    declared = catalog.job("prototypes").outputs
    recorded = produced_outputs(declared, tmp_path, catalog.job("prototypes").config_cls(clustering="/c/best"))
    assert recorded == {"scatter": RecordedOutput("picture", str(tmp_path / "scatter.png")),
                        "grids": RecordedOutput("gallery", str(tmp_path / "grids"), "prototypes of one cluster"),
                        "clustering": RecordedOutput("clustering", "/c/best")}
    assert "clustering" not in produced_outputs(declared, tmp_path)  # no config: passed-on results unknown
    with pytest.raises(ValueError, match="unknown output kind 'plot'"):
        Output("plot", "a.png")
    with pytest.raises(ValueError, match="exactly one"):
        Output("table", "a.md", from_config="table")


def flagship_state(prototypes: StageState) -> StudyState:
    state = StudyState(study="gasten_mnist", tracking_uri="sqlite:///x.db")
    state.stages["clustering"] = StageState(status="finished", kind="optuna", output="/o/optuna/clustering",
                                            best=BestTrial("3", "silhouette", 0.5, "/o/optuna/clustering/best", {}))
    state.stages["prototypes"] = prototypes
    return state


def test_a_recorded_output_is_what_a_reference_to_it_gives():
    spec = load_study(FLAGSHIP)
    evaluation = next(stage for stage in spec.stages if stage.name == "evaluation")
    assert str(evaluation.inputs["clustering"]) == "prototypes.clustering"  # the shipped study's wiring
    recorded = StageState(status="finished", kind="job", output="/o/jobs/prototypes",
                          outputs={"clustering": RecordedOutput("clustering", "/elsewhere/best")})
    state = flagship_state(recorded)
    assert reference_path("prototypes", "clustering", state, spec.stages) == "/elsewhere/best"
    assert reference_path("prototypes", "best", state, spec.stages) == "/o/jobs/prototypes"
    assert reference_path("clustering", "best", state, spec.stages) == "/o/optuna/clustering/best"


def test_a_state_from_before_outputs_were_recorded_traces_the_reference_through_the_spec(tmp_path):
    spec = load_study(FLAGSHIP)
    old = StageState(status="finished", output=str(tmp_path / "jobs" / "prototypes"))
    state = flagship_state(old)
    # the prototypes stage's own input: `clustering: clustering.best`
    assert reference_path("prototypes", "clustering", state, spec.stages) == "/o/optuna/clustering/best"
    with pytest.raises(LookupError, match="stage 'prototypes' recorded no output 'scatter' and .* does not exist"):
        reference_path("prototypes", "scatter", state, spec.stages)
    with pytest.raises(LookupError, match="stage 'prototypes' recorded no output 'clustering'"):
        reference_path("prototypes", "clustering", state)  # no spec to trace it in


def test_a_selector_must_be_best_or_a_declared_output():
    study = yaml.safe_load(FLAGSHIP.read_text())
    evaluation = next(stage for stage in study["stages"] if stage["name"] == "evaluation")
    evaluation["inputs"]["clustering"] = "prototypes.medoids"
    with pytest.raises(SpecError) as error:
        parse_study(study, "flag.yaml")
    (line,) = [line for line in str(error.value).splitlines() if "medoids" in line]
    assert "stages[7].inputs.clustering: unknown selector 'medoids' (use: best, scatter, summary, grids, images, " \
           "table, clustering)" in line
    evaluation["inputs"]["clustering"] = "clustering.clustering"  # an optuna stage declares none: best only
    with pytest.raises(SpecError, match=r"unknown selector 'clustering' \(use: best\)"):
        parse_study(study, "flag.yaml")


def prototypes_folder(output: Path) -> Path:
    """A prototypes job's folder, as the real job leaves it (pictures are not decoded by the report)."""
    folder = output / "jobs" / "protos"
    for path in ("scatter.png", *(f"grids/cluster_{c:02d}.png" for c in range(8)), "images/c00_medoid_1.png"):
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(PNG)
    (folder / "summary.txt").write_text("prototypes: 8 clusters\nsource: /o/optuna/clustering/best\n")
    (folder / "prototypes.parquet").write_bytes(b"")
    return folder


def test_the_report_shows_recorded_outputs_and_the_same_for_a_state_without_them(tmp_path):
    output = tmp_path / "out"
    folder = prototypes_folder(output)
    study = {"study": "protos", "stages": [{"name": "protos", "kind": "job", "job": "prototypes",
                                            "config": {"clustering": "/o/optuna/clustering/best"}}]}
    (output / "study.yaml").write_text(yaml.safe_dump(study))
    config = catalog.job("prototypes").config_cls(clustering="/o/optuna/clustering/best")
    state = StudyState(study="protos", tracking_uri=f"sqlite:///{output / 'mlflow.db'}",
                       spec_file=str(output / "study.yaml"))
    state.stages["protos"] = StageState(status="finished", kind="job", output=str(folder), metrics={"clusters": 8.0},
                                        outputs=produced_outputs(catalog.job("prototypes").outputs, folder, config))
    save_state(output, state)
    report = write_report(output, log_to_mlflow=False).read_text()
    section = report.split("## 1. protos (job, finished)", 1)[1].split("\n## ", 1)[0]
    assert "| clusters | 8 |" in section and "source: /o/optuna/clustering/best" in section
    assert section.index("scatter.png") < section.index("summary.txt") < section.index("grids/cluster_00.png")
    assert len([line for line in section.splitlines() if "*cluster_" in line]) == 6
    assert "(2 more grids in `grids/`.)" in section and "(1 images in `images/` are not shown here.)" in section
    assert "prototypes.parquet" not in section  # data: recorded, not shown
    old_format(output)
    assert write_report(output, log_to_mlflow=False).read_text() == report


def test_a_tune_stage_records_its_own_tables_and_pictures_and_the_report_shows_them_in_order(tmp_path):
    """A tune stage's search files are declared once (TUNE_STAGE_OUTPUTS) and recorded like a job's; the report
    shows them from the record, and the same from a state without it."""
    output = tmp_path / "out"
    folder = output / "tune" / "gan"
    folder.mkdir(parents=True)
    for name in ("search_history.png", "parameter_sweep.png", "pareto.png", "importance.png"):
        (folder / name).write_bytes(PNG)
    (folder / "pareto_front.csv").write_text("trial,acd,fid_mnist\nt1,0.3,60\n")
    (folder / "importance.md").write_text("**Parameter importance**\n\n| setting | acd |\n|---|---|\n| lr | 0.9 |\n")
    (folder / "trials.csv").write_text("trial,acd\nt1,0.3\n")
    recorded = produced_outputs(TUNE_STAGE_OUTPUTS, folder)
    assert list(recorded) == ["trials", "pareto_front", "pareto", "search_history", "parameter_sweep",
                              "importance", "importance_plot"]
    (folder / "pareto.png").unlink()  # a file the record names but that is gone is simply not shown
    state = StudyState(study="g", tracking_uri=f"sqlite:///{output / 'mlflow.db'}")
    state.stages["gan"] = StageState(status="finished", kind="tune", output=str(folder), outputs=recorded)
    save_state(output, state)
    report = write_report(output, log_to_mlflow=False).read_text()
    section = report.split("## 1. gan (tune, finished)", 1)[1]
    assert "**Pareto front**: 1 evaluated epoch(s)" in section and "| lr | 0.9 |" in section
    assert section.index("Pareto front") < section.index("search_history.png") < section.index(
        "parameter_sweep.png") < section.index("| lr | 0.9 |") < section.index("importance.png")
    assert "pareto.png" not in section and "trials.csv" not in section
    raw = json.loads((output / STATE_FILE).read_text())
    del raw["stages"]["gan"]["outputs"]  # as a launcher from before tune stages recorded theirs left it
    (output / STATE_FILE).write_text(json.dumps(raw, indent=2))
    assert load_state(output).stages["gan"].outputs == {}
    assert write_report(output, log_to_mlflow=False).read_text() == report


@pytest.mark.slow  # a toy Optuna stage and job through the launcher, then a resume (about a minute on 2 busy cores)
def test_a_study_folder_from_before_the_record_resumes_and_reports(tmp_path):
    stages = [{"name": "bowl", "kind": "optuna", "objective": toy.BOWL_NAME,
               "space": {"shape": {"point": {"a": {"type": "uniform", "low": 0.0, "high": 1.0},
                                             "b": {"type": "uniform", "low": 0.0, "high": 1.0}}}},
               "metric": "distance", "n_trials": 3, "n_jobs": 1},
              {"name": "score", "kind": "job", "job": toy.SCORE_NAME, "inputs": {"best": "bowl.best"}}]
    spec = tmp_path / "record.yaml"
    spec.write_text(yaml.safe_dump({"study": "record", "stages": stages}, sort_keys=False))
    output, env = tmp_path / "out", toy.with_path(launcher_env())
    result = run_launcher(str(spec), "--output", str(output), env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = load_state(output)
    assert {name: stage.kind for name, stage in state.stages.items()} == {"bowl": "optuna", "score": "job"}
    bowl_best = state.stages["bowl"].best.checkpoint
    assert state.stages["score"].outputs == {
        "table": RecordedOutput("table", str(output / "jobs" / "score" / "scores.md")),
        "bowl": RecordedOutput("data", bowl_best)}
    assert state.stages["bowl"].outputs == {"best": RecordedOutput("text", str(Path(bowl_best) / "best.txt"))}
    report = (output / "report.md").read_text()
    bowl, score = report.split("## 1. bowl (optuna, finished)", 1)[1].split("## 2. score (job, finished)", 1)
    assert "**best.txt**" in bowl and "| acc_k1 |" in score

    # The folder as an older launcher left it, stopped before its job: no kinds, no outputs, score pending.
    old_format(output)
    raw = json.loads((output / STATE_FILE).read_text())
    parent = raw["stages"]["bowl"]["parent_run_id"]
    raw["stages"]["score"] = {"status": "pending"}
    (output / STATE_FILE).write_text(json.dumps(raw, indent=2))
    shutil.rmtree(output / "jobs" / "score")
    result = run_launcher(str(spec), "--output", str(output), "--resume", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[bowl] already finished: skipped" in result.stdout
    resumed = load_state(output)
    assert resumed.stages["bowl"].kind == "" and resumed.stages["score"].kind == "job"
    assert resumed.stages["score"].outputs["bowl"].path == bowl_best
    report = (output / "report.md").read_text()
    bowl, score = report.split("## 1. bowl (optuna, finished)", 1)[1].split("## 2. score (job, finished)", 1)
    assert "**best.txt**" in bowl and "| acc_k1 |" in score  # bowl's from its declaration, score's as recorded
    # Without a spec, an old stage's kind is the tag its MLflow run has always carried.
    facts = facts_from_run("bowl", resumed.stages["bowl"], client_for(output).get_run(parent))
    assert facts.kind == "optuna"
