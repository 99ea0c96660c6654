#!/usr/bin/env bash
# Install the test dependencies and run the linter and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh requirements-test.txt
# CI only: docker-compose (Debian's package) lets the tests check docker-compose.yml; no Docker engine needed.
if [ "${CI:-}" = "true" ] && ! command -v docker-compose >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq docker-compose) >/dev/null 2>&1 || echo "docker-compose not installed"
fi
# CI only: redis-server (Debian's package) lets the tests run the Redis stores against a real server
# (tests/test_redis_cache.py starts its own on a free 127.0.0.1 port; no service needed).
if [ "${CI:-}" = "true" ] && ! command -v redis-server >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null 2>&1 || echo "redis-server not installed"
fi
ruff check .
python -m pytest "$@"
