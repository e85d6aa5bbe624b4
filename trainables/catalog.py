"""The names a study YAML may use for trainables and jobs, mapped to code.

A `TrainableDef` is everything the orchestrator needs to know about a trainable without reading
its code: its config class, the metrics it reports (and which way is better, so a scheduler's
mode is never guessed), how to rebuild its model from a checkpoint for the model registry, the datasets it reads (so the
launcher fetches and verifies them once, before any trial starts), and a cheap `preflight` that
fails fast on anything else (e.g. a missing input file).

Besides the built-in names, a YAML may name `package.module:ATTRIBUTE` for a user's own
TrainableDef/JobDef, so research code plugs in without editing this file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from trainables.data import DatasetUse
from trainables.reporter import CheckpointState, Reporter


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    description: str = ""
    optional: bool = False  # reported only where the machine allows (fid_inception: the weights are here)

    @property
    def mode(self) -> str:
        return "max" if self.higher_is_better else "min"


@dataclass(frozen=True)
class TrainableDef:
    """A searchable unit of training: `run(config, reporter)` returns its final metrics."""

    name: str
    config_cls: type
    run: Callable[[Any, Reporter], Mapping[str, float]]
    metrics: tuple[Metric, ...]
    description: str
    build_model: Callable[[CheckpointState], nn.Module] | None = None
    preflight: Callable[[Any], None] | None = None
    datasets: Callable[[Any], tuple[DatasetUse, ...]] | None = None  # what a config reads (trainables.data)
    tiny_config: Mapping[str, Any] = field(default_factory=dict)
    # Two metrics that pull against each other (GASTeN: fid_mnist vs acd): each stage of this
    # trainable gets a Pareto plot of them across its trials.
    pareto: tuple[str, str] | None = None
    # Metrics drawn per trial against the epoch (curves.png in the trial's run), and the metric
    # each is compared with (e.g. acd -> acd_step1: where fine-tuning started).
    curves: tuple[str, ...] = ()
    baselines: Mapping[str, str] = field(default_factory=dict)
    # Reference points drawn on the Pareto plot, label -> (x metric, y metric) reported by every trial,
    # e.g. GASTeN's real boundary digits: ("fid_real_ambiguous", "acd_real_ambiguous").
    pareto_references: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    def metric(self, name: str) -> Metric:
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(name)


@dataclass(frozen=True)
class JobDef:
    """A one-shot step (evaluation, prototype selection): `run(config, reporter, workdir)`.

    It writes its files (tables, plots) into `workdir`; the orchestrator logs them as artifacts.
    """

    name: str
    config_cls: type
    run: Callable[[Any, Reporter, Path], Mapping[str, float]]
    metrics: tuple[Metric, ...]
    description: str
    preflight: Callable[[Any], None] | None = None
    datasets: Callable[[Any], tuple[DatasetUse, ...]] | None = None


# A trial's pick in one branch of a conditional space: the option's name and its built config,
# e.g. ("umap", UmapConfig(n_neighbors=12, ...)).
BranchPick = tuple[str, Any]


@dataclass(frozen=True)
class ObjectiveDef:
    """An objective an Optuna study searches in the launcher process (stage kind `optuna`).

    Its trials are cheap functions of data prepared once (clustering the embeddings of generated
    images takes seconds), so they need no Ray scheduling: `prepare(config, workdir)` runs once per
    stage and may cache in `workdir` (a resumed stage does not redo it), `evaluate(config, picks,
    data)` runs once per trial, and `finalize(config, picks, data, folder)` writes the best trial's
    result folder, which later stages receive by reference (`clustering.best`).

    `branches` declare the conditional space: {"reducer": {"umap": UmapConfig, "pca": PcaConfig}}.
    The YAML picks which options to search and each option's settings; a trial receives one
    BranchPick per branch.
    """

    name: str
    config_cls: type
    branches: Mapping[str, Mapping[str, type]]
    prepare: Callable[[Any, Path], Any]
    evaluate: Callable[[Any, Mapping[str, BranchPick], Any], Mapping[str, float]]
    finalize: Callable[[Any, Mapping[str, BranchPick], Any, Path], None]
    metrics: tuple[Metric, ...]
    description: str
    preflight: Callable[[Any], None] | None = None
    datasets: Callable[[Any], tuple[DatasetUse, ...]] | None = None
    describe_data: Callable[[Any], Mapping[str, float]] | None = None  # logged on the stage's run

    def metric(self, name: str) -> Metric:
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(name)


class UnknownEntryError(LookupError):
    pass


def _builtin_trainables() -> dict[str, TrainableDef]:
    from trainables import classifier, dcgan, diffusion, diffusion_timestep, gasten, vae
    from trainables.ood import conditional_nn, generator_nn, kplus1, leave_out, odin_search

    return {entry.name: entry for entry in (classifier.CLASSIFIER, dcgan.DCGAN, gasten.GASTEN, vae.VAE_TRAINABLE,
                                            diffusion.DIFFUSION, diffusion_timestep.DDPM_TIMESTEP,
                                            kplus1.KPLUS1, odin_search.ODIN, generator_nn.GENERATOR_NN,
                                            leave_out.LEAVE_OUT, conditional_nn.CONDITIONAL_NN)}


def _builtin_jobs() -> dict[str, JobDef]:
    from trainables import evaluate_classifier, evaluate_fewshot, evaluate_gasten, prototype_curve, prototypes
    from trainables.ood import evaluate as evaluate_ood

    return {entry.name: entry for entry in (evaluate_classifier.EVALUATE_CLASSIFIER, prototypes.PROTOTYPES,
                                            evaluate_ood.EVALUATE_OOD, evaluate_fewshot.FEWSHOT,
                                            prototype_curve.PROTOTYPE_CURVE, evaluate_gasten.EVALUATE_GASTEN)}


def _builtin_objectives() -> dict[str, ObjectiveDef]:
    from trainables import clustering_search

    return {entry.name: entry for entry in (clustering_search.CLUSTERING,)}


def _import_entry(path: str, kind: type) -> Any:
    module_name, _, attribute = path.partition(":")
    try:
        entry = getattr(importlib.import_module(module_name), attribute)
    except Exception as error:  # noqa: BLE001 - a user's module may fail in any way; say so in one line
        raise UnknownEntryError(f"cannot import {path!r}: {type(error).__name__}: {error}") from error
    if not isinstance(entry, kind):
        raise UnknownEntryError(f"{path!r} is a {type(entry).__name__}, not a {kind.__name__}")
    return entry


def _lookup(name: str, builtins: Mapping[str, Any], kind: type) -> Any:
    if ":" in name:
        return _import_entry(name, kind)
    if name not in builtins:
        raise UnknownEntryError(
            f"unknown {kind.__name__.removesuffix('Def').lower()} {name!r} "
            f"(known: {', '.join(sorted(builtins))}; or give 'package.module:NAME')"
        )
    return builtins[name]


def trainable(name: str) -> TrainableDef:
    return _lookup(name, _builtin_trainables(), TrainableDef)


def job(name: str) -> JobDef:
    return _lookup(name, _builtin_jobs(), JobDef)


def objective(name: str) -> ObjectiveDef:
    return _lookup(name, _builtin_objectives(), ObjectiveDef)


def trainable_names() -> list[str]:
    return sorted(_builtin_trainables())


def job_names() -> list[str]:
    return sorted(_builtin_jobs())


def objective_names() -> list[str]:
    return sorted(_builtin_objectives())
