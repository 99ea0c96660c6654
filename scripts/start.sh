#!/usr/bin/env bash
# Install and start the backend on port 9090 (gunicorn; set WORKERS/THREADS/PORT to tune, HOST=127.0.0.1 for local only).
# gunicorn.conf.py makes one /metrics scrape cover every worker (prometheus_client multiprocess mode).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "正在安装依赖 (installing dependencies) into .venv … 首次约 2 分钟 (about 2 minutes the first time)"
source scripts/setup_venv.sh requirements.txt
HOST="${HOST:-0.0.0.0}" PORT="${PORT:-9090}"
# gunicorn would retry a busy port for a while, printing "Connection in use", then fail: say what to do instead.
if ! python -c 'import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], int(sys.argv[2])))' "$HOST" "$PORT" 2>/dev/null; then
  echo "❌ 端口 $PORT 已被占用（可能后端已在运行）：停止占用它的程序，或换一个端口，例如 PORT=$((PORT + 1)) bash scripts/start.sh" >&2
  echo "   (port $PORT is in use, perhaps by a backend already running: stop it, or pick another port, e.g. PORT=$((PORT + 1)) bash scripts/start.sh)" >&2
  exit 1
fi
echo "正在启动后端 (starting the backend) on http://$HOST:$PORT (workers=${WORKERS:-1}, threads=${THREADS:-8})"
exec gunicorn --config gunicorn.conf.py --bind "$HOST:$PORT" --workers "${WORKERS:-1}" --threads "${THREADS:-8}" \
  --timeout "${GUNICORN_TIMEOUT:-120}" my_ml_backend._wsgi:app
