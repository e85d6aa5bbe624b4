"""The stage kinds behind one interface (orchestrator/stages/), and what a newcomer touches to add one.

The walkthrough adds a `constant` kind, a stage whose run records one number, written entirely in this file
as a newcomer would write `orchestrator/stages/constant.py`: its spec dataclass (with its `kind`), its
section parser and its StageKind. Registering it takes one line in `orchestrator.stages.KINDS` and one in
`orchestrator.spec.study.SECTION_PARSERS` (the spec layer sits below the stages and keeps its own table of
parsers); nothing else changes: the launcher plans it, runs it with a real MLflow store, resumes past it,
and the summary and the report show it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.launch import main
from orchestrator.spec import SpecError, load_study, parse_study
from orchestrator.spec.fields import SectionContext, _number, _parse_inputs, _unknown_keys
from orchestrator.spec.problems import _Problems
from orchestrator.spec.schema import Reference
from orchestrator.spec.study import SECTION_PARSERS
from orchestrator.stages import KINDS, Runner, StageKind, kind_of

REPO = Path(__file__).resolve().parents[2]


# --- what a newcomer writes: orchestrator/stages/constant.py -------------------------------------------------

@dataclass(frozen=True)
class ConstantStage:
    name: str
    value: float
    inputs: Mapping[str, Reference] = field(default_factory=dict)
    kind: Literal["constant"] = "constant"


def parse_constant_stage(raw: Mapping[str, Any], key: str, where: SectionContext,
                         problems: _Problems) -> ConstantStage | None:
    _unknown_keys(raw, ("name", "kind", "value", "inputs"), key, problems)
    value = _number(raw, "value", key, problems, required=True)
    inputs = _parse_inputs(raw.get("inputs"), f"{key}.inputs", where.earlier, where.later, problems)
    return ConstantStage(name=raw["name"], value=value, inputs=inputs) if value is not None else None


class ConstantKind(StageKind):
    name = "constant"
    parse = staticmethod(parse_constant_stage)

    def plan_lines(self, stage: ConstantStage, number: int) -> list[str]:
        return [f"  {number}. {stage.name}  constant  value={stage.value:g}"]

    def parent_params(self, stage: ConstantStage) -> dict[str, Any]:
        return {"value": stage.value}

    def run(self, stage: ConstantStage, runner: Runner, inputs: dict[str, str], parent: str,
            retrying: bool) -> None:
        folder = runner.output / "constant" / stage.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "value.json").write_text(json.dumps({"value": stage.value, "inputs": inputs}))
        record = runner.state.stage(stage.name)
        record.metrics, record.output = {"value": float(stage.value)}, str(folder)
        runner.tracker.log_metrics(parent, {"value": stage.value})


# --- registering it: one line in each table ------------------------------------------------------------------

@pytest.fixture
def constant_kind(monkeypatch):
    monkeypatch.setitem(KINDS, "constant", ConstantKind())
    monkeypatch.setitem(SECTION_PARSERS, "constant", parse_constant_stage)


def constant_study(path: Path, value: float = 42) -> Path:
    path.write_text(yaml.safe_dump({"study": "kinds", "stages": [
        {"name": "answer", "kind": "constant", "value": value},
        {"name": "echo", "kind": "constant", "value": value + 1, "inputs": {"earlier": "answer.best"}},
    ]}, sort_keys=False))
    return path


def test_an_unregistered_kind_is_one_line_naming_the_kinds_there_are(tmp_path):
    with pytest.raises(SpecError) as error:
        load_study(constant_study(tmp_path / "study.yaml"))
    assert error.value.lines()[0] == (f"{tmp_path / 'study.yaml'}: stages[0].kind: must be one of tune, optuna, "
                                      f"job, got 'constant'")


def test_a_registered_kind_parses_and_its_section_problems_name_the_key(tmp_path, constant_kind):
    spec = load_study(constant_study(tmp_path / "study.yaml"))
    assert spec.stages == (ConstantStage("answer", 42), ConstantStage("echo", 43, {"earlier": Reference("answer",
                                                                                                          "best")}))
    assert kind_of(spec.stages[1]) is KINDS["constant"]
    with pytest.raises(SpecError) as error:
        parse_study({"study": "kinds", "stages": [{"name": "answer", "kind": "constant", "vale": 1}]}, "s.yaml")
    lines = error.value.lines()
    assert len(lines) == 2 and lines[0].startswith("s.yaml: stages[0].vale: ") and "value" in lines[0], lines
    assert lines[1] == "s.yaml: stages[0].value: required"


def test_the_new_kind_is_planned_run_summarised_reported_and_resumed(tmp_path, capsys, constant_kind):
    study, output = constant_study(tmp_path / "study.yaml"), tmp_path / "out"
    assert main([str(study), "--dry-run", "--output", str(output)]) == 0
    plan = capsys.readouterr().out
    assert ("  1. answer  constant  value=42\n  2. echo  constant  value=43\n"
            "       inputs: earlier <- answer.best") in plan

    assert main([str(study), "--output", str(output)]) == 0
    out = capsys.readouterr().out
    state = json.loads((output / "study_state.json").read_text())
    assert {name: (s["status"], s["metrics"]) for name, s in state["stages"].items()} == {
        "answer": ("finished", {"value": 42.0}), "echo": ("finished", {"value": 43.0})}
    # The later stage got the earlier one's output folder by reference, as any kind's input.
    echoed = json.loads((output / "constant" / "echo" / "value.json").read_text())
    assert echoed["inputs"] == {"earlier": str(output / "constant" / "answer")}

    client = MlflowClient(f"sqlite:///{output / 'mlflow.db'}")
    runs = {run.info.run_name: run for run in client.search_runs([state["experiment_id"]])}
    answer = runs["answer"]
    assert answer.info.status == "FINISHED"
    assert answer.data.tags["gensearch.kind"] == "constant"
    assert answer.data.params["value"] == "42" and answer.data.metrics["value"] == 42.0

    summary = (output / "summary.md").read_text()
    assert any(line.startswith("answer ") and "finished" in line and "value=42" in line
               for line in summary.splitlines()), summary
    assert "  echo: value=43" in summary  # the default detail line: the metrics a stage recorded
    report = (output / "report.md").read_text()
    assert "## 1. answer (constant, finished)" in report and "## 2. echo (constant, finished)" in report

    assert main([str(study), "--output", str(output), "--resume"]) == 0
    assert "[answer] already finished: skipped" in capsys.readouterr().out


def test_every_kind_names_its_own_section_parser_and_the_spec_reads_every_kind():
    assert list(KINDS) == list(SECTION_PARSERS) == ["tune", "optuna", "job"]
    for name, kind in KINDS.items():
        assert kind.name == name and kind.parse is SECTION_PARSERS[name]


def test_each_stage_of_the_flagship_study_finds_its_kind():
    spec = load_study(REPO / "search_spaces" / "gasten_mnist.yaml")
    kinds = [kind_of(stage).name for stage in spec.stages]
    assert kinds == [stage.kind for stage in spec.stages]
    assert set(kinds) == {"tune", "optuna", "job"}
    runs_on_ray = {stage.name for stage in spec.stages if kind_of(stage).uses_ray}
    assert runs_on_ray == {"classifier", "gan", "gasten", "boundary_ood"}
