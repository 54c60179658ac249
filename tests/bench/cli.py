"""P5 CLI latency: wall time of ``announcer status`` and of a drain round trip (``drain`` then
``undrain``), each a fresh process as an operator runs it, against node1's controller.

Also: the same requests made in-process (the daemon's share, without Python start-up),
where the CLI's start-up time goes (``python -X importtime``), and how long after the
operator's action the router moves the traffic: ``announcer drain`` versus creating
EXA's ``--disable`` file (EXA has no control interface; its check loop finds the file).
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.lab import NODES, PREFIX_V4, Lab

from .common import ANNOUNCER_BIN, PYTHON, log, summary
from .fibmon import FibMonitor
from .tools import control_request


def _timed(argv: list[str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    return time.perf_counter() - t0, proc.returncode


def import_profile(socket_path: Path, top: int = 8) -> dict[str, Any]:
    """``python -X importtime announcer status --socket S``: what the real command imports.

    Top-level rows (depth 0) are everything imported, at start-up or later while the
    command ran (an import inside a function shows up at depth 0 too).
    """
    proc = subprocess.run(
        [
            str(PYTHON),
            "-X",
            "importtime",
            str(ANNOUNCER_BIN),
            "status",
            "--socket",
            str(socket_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    rows = []
    for line in proc.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if match:
            rows.append((int(match[2]), (len(match[3]) - 1) // 2, match[4]))
    top_level = [(us, name) for us, depth, name in rows if depth == 0]
    bare = [_timed([str(PYTHON), "-c", "pass"])[0] for _ in range(5)]
    return {
        "command": "announcer status --socket PATH",
        "imports_s": sum(us for us, _ in top_level) / 1e6,
        "python_startup_s": sorted(bare)[2],
        "heaviest": [
            {"module": n, "cumulative_s": us / 1e6, "depth": 0}
            for us, n in sorted(top_level)[::-1][:top]
        ],
    }


def run_announcer(lab: Lab, monitor: FibMonitor, socket_path: Path, runs: int) -> dict[str, Any]:
    node1 = lab.links["node1"].peer_v4
    both = {lab.links[n].peer_v4 for n in NODES}
    sock = ["--socket", str(socket_path)]
    log(f"P5 announcer status x {runs}")
    status, bare = [], []
    for _ in range(runs):
        took, code = _timed([str(ANNOUNCER_BIN), "status", *sock])
        if code == 0:
            status.append(took)
        bare.append(_timed([str(PYTHON), "-c", "pass"])[0])  # the machine's pace, same moment
    status_json = []
    for _ in range(max(3, runs // 5)):
        took, code = _timed([str(ANNOUNCER_BIN), "status", "--json", *sock])
        if code == 0:
            status_json.append(took)
    inproc, inproc_drain = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        control_request(socket_path, "status")
        inproc.append(time.perf_counter() - t0)
    log(f"P5 announcer drain + undrain x {runs}")
    drains, undrains, round_trips, moved = [], [], [], []
    for _ in range(runs):
        monitor.trim()
        t_wall = time.time()
        d, code_d = _timed([str(ANNOUNCER_BIN), "drain", "web", *sock])
        try:
            event = monitor.wait(PREFIX_V4, lambda g: node1 not in g, after=t_wall, timeout=10.0)
            moved.append(event.stamp - t_wall)
        except TimeoutError as exc:
            log(f"  drain did not move traffic: {exc}")
        u, code_u = _timed([str(ANNOUNCER_BIN), "undrain", "web", *sock])
        if code_d == 0 and code_u == 0:
            drains.append(d)
            undrains.append(u)
            round_trips.append(d + u)
        monitor.wait_state(PREFIX_V4, lambda g: set(g) == both, 30.0)
    for _ in range(runs):
        t0 = time.perf_counter()
        control_request(socket_path, "drain", services=["web"])
        control_request(socket_path, "undrain", services=["web"])
        inproc_drain.append(time.perf_counter() - t0)
        monitor.wait_state(PREFIX_V4, lambda g: set(g) == both, 30.0)
    return {
        "runs": runs,
        "status": summary(status),
        "python_startup": summary(bare),
        "status_json": summary(status_json),
        "status_in_process": summary(inproc),
        "round_trip_in_process": summary(inproc_drain),
        "drain": summary(drains),
        "undrain": summary(undrains),
        "round_trip": summary(round_trips),
        "drain_to_fib": summary(moved),
        "imports": import_profile(socket_path),
    }


def run_exa(lab: Lab, monitor: FibMonitor, disable: Path, runs: int) -> dict[str, Any]:
    """Create and remove EXA's disable file ``runs`` times; time until the router moves."""
    node1 = lab.links["node1"].peer_v4
    both = {lab.links[n].peer_v4 for n in NODES}
    log(f"P5 EXA disable file x {runs}")
    moved, touch = [], []
    for _ in range(runs):
        monitor.trim()
        t_wall = time.time()
        t0 = time.perf_counter()
        disable.write_text("maintenance\n")
        touch.append(time.perf_counter() - t0)
        try:
            event = monitor.wait(PREFIX_V4, lambda g: node1 not in g, after=t_wall, timeout=30.0)
            moved.append(event.stamp - t_wall)
        except TimeoutError as exc:
            log(f"  disable did not move traffic: {exc}")
        disable.unlink(missing_ok=True)
        monitor.wait_state(PREFIX_V4, lambda g: set(g) == both, 60.0)
    return {"runs": runs, "disable_to_fib": summary(moved), "touch": summary(touch)}
