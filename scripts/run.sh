#!/usr/bin/env bash
# Quick start, part 1: set everything up on a fresh Debian 12 machine (as root) and run the agent
# in the foreground with its embedded defaults. Extra arguments go to `hullguard agent`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
exec .venv/bin/hullguard agent "$@"
