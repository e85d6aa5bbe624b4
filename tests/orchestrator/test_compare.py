"""`python -m orchestrator.compare`: two real runs of a tiny study (an Optuna stage and an evaluation job,
toy_trainables.py) under seeds 0 and 1, compared; the table and the MLflow run are checked against our own
reading of each run's study_state.json."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import pytest
import yaml

from orchestrator import compare
from tests.orchestrator import toy_trainables as toy
from tests.orchestrator.study_helpers import client_for, launcher_env, run_launcher

STUDY = "seeds"


def seeds_study(path: Path) -> Path:
    stages = [
        {"name": "bowl", "kind": "optuna", "objective": toy.BOWL_NAME,
         "space": {"shape": {"point": {"a": {"type": "uniform", "low": 0.0, "high": 1.0},
                                       "b": {"type": "uniform", "low": 0.0, "high": 1.0}}}},
         "metric": "distance", "n_trials": 4, "n_jobs": 2},
        {"name": "score", "kind": "job", "job": toy.SCORE_NAME, "inputs": {"best": "bowl.best"}},
    ]
    path.write_text(yaml.safe_dump({"study": STUDY, "stages": stages}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("compare")
    spec = seeds_study(folder / f"{STUDY}.yaml")
    outputs = [folder / f"seed{seed}" for seed in (0, 1)]
    for seed, output in zip((0, 1), outputs):
        result = run_launcher(str(spec), "--seed", str(seed), "--output", str(output),
                              env=toy.with_path(launcher_env()))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return outputs


def recorded(output: Path) -> dict:
    return json.loads((output / "study_state.json").read_text())


def table_row(markdown: str, stage: str, metric: str) -> list[str]:
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[:2] == [stage, metric]:
            return cells
    raise AssertionError(f"no row {stage} {metric} in:\n{markdown}")


@pytest.mark.slow  # two launches of a tiny study (about 40 s each on 2 busy cores)
def test_the_comparison_gives_mean_std_and_each_seed_and_logs_one_mlflow_run(two_seeds, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(toy.FOLDER))  # the kept study files name toy_trainables:...
    states = [recorded(output) for output in two_seeds]
    assert [state["seed"] for state in states] == [0, 1]
    markdown_path = compare.compare(two_seeds, tmp_path / "cmp")
    markdown = markdown_path.read_text()
    assert "Warning" not in markdown  # the same study, the seed apart

    expected = {("bowl", "distance"): [state["stages"]["bowl"]["best"]["value"] for state in states],
                **{("score", name): [state["stages"]["score"]["metrics"][name] for state in states]
                   for name in ("acc_k1", "acc_k5")}}
    assert expected[("score", "acc_k1")][0] != expected[("score", "acc_k1")][1], "the seed changed nothing"
    for (stage, metric), values in expected.items():
        mean, std = statistics.mean(values), statistics.stdev(values)
        assert table_row(markdown, stage, metric)[2:] == [f"{mean:.4g} ± {std:.4g}", *(f"{v:.4g}" for v in values)]
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"

    client = client_for(two_seeds[0])
    experiment = client.get_experiment_by_name(STUDY)
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`gensearch.compare` = 'true'")
    assert len(runs) == 1
    values = expected[("score", "acc_k5")]
    assert runs[0].data.metrics["score.acc_k5.mean"] == pytest.approx(statistics.mean(values))
    assert runs[0].data.metrics["score.acc_k5.std"] == pytest.approx(statistics.stdev(values))
    artifacts = {entry.path for entry in client.list_artifacts(runs[0].info.run_id)}
    assert artifacts == {"compare.md", "compare.png"}


@pytest.mark.slow  # shares the two launches above
def test_runs_that_differ_in_more_than_the_seed_are_named_in_a_warning(two_seeds, monkeypatch):
    monkeypatch.syspath_prepend(str(toy.FOLDER))
    first, second = (compare.load_run(output) for output in two_seeds)
    assert compare.differences([first, second]) == []
    bowl = dataclasses.replace(second.spec.stages[0], n_trials=5)
    edited = dataclasses.replace(second, spec=dataclasses.replace(second.spec, stages=(bowl, *second.spec.stages[1:])))
    assert compare.differences([first, edited]) == ["seed1: bowl.n_trials: 4 -> 5"]
    assert compare.differences([first, first]) == ["seed0: the same seed (0) as seed0"]


def test_metrics_measured_at_several_sizes_become_curves_and_the_rest_stay_rows():
    def row(metric, *values):
        return compare.Row("evaluation", metric, values)

    rows = [row("fewshot.pixels.lin.k4", 0.6, 0.8), row("fewshot.pixels.lin.k1", 0.3, 0.5),
            row("fewshot.classifier.lin.k1", 0.4, 0.4), row("fewshot.classifier.lin.k4", 0.7, 0.9),
            row("prototype_curve.real.test_accuracy.n2", 0.7, 0.7),
            row("prototype_curve.real.test_accuracy.n4", 0.8, 0.8),
            row("ood.kplus1_boundary.fashion_mnist.auroc", 0.6, 0.7),  # not measured at sizes
            row("fewshot.pixels.nonlin.k8", 0.9, 0.9)]  # one size only: not a curve
    found = {(c.panel, c.label): [(x, r.mean_std) for x, r in c.points] for c in compare.curves(rows)}
    assert sorted(found) == [("evaluation: fewshot.lin (k)", "classifier"), ("evaluation: fewshot.lin (k)", "pixels"),
                             ("evaluation: prototype_curve.test_accuracy (n)", "real")]
    pixels = found[("evaluation: fewshot.lin (k)", "pixels")]
    assert [x for x, _ in pixels] == [1, 4]  # sorted by size
    assert pixels[0][1][0] == pytest.approx(0.4) and pixels[0][1][1] == pytest.approx(statistics.stdev([0.3, 0.5]))
