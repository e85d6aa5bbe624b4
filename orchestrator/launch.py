"""gensearch's command line: validate a study YAML, run it, resume it.

Exit codes: 0 success; 1 a stage failed (its MLflow run is marked FAILED with the reason and all
completed work is kept; fix the cause and re-run with --resume), or the tracking server stopped
answering mid-study (one line naming it; trials go on while it is down, and --resume copies into
MLflow whatever it missed); 2 nothing ran (bad spec, output folder already used, unreachable tracking
server, missing or corrupt dataset); 130 interrupted (resumable). A dataset on none of the data roots is
downloaded into the cache before anything starts, unless --offline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import textwrap
import traceback
from pathlib import Path

EXAMPLE = textwrap.dedent("""\
    examples:
      python -m orchestrator.launch search_spaces/smoke.yaml --dry-run   # check the file, print the plan
      python -m orchestrator.launch search_spaces/smoke.yaml             # run it (local Ray, embedded MLflow)
      python -m orchestrator.launch search_spaces/smoke.yaml --resume    # continue after a crash or Ctrl-C
      python -m orchestrator.launch search_spaces/gasten_mnist.yaml --profile paper   # the GPU-sized profile
      python -m orchestrator.launch study.yaml --address auto --tracking-uri http://HEAD:5000   # on a cluster

    A study YAML lists stages run in order. A `tune` stage searches a trainable's settings with
    Ray Tune (Optuna sampling, optional ASHA early stopping); a `job` stage runs one function.
    A stage uses an earlier stage's result by name (`inputs: {checkpoint: classifier.best}`).
    Every stage is a parent run in MLflow (experiment = study name), every trial a child run;
    the best model of a stage is registered as <study>-<stage> with the alias `champion`.
    A file may offer profiles (quick CPU settings, paper-sized GPU settings): --profile picks one.
    Results go to --output (default: the study's `output`, else runs/<study>); the summary at the
    end prints the exact `mlflow ui` command for this study.

    exit codes: 0 done, 1 a stage failed (fix, then --resume), 2 nothing ran (bad input), 130 interrupted
    """)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.launch", description="Run a gensearch study described by one YAML file.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", help="the study YAML file (see search_spaces/)")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan; start nothing")
    parser.add_argument("--profile", metavar="NAME",
                        help="apply one of the study's named profiles (e.g. `paper` in gasten_mnist.yaml: long GPU "
                             "runs); default: the file's own `profile:`, usually the quick CPU one")
    parser.add_argument("--resume", action="store_true",
                        help="continue the study already in the output folder: finished stages and trials are kept")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow tracking server (default: $MLFLOW_TRACKING_URI, the study's tracking.uri, "
                             "else an embedded SQLite store in the output folder)")
    parser.add_argument("--address", metavar="ADDR",
                        help="Ray cluster to join ('auto' for the one this machine belongs to); default: start a "
                             "local Ray just for this run")
    parser.add_argument("--output", metavar="DIR", help="output folder (default: the study's `output`)")
    parser.add_argument("--data-root", metavar="DIR",
                        help="folder with datasets in torchvision's layout (MNIST/raw/...), looked in first; then "
                             "$GENSEARCH_DATA, ../shared/data, the cache (~/.cache/gensearch/data or $GENSEARCH_CACHE)")
    parser.add_argument("--offline", action="store_true",
                        help="never download: a dataset on none of the data roots stops the launch (also "
                             "GENSEARCH_OFFLINE=1). Default: download it once into the cache before anything starts "
                             "(from torchvision's mirrors, or $GENSEARCH_DATA_MIRROR)")
    parser.add_argument("--verbose", action="store_true", help="show Ray's and the trials' own logs")
    return parser


def fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from orchestrator.spec import SpecError, load_study

    try:
        spec = load_study(args.study, profile=args.profile)
    except SpecError as error:
        for line in error.lines():
            print(line, file=sys.stderr)
        return 2
    if args.data_root:
        if not Path(args.data_root).expanduser().is_dir():
            return fail(f"--data-root {args.data_root}: no such folder. Nothing was run.", 2)
        os.environ["GENSEARCH_DATA"] = str(Path(args.data_root).expanduser().resolve())
    output = Path(args.output) if args.output else spec.output
    from orchestrator.plan import plan_lines
    from orchestrator.tracking import resolve_target

    target = resolve_target(output, args.tracking_uri, spec.tracking.uri)
    if args.dry_run:
        if problems := preflight_problems(spec, offline=args.offline, dry_run=True):
            print("\n".join(problems), file=sys.stderr)
            return 2
        print("\n".join(plan_lines(spec, str(output), target)))
        print("Nothing was run (--dry-run).")
        return 0
    return run(spec, output.resolve(), target, args)


def preflight_problems(spec, *, offline: bool = False, dry_run: bool = False) -> list[str]:
    """Checks that would otherwise fail inside every trial: the datasets (fetched here when missing, unless
    `offline`; only named by a dry run), their archives' MD5, the classes asked for, and each definition's
    own preflight."""
    from orchestrator.data import data_problems, offline_by_env, representative_config, stage_definition
    from trainables.config import ConfigError

    problems = data_problems(spec, offline=offline or offline_by_env(), dry_run=dry_run)
    for index, stage in enumerate(spec.stages):
        definition = stage_definition(stage)
        if definition.preflight is None:
            continue
        try:
            definition.preflight(representative_config(stage, definition))
        except (ConfigError, OSError, RuntimeError, ValueError) as error:
            problems.append(f"{spec.source}: stages[{index}].config: {error}")
    return problems


def run(spec, output: Path, target, args) -> int:
    from orchestrator.study_runner import StageError, StudyRunner
    from orchestrator.study_state import StudyState, load_state
    from orchestrator.summary import summary_lines, write_summary
    from orchestrator.tracking import (Tracker, TrackingUnavailable, apply_client_defaults, check_reachable,
                                       tracking_outage)

    state = load_state(output)
    if state is not None and state.started and not args.resume:
        done = ", ".join(f"{name} {s.status}" for name, s in state.stages.items())
        return fail(f"{output} already holds study {state.study!r} ({done}); re-run with --resume to continue it, "
                    f"or pass --output NEW_DIR for a fresh run. Nothing was run.", 2)
    if state is not None and state.study != spec.name:
        return fail(f"{output} holds study {state.study!r}, not {spec.name!r}; pass --output NEW_DIR", 2)
    if state is not None and state.tracking_uri != target.uri:
        return fail(f"{output} was tracked in {state.tracking_uri}, not {target.uri}; pass "
                    f"--tracking-uri {state.tracking_uri} to resume it", 2)
    problems = preflight_problems(spec, offline=args.offline)
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        return 2
    apply_client_defaults()  # before any MLflow client exists: give up on a dead server in seconds
    try:
        check_reachable(target)
    except TrackingUnavailable as error:
        return fail(f"{spec.source}: tracking: {error}", 2)

    output.mkdir(parents=True, exist_ok=True)
    (output / "error.log").unlink(missing_ok=True)  # a stale log from an earlier failure would mislead
    state = state or StudyState(study=spec.name, tracking_uri=target.uri)
    state.spec_file, state.profile = str(keep_spec_copy(Path(args.study), output)), spec.profile
    tracker = Tracker(target, spec.tracking.experiment, spec.name)
    worker_env = {k: os.environ[k] for k in ("GENSEARCH_DATA", "GENSEARCH_CACHE") if k in os.environ}
    runner = StudyRunner(spec, output, tracker, state, resume=args.resume, address=args.address,
                         worker_env=worker_env, verbose=args.verbose)
    code = 0
    try:
        runner.run()
    except StageError as error:
        log = output / "error.log"
        log.write_text("".join(traceback.format_exception(error.__cause__ or error)))
        print(f"error: {error}. Completed trials and stages are kept; fix the cause and re-run with --resume "
              f"(traceback: {log})", file=sys.stderr, flush=True)
        code = 1
    except KeyboardInterrupt:
        print("\ninterrupted: completed work is kept; continue with --resume", file=sys.stderr, flush=True)
        return 130
    except Exception as error:  # noqa: BLE001 - a tracking outage is one line; anything else is a bug: raised
        outage = tracking_outage(target, error)
        if outage is None:
            raise
        print(f"error: {spec.source}: tracking: {outage}. Completed trials, their results and checkpoints are "
              f"kept in {output}; start the server again on the same store and re-run with --resume",
              file=sys.stderr, flush=True)
        code = 1
    lines = summary_lines(spec, state, output, target)
    write_summary(lines, output)
    print("\n" + "\n".join(lines), flush=True)
    write_study_report(output, spec, target)
    return code


def write_study_report(output: Path, spec, target) -> None:
    """report.md at the end of every run (a failed one too: it shows how far the study got). The
    results are already safe, so a report that cannot be written costs one line, not the exit code."""
    from orchestrator.report import write_report

    try:
        path = write_report(output, tracking_uri=target.uri, spec=spec)
    except Exception as error:  # noqa: BLE001 - see the docstring
        print(f"report not written: {type(error).__name__}: {error} (retry: python -m orchestrator.report {output})",
              file=sys.stderr, flush=True)
        return
    print(f"report: {path}", flush=True)


def keep_spec_copy(source: Path, output: Path) -> Path:
    """The study YAML as launched, beside its results (`study.yaml`): the report reads each stage's
    resources from it, and a researcher sees what ran even after editing the original."""
    copy = output / "study.yaml"
    if source.resolve() != copy.resolve():
        shutil.copyfile(source, copy)
    return copy


def exit_now(code: int) -> None:
    """End the process once everything is written, skipping Python's own teardown.

    After a Ray run the interpreter spends about two seconds finalising native modules (measured:
    1.9 s between main() returning and the process ending, of which atexit handlers take 0.01 s),
    with every result already on disk. The atexit handlers still run and the streams are flushed.
    """
    import atexit
    import logging

    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
