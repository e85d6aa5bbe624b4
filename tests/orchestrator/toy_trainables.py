"""A toy trainable whose two metrics trade off per epoch, so a two-objective search runs in seconds.

A study names it `toy_trainables:TRADEOFF` (NAME) with this folder on the import path (`with_path`):
not as `tests.orchestrator...`, because torch-fidelity installs a top-level `tests` package that a
launcher or a Ray worker would find instead of this repository's `tests` folder.

Per epoch e of a trial with setting x in [0, 1]: `loss` = 1 / (e (0.5 + x)) falls with training and
with x, `cost` = e / 4 + x / 8 rises with both; `budget` (a constant every trial reports) is the
yardstick a champion rule bounds `cost` by: no epoch past the third meets it, so a trial trained for
four epochs has its best admissible point earlier. (`ref_cost`, `ref_loss`) is a reference point.
Every epoch reports a checkpoint whose model is a 1x1 linear layer of weight e, so a registered model
tells which epoch it came from.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainables.checkpoint import Checkpoint
from trainables.definitions import JobDef, Metric, ObjectiveDef, Output, TrainableDef
from trainables.reporter import Reporter

FOLDER = Path(__file__).resolve().parent
NAME = "toy_trainables:TRADEOFF"
BUDGET = 0.85
REFERENCE = {"ref_cost": 0.8, "ref_loss": 0.3}


@dataclass(frozen=True)
class TradeoffConfig:
    x: float = 0.5
    epochs: int = 4
    sleep_s: float = 0.0  # per epoch: keeps trials overlapping, as real ones do


def metrics_at(x: float, epoch: int) -> dict[str, float]:
    return {"loss": 1.0 / (epoch * (0.5 + x)), "cost": epoch / 4 + x / 8, "budget": BUDGET, **REFERENCE,
            "epoch": float(epoch)}


def train(config: TradeoffConfig, reporter: Reporter) -> dict[str, float]:
    state = reporter.restore()
    metrics: dict[str, float] = {}
    for epoch in range((state.epoch if state else 0) + 1, config.epochs + 1):
        time.sleep(config.sleep_s)
        metrics = metrics_at(config.x, epoch)
        reporter.report(metrics, checkpoint=Checkpoint(trainable="tradeoff", config={"x": config.x}, epoch=epoch,
                                                       metrics=metrics))
    return metrics


def build_model(state: Checkpoint) -> nn.Module:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(float(state.epoch))
    return model


TRADEOFF = TrainableDef(
    name="tradeoff",
    config_cls=TradeoffConfig,
    run=train,
    metrics=(
        Metric("loss", higher_is_better=False), Metric("cost", higher_is_better=False),
        Metric("budget", higher_is_better=False), Metric("ref_cost", higher_is_better=False),
        Metric("ref_loss", higher_is_better=False), Metric("epoch", higher_is_better=True),
    ),
    description="toy: loss falls and cost rises with every epoch",
    build_model=build_model,
    pareto=("cost", "loss"),
    pareto_references={"reference": ("ref_cost", "ref_loss")},
)


def with_path(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with this folder on PYTHONPATH: a launcher, and the Ray workers it starts, can import NAME."""
    paths = [str(FOLDER), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}


# ---------------------------------------------------------------- seeded toys with jittery timing
# `toy_trainables:NOISY` (a Tune trainable) and `toy_trainables:BOWL` (an Optuna objective) take a `seed`, as
# real ones do, and sleep a random time from an unseeded source before each result: the order in which
# parallel trials end changes from run to run, which is what a reproducible study must not depend on.

NOISY_NAME = "toy_trainables:NOISY"
BOWL_NAME = "toy_trainables:BOWL"
_TIMING = random.SystemRandom()  # deliberately unseeded


@dataclass(frozen=True)
class NoisyConfig:
    x: float = 0.5
    epochs: int = 4
    seed: int = 0
    jitter_s: float = 0.0  # the most a result may be delayed
    delay_s: float = 0.0  # a fixed wait before each result, on top of the jitter


def noisy_loss(x: float, epoch: int, seed: int) -> float:
    """The tradeoff's loss plus noise drawn from (seed, epoch): a resumed trial draws what it would have."""
    return 1.0 / (epoch * (0.5 + x)) + 0.3 * float(np.random.default_rng((seed, epoch)).normal())


def train_noisy(config: NoisyConfig, reporter: Reporter) -> dict[str, float]:
    state = reporter.restore()
    metrics: dict[str, float] = {}
    for epoch in range((state.epoch if state else 0) + 1, config.epochs + 1):
        time.sleep(config.delay_s + _TIMING.uniform(0.0, config.jitter_s))
        metrics = {"loss": noisy_loss(config.x, epoch, config.seed)}
        reporter.report(metrics, checkpoint=Checkpoint(trainable="noisy", epoch=epoch))
    return metrics


NOISY = TrainableDef(
    name="noisy", config_cls=NoisyConfig, run=train_noisy,
    metrics=(Metric("loss", higher_is_better=False),),
    description="toy: a falling loss with seeded noise and jittery timing",
)


@dataclass(frozen=True)
class BowlConfig:
    seed: int = 0
    jitter_s: float = 0.0


@dataclass(frozen=True)
class Point:
    a: float = 0.5
    b: float = 0.5


@dataclass(frozen=True)
class Line:
    a: float = 0.5


def prepare_bowl(config: BowlConfig, workdir: Path) -> float:
    """The bowl's centre, drawn from the stage's seed."""
    return float(np.random.default_rng(config.seed).uniform(0.2, 0.8))


def evaluate_bowl(config: BowlConfig, picks: Mapping[str, Any], centre: float) -> dict[str, float]:
    time.sleep(_TIMING.uniform(0.0, config.jitter_s))
    option, settings = picks["shape"]
    b = settings.b if option == "point" else 0.5
    return {"distance": (settings.a - centre) ** 2 + (b - 0.4) ** 2}


def finalize_bowl(config: BowlConfig, picks: Mapping[str, Any], centre: float, folder: Path) -> None:
    option, settings = picks["shape"]
    (folder / "best.txt").write_text(f"{option} {settings}\n")


BOWL = ObjectiveDef(
    name="bowl", config_cls=BowlConfig, branches={"shape": {"point": Point, "line": Line}},
    prepare=prepare_bowl, evaluate=evaluate_bowl, finalize=finalize_bowl,
    metrics=(Metric("distance", higher_is_better=False),),
    description="toy: the squared distance to a seeded point",
    outputs={"best": Output("text", "best.txt")},
)


# `toy_trainables:SCORE`: an evaluation job reading the bowl stage's best result (`bowl.best`), whose
# headline metrics move with the study seed, as a few-shot evaluation's do.
SCORE_NAME = "toy_trainables:SCORE"


@dataclass(frozen=True)
class ScoreConfig:
    best: str = ""
    seed: int = 0


def run_score(config: ScoreConfig, reporter: Reporter, workdir: Path) -> dict[str, float]:
    assert (Path(config.best) / "best.txt").is_file(), config.best
    noise = np.random.default_rng(config.seed).normal(0.0, 0.02, 2)
    scores = {"acc_k1": 0.6 + float(noise[0]), "acc_k5": 0.8 + float(noise[1])}
    (workdir / "scores.md").write_text("| k | acc |\n|---|---|\n" + "".join(f"| {k} | {v:.4f} |\n"
                                                                       for k, v in scores.items()))
    return scores


SCORE = JobDef(
    name="score", config_cls=ScoreConfig, run=run_score,
    metrics=(Metric("acc_k1", higher_is_better=True), Metric("acc_k5", higher_is_better=True)),
    description="toy: an evaluation whose scores move with the seed",
    outputs={"table": Output("table", "scores.md"), "bowl": Output("data", from_config="best")},
)


# ---------------------------------------------------------------- a toy for population-based training
# `toy_trainables:DESCENT` trains through the project's own loop (`fit`), so PBT's exploit goes through the
# same checkpoint restore as a real trainable: one weight w, from 0, one plain SGD step per epoch on
# (w - TARGET)^2, i.e. w <- w + 2 lr (TARGET - w). It reports the lr its optimizer actually stepped with and
# the seed it runs under, so a test can check that a trial exploiting another continues with the donor's w
# and its own new lr and seed.

DESCENT_NAME = "toy_trainables:DESCENT"
TARGET = 3.0


@dataclass(frozen=True)
class DescentConfig:
    lr: float = 0.1
    epochs: int = 6
    seed: int = 0
    delay_s: float = 0.0  # per epoch


def descent_step(w: float, lr: float) -> float:
    """One epoch of the toy by hand: what the test expects after an exploit."""
    return w + 2 * lr * (TARGET - w)


def train_descent(config: DescentConfig, reporter: Reporter) -> dict[str, float]:
    from trainables.fit import fit

    torch.manual_seed(config.seed)
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)

    def train_epoch(epoch: int) -> dict[str, float]:
        time.sleep(config.delay_s)
        optimizer.zero_grad()
        ((model.weight.sum() - TARGET) ** 2).backward()
        optimizer.step()
        return {"lr_used": optimizer.param_groups[0]["lr"], "seed_used": float(config.seed)}

    def evaluate(epoch: int) -> dict[str, float]:
        w = float(model.weight.item())
        return {"w": w, "loss": (w - TARGET) ** 2}

    return fit(trainable="descent", config=config, epochs=config.epochs, modules={"model": model},
               optimizers={"sgd": optimizer}, train_epoch=train_epoch, evaluate=evaluate, reporter=reporter)


DESCENT = TrainableDef(
    name="descent", config_cls=DescentConfig, run=train_descent,
    metrics=(Metric("loss", higher_is_better=False), Metric("w", higher_is_better=True),
             Metric("lr_used", higher_is_better=True), Metric("seed_used", higher_is_better=True)),
    description="toy: one weight descending on a parabola, one SGD step per epoch",
)
