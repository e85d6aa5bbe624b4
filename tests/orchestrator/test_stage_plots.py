"""The stage pictures: the Pareto front maths, and that each plot is written from plain frames."""

from __future__ import annotations

import pandas as pd

from orchestrator.stage_plots import (pareto_front, plot_parameter_sweep, plot_pareto, plot_search_history,
                                     trial_curves_png)


def test_pareto_front_keeps_exactly_the_undominated_points():
    points = [(3.0, 1.0), (1.0, 3.0), (2.0, 2.0), (2.5, 2.5), (1.5, 3.5), (4.0, 1.0)]
    assert pareto_front(points) == [(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)]
    assert pareto_front([(1.0, 1.0)]) == [(1.0, 1.0)]
    assert pareto_front([]) == []
    assert pareto_front(points, modes=("max", "min")) == [(4.0, 1.0)]  # more x is better now


def frame(fid, acd):
    return pd.DataFrame({"training_iteration": range(1, len(fid) + 1), "fid_mnist": fid, "acd": acd,
                         "fid_mnist_step1": [10.0] * len(fid), "acd_step1": [0.4] * len(fid)})


def test_plots_are_written_from_frames_and_skip_what_was_never_reported(tmp_path):
    trials = {"a": frame([11.0, 12.0], [0.2, 0.1]), "b": frame([10.5], [0.3]), "failed": None}
    baselines = {"fid_mnist": "fid_mnist_step1", "acd": "acd_step1"}
    assert plot_pareto(trials, "fid_mnist", "acd", "gasten", tmp_path / "pareto.png", best_trial="a",
                       baselines=baselines)
    assert (tmp_path / "pareto.png").read_bytes().startswith(b"\x89PNG")
    assert not plot_pareto({"x": None}, "fid_mnist", "acd", "gasten", tmp_path / "none.png")
    trials["a"]["fid_real_ambiguous"], trials["a"]["acd_real_ambiguous"] = 62.8, 0.23
    assert plot_pareto(trials, "fid_mnist", "acd", "gasten", tmp_path / "chosen.png", best_trial="a",
                       baselines=baselines, chosen={"fid_mnist": 11.0, "acd": 0.2},
                       references={"real ambiguous digits": ("fid_real_ambiguous", "acd_real_ambiguous")})
    assert (tmp_path / "chosen.png").read_bytes().startswith(b"\x89PNG")
    assert not (tmp_path / "none.png").exists()
    png = trial_curves_png(trials["a"], ("fid_mnist", "acd", "never_reported"), "t", baselines)
    assert png is not None and png.startswith(b"\x89PNG")
    assert trial_curves_png(trials["a"], ("never_reported",), "t") is None
    plot_search_history([0.5, None, 0.7], "val_accuracy", "max", "classifier", tmp_path / "history.png")
    assert (tmp_path / "history.png").stat().st_size > 0


def test_parameter_sweep_draws_numeric_and_categorical_settings_and_skips_failed_trials(tmp_path):
    points = {"t": [(100, 0.80), (350, 0.86), (900, 0.70), (500, None)],
              "sampler": [("tpe", 0.8), ("random", 0.86), ("tpe", 0.7)]}
    assert plot_parameter_sweep(points, "val_fewshot_lin", "max", "timestep", tmp_path / "sweep.png",
                                best={"t": 350, "sampler": "random"})
    assert (tmp_path / "sweep.png").read_bytes().startswith(b"\x89PNG")
    assert not plot_parameter_sweep({"t": [(1, None)]}, "m", "max", "s", tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
