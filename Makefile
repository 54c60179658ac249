# Two commands do everything on a fresh Debian 12 or 13 machine:
#   sudo make demo   set up, build the BIRD + ExaBGP namespace lab, walk the failover/drain story
#   make test        set up, then lint, type-check and run every test (as root: also the
#                    namespace lab, the Debian package test, a quick benchmark pass and
#                    the fault suite's quick variant)
.PHONY: setup test lint typecheck unit pytest package-test bench bench-quick faults faults-quick faults-soak demo demo-fleet clean

VENV := .venv/bin

setup:
	./scripts/bootstrap.sh

lint: setup
	$(VENV)/ruff check announcer checks tests scripts
	$(VENV)/ruff format --check announcer checks tests scripts

typecheck: setup
	$(VENV)/mypy
	$(VENV)/mypy --strict --explicit-package-bases tests/lab tests/integration/lab/test_scenarios.py tests/integration/lab/test_address_guard_lab.py tests/integration/lab/test_fleet_lab.py tests/integration/lab/test_hooks_lab.py tests/integration/lab/test_no_fleet_lab_transcript.py tests/integration/lab/test_drain_forwarding_lab.py tests/integration/lab/test_forwarding_kernel_lab.py tests/integration/lab/test_process_lab.py scripts/demo.py scripts/demo_fleet.py
	$(VENV)/mypy --strict --explicit-package-bases tests/faults tests/integration/lab/test_faults_quick.py

unit: setup
	$(VENV)/pytest -q tests/unit

# The fault suite's quick variant runs on its own (faults-quick), not twice.
pytest: setup
	$(VENV)/pytest tests --ignore=tests/integration/lab/test_faults_quick.py

# The .deb: build, lintian, install into a Debian 13 chroot, smoke run, purge (root only).
package-test: setup
	@if [ "$$(id -u)" = 0 ]; then bash tests/package/run.sh; \
	else echo "package-test: skipped, needs root (chroot, mounts, namespaces): sudo make package-test"; fi

# The benchmark suite rewrites docs/benchmarks.md and its plots, docs/img/*.svg (root:
# namespaces, cgroups; the plots: Debian's python3-matplotlib, which setup installs).
bench: setup
	$(VENV)/python -m tests.bench.run

# A few trials of every benchmark, so the code cannot rot; asserts figures exist, not timings
# (report and plots go to .cache/bench/, never over docs/).
bench-quick: setup
	@if [ "$$(id -u)" = 0 ]; then $(VENV)/python -m tests.bench.run --quick; \
	else echo "bench-quick: skipped, needs root (namespaces, cgroups)"; fi

# The fault suite (root: namespaces, mounts) rewrites docs/reliability.md; about 9 min.
# Rows 2c and 3b (systemd's watchdog, the unit's restarts) read the figures the package
# test's systemd step leaves: from a clean clone it runs first (about 2 min more).
faults: setup
	@[ -f .cache/faults/package-systemd.json ] || $(MAKE) package-test
	$(VENV)/python -m tests.faults.run

# Its quick variant (make test): about 3.5 min (the fleet's rows 11b and 11c about 40 s of
# it); asserts each row's expected outcome.
faults-quick: setup
	@if [ "$$(id -u)" = 0 ]; then $(VENV)/pytest -q tests/integration/lab/test_faults_quick.py; \
	else echo "faults-quick: skipped, needs root (namespaces, mounts)"; fi

# Row 10: an hour of 200 flapping services (not in CI, not in make faults).
faults-soak: setup
	$(VENV)/python -m tests.faults.run --only 10

test: setup lint typecheck pytest package-test bench-quick faults-quick

demo: setup
	$(VENV)/python scripts/demo.py

# The fleet guard on three nodes and a 3-member etcd (root: namespaces).
demo-fleet: setup
	$(VENV)/python scripts/demo_fleet.py

clean:
	rm -rf .venv .venv-exabgp42 .cache .pytest_cache .mypy_cache .ruff_cache build *.egg-info
