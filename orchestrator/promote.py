"""Move a registry alias (e.g. `champion`) to another version of a registered model, or list them.

    python -m orchestrator.promote --output runs/smoke                          # list models and aliases
    python -m orchestrator.promote --output runs/smoke smoke-classifier --version 2
    python -m orchestrator.promote --tracking-uri http://HEAD:5000 smoke-classifier --run RUN_ID --alias staging

A search registers its best trial automatically; promotion is the human decision afterwards
(e.g. after looking at the trials in the MLflow UI), so it is its own small command.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator.tracking import TrackingUnavailable, check_reachable, resolve_target


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.promote", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="registered model name (omit to list every model and its aliases)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--version", help="the version to point the alias at")
    target.add_argument("--run", metavar="RUN_ID", help="point the alias at the version logged from this run")
    parser.add_argument("--alias", default="champion", help="alias to move (default: champion)")
    parser.add_argument("--output", metavar="DIR", help="a study's output folder (uses its embedded MLflow store)")
    parser.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking server (default: $MLFLOW_TRACKING_URI)")
    return parser


def registry_lines(client: MlflowClient, names: list[str] | None = None) -> list[str]:
    lines = []
    models = client.search_registered_models()
    for model in sorted(models, key=lambda m: m.name):
        if names and model.name not in names:
            continue
        aliases: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        lines.append(f"{model.name}")
        for version in sorted(client.search_model_versions(f"name = '{model.name}'"), key=lambda v: int(v.version)):
            tags = ", ".join(f"@{a}" for a in aliases.get(str(version.version), []))
            lines.append(f"  v{version.version}  run {version.run_id}  {tags}".rstrip())
    return lines or ["(no registered models)"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.output or args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        print("error: say which store: --output STUDY_OUTPUT_DIR or --tracking-uri URI", file=sys.stderr)
        return 2
    if args.output and not (Path(args.output) / "mlflow.db").is_file() and not args.tracking_uri:
        print(f"error: {args.output} holds no embedded MLflow store (mlflow.db); pass the study's output folder "
              f"or --tracking-uri", file=sys.stderr)
        return 2
    target = resolve_target(Path(args.output or "."), args.tracking_uri, None)
    try:
        check_reachable(target)
    except TrackingUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    client = MlflowClient(tracking_uri=target.uri, registry_uri=target.uri)
    if args.model is None:
        print("\n".join(registry_lines(client)))
        return 0
    if not (args.version or args.run):
        print("\n".join(registry_lines(client, [args.model])))
        return 0
    try:
        versions = client.search_model_versions(f"name = '{args.model}'")
        if not versions:
            print(f"error: no registered model {args.model!r}", file=sys.stderr)
            return 2
        if args.run:
            matching = [v for v in versions if v.run_id == args.run]
            if not matching:
                print(f"error: {args.model} has no version from run {args.run} "
                      f"(runs: {', '.join(sorted({v.run_id for v in versions}))})", file=sys.stderr)
                return 2
            version = str(max(int(v.version) for v in matching))
        else:
            version = args.version
            if version not in {str(v.version) for v in versions}:
                print(f"error: {args.model} has no version {version} "
                      f"(versions: {', '.join(sorted((str(v.version) for v in versions), key=int))})", file=sys.stderr)
                return 2
        client.set_registered_model_alias(args.model, args.alias, version)
    except MlflowException as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    print(f"{args.model}: @{args.alias} -> v{version}")
    print("\n".join(registry_lines(client, [args.model])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
