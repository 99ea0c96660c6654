#!/usr/bin/env bash
# Install the test dependencies and run the linter and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh requirements-test.txt
ruff check .
python -m pytest "$@"
