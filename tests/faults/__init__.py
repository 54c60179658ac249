"""The fault suite (issue 11): faults injected into a node of the namespace lab.

Each scenario injects one fault into node1 (which runs the real controller under a real
ExaBGP) while node2 announces the same anycast prefix and a client in the lab counts
requests, and returns result rows: what was injected, what the router saw, requests lost,
time until the node was back to normal, what the operator saw, expected against seen.

    sudo .venv/bin/python -m tests.faults.run            # every scenario: docs/reliability.md
    sudo .venv/bin/python -m tests.faults.run --quick    # the quick variant (also in make test)
    sudo .venv/bin/python -m tests.faults.run --only 1a,4b --exabgp 4.2

Results are kept as JSON under ``.cache/faults/`` (one file per row), so a partial run
re-renders the whole report.
"""
