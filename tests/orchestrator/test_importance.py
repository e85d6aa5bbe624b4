"""Parameter importance (Optuna's fANOVA) on toy trials where we know which setting drives the metric."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from orchestrator.importance import (MIN_TRIALS, PLOT_FILE, TABLE_FILE, compute_importance, trials_from_configs,
                                     write_importance)
from orchestrator.report import Gallery, importance_lines
from orchestrator.spec import Choice, IntRange, LogUniform, Uniform

SPACE = {"lr": LogUniform(1e-4, 1e-1), "dropout": Uniform(0.0, 0.5), "nf": Choice((1, 2, 4)),
         "batch": IntRange(16, 128, log=True)}


def toy_rows(n: int, seed: int = 0) -> list[tuple[dict, list[float]]]:
    """Configs drawn at random from SPACE; `loss` depends on lr alone (optimum at 1e-2), `size` on nf alone."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        config = {"lr": float(10 ** rng.uniform(-4, -1)), "dropout": float(rng.uniform(0, 0.5)),
                  "nf": int(rng.choice([1, 2, 4])), "batch": int(rng.integers(16, 129)), "epochs": 3}
        loss = (np.log10(config["lr"]) + 2) ** 2 + 0.01 * rng.normal()
        size = config["nf"] * 10 + 0.01 * rng.normal()
        rows.append((config, [loss, size]))
    return rows


def test_the_setting_that_drives_the_metric_gets_the_largest_importance():
    trials = trials_from_configs(SPACE, [(config, values[:1]) for config, values in toy_rows(16)])
    result = compute_importance(trials, [("loss", "min")])
    assert result.skipped is None
    loss = result.importances["loss"]
    assert set(loss) == set(SPACE)
    assert max(loss, key=loss.get) == "lr" and loss["lr"] > 0.5
    assert sum(loss.values()) == pytest.approx(1.0)
    assert result.metrics()["importance.loss.lr"] == loss["lr"]


def test_each_objective_of_a_multi_objective_stage_gets_its_own_importance():
    trials = trials_from_configs(SPACE, toy_rows(16))
    result = compute_importance(trials, [("loss", "min"), ("size", "max")])
    loss, size = result.importances["loss"], result.importances["size"]
    assert max(loss, key=loss.get) == "lr" and max(size, key=size.get) == "nf"
    assert set(result.metrics()) == {f"importance.{m}.{p}" for m in ("loss", "size") for p in SPACE}


def test_too_few_trials_give_one_line_and_no_plot(tmp_path, capsys):
    trials = trials_from_configs(SPACE, toy_rows(MIN_TRIALS - 1))
    result = write_importance("classifier", trials, [("loss", "min"), ("size", "max")], tmp_path)
    assert result.skipped is not None and not result.importances and result.metrics() == {}
    assert (tmp_path / TABLE_FILE).read_text().splitlines() == [
        f"**Parameter importance**: skipped, only {MIN_TRIALS - 1} finished trial(s); at least {MIN_TRIALS} are "
        f"needed."]
    assert not (tmp_path / PLOT_FILE).exists()
    assert capsys.readouterr().out.strip() == (f"[classifier] parameter importance skipped: only {MIN_TRIALS - 1} "
                                               f"finished trial(s); at least {MIN_TRIALS} are needed")


def test_a_single_varied_setting_is_not_given_a_trivial_bar(tmp_path):
    rows = [({**config, "dropout": 0.1, "nf": 2, "batch": 32}, values[:1]) for config, values in toy_rows(8)]
    result = compute_importance(trials_from_configs(SPACE, rows), [("loss", "min")])
    assert result.skipped == "only one searched setting varied (lr): its importance is 1.0 by construction"


def test_a_conditional_space_is_judged_on_the_settings_every_trial_has():
    """An Optuna stage's branches: `reducer` in every trial, `reducer.pca.n` only where reducer=pca."""
    def objective(trial):
        reducer = trial.suggest_categorical("reducer", ["pca", "none"])
        if reducer == "pca":
            trial.suggest_int("reducer.pca.n", 2, 10)
        noise = trial.suggest_float("noise", 0.0, 1.0)
        return (1.0 if reducer == "pca" else 0.0) + 0.05 * noise

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=16)
    result = compute_importance(study.trials, [("silhouette", "max")])
    values = result.importances["silhouette"]
    assert set(values) == {"reducer", "noise"} and values["reducer"] > values["noise"]


def test_the_table_and_plot_land_in_the_stage_folder_and_the_report(tmp_path):
    folder = tmp_path / "tune" / "gasten"
    result = write_importance("gasten", trials_from_configs(SPACE, toy_rows(12)), [("loss", "min"), ("size", "max")],
                              folder)
    assert (folder / PLOT_FILE).read_bytes().startswith(b"\x89PNG")
    table = (folder / TABLE_FILE).read_text()
    assert "| setting | loss (min) | size (max) |" in table
    assert f"| lr | {result.importances['loss']['lr']:.3f} |" in table
    lines = importance_lines(folder, "gasten", Gallery(tmp_path))
    assert "| setting | loss (min) | size (max) |" in lines
    assert "![importance](report/gasten/importance.png)" in lines
    assert (tmp_path / "report" / "gasten" / PLOT_FILE).is_file()
