#!/usr/bin/env python3
"""Score pre-labels against human annotations: accuracy, macro-F1, span P/R/F1, confusion table, PNG chart.

Usage: python evaluate.py --project 3 [--predict --compare 0 3]
       python evaluate.py --export export.json --config config.xml [--predict --compare 0 3]
"""

from __future__ import annotations

import sys

from my_ml_backend.jobs.cli import evaluate_main
from my_ml_backend.jobs.diagnostics import force_utf8_stdout

if __name__ == "__main__":
    force_utf8_stdout()
    sys.exit(evaluate_main())
