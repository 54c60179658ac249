"""Fault 10: resources over time. 200 services whose checks flap, for an hour (``make
faults-soak``; not in CI, not in ``make faults``).

Each service has its own prefix and a file check on its own flag file. A flapper removes
and re-creates flags at random, never touching one flag twice within ``HOLD`` seconds, so
that every change outlasts the rise/fall checks and must become exactly one route change.
Every transition is then accounted for three ways: the flapper's own count, the
controller's per-service ``transitions`` counters, and BIRD's import counters (one update
per announcement, one withdraw per withdrawal). The controller's RSS, descriptors and
threads are sampled every ``SAMPLE`` seconds; growth per hour is the slope of a least-squares
line through the samples after the first minute.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

from tests.lab import wait_until

from .model import Row
from .registry import Ctx, Scenario, judge, scenario
from .rig import Rig, base_config, fd_count, rss_kib, thread_count
from .router import import_counters

SERVICES = 200
HOLD = 4.0
"""Seconds a flag keeps its state at least (longer than interval + fall x fast_interval)."""
FLIPS_PER_SECOND = 5.0
SAMPLE = 10.0
SOAK_SECONDS = "ANNOUNCER_SOAK_SECONDS"
"""Environment variable with the soak's length (default an hour; ``--soak-minutes`` sets it)."""


def _slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per hour."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    den = sum((t - mx) ** 2 for t, _ in points)
    if den == 0:
        return 0.0
    return sum((t - mx) * (v - my) for t, v in points) / den * 3600.0


BASELINE_WINDOW = 300.0
"""Seconds per window whose lowest sample is the baseline of a count that bursts."""


def _baseline(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The lowest value in each :data:`BASELINE_WINDOW`: a leak raises the floor, while a
    burst of check threads (which end once idle) only raises a few samples."""
    windows: dict[int, tuple[float, float]] = {}
    for t, v in points:
        key = int(t // BASELINE_WINDOW)
        if key not in windows or v < windows[key][1]:
            windows[key] = (t, v)
    return [windows[k] for k in sorted(windows)]


class Flapper:
    """Toggles the services' flags at random, each at most once every ``HOLD`` seconds."""

    def __init__(self, flags: list[Path], seed: int = 10) -> None:
        self.flags = flags
        self.rng = random.Random(seed)
        self.flips = 0
        self.last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0 / FLIPS_PER_SECOND):
            now = time.monotonic()
            i = self.rng.randrange(len(self.flags))
            if now - self.last.get(i, -1e9) < HOLD:
                continue
            flag = self.flags[i]
            if flag.exists():
                flag.unlink()
            else:
                flag.write_text("ok\n")
            self.last[i] = now
            self.flips += 1

    def start(self) -> Flapper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)


def _transitions(rig: Rig) -> int:
    services = (rig.status(timeout=10.0) or {}).get("services", {})
    return sum(int(s.get("transitions", 0)) for n, s in services.items() if n.startswith("f"))


@scenario("10a", "soak: 200 flapping services (make faults-soak)", quick=False)
def soak(ctx: Ctx, sc: Scenario) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    duration = float(os.environ.get(SOAK_SECONDS, "3600"))
    flags_dir = rig.lab.node_dir("node1") / "soak-flags"
    flags_dir.mkdir(exist_ok=True)
    flags = [flags_dir / f"f{i}" for i in range(SERVICES)]
    for flag in flags:
        flag.write_text("ok\n")
    config = base_config()
    config["defaults"].update({"interval": 1.0, "fast_interval": 0.25, "rise": 2, "fall": 2})
    config["service"] += [
        {
            "name": f"f{i}",
            "prefixes": [f"198.18.{i // 256}.{i % 256}/32"],
            "checks": [{"type": "file", "path": str(flag)}],
            "announce": {"med": 100},
        }
        for i, flag in enumerate(flags)
    ]
    prof = rig.new_profile("soak", config)
    rig.start_node1(prof, timeout=60.0)
    pid = rig.controller_pid()
    time.sleep(3.0)
    base_transitions = _transitions(rig)
    base_bird = import_counters(rig.lab, "node1")
    samples: list[dict[str, Any]] = []
    began = time.monotonic()
    flapper = Flapper(flags).start()
    try:
        while time.monotonic() - began < duration:
            samples.append(
                {
                    "t": time.monotonic() - began,
                    "rss_kib": rss_kib(pid),
                    "fds": fd_count(pid),
                    "threads": thread_count(pid),
                }
            )
            time.sleep(min(SAMPLE, max(0.0, duration - (time.monotonic() - began))))
    finally:
        flapper.stop()
    # the last flips' rise/fall checks, then their UPDATEs
    time.sleep(HOLD + 2.0)
    wait_until(lambda: rig.lab.api_pids("node1") == [pid], 5.0, what="the same controller")
    transitions = _transitions(rig) - base_transitions
    bird = import_counters(rig.lab, "node1")
    updates = bird.updates - base_bird.updates
    withdraws = bird.withdraws - base_bird.withdraws
    late = [s for s in samples if s["t"] >= 60.0] or samples
    series = {
        key: [(s["t"], float(s[key] or 0)) for s in late] for key in ("rss_kib", "fds", "threads")
    }
    # Threads come and go with bursts of checks (the pool grows while its queue stalls,
    # then shrinks): their growth is the slope of the floor, not of every sample.
    growth = {
        "rss_kib": _slope_per_hour(series["rss_kib"]),
        "fds": _slope_per_hour(_baseline(series["fds"])),
        "threads": _slope_per_hour(_baseline(series["threads"])),
    }
    peak = max(s["threads"] or 0 for s in samples)
    first, last = samples[0], samples[-1]
    row.injected = (
        f"{SERVICES} services (file checks every 1 s, rise 2, fall 2), flags flipped at random "
        f"{FLIPS_PER_SECOND:g} times a second (each flag held >= {HOLD:g} s), for "
        f"{duration / 60:.0f} min"
    )
    row.router = [
        f"BIRD received from node1: {updates:,} updates, {withdraws:,} withdraws "
        f"({updates + withdraws:,} route changes)",
    ]
    row.status = f"transitions counted by the controller: {transitions:,}"
    row.expected = (
        "RSS, descriptors and threads flat; every flip one route change, counted the same by "
        "the flapper, the controller and the router"
    )
    row.seen = (
        f"{flapper.flips:,} flips, {transitions:,} transitions, {updates + withdraws:,} changes "
        f"at the router; RSS {first['rss_kib'] / 1024:.1f} → {last['rss_kib'] / 1024:.1f} MB "
        f"({growth['rss_kib'] / 1024:+.2f} MB/h), fds {first['fds']} → {last['fds']} "
        f"({growth['fds']:+.1f}/h), threads {first['threads']} → {last['threads']} "
        f"({growth['threads']:+.1f}/h of the floor, bursts up to {peak}); a run of "
        f"{duration / 60:.0f} min"
    )
    row.figures = {
        "duration_s": duration,
        "flips": flapper.flips,
        "transitions": transitions,
        "updates": updates,
        "withdraws": withdraws,
        "growth_per_hour": growth,
        "samples": samples,
    }
    return judge(
        row,
        {
            "every flip one transition": transitions == flapper.flips,
            "every transition at the router": updates + withdraws == flapper.flips,
            "RSS flat (< 5 MB/h)": growth["rss_kib"] < 5 * 1024,
            "descriptors flat (< 1/h)": growth["fds"] < 1.0,
            "threads flat (< 1/h)": growth["threads"] < 1.0,
        },
    )
