"""The controller's CPU per check, without sockets: a quick before/after for daemon work.

    .venv/bin/python -m tests.bench.ctlcost              # N = 2,000 services
    .venv/bin/python -m tests.bench.ctlcost -n 1000 --seconds 40 --repeat 5

N services, each one check that answers at once (tests/unit/loop.py's runner and
fake clock), driven one simulated second at a time once every service is UP: each
second starts every round, takes every result, steps every state machine and sends
nothing. What it measures is the daemon's own work per check (timers, rounds, the
inbox, the state machine, the observer), with none of the HTTP check's or the
loop's: P3's figure minus its floor is that plus the runner and the check's wrapper
(``tests.bench.loopcost`` measures those). Prints the CPU per check of each repeat
and their least; on a shared machine compare two commits by alternating them, not
by figures taken an hour apart. No root needed.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

from tests.unit.loop import Loop, ScriptedCheck

WARM_UP = 20
"""Simulated seconds before measuring: every service RISING, then UP."""


def _config(tmp: Path, n: int) -> Path:
    path = tmp / "announcer.toml"
    services = "".join(
        f'[[service]]\nname = "s{i:04d}"\nprefixes = ["198.19.{i // 256}.{i % 256}/32"]\n'
        f'[[service.checks]]\ntype = "file"\npath = "c{i}"\n'
        for i in range(n)
    )
    path.write_text(
        f'state_dir = "{tmp / "state"}"\ninclude = ""\n'
        "[defaults]\ninterval = 1.0\nfast_interval = 0.25\nrise = 3\nfall = 3\n"
        "timeout = 0.25\n" + services
    )
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=2000, help="services (default 2000)")
    parser.add_argument("--seconds", type=int, default=40, help="simulated seconds per repeat")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        checks = {f"c{i}": ScriptedCheck() for i in range(args.n)}
        loop = Loop(_config(Path(tmp), args.n), checks)
        for _ in range(WARM_UP):
            loop.run_for(1.0)
        up = sum(1 for i in range(args.n) if loop.status(f"s{i:04d}")["health"] == "UP")
        if up != args.n:
            print(f"only {up} of {args.n} services UP after the warm-up", file=sys.stderr)
            return 1
        # What the warm-up left (the test helpers' imports among it) is not the daemon's:
        # out of the collector's way, as a long-running daemon's start-up objects are.
        gc.collect()
        gc.freeze()
        runs0 = sum(c.runs for c in checks.values())
        figures = []
        for _ in range(args.repeat):
            cpu = time.process_time()
            loop.run_for(float(args.seconds))
            figures.append((time.process_time() - cpu) / (args.seconds * args.n) * 1e6)
        ran = sum(c.runs for c in checks.values()) - runs0
    expected = args.n * args.seconds * args.repeat
    print(
        f"N={args.n}: {min(figures):.2f} us of CPU per check (least of {args.repeat}: "
        + ", ".join(f"{f:.2f}" for f in figures)
        + f"); {ran} checks run of {expected} scheduled"
    )
    return 0 if ran == expected else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
