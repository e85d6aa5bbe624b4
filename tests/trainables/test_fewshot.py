"""Few-shot curves: separable features score 1.0, noise scores chance, draws depend on labels only.

Real scikit-learn on tiny synthetic data (a few dozen training points, 5-D features), one BLAS
thread, so every test takes well under a second.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from trainables.fewshot import (
    COLUMNS,
    FewShotConfig,
    accuracy_at,
    draw_indices,
    fewshot_curve,
    markdown_table,
    pixel_features,
    plot_curves,
    save_table,
    test_indices,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(per_class: int, classes: int = 3, dim: int = 5, spread: float = 0.3, seed: int = 0):
    """Gaussian blobs around fixed centres that differ in every dimension (about 30 apart).

    Every dimension carries signal on purpose: the k-shot StandardScaler would blow a pure-noise
    dimension up to unit variance, and with a handful of points a head can then fit that noise.
    """
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(0.0, 10.0, size=(classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    points = centres[labels] + spread * rng.standard_normal((labels.size, dim))
    return points.astype(np.float32), labels


SMALL = FewShotConfig(shots=(1, 2, 4), repeats=2, mlp_hidden=16)


def test_separable_features_score_one_for_both_heads():
    x_train, y_train = blobs(8, seed=1)
    x_test, y_test = blobs(30, seed=2)
    frame = fewshot_curve(x_train, y_train, x_test, y_test, SMALL, "blobs")

    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == 2 * 3  # heads x shots
    assert set(frame["features"]) == {"blobs"}
    assert (frame["repeats"] == 2).all()
    assert frame.set_index(["head", "k"])["n_train"].to_dict() == {
        (h, k): 3 * k for h in ("lin", "nonlin") for k in (1, 2, 4)
    }
    at_least_two = frame[frame["k"] >= 2]
    assert (at_least_two["mean_accuracy"] == 1.0).all()
    assert (at_least_two["std_accuracy"] == 0.0).all()
    assert accuracy_at(frame, 2) == 1.0
    assert accuracy_at(frame, 4, head="nonlin", features="blobs") == 1.0


def test_features_unrelated_to_labels_score_near_chance():
    rng = np.random.default_rng(3)
    classes = 4
    y_train = np.repeat(np.arange(classes), 20)
    y_test = rng.integers(0, classes, size=800)
    x_train = rng.standard_normal((y_train.size, 5))
    x_test = rng.standard_normal((y_test.size, 5))
    config = FewShotConfig(shots=(4, 16), repeats=2, mlp_hidden=16)
    frame = fewshot_curve(x_train, y_train, x_test, y_test, config, "noise")

    assert np.all(np.abs(frame["mean_accuracy"] - 1 / classes) < 0.15), frame


def test_draws_depend_only_on_labels_seed_k_and_repeat():
    labels = np.repeat(np.arange(3), [5, 9, 7])
    first = draw_indices(labels, 2, 0, seed=4)
    assert np.array_equal(first, draw_indices(labels.copy(), 2, 0, seed=4))
    assert np.bincount(labels[first]).tolist() == [2, 2, 2]
    assert len(np.unique(first)) == first.size  # no example twice
    others = [draw_indices(labels, 2, r, seed=s) for s, r in ((4, 1), (5, 0))]
    assert all(not np.array_equal(first, other) for other in others)


def test_same_draws_across_feature_sets_give_identical_lin_results():
    x_train, y_train = blobs(12, spread=4.0, seed=5)  # overlapping: accuracy below 1, draws matter
    x_test, y_test = blobs(40, spread=4.0, seed=6)
    perm = np.random.default_rng(0).permutation(x_train.shape[1])
    scale = np.array([3.0, 0.5, 7.0, 1.0, 0.1])
    config = FewShotConfig(shots=(1, 3), repeats=3, heads=("lin",))

    a = fewshot_curve(x_train, y_train, x_test, y_test, config, "a")
    b = fewshot_curve((x_train * scale)[:, perm] + 2.0, y_train, (x_test * scale)[:, perm] + 2.0, y_test,
                      config, "b")
    assert a["mean_accuracy"].tolist() == pytest.approx(b["mean_accuracy"].tolist(), abs=1e-9)
    assert a["std_accuracy"].tolist() == pytest.approx(b["std_accuracy"].tolist(), abs=1e-9)
    assert a["mean_accuracy"].max() < 1.0  # the comparison would be vacuous at perfect accuracy


def test_same_seed_same_frame_different_seed_different_draws():
    x_train, y_train = blobs(12, spread=4.0, seed=7)
    x_test, y_test = blobs(40, spread=4.0, seed=8)
    config = FewShotConfig(shots=(1, 2), repeats=3, mlp_hidden=16, seed=11)
    first = fewshot_curve(x_train, y_train, x_test, y_test, config, "f")
    again = fewshot_curve(x_train, y_train, x_test, y_test, config, "f")
    pd.testing.assert_frame_equal(first, again)

    other = FewShotConfig(shots=(1, 2), repeats=3, mlp_hidden=16, seed=12)
    assert not np.array_equal(draw_indices(y_train, 2, 0, 11), draw_indices(y_train, 2, 0, 12))
    changed = fewshot_curve(x_train, y_train, x_test, y_test, other, "f")
    assert not np.allclose(first["mean_accuracy"], changed["mean_accuracy"])


def test_k_beyond_a_class_pool_uses_all_of_that_class():
    labels = np.repeat(np.arange(3), [2, 6, 6])  # class 0 has only two examples
    picked = draw_indices(labels, 4, 0, seed=0)
    assert np.bincount(labels[picked]).tolist() == [2, 4, 4]

    x_train, _ = blobs(6, seed=9)
    x_train = x_train[np.r_[0:2, 6:18]]
    x_test, y_test = blobs(10, seed=10)
    config = FewShotConfig(shots=(1, 4, 50), repeats=2, heads=("lin",))
    frame = fewshot_curve(x_train, labels, x_test, y_test, config, "capped")
    assert frame.set_index("k")["n_train"].to_dict() == {1: 3, 4: 10, 50: 14}
    # all classes exhausted at k=50: every repeat fits the same set, so lin has no spread
    assert frame.set_index("k").loc[50, "std_accuracy"] == 0.0


def test_max_test_scores_a_seeded_subset():
    assert test_indices(10, 0, seed=0).tolist() == list(range(10))
    assert test_indices(10, 20, seed=0).tolist() == list(range(10))
    subset = test_indices(100, 7, seed=3)
    assert subset.size == 7 and np.array_equal(subset, test_indices(100, 7, seed=3))

    x_train, y_train = blobs(4, seed=1)
    x_test, y_test = blobs(20, seed=2)
    frame = fewshot_curve(x_train, y_train, x_test, y_test,
                          FewShotConfig(shots=(2,), repeats=1, heads=("lin",), max_test=9), "sub")
    assert frame["mean_accuracy"].iloc[0] == 1.0


def test_pixel_features_flatten_images():
    images = np.arange(2 * 1 * 3 * 3, dtype=np.float64).reshape(2, 1, 3, 3)
    flat = pixel_features(images)
    assert flat.shape == (2, 9) and flat.dtype == np.float32
    assert flat[1].tolist() == list(range(9, 18))
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    assert np.array_equal(pixel_features(torch.from_numpy(images)), flat)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shots": ()}, "at least one k"),
        ({"shots": (0, 2)}, "positive integers"),
        ({"shots": (1.5,)}, "positive integers"),
        ({"shots": (True,)}, "positive integers"),
        ({"repeats": 0}, "repeats must be an integer >= 1"),
        ({"heads": ("lin", "svm")}, "subset of"),
        ({"heads": ()}, "at least one"),
        ({"seed": -1}, "seed must be"),
        ({"mlp_hidden": 0}, "mlp_hidden must be"),
        ({"max_test": -5}, "max_test must be"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FewShotConfig(**kwargs)


def test_config_normalises_shots_and_heads():
    config = FewShotConfig(shots=[8, 1, 8, 2], heads=["nonlin", "lin", "nonlin"])
    assert config.shots == (1, 2, 8)
    assert config.heads == ("nonlin", "lin")
    assert FewShotConfig().shots == (1, 2, 4, 8, 16, 32, 64, 128, 512)


def test_bad_inputs_are_rejected():
    x, y = blobs(3)
    with pytest.raises(ValueError, match="rows"):
        fewshot_curve(x, y[:-1], x, y, SMALL, "x")
    with pytest.raises(ValueError, match="width"):
        fewshot_curve(x, y, x[:, :3], y, SMALL, "x")
    with pytest.raises(ValueError, match="2-D"):
        fewshot_curve(x.reshape(len(x), 5, 1), y, x, y, SMALL, "x")
    with pytest.raises(ValueError, match="name"):
        fewshot_curve(x, y, x, y, SMALL, "")


@pytest.fixture(scope="module")
def two_curves() -> pd.DataFrame:
    with threadpool_limits(limits=1):
        x_train, y_train = blobs(6, spread=3.0, seed=12)
        x_test, y_test = blobs(15, spread=3.0, seed=13)
        config = FewShotConfig(shots=(1, 2, 4), repeats=2, mlp_hidden=8)
        return pd.concat([
            fewshot_curve(x_train, y_train, x_test, y_test, config, "model"),
            fewshot_curve(x_train[:, ::-1] * 2.0, y_train, x_test[:, ::-1] * 2.0, y_test, config, "pixels"),
        ], ignore_index=True)


def test_accuracy_at_picks_one_number(two_curves):
    row = two_curves[(two_curves["features"] == "pixels") & (two_curves["head"] == "nonlin") & (two_curves["k"] == 2)]
    assert accuracy_at(two_curves, 2, head="nonlin", features="pixels") == row["mean_accuracy"].iloc[0]
    with pytest.raises(ValueError, match="features="):
        accuracy_at(two_curves, 2)
    with pytest.raises(KeyError, match="k=16"):
        accuracy_at(two_curves, 16, features="model")


def test_plot_curves_writes_png(two_curves, tmp_path):
    path = plot_curves(two_curves, tmp_path / "plots" / "fewshot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5_000


def test_save_table_round_trips(two_curves, tmp_path):
    path = save_table(two_curves, tmp_path / "fewshot.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(path), two_curves)


def test_markdown_table_has_one_row_per_curve(two_curves):
    table = markdown_table(two_curves)
    lines = table.strip().splitlines()
    assert lines[0] == "| features | head | k=1 | k=2 | k=4 |"
    assert len(lines) == 2 + 4  # header, rule, (model, pixels) x (lin, nonlin)
    row = two_curves.iloc[0]
    expected = f"{row['mean_accuracy']:.3f} ± {row['std_accuracy']:.3f}"
    assert lines[2].startswith(f"| model | lin | {expected} |")
    assert all(line.count("±") == 3 for line in lines[2:])
