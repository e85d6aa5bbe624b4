"""`python -m orchestrator.report OUTPUT_DIR` (the command itself is in cli.py)."""

import sys

from orchestrator.report.cli import main

sys.exit(main())
