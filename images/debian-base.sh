#!/usr/bin/env bash
# A local base image from Debian's own packages, for machines that reach Debian's archive but no
# container registry: Debian bookworm (minbase) with python3 and venv, built with debootstrap and
# imported into Docker. Kept between runs: when the image exists, nothing is done.
#
# usage: images/debian-base.sh NAME:TAG   (as root; DEBIAN_MIRROR overrides the archive)
set -euo pipefail
NAME=${1:?usage: images/debian-base.sh NAME:TAG}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm

if docker image inspect "$NAME" >/dev/null 2>&1; then
    echo "base image $NAME: present, reused"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "building the base image $NAME needs root (debootstrap); or use a registry's base:" \
         "make images CPU_BASE=python:3.11-slim-bookworm" >&2
    exit 1
fi
if ! command -v debootstrap >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
rootfs=$(mktemp -d /var/tmp/kdflow-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
start=$SECONDS
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 || { tail -30 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
tar -C "$rootfs" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates $SUITE" \
    - "$NAME" >/dev/null
echo "base image $NAME: built in $((SECONDS - start)) s ($(docker image inspect --format '{{.Size}}' "$NAME" | awk '{printf "%d MB", $1/1e6}'))"
