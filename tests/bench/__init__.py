"""Benchmarks: announcer side by side with ExaBGP's own healthcheck ("EXA"), same lab, same run.

Not part of the test suite (no ``test_*`` files; pytest's testpaths are
tests/unit and tests/integration). Run as root::

    sudo make bench        # .venv/bin/python -m tests.bench.run: rewrites docs/benchmarks.md
    sudo make bench-quick  # ... --quick: a few trials, small sizes (CI), writes .cache/bench/

P1 failover, P2 maintenance loss, P3 cost at scale, P4 announcement burst,
P5 CLI latency; see ``run.py`` and docs/benchmarks.md.
"""
