#!/usr/bin/env bash
# Quick start, part 2: set up what the tests need (Debian packages, virtualenv, daemons) and run
# the whole suite: ruff, mypy --strict, then every unit and integration test.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/unit -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
.venv/bin/ruff check src tests bench
.venv/bin/mypy src/hullguard
if [ $# -eq 0 ]; then set -- tests; fi
exec .venv/bin/pytest -q -ra --durations=20 "$@"
