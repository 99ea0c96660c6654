#!/usr/bin/env bash
# Install the test dependencies and run the linter and the test suite.
#
# Usage: bash scripts/run_tests.sh            everything (what .ci/run runs): unit, integration, real Label Studio
#                                             e2e and the real local model
#        bash scripts/run_tests.sh --quick    unit and integration tests against the local fake LLM only
#                                             (no Label Studio, no local model: about 4-14 minutes)
#        Further arguments go to pytest, e.g. `bash scripts/run_tests.sh --quick -k status`.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=false
if [ "${1:-}" = "--quick" ]; then
  QUICK=true
  shift
fi
LS_CACHE="${LS_CACHE_DIR:-$HOME/.cache/llm-preannotation/label-studio-1.23.2}"
MODEL_CACHE="${LOCAL_MODEL_CACHE:-$HOME/.cache/llm-preannotation/local-model}"

# Say what is about to be installed and roughly how long it takes, before doing it (times measured on 2 cores).
echo "== 测试计划 (test plan) =="
if [ -x .venv/bin/python ]; then
  echo "- .venv 已存在：检查 Python 依赖 (checking Python packages in .venv, ~10 s)"
else
  echo "- 安装 Python 依赖到 .venv (installing Python packages into .venv: ~2 min)"
fi
APT_PACKAGES=""
if [ "${CI:-}" = "true" ] && [ "$(id -u)" = 0 ]; then
  # CI only: docker-compose lets the tests check docker-compose.yml (no Docker engine needed); redis-server
  # runs the Redis stores against a real server; chromium (+ a CJK font) shows the status page in a real browser.
  command -v docker-compose >/dev/null || APT_PACKAGES="$APT_PACKAGES docker-compose"
  command -v redis-server >/dev/null || APT_PACKAGES="$APT_PACKAGES redis-server"
  command -v chromium >/dev/null || APT_PACKAGES="$APT_PACKAGES chromium fonts-wqy-zenhei"
  if [ -n "$APT_PACKAGES" ]; then echo "- apt-get install$APT_PACKAGES (~2 min)"; fi
fi
if [ "$QUICK" = true ]; then
  echo "- --quick: 单元和集成测试，使用本地假 LLM (unit + integration tests against the fake LLM: ~4-14 min)"
else
  if [ -f "$LS_CACHE/.ready" ]; then
    echo "- Label Studio 1.23.2: 已缓存 (cached in $LS_CACHE)"
  else
    echo "- 安装 Label Studio 1.23.2 到 $LS_CACHE (installing Label Studio for the e2e tests: ~4-5 min, once)"
  fi
  if [ -f "$MODEL_CACHE/ready" ]; then
    echo "- 本地模型: 已缓存 (local model cached in $MODEL_CACHE)"
  else
    echo "- 编译 llama-cpp-python 并下载 0.5B 模型到 $MODEL_CACHE (building the local model: ~5-13 min, once)"
  fi
  if [ "${CI:-}" = "true" ] && [ "$(id -u)" = 0 ]; then
    echo "- CI: Docker 镜像构建与健康检查 (scripts/docker_check.sh: image build + HEALTHCHECK, ~3 min cold)"
  fi
  echo "- 全部测试 (all tests: ~8-10 min once installed; bash scripts/run_tests.sh --quick for ~4-14 min)"
fi
echo

source scripts/setup_venv.sh requirements-test.txt
if [ -n "$APT_PACKAGES" ]; then
  # shellcheck disable=SC2086 - a list of package names
  (apt-get update -qq && apt-get install -y -qq $APT_PACKAGES) >/dev/null 2>&1 || echo "apt-get install$APT_PACKAGES failed"
fi
ruff check .
if [ "$QUICK" = true ]; then
  python -m pytest -m "not e2e and not real_model" "$@"
else
  if [ "${CI:-}" = "true" ] && [ "$(id -u)" = 0 ]; then
    bash scripts/docker_check.sh  # the image builds and its own HEALTHCHECK reports healthy
  fi
  python -m pytest "$@"
fi
