#!/usr/bin/env bash
# Create (or reuse) the project virtualenv and install a requirements file into it.
# Usage: source scripts/setup_venv.sh requirements.txt
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
# uv applies overrides.txt: the current Flask/Werkzeug/Jinja2 stack instead of label-studio-ml 1.0.9's 2021 pins.
"$VENV/bin/python" -m pip install --quiet "uv>=0.5,<1"
"$VENV/bin/python" -m uv pip install --quiet --python "$VENV/bin/python" \
  -r "$ROOT/${1:-requirements.txt}" --override "$ROOT/overrides.txt"
export PATH="$VENV/bin:$PATH"
