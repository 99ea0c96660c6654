#!/usr/bin/env bash
# Install and start the backend on port 9090 (gunicorn; set WORKERS/THREADS/PORT to tune, HOST=127.0.0.1 for local only).
# gunicorn.conf.py makes one /metrics scrape cover every worker (prometheus_client multiprocess mode).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh requirements.txt
exec gunicorn --config gunicorn.conf.py --bind "${HOST:-0.0.0.0}:${PORT:-9090}" --workers "${WORKERS:-1}" --threads "${THREADS:-8}" \
  --timeout "${GUNICORN_TIMEOUT:-120}" my_ml_backend._wsgi:app
