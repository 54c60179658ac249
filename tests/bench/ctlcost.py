"""The controller's CPU per check, without sockets: a quick before/after for daemon work.

    .venv/bin/python -m tests.bench.ctlcost              # N = 2,000 services
    .venv/bin/python -m tests.bench.ctlcost -n 1000 --seconds 40 --repeat 5
    .venv/bin/python -m tests.bench.ctlcost --instructions   # N = 200, under callgrind

N services, each one check that answers at once (tests/unit/loop.py's runner and
fake clock), driven one simulated second at a time once every service is UP: each
second starts every round, takes every result, steps every state machine and sends
nothing. What it measures is the daemon's own work per check (timers, rounds, the
inbox, the state machine, the observer), with none of the HTTP check's or the
loop's: P3's figure minus its floor is that plus the runner and the check's wrapper
(``tests.bench.loopcost`` measures those). Prints the CPU per check of each repeat
and their least; on a shared machine compare two commits by alternating them, not
by figures taken an hour apart. No root needed.

``--instructions`` counts instead of timing: it runs itself twice under valgrind's
callgrind (Debian's ``valgrind``), for 2 and 6 simulated seconds with the same hash
seed, and prints the difference of the two instruction counts per check. That
figure does not move with the machine (within 0.5 % here, whatever else ran),
so one run of each commit compares them; it is the daemon's work in instructions,
not its time (a cache miss or a system call counts as one).
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.unit.loop import Loop, ScriptedCheck

WARM_UP = 20
"""Simulated seconds before measuring: every service RISING, then UP."""

COUNTED = (2, 6)
"""Simulated seconds of ``--instructions``' two runs: their difference is what counts."""
REPOSITORY = Path(__file__).resolve().parents[2]


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


def collected(stderr: str) -> int:
    """The instructions callgrind counted, from what it wrote to stderr."""
    match = re.search(r"Collected : (\d+)", stderr)
    if match is None:
        raise RuntimeError(f"callgrind printed no count: {stderr[-500:]!r}")
    return int(match.group(1))


def instructions_per_check(n: int) -> float:
    """Instructions per check: two runs under callgrind, start-up and warm-up cancelled."""
    if shutil.which("valgrind") is None:
        raise RuntimeError("--instructions needs valgrind (apt install valgrind)")
    counts = []
    for seconds in COUNTED:
        argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
        argv += [sys.executable, "-m", "tests.bench.ctlcost", "-n", str(n)]
        argv += ["--seconds", str(seconds), "--repeat", "1"]
        # A fixed hash seed: dict and set layouts, and so the count, are the same each run.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(
            argv, cwd=REPOSITORY, env=env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"the run under callgrind failed: {done.stdout}{done.stderr[-500:]}")
        counts.append(collected(done.stderr))
    return (counts[1] - counts[0]) / (n * (COUNTED[1] - COUNTED[0]))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, help="services (default 2000; 200 with --instructions)")
    parser.add_argument("--seconds", type=int, default=40, help="simulated seconds per repeat")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions under callgrind"
    )
    args = parser.parse_args(argv)
    if args.instructions:
        n = args.n or 200  # callgrind runs Python some 50 times slower
        print(f"N={n}: {instructions_per_check(n):,.0f} instructions per check (callgrind)")
        return 0
    args.n = args.n or 2000
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
        # out of the collector's way, or its passes would count objects no daemon has.
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
