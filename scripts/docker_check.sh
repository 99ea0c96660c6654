#!/usr/bin/env bash
# Checks that the Docker image builds and serves: builds it, runs it, waits until its own HEALTHCHECK
# reports healthy, asks /health from the host, then removes the container. Prints how long each step took.
#
# Usage: bash scripts/docker_check.sh     (as root; installs docker.io and debootstrap with apt-get if missing)
# Without a container registry, python:3.11-slim is a local stand-in built by scripts/docker_base.sh.
# Settings: DOCKER_STORAGE_DRIVER (overlay2, falls back to vfs), HEALTH_TIMEOUT (seconds, default 180).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=llm-preannotation:check
CONTAINER=llm-preannotation-check
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-180}"
DOCKERD_LOG=/var/log/dockerd.log

fail() { echo "docker_check.sh: FAILED: $*" >&2; exit 1; }
now() { date +%s; }
t_start=$(now)

[ "$(id -u)" = 0 ] || fail "run as root (dockerd and debootstrap need it)"

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  echo "apt-get install docker.io debootstrap"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap) >/dev/null 2>&1 ||
    fail "apt-get install docker.io debootstrap"
fi

started_dockerd=""
start_dockerd() {
  # Niced, so that the image build (which runs under dockerd) leaves CPU to the rest of the machine.
  setsid nohup nice -n 10 dockerd --storage-driver="$1" >"$DOCKERD_LOG" 2>&1 </dev/null &
  started_dockerd=$!
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && return 0
    kill -0 "$started_dockerd" 2>/dev/null || break
    sleep 0.5
  done
  kill "$started_dockerd" 2>/dev/null || true
  wait "$started_dockerd" 2>/dev/null || true
  started_dockerd=""
  return 1
}
if ! docker info >/dev/null 2>&1; then
  driver="${DOCKER_STORAGE_DRIVER:-overlay2}"
  echo "starting dockerd (storage driver $driver, log $DOCKERD_LOG)"
  if ! start_dockerd "$driver"; then
    [ "$driver" = vfs ] && fail "dockerd did not start: $(tail -3 "$DOCKERD_LOG")"
    echo "dockerd did not start with $driver, trying vfs"
    start_dockerd vfs || fail "dockerd did not start: $(tail -3 "$DOCKERD_LOG")"
  fi
fi
echo "dockerd up, storage driver $(docker info -f '{{.Driver}}')"

cleanup() {
  docker rm -f -v "$CONTAINER" >/dev/null 2>&1 || true
  # CI leaves nothing running behind it; elsewhere the daemon stays up for the next check.
  if [ -n "$started_dockerd" ] && [ "${CI:-}" = "true" ]; then
    kill "$started_dockerd" 2>/dev/null || true
  fi
}
trap cleanup EXIT

t0=$(now)
bash scripts/docker_base.sh || fail "could not make the python:3.11-slim base image"
t_base=$(($(now) - t0))

t0=$(now)
echo "docker build -t $IMAGE ."
if ! DOCKER_BUILDKIT=0 docker build -t "$IMAGE" . >/tmp/docker_check_build.log 2>&1; then
  tail -30 /tmp/docker_check_build.log >&2
  fail "docker build (log: /tmp/docker_check_build.log)"
fi
t_build=$(($(now) - t0))

docker rm -f -v "$CONTAINER" >/dev/null 2>&1 || true
t0=$(now)
docker run -d --name "$CONTAINER" -p 127.0.0.1::9090 "$IMAGE" >/dev/null || fail "docker run $IMAGE"
status=starting
while [ $(($(now) - t0)) -lt "$HEALTH_TIMEOUT" ]; do
  state="$(docker inspect -f '{{.State.Status}}' "$CONTAINER")"
  status="$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$CONTAINER")"
  [ "$state" = running ] || { docker logs --tail 30 "$CONTAINER" >&2; fail "the container stopped ($state)"; }
  [ "$status" = none ] && fail "the image has no HEALTHCHECK"
  [ "$status" = healthy ] && break
  if [ "$status" = unhealthy ]; then
    docker logs --tail 30 "$CONTAINER" >&2
    fail "HEALTHCHECK reports unhealthy: $(docker inspect -f '{{json .State.Health.Log}}' "$CONTAINER" | tail -c 600)"
  fi
  sleep 1
done
t_healthy=$(($(now) - t0))
if [ "$status" != healthy ]; then
  docker logs --tail 30 "$CONTAINER" >&2
  fail "HEALTHCHECK still '$status' after ${HEALTH_TIMEOUT}s"
fi

port="$(docker port "$CONTAINER" 9090/tcp | head -1 | sed 's/.*://')"
body="$(curl -fsS --max-time 5 "http://127.0.0.1:$port/health")" || fail "GET /health on 127.0.0.1:$port"
echo "GET /health -> $body"

echo "docker check passed: base ${t_base}s, build ${t_build}s, healthy after ${t_healthy}s, total $(($(now) - t_start))s"
