"""A study's datasets, ready before Ray starts; and `python -m orchestrator.data fetch`.

Every definition in the catalog declares the datasets its config reads (`datasets=`, a tuple of
`trainables.data.DatasetUse`), so what a study needs is known from its YAML alone. Before any trial
starts the launcher checks, for each dataset: the classes the stages ask for, that it sits in one of
the data roots (else it is downloaded once into the cache, unless downloading is off), and the MD5 of
its archives (remembered per machine, so a second launch costs nothing). A problem is one line naming
the YAML key, and the launcher exits 2 with nothing written: a corrupt archive or a class the dataset
does not have would otherwise fail every trial.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables import data
from trainables.settings import section_of

OFFLINE_ENV = "GENSEARCH_OFFLINE"


def offline_by_env() -> bool:
    """GENSEARCH_OFFLINE=1 (or true/yes): the environment's --offline, e.g. for a whole cluster."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes")


def stage_definition(stage: Any) -> Any:
    """The catalog entry (TrainableDef, ObjectiveDef or JobDef) a stage runs; None for a kind that runs none."""
    from orchestrator.stages import kind_of

    return kind_of(stage).definition(stage)


def representative_config(stage: Any, definition: Any) -> Any:
    """The stage's config as the launcher can know it: its constants, the first value of each searched
    setting, and a placeholder for each input (those folders come from earlier stages)."""
    from orchestrator.spec import representative_values
    from trainables.config import build_config

    space = {name: representative_values(entry)[0] for name, entry in getattr(stage, "space", {}).items()}
    return build_config(definition.config_cls, {**stage.config, **space, **{k: "/unresolved" for k in stage.inputs}})


def config_key(setting: str) -> str:
    """Where a study file writes `setting` under a stage's `config:` (`data.classes`, or `epochs`)."""
    section = section_of(setting)
    return f"{section}.{setting}" if section else setting


@dataclass
class _Need:
    """One dataset across the study: every split any stage reads, and the YAML key to report problems at
    (a stage that cannot fall back to digits is named before one that can)."""

    name: str
    key: str
    fallback: bool
    splits: list[str] = field(default_factory=list)


def _needs(spec: Any) -> tuple[dict[str, _Need], list[str]]:
    """Every dataset the study reads, and the problems with the `classes` it asks for."""
    needs: dict[str, _Need] = {}
    problems: list[str] = []
    for index, stage in enumerate(spec.stages):
        definition = stage_definition(stage)
        if definition is None or definition.datasets is None:
            continue
        try:
            uses = definition.datasets(representative_config(stage, definition))
        except (TypeError, ValueError):  # a bad config is validation's to report, not ours
            continue
        classes_key = "space.classes" if "classes" in getattr(stage, "space", {}) else f"config.{config_key('classes')}"
        for use in uses:
            key = f"stages[{index}].config" + (f".{config_key(use.setting)}" if use.setting else "")
            if use.name not in data.DATASETS:
                problems.append(f"{spec.source}: {key}: unknown dataset {use.name!r}; known datasets: "
                                f"{', '.join(data.DATASETS)}")
                continue
            if use.classes:
                try:
                    data.check_classes(use.name, use.classes)
                except ValueError as error:
                    problems.append(f"{spec.source}: stages[{index}].{classes_key}: {error}")
            need = needs.setdefault(use.name, _Need(use.name, key, use.fallback))
            if need.fallback and not use.fallback:
                need.key, need.fallback = key, False
            need.splits += [split for split in use.splits if split not in need.splits]
    return needs, problems


def data_problems(spec: Any, *, offline: bool, dry_run: bool, data_root: Path | None = None,
                  say: Callable[[str], None] = print) -> list[str]:
    """Check (and, unless `offline` or `dry_run`, download) every dataset the study reads; one line per
    problem. `data_root`: the launcher's --data-root, searched first. `say` gets the progress lines: downloads,
    and what a dry run would download."""
    problems: list[str] = []
    if (env := os.environ.get("GENSEARCH_DATA")) and not Path(env).expanduser().is_dir():
        problems.append(f"GENSEARCH_DATA={env}: no such folder; point it at a folder holding e.g. MNIST/raw, "
                        f"or unset it")
    needs, class_problems = _needs(spec)
    problems += class_problems
    for need in needs.values():
        problem = _prepare(need, offline=offline, dry_run=dry_run, data_root=data_root, say=say)
        if problem:
            problems.append(f"{spec.source}: {need.key}: {problem}")
    return problems


def _prepare(need: _Need, *, offline: bool, dry_run: bool, data_root: Path | None,
             say: Callable[[str], None]) -> str | None:
    """None when the dataset is here and sound (or may fall back to digits), else the problem."""
    folder = data.folder_name(need.name)
    missing = []
    for split in need.splits:
        try:
            data.locate(need.name, split, data_root)
        except data.DatasetNotFoundError as error:
            missing.append((split, str(error)))
    if not missing:
        return _verified(need, data_root)
    splits = " and ".join(split for split, _ in missing)
    if dry_run and not offline:
        say(f"data: {folder} ({splits}) is on none of the data roots: the launch downloads it into {data.cache_dir()}")
        return None
    if offline:
        reason = f"Downloading is off (--offline or {OFFLINE_ENV}=1)."
    else:
        say(f"data: {folder} ({splits}) is on none of the data roots: downloading it into {data.cache_dir()}")
        try:
            # with its test split: an evaluation job reads the test split of what a stage trained on, from
            # the stage's checkpoint, so no config declares it
            data.fetch(need.name, splits=(*need.splits, "test"), say=say)
            return _verified(need, data_root)
        except data.DownloadError as error:
            reason = f"Download failed: {error}."
    if need.fallback:
        say(f"data: {folder} is not on this machine ({reason.rstrip('.')}): its stages use scikit-learn's digits "
            f"(allow_fallback)")
        return None
    return f"{missing[0][1]} {reason}"


def _verified(need: _Need, data_root: Path | None) -> str | None:
    """The MD5 problem with an archive the study reads, if any: its splits', and the test split's where it is
    here (a job reads it from a checkpoint). Never repaired here, even in the cache: the message names the
    command that fetches a fresh copy."""
    for split in dict.fromkeys((*need.splits, "test")):
        try:
            data.verify(need.name, split, data_root)
        except data.DatasetNotFoundError:
            continue  # only the undeclared test split can be missing here
        except RuntimeError as error:
            return str(error)
    return None


def worker_env(data_root: Path | None) -> dict[str, str]:
    """The environment a Ray worker needs to search the data roots as the launcher does: its --data-root, and
    the user's GENSEARCH_DATA and GENSEARCH_CACHE (a cluster's workers do not inherit the launcher's shell)."""
    env = {key: os.environ[key] for key in ("GENSEARCH_DATA", "GENSEARCH_CACHE") if key in os.environ}
    if data_root is not None:
        env[data.LAUNCH_ROOT_ENV] = str(data_root)
    return env


FETCH_HELP = textwrap.dedent("""\
    Download datasets (torchvision's archives, MD5-checked) into a data root, ahead of time: for a
    machine or a cluster's shared storage that will run studies without internet.

    Where: --to DIR (writes DIR/MNIST/raw/...), default the cache (~/.cache/gensearch/data, or
    $GENSEARCH_CACHE/data), which is the last data root the launcher looks in. Then, on the machine
    that runs the study: --data-root DIR or GENSEARCH_DATA=DIR (or copy DIR to its cache).

    From: torchvision's mirrors, or $GENSEARCH_DATA_MIRROR/<Folder>/raw/<file> when that is set (a
    data root's layout served over HTTP, e.g. an internal mirror behind a proxy).

    Each file goes to a temporary name, is checked against its MD5 and only then renamed into place:
    an interrupted or corrupt download never leaves a usable-looking file. Files already there with
    the right MD5 are kept. Exit codes: 0 done, 1 a download failed, 2 bad arguments.

    examples:
      python -m orchestrator.data fetch                                  # MNIST, Fashion-MNIST, KMNIST into the cache
      python -m orchestrator.data fetch mnist --to /shared/gensearch-data
      GENSEARCH_DATA_MIRROR=http://mirror.internal/datasets python -m orchestrator.data fetch mnist
    """)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.data",
        description="gensearch's datasets. The launcher downloads what a study needs by itself on a machine with "
                    "internet; `fetch` prepares a machine or shared storage ahead of time.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fetch = commands.add_parser("fetch", help="download datasets into a data root (default: the cache)",
                                description=FETCH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    fetch.add_argument("datasets", nargs="*", metavar="DATASET",
                       help=f"any of {', '.join(data.DATASETS)} (default: all three)")
    fetch.add_argument("--to", metavar="DIR", help="the data root to fill (default: the cache)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if unknown := [name for name in args.datasets if name not in data.DATASETS]:
        parser.error(f"unknown dataset {unknown[0]!r}; known datasets: {', '.join(data.DATASETS)}")
    root = Path(args.to).expanduser() if args.to else data.cache_dir()
    failed = False
    for name in dict.fromkeys(args.datasets or data.DATASETS):
        try:
            raw = data.fetch(name, root, say=lambda line: print(line, flush=True))
        except (data.DownloadError, OSError) as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            failed = True
            continue
        print(f"data: {data.folder_name(name)} ready in {raw}", flush=True)
    if args.to and not failed:
        print(f"use it with --data-root {root} or GENSEARCH_DATA={root}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
