"""The names a study YAML may use for trainables, jobs and objectives, mapped to code.

The definitions themselves (`TrainableDef`, `JobDef`, `ObjectiveDef`, `Metric`) live in
`trainables.definitions`, which the trainables import; this registry imports the trainables, never
the reverse. They are re-exported here for code written against `from trainables.catalog import ...`.

Besides the built-in names, a YAML may name `package.module:ATTRIBUTE` for a user's own
TrainableDef/JobDef, so research code plugs in without editing this file.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from trainables.definitions import BranchPick, JobDef, Metric, ObjectiveDef, TrainableDef

__all__ = ["BranchPick", "JobDef", "Metric", "ObjectiveDef", "TrainableDef", "UnknownEntryError", "job",
           "job_names", "objective", "objective_names", "trainable", "trainable_names"]


class UnknownEntryError(LookupError):
    pass


# The built-ins are imported on the first lookup, not with this module: a Ray worker running a user's
# `package.module:NAME` trainable imports the catalog, and the built-ins' imports (scikit-learn, the
# diffusion and OOD code) would cost it seconds.
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
