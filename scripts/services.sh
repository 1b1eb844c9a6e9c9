#!/usr/bin/env bash
# Start the daemons hullguard works with when they are not running: dockerd (which runs its
# own containerd). Tests start their own clamd, registry, standalone containerd and test
# dockerd instances in temporary directories, so nothing else is needed here.
set -euo pipefail

if ! docker info >/dev/null 2>&1; then
  echo "services: starting dockerd"
  mkdir -p /var/log
  nohup dockerd >/var/log/hullguard-dockerd.log 2>&1 &
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { echo "services: dockerd did not start; see /var/log/hullguard-dockerd.log" >&2; exit 1; }
fi
echo "services: dockerd is running ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
