#!/usr/bin/env bash
# Install Label Studio 1.23.2 for the end-to-end tests (tests/e2e), outside the repo, once.
#
# Why a separate, cached virtualenv: Label Studio pins its own dependency set (Django, an
# older openai, ...) that clashes with the backend's venv, and installing it takes a minute
# or two; an initialised data dir (migrations + the test user) takes another 30-45 s. Both
# are built once into a cache dir and reused by every test run, which only copies the data
# dir template.
#
# Usage:  scripts/label_studio_env.sh          # prints the Label Studio venv's python path last
# Env:    LS_CACHE_DIR  cache dir (default ~/.cache/llm-preannotation/label-studio-1.23.2)
#         LS_PYTHON     interpreter for the venv (default python3.11, else python3; needs >= 3.10)
#         PIP_INDEX_URL etc. are honoured by pip as usual.
# Output: $LS_CACHE_DIR/venv, $LS_CACHE_DIR/data-template, and $LS_CACHE_DIR/e2e-env.json
#         (paths and the test credentials, read by tests/e2e/label_studio.py).
set -euo pipefail

LS_VERSION=1.23.2
CACHE="${LS_CACHE_DIR:-$HOME/.cache/llm-preannotation/label-studio-$LS_VERSION}"

# Fixed, throw-away credentials of the local test server (never used anywhere else).
LS_TEST_USER="e2e@example.com"
LS_TEST_PASSWORD="e2e-password-123"
LS_TEST_TOKEN="e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0"

# What Label Studio needs to talk to a backend on 127.0.0.1, and no calls home.
export ML_BLOCK_LOCAL_IP=false SSRF_PROTECTION_ENABLED=false LATEST_VERSION_CHECK=false COLLECT_ANALYTICS=false
export SENTRY_DSN= FRONTEND_SENTRY_DSN= CONVERTER_DOWNLOAD_RESOURCES=false
# Variables Label Studio would otherwise pick up from the caller's environment.
unset LABEL_STUDIO_BASE_DATA_DIR DATABASE_NAME DJANGO_DB HOST PORT USERNAME PASSWORD USER_TOKEN || true

STAMP="label-studio==$LS_VERSION user=$LS_TEST_USER token=$LS_TEST_TOKEN"

mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"  # absolute: the paths end up in e2e-env.json
VENV="$CACHE/venv" TEMPLATE="$CACHE/data-template" INFO="$CACHE/e2e-env.json" MARKER="$CACHE/.ready"
# Two test runs starting at once must not build the same venv concurrently.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$CACHE/.lock"
  flock 9
fi

if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$STAMP" ] && [ -x "$VENV/bin/label-studio" ] && [ -d "$TEMPLATE" ] && [ -f "$INFO" ]; then
  echo "Label Studio $LS_VERSION already installed in $CACHE" >&2
  echo "$VENV/bin/python"
  exit 0
fi
rm -f "$MARKER"

started=$(date +%s)
# A venv whose base interpreter was removed or upgraded cannot be repaired: start over.
if [ -e "$VENV" ] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  PYTHON="${LS_PYTHON:-python3.11}"
  command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "Label Studio $LS_VERSION needs Python >= 3.10 (set LS_PYTHON)" >&2; exit 2; }
  echo "Creating the Label Studio virtualenv in $VENV ..." >&2
  "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -m pip show label-studio 2>/dev/null | grep -qx "Version: $LS_VERSION"; then
  echo "Installing label-studio==$LS_VERSION (takes a minute or two) ..." >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "label-studio==$LS_VERSION" >&2
fi

# Build the template next to the final place and rename it, so an interrupted run never
# leaves a half-initialised template behind.
echo "Initialising the Label Studio data dir template ..." >&2
tmp_template="$CACHE/data-template.tmp.$$"
rm -rf "$tmp_template" "$TEMPLATE"
mkdir -p "$tmp_template"
# `label-studio init` may create files relative to the working directory; keep them in the cache.
(cd "$CACHE" && LABEL_STUDIO_BASE_DATA_DIR="$tmp_template" "$VENV/bin/label-studio" init --data-dir "$tmp_template" --username "$LS_TEST_USER" \
  --password "$LS_TEST_PASSWORD" --user-token "$LS_TEST_TOKEN" --enable-legacy-api-token -q) >"$CACHE/init.log" 2>&1 \
  || { tail -n 30 "$CACHE/init.log" >&2; echo "label-studio init failed (log: $CACHE/init.log)" >&2; exit 3; }
[ -f "$tmp_template/label_studio.sqlite3" ] \
  || { echo "label-studio init wrote no database into $tmp_template" >&2; exit 3; }
mv "$tmp_template" "$TEMPLATE"

# Written by Python so that any path is quoted correctly.
"$VENV/bin/python" - "$INFO" "$LS_VERSION" "$VENV" "$TEMPLATE" "$LS_TEST_USER" "$LS_TEST_PASSWORD" "$LS_TEST_TOKEN" <<'EOF'
import json
import sys

path, version, venv, template, user, password, token = sys.argv[1:]
info = {
    "version": version,
    "python": f"{venv}/bin/python",
    "label_studio": f"{venv}/bin/label-studio",
    "data_template": template,
    "username": user,
    "password": password,
    "token": token,
}
with open(path, "w", encoding="utf-8") as f:
    json.dump(info, f, indent=2)
EOF
echo "$STAMP" >"$MARKER"
echo "Label Studio $LS_VERSION ready in $CACHE ($(($(date +%s) - started)) s)" >&2
echo "$VENV/bin/python"
