#!/usr/bin/env bash
# Builds a local stand-in for the python:3.11-slim base image, for machines that reach Debian's and PyPI's
# package registries but no container registry: a debootstrapped Debian bookworm with python3.11 and pip,
# imported into Docker and tagged python:3.11-slim, so the Dockerfile builds unchanged.
#
# Usage: bash scripts/docker_base.sh     (root, dockerd running; scripts/docker_check.sh calls it)
# Idempotent: does nothing when the tag already holds this stand-in built with this machine's CA bundle, and
# leaves a real python:3.11-slim alone. The debootstrapped tree is cached (~300 MB) in
# ${DOCKER_BASE_CACHE:-~/.cache/llm-preannotation/docker-base}; the first run takes about 1.5 min.
set -euo pipefail

TAG="python:3.11-slim"
CACHE="${DOCKER_BASE_CACHE:-$HOME/.cache/llm-preannotation/docker-base}"
ROOTFS="$CACHE/rootfs"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
HOST_CA=/etc/ssl/certs/ca-certificates.crt
LABEL=org.llm-preannotation.stand-in

die() { echo "docker_base.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and docker need it)"
command -v docker >/dev/null || die "docker not found: apt-get install docker.io"
docker info >/dev/null 2>&1 || die "dockerd is not running (scripts/docker_check.sh starts it)"
[ -f "$HOST_CA" ] || die "no CA bundle at $HOST_CA"

# The image carries this machine's CA bundle (TLS to the registries may go through an intercepting proxy):
# its checksum in a label tells when the bundle changed and the image must be imported again.
ca_sum="$(sha256sum "$HOST_CA" | cut -d' ' -f1)"
if docker image inspect "$TAG" >/dev/null 2>&1; then
  have="$(docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$TAG" 2>/dev/null || true)"
  if [ -z "$have" ] || [ "$have" = "<no value>" ]; then
    echo "$TAG exists and is not this script's stand-in: left as it is"
    exit 0
  fi
  if [ "$have" = "$ca_sum" ]; then
    echo "$TAG: local stand-in already present"
    exit 0
  fi
  echo "$TAG: the machine's CA bundle changed, importing again"
fi

if [ ! -f "$CACHE/rootfs.ready" ]; then
  command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install debootstrap"
  rm -rf "$ROOTFS"
  mkdir -p "$CACHE"
  echo "debootstrap bookworm into $ROOTFS (about 1.5 min)"
  # python3-pip's Recommends (build-essential, python3-dev) are left out, as in the slim image.
  if ! nice -n 10 debootstrap --variant=minbase --include=python3.11,python3-pip,python-is-python3,ca-certificates \
      bookworm "$ROOTFS" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1; then
    tail -20 "$CACHE/debootstrap.log" >&2
    die "debootstrap failed (log: $CACHE/debootstrap.log)"
  fi
  # The slim image ships no package lists or downloaded .debs; pip may install into the system Python there.
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/lib/apt/lists/*
  rm -f "$ROOTFS"/usr/lib/python3.11/EXTERNALLY-MANAGED
  touch "$CACHE/rootfs.ready"
fi

# This machine's CA bundle and the certificates it was built from, so that update-ca-certificates in a
# derived image keeps them.
cp "$HOST_CA" "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
fi

echo "docker import -> $TAG"
tar -C "$ROOTFS" --numeric-owner --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' -c . |
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
    --change "LABEL $LABEL=$ca_sum" \
    --change 'CMD ["python3"]' \
    - "$TAG" >/dev/null
docker run --rm "$TAG" sh -c 'python --version && pip --version' || die "the imported $TAG does not run python/pip"
