#!/usr/bin/env python3
"""Pre-annotate a whole Label Studio project (thousands of tasks), beyond the 100 s /predict limit.

Usage: python batch_predict.py --project 3 [--url http://localhost:8080] [--api-key KEY] [--limit N]
Reads LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY and the backend's settings (MODELSCOPE_*, LLM_*) from the
environment or `.env`. Safe to interrupt and rerun: tasks already predicted by this model version are skipped.
"""

from __future__ import annotations

import sys

from my_ml_backend.jobs.cli import batch_predict_main
from my_ml_backend.jobs.diagnostics import force_utf8_stdout

if __name__ == "__main__":
    force_utf8_stdout()
    sys.exit(batch_predict_main())
