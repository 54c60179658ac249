"""P1's idle cost of the ``process`` check: the controller with it against without it.

Three controllers run side by side as API processes of one ExaBGP on node1, over
the same window, each in a cgroup of its own (cpuacct, the whole process tree):

- ``with``: service ``web`` with the HTTP check of /health and the ``process`` check on
  the web server's pid file (how an operator adds it: README, a live but wedged
  process still needs the HTTP check);
- ``without``: the same service with the HTTP check alone;
- ``without-again``: the same as ``without`` once more, so the table shows how far two
  identical controllers differ over the window (the noise the goal's difference
  has to stand out from).

Side by side rather than one after the other, so load from elsewhere on the
machine falls on all three alike. Each announces a /32 of its own from
198.18.0.0/24, so none of them touches the anycast prefix.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

from tests.lab import Lab
from tests.lab.procs import cmdline

from .common import Cgroup, log, wait_for
from .tools import (
    HEALTH_URL,
    OwnExabgp,
    Timing,
    announcer_argv,
    announcer_service,
    bird_route_count,
    wait_session,
    write_announcer_config,
)

TIMING = Timing(1.0, 0.25, 3, 3)  # announcer's shipped default, as operators run it
VARIANTS = ("with", "without", "without-again")


def checks(lab: Lab, variant: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"type": "http", "url": HEALTH_URL}]
    if variant == "with":
        pid_file = str(lab.http_pid_file("node1"))
        out.append({"type": "process", "pid_file": pid_file, "immediate": True, "grace": 0.0})
    return out


def _wrapper_of(exabgp: OwnExabgp, go: Path) -> list[int]:
    """The API process waiting for ``go`` (each variant's wrapper has a go file of its own)."""
    return [pid for pid in exabgp.api_pids() if str(go) in cmdline(pid)]


def run(lab: Lab, *, window: float, warmup: float, out: dict[str, Any]) -> dict[str, Any]:
    """Fills ``out`` with each variant's CPU over ``window`` s (after ``warmup`` s up)."""
    lab.stop_exabgp("node1")
    out.update({"window_s": window, "timing": TIMING.label(), "variants": {}})
    directory = lab.node_dir("node1")
    groups: dict[str, Cgroup] = {}
    processes: dict[str, list[str]] = {}
    gos: dict[str, Path] = {}
    try:
        for i, variant in enumerate(VARIANTS):
            own = directory / f"idle-{variant}"
            own.mkdir(exist_ok=True)
            service = announcer_service("web", [f"198.18.0.{i + 1}/32"], {})
            service["checks"] = checks(lab, variant)
            config = write_announcer_config(own / "announcer.toml", own, [service], TIMING)
            gos[variant] = own / "go"
            gos[variant].unlink(missing_ok=True)
            groups[variant] = Cgroup(f"idle-{variant}")
            processes[f"idle_{variant.replace('-', '_')}"] = groups[variant].wrap(
                announcer_argv(config), gos[variant]
            )
        exabgp = OwnExabgp(lab, "node1", "idle", processes).start()
        try:
            wait_session(lab, "node1", 60.0)
            for variant, group in groups.items():
                group.release(partial(_wrapper_of, exabgp, gos[variant]), 1, gos[variant])
            deadline = time.monotonic() + 30.0
            while bird_route_count(lab, "node1") < len(VARIANTS):
                if time.monotonic() > deadline:
                    raise TimeoutError("the idle controllers' routes not all in BIRD after 30 s")
                time.sleep(0.1)
            time.sleep(warmup)
            before = {v: g.cpu() for v, g in groups.items()}
            t0 = time.monotonic()
            time.sleep(window)
            elapsed = time.monotonic() - t0
            after = {v: g.cpu() for v, g in groups.items()}
            routes = bird_route_count(lab, "node1")
        finally:
            exabgp.stop()
        wait_for(lambda: bird_route_count(lab, "node1") == 0, 60.0, 0.2, "idle routes gone")
        for variant in VARIANTS:
            out["variants"][variant] = {
                "core_fraction": (after[variant] - before[variant]) / elapsed
            }
        f = {v: e["core_fraction"] for v, e in out["variants"].items()}
        out.update(
            {
                "elapsed_s": elapsed,
                "routes_after_window": routes,
                "difference": f["with"] - f["without"],
                "noise": f["without-again"] - f["without"],
            }
        )
        log(
            f"  idle CPU: with {100 * f['with']:.3f} %, without {100 * f['without']:.3f} %, "
            f"again {100 * f['without-again']:.3f} % of a core"
        )
    finally:
        for group in groups.values():
            group.remove()
    return out
