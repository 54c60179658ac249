# Two commands do everything on a fresh Debian 12 or 13 machine:
#   sudo make demo   set up, build the BIRD + ExaBGP namespace lab, walk the failover/drain story
#   make test        set up, then lint, type-check and run every test (as root: also the
#                    namespace lab, the Debian package test and a quick benchmark pass)
.PHONY: setup test lint typecheck unit pytest package-test bench bench-quick demo clean

VENV := .venv/bin

setup:
	./scripts/bootstrap.sh

lint: setup
	$(VENV)/ruff check announcer checks tests scripts
	$(VENV)/ruff format --check announcer checks tests scripts

typecheck: setup
	$(VENV)/mypy
	$(VENV)/mypy --strict --explicit-package-bases tests/lab tests/integration/lab/test_scenarios.py scripts/demo.py

unit: setup
	$(VENV)/pytest -q tests/unit

pytest: setup
	$(VENV)/pytest tests

# The .deb: build, lintian, install into a Debian 13 chroot, smoke run, purge (root only).
package-test: setup
	@if [ "$$(id -u)" = 0 ]; then bash tests/package/run.sh; \
	else echo "package-test: skipped, needs root (chroot, mounts, namespaces): sudo make package-test"; fi

# The benchmark suite rewrites docs/benchmarks.md (root: namespaces, cgroups).
bench: setup
	$(VENV)/python -m tests.bench.run

# A few trials of every benchmark, so the code cannot rot; asserts figures exist, not timings.
bench-quick: setup
	@if [ "$$(id -u)" = 0 ]; then $(VENV)/python -m tests.bench.run --quick; \
	else echo "bench-quick: skipped, needs root (namespaces, cgroups)"; fi

test: setup lint typecheck pytest package-test bench-quick

demo: setup
	$(VENV)/python scripts/demo.py

clean:
	rm -rf .venv .venv-exabgp42 .cache .pytest_cache .mypy_cache .ruff_cache build *.egg-info
