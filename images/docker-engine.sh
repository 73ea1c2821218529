#!/usr/bin/env bash
# Make sure a Docker engine answers: when `docker info` fails, install Debian's docker.io if dockerd
# is missing, start dockerd in the background and wait until it answers. Needs root for that part;
# an engine that already runs (Docker Desktop, a system service) is used as it is.
#
# usage: images/docker-engine.sh   (DOCKERD_LOG: where dockerd writes; default build/dockerd.log)
set -euo pipefail
cd "$(dirname "$0")/.."
LOG=${DOCKERD_LOG:-$PWD/build/dockerd.log}

if docker info >/dev/null 2>&1; then
    echo "docker engine: running ($(docker version --format '{{.Server.Version}}'))"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "no Docker engine answers (docker info failed) and this is not root: start Docker, then retry" >&2
    exit 1
fi
if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
    echo "installing Debian's docker.io"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
docker --version | grep -q "^Docker version" || {
    echo "'$(command -v docker)' is not a Docker client ($(docker --version 2>&1 | head -1))" >&2; exit 1; }
mkdir -p "$(dirname "$LOG")"
setsid nohup dockerd >"$LOG" 2>&1 </dev/null &
for i in $(seq 60); do
    if docker info >/dev/null 2>&1; then
        echo "docker engine: started dockerd ($(docker version --format '{{.Server.Version}}'), ${i} s; log $LOG)"
        exit 0
    fi
    sleep 1
done
echo "dockerd did not answer within 60 s; the end of $LOG:" >&2
tail -30 "$LOG" >&2
exit 1
