# Convenience targets; the Quick start itself needs no make (not installed on a minimal Debian):
#   bash scripts/run.sh    set up and run the agent
#   bash scripts/test.sh   set up and run every test
.PHONY: setup services run test lint unit integration bench clean-test-images

setup:
	bash scripts/setup.sh

services: setup
	bash scripts/services.sh

run:
	bash scripts/run.sh

test:
	bash scripts/test.sh

lint: setup
	.venv/bin/ruff check src tests bench
	.venv/bin/mypy src/hullguard

unit: setup
	.venv/bin/pytest -q tests/unit

integration: services
	.venv/bin/pytest -q tests/integration

bench: services
	.venv/bin/python bench/run_all.py

clean-test-images:
	-docker rmi hullguard-test/busybox:latest
