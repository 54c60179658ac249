"""The check loop's CPU per HTTP check, without the lab: a quick before/after for runner work.

    .venv/bin/python -m tests.bench.loopcost                # N=1000 checks/s for 15 s
    .venv/bin/python -m tests.bench.loopcost -n 2000 --seconds 20

Starts :mod:`tests.bench.checkserver` in a process of its own on 127.0.0.1 (its CPU is
not counted), builds N HTTP checks (one path each, kept-alive connections) and submits
each once a second through :class:`announcer.runner.CheckRunner`, spread evenly over the
second in 10 ms ticks, as N services with interval 1 would be. After a warm-up (the
connections are made then) it measures over the window: this process's CPU and the
loop thread's alone (``/proc/self/task``), each per completed check, and checks that
failed or came back over 100 ms after submission. ``python -c pass`` is timed before and
after: on a shared machine the figures only compare at a similar pace. No root needed.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from announcer.checks import CheckResult, HttpCheckSpec, build_check
from announcer.runner import CheckRunner

from .common import CHECKSERVER, CLK_TCK, PYTHON, pace

TICK = 0.01


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _thread_cpu(native_id: int) -> tuple[float, float]:
    """CPU seconds (user, system) of one thread of this process."""
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


class Tally:
    """Completed checks, failures and late answers, counted from the loop thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = 0
        self.failed = 0
        self.late = 0
        self.reasons: dict[str, int] = {}

    def callback(self, submitted: float) -> Callable[[CheckResult], None]:
        def on_done(result: CheckResult) -> None:
            late = time.monotonic() - submitted > 0.1
            with self.lock:
                self.done += 1
                self.late += late
                if not result.ok:
                    self.failed += 1
                    self.reasons[result.reason] = self.reasons.get(result.reason, 0) + 1

        return on_done


def measure(n: int, seconds: float, warmup: float, port: int) -> dict[str, float]:
    checks = [
        build_check(HttpCheckSpec(type="http", url=f"http://127.0.0.1:{port}/s{i}"))
        for i in range(n)
    ]
    runner = CheckRunner(2, overflow=2)
    tally = Tally()
    loop_tid = runner._thread.native_id  # a benchmark may look inside
    assert loop_tid is not None
    began = time.monotonic()
    marks: dict[str, float] = {}
    submitted = 0
    try:
        while True:
            now = time.monotonic()
            if "cpu" not in marks and now - began >= warmup:
                with tally.lock:
                    marks.update(done=tally.done, failed=tally.failed, late=tally.late)
                user, system = _thread_cpu(loop_tid)
                marks.update(cpu=time.process_time(), user=user, system=system, wall=now)
            if now - began >= warmup + seconds:
                break
            # As many as are due by now: N a second, whatever the sleeps overshoot.
            due = int((now - began) * n)
            while submitted < due:
                check = checks[submitted % n]
                runner.submit(check, 1.0, tally.callback(now))
                submitted += 1
            time.sleep(TICK)
        with tally.lock:
            done = tally.done - marks["done"]
            failed = tally.failed - marks["failed"]
            late = tally.late - marks["late"]
        cpu = time.process_time() - marks["cpu"]
        user, system = _thread_cpu(loop_tid)
        user, system = user - marks["user"], system - marks["system"]
        wall = time.monotonic() - marks["wall"]
    finally:
        runner.shutdown()
        for check in checks:
            check.close()
    if tally.reasons:
        print(f"failure reasons: {tally.reasons}", file=sys.stderr)
    return {
        "checks": done,
        "checks_per_s": done / wall,
        "us_per_check": 1e6 * cpu / max(1.0, done),
        "loop_us_per_check": 1e6 * (user + system) / max(1.0, done),
        "loop_system_share": system / max(1e-9, user + system),
        "core_fraction": cpu / wall,
        "failed": failed,
        "late": late,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="checks per second (services)")
    parser.add_argument("--seconds", type=float, default=15.0, help="the measured window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=1, help="windows; the median is printed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        ready = Path(tmp) / "ready"
        argv = [str(PYTHON), str(CHECKSERVER), "--bind", f"127.0.0.1:{port}"]
        argv += ["--stats", str(Path(tmp) / "stats.sock"), "--ready-file", str(ready)]
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not ready.exists():
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the check server did not start")
                time.sleep(0.02)
            before = pace()
            runs = [measure(args.n, args.seconds, args.warmup, port) for _ in range(args.runs)]
            after = pace()
        finally:
            server.terminate()
            server.wait(5)
    for run in runs:
        print(
            f"N={args.n}: {run['us_per_check']:.0f} us CPU per check "
            f"(loop thread {run['loop_us_per_check']:.0f} us, "
            f"{100 * run['loop_system_share']:.0f} % of it kernel), "
            f"{100 * run['core_fraction']:.1f} % of a core, "
            f"{run['checks_per_s']:.0f} checks/s, {run['failed']:.0f} failed, "
            f"{run['late']:.0f} over 100 ms"
        )
    if len(runs) > 1:
        median = statistics.median(r["us_per_check"] for r in runs)
        loop = statistics.median(r["loop_us_per_check"] for r in runs)
        print(f"median: {median:.0f} us per check (loop thread {loop:.0f} us)")
    print(
        f"pace: python -c pass {1000 * before:.0f} ms before, {1000 * after:.0f} ms after "
        f"(pid {os.getpid()})"
    )


if __name__ == "__main__":
    main()
