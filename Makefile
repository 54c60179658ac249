# Two commands do everything on a fresh machine:
#   sudo make demo   - set up, build the namespace lab and walk the failover/drain story
#   make test        - set up, then run lint, types and the whole test suite
.PHONY: setup test lint typecheck unit demo bench clean

setup:
	./scripts/bootstrap.sh

lint: setup
	.venv/bin/ruff check announcer checks tests
	.venv/bin/ruff format --check announcer checks tests

typecheck: setup
	.venv/bin/mypy

unit: setup
	.venv/bin/pytest -q tests/unit

test: setup lint typecheck
	.venv/bin/pytest tests

clean:
	rm -rf .venv .venv-exabgp42 .cache .pytest_cache .mypy_cache .ruff_cache build *.egg-info
