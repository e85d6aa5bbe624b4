"""`python -m orchestrator.report OUTPUT_DIR`: the report of a finished (or interrupted) study, on demand."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from orchestrator.report.write import write_report
from orchestrator.study_state import STATE_FILE

EXAMPLES = textwrap.dedent("""\
    examples:
      python -m orchestrator.report runs/smoke                      # writes runs/smoke/report.md (+ report/)
      python -m orchestrator.report runs/gasten_mnist --no-mlflow   # only the files, MLflow untouched
      python -m orchestrator.report out --tracking-uri http://HEAD:5000   # a study tracked on a server

    The report lists each stage's status, what it cost (reserved CPU-/GPU-hours), its best trial and
    settings, its registered model and its pictures (copied under OUTPUT_DIR/report/, linked relatively:
    zip report.md with report/ and it opens anywhere). It is logged to the study's MLflow experiment as
    one run named "report" (tag gensearch.report=true); running the command again updates that run.
    """)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.report",
                                     description="Write a study's report.md: stages, cost, best trials, pictures.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", metavar="OUTPUT_DIR", help="the study's output folder (holds study_state.json)")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow store to log to (default: the one in study_state.json)")
    parser.add_argument("--no-mlflow", action="store_true",
                        help="write the files only: log nothing and contact no tracking server (a local "
                             "embedded store is still read for the study's settings)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = Path(args.output)
    if not (output / STATE_FILE).is_file():
        print(f"error: {output} holds no {STATE_FILE}: pass a study's output folder (e.g. runs/smoke)",
              file=sys.stderr)
        return 2
    from orchestrator.tracking import apply_client_defaults

    apply_client_defaults()  # a server dying mid-report: seconds of retries, not minutes
    report = write_report(output, args.tracking_uri, log_to_mlflow=not args.no_mlflow)
    print(f"report: {report}")
    return 0
