"""P3 cost at scale: N services on node1, each one HTTP check every second against local
keep-alive health endpoints (:mod:`tests.bench.checkserver` on 127.0.0.1 and 127.0.0.2),
each service announcing its own /32 from 198.19.0.0/16 to the lab's BIRD.

For each tool and N: CPU seconds of the checker's whole process tree (a cgroup v1
cpuacct group: EXA's ``sh`` and ``curl`` children included) over a window, peak RSS
(the tree's summed VmRSS/VmHWM, sampled every 0.5 s; the memory cgroup's
``max_usage_in_bytes`` too), and checks actually run per second against the
N per second scheduled (announcer: ``checks_run`` from its status; EXA: requests
counted by the endpoints). ExaBGP's own CPU is reported beside it, and so is the
endpoints' (at N = 2,000, where only announcer runs, they are a real load on the same
cores). The machine's pace (``python -c pass``) is taken at the start of the section
and on both sides of every row: on a shared machine it says how far the figures can be
trusted, and issue 12 judges its CPU goals scaled by it.

At N = 1,000 and up, the floor runs too (:mod:`tests.bench.scalefloor`), right after
announcer's row of the same size: the same checks against the same endpoints on one
asyncio loop, parsed by h11, and nothing else: what issue 12's design costs before any
controller work.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from tests.lab import Lab

from .common import PYTHON, Cgroup, RssSampler, cpu_seconds, log, pace, wait_for
from .profiling import PySpy
from .tools import (
    CheckServers,
    OwnExabgp,
    Timing,
    announcer_argv,
    announcer_service,
    bird_route_count,
    checks_run,
    control_request,
    curl_command,
    exa_argv,
    wait_session,
    write_announcer_config,
    write_exa_config,
)

TIMING = Timing(1.0, 0.25, 3, 3)
SCALE_FLOOR = Path(__file__).with_name("scalefloor.py")
FLOOR_FROM = 1000
"""The floor runs at the announcer sizes from this one up (and at the largest)."""


def prefix(i: int) -> str:
    return f"198.19.{i // 256}.{i % 256}/32"


def _wait_routes(lab: Lab, n: int, timeout: float, exabgp: OwnExabgp) -> int:
    """Wait until every service's route is in BIRD, or ``timeout`` passes (an overloaded
    checker may never have them all up at once); return how many are in."""
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        if not exabgp.alive():
            raise RuntimeError(f"ExaBGP exited; see {exabgp.log}")
        count = bird_route_count(lab, "node1")
        if count >= n:
            break
        time.sleep(0.2)
    return count


_EXA_FAILED = re.compile(r"Timeout \(|Check command was unsuccessful")


def _count(tool: str, socket_path: Path, servers: CheckServers) -> tuple[int, float]:
    """Checks run so far (announcer: ``checks_run``; EXA: requests at the endpoints) and
    when they were read (the middle of the request, ``time.monotonic()``)."""
    began = time.monotonic()
    count = checks_run(socket_path)[0] if tool == "announcer" else servers.requests()
    return count, (began + time.monotonic()) / 2


def _endpoints(servers: CheckServers) -> tuple[dict[str, int], float]:
    """The endpoints' counters and when they were read (``time.monotonic()``)."""
    began = time.monotonic()
    stats = servers.stats()
    return stats, (began + time.monotonic()) / 2


def _failed_checks(tool: str, socket_path: Path, log_path: Path) -> int:
    """Failed checks so far: announcer's ``check_failures``; EXA's warnings in ExaBGP's log."""
    if tool == "announcer":
        status = control_request(socket_path, "status", timeout=30.0)
        return sum(int(s.get("check_failures", 0)) for s in status.get("services", {}).values())
    text = log_path.read_text(errors="replace")
    return len(_EXA_FAILED.findall(text))


def _wait_clear(lab: Lab, timeout: float = 60.0) -> None:
    wait_for(lambda: bird_route_count(lab, "node1") == 0, timeout, 0.2, "node1's routes gone")


def run_one(
    lab: Lab,
    servers: CheckServers,
    tool: str,
    n: int,
    *,
    window: float,
    warmup: float,
    profile: float = 0.0,
) -> dict[str, Any]:
    directory = lab.node_dir("node1")
    name = f"p3-{tool}-{n}"
    group = Cgroup(name)
    go = directory / f"{name}.go"
    go.unlink(missing_ok=True)
    socket_path = lab.control_socket("node1")
    if tool == "announcer":
        services = [
            announcer_service(f"s{i:04d}", [prefix(i)], {"type": "http", "url": servers.url(i)})
            for i in range(n)
        ]
        config = write_announcer_config(directory / f"{name}.toml", directory, services, TIMING)
        processes = {"announcer": group.wrap(announcer_argv(config), go)}
    else:
        processes = {}
        for i in range(n):
            hc = write_exa_config(
                directory / f"{name}-{i:04d}.exa.conf",
                ips=[prefix(i)],
                timing=TIMING,
                command=curl_command(servers.url(i), TIMING.check_timeout),
                name=f"s{i:04d}",
            )
            processes[f"hc{i:04d}"] = group.wrap(exa_argv(hc), go)
    exabgp = OwnExabgp(lab, "node1", name, processes).start()
    result: dict[str, Any] = {"tool": tool, "n": n}
    try:
        wait_session(lab, "node1", 60.0)
        group.release(exabgp.api_pids, len(processes), go, timeout=120.0)
        t_go = time.monotonic()
        result["routes_before_window"] = _wait_routes(lab, n, 60.0 + n / 5, exabgp)
        result["routes_up_after_s"] = time.monotonic() - t_go
        time.sleep(warmup)
        sampler = RssSampler(group).start()
        group.reset_memory_peak()
        failed0 = _failed_checks(tool, socket_path, exabgp.log)
        ran0, at0 = _count(tool, socket_path, servers)
        ep0, ep_at0 = _endpoints(servers)
        # CPU read after the status requests above, as it is read before those below: the
        # window holds steady checking only (a status of 2,000 services is not free).
        cpu0, exa0, split0 = group.cpu(), cpu_seconds(exabgp.pid), group.cpu_split()
        endpoints0 = servers.cpu_seconds()
        t0 = time.monotonic()
        time.sleep(window)
        t1 = time.monotonic()
        cpu1, exa1, split1 = group.cpu(), cpu_seconds(exabgp.pid), group.cpu_split()
        endpoints1 = servers.cpu_seconds()
        ep1, ep_at1 = _endpoints(servers)
        ran1, at1 = _count(tool, socket_path, servers)
        failed1 = _failed_checks(tool, socket_path, exabgp.log)
        routes = bird_route_count(lab, "node1")
        peak_kb = sampler.stop()
        elapsed = t1 - t0
        # checks counted between the two readings, scheduled over the same span
        counted = at1 - at0
        scheduled = n * counted / TIMING.interval
        ran = ran1 - ran0
        ep_span = ep_at1 - ep_at0
        ep_scheduled = n * ep_span / TIMING.interval
        result.update(
            {
                "window_s": elapsed,
                "cpu_s": cpu1 - cpu0,
                "core_fraction": (cpu1 - cpu0) / elapsed,
                "system_share": (split1[1] - split0[1])
                / max(1e-9, (split1[0] - split0[0]) + (split1[1] - split0[1])),
                "exabgp_core_fraction": (exa1 - exa0) / elapsed,
                "endpoints_core_fraction": (endpoints1 - endpoints0) / elapsed,
                "peak_rss_mb": peak_kb / 1024,
                "cgroup_memory_peak_mb": group.memory_peak() / 1024 / 1024,
                "processes": len(group.pids()),
                "checks_per_s": ran / counted,
                "scheduled_per_s": scheduled / counted,
                "run_fraction": ran / scheduled if scheduled else 0.0,
                "on_time_fraction": (ep1["on_time"] - ep0["on_time"]) / ep_scheduled
                if ep_scheduled
                else 0.0,
                "endpoint_requests_per_s": (ep1["requests"] - ep0["requests"]) / ep_span,
                "failed_checks": failed1 - failed0,
                "routes_after_window": routes,
            }
        )
        if profile > 0 and tool == "announcer":
            pids = [p for p in group.pids() if p != exabgp.pid]
            if pids:
                result["profile"] = PySpy.profile(pids[0], profile)
    finally:
        exabgp.stop()
        _wait_clear(lab)
        group.remove()
    return result


def run_floor(
    lab: Lab, servers: CheckServers, n: int, *, window: float, warmup: float
) -> dict[str, Any]:
    """:mod:`tests.bench.scalefloor` with ``n`` services in node1, against ``servers``."""
    argv = [str(PYTHON), str(SCALE_FLOOR), "--n", str(n), "--port", str(servers.port)]
    argv += ["--hosts", ",".join(servers.addresses), "--interval", f"{TIMING.interval:g}"]
    argv += ["--seconds", f"{window:g}", "--warmup", f"{warmup:g}"]
    out = json.loads(lab.exec_in("node1", argv, timeout=window + warmup + n / 20 + 60))
    wall = out["wall_s"]
    return {
        "tool": "floor",
        **out,
        "core_fraction": out["cpu_s"] / wall,
        "answered_per_s": out["answered"] / wall,
        "scheduled_per_s": n / TIMING.interval,
    }


def _row(tool: str, n: int, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One row of the section, ``measure()``, logged; a failure is the row's ``error``."""
    try:
        entry = measure()
    except Exception as exc:
        log(f"  P3 {tool} N={n} failed: {exc!r}")
        return {"tool": tool, "n": n, "error": f"{type(exc).__name__}: {exc}"}
    if tool == "floor":
        log(
            f"  floor N={n}: {100 * entry['core_fraction']:.1f} % of a core, "
            f"{entry['answered_per_s']:.0f}/{n} answered/s, {entry['bad']} not 200"
        )
    else:
        log(
            f"  {tool} N={n}: {100 * entry['core_fraction']:.1f} % of a core, "
            f"{entry['peak_rss_mb']:.0f} MB, {entry['checks_per_s']:.0f}/"
            f"{entry['scheduled_per_s']:.0f} checks/s, "
            f"{100 * entry['on_time_fraction']:.1f} % on time, "
            f"{entry['failed_checks']} failed; endpoints "
            f"{100 * entry['endpoints_core_fraction']:.1f} % of a core"
        )
    return entry


def run(
    lab: Lab,
    *,
    announcer_sizes: list[int],
    exa_sizes: list[int],
    window: float,
    warmup: float,
    profile: float,
    out: dict[str, Any],
) -> dict[str, Any]:
    """Fills ``out`` as it goes (a failed run leaves the others' figures)."""
    lab.stop_exabgp("node1")
    servers = CheckServers(lab, "node1").start()
    out.update({"window_s": window, "timing": TIMING.label(), "runs": [], "pace_s": pace()})
    log(f"P3: python -c pass takes {1000 * out['pace_s']:.0f} ms (the machine's pace)")
    try:
        # announcer's rows first: EXA's hundreds of processes (gigabytes of them) must not
        # still weigh on the machine while announcer's largest rows are measured. Each
        # floor right after announcer's row of its size: the nearest moment to compare.
        rows: list[tuple[str, int]] = []
        for n in sorted(announcer_sizes):
            rows.append(("announcer", n))
            if n >= FLOOR_FROM or n == max(announcer_sizes):  # a quick run has one too
                rows.append(("floor", n))
        for tool, n in rows + [("exa", n) for n in sorted(exa_sizes)]:
            log(f"P3 {tool} N={n}: {window:g} s window")
            if tool == "floor":
                measure = partial(run_floor, lab, servers, n, window=window, warmup=warmup)
            else:
                seconds = profile if n == max(announcer_sizes) else 0.0
                measure = partial(
                    run_one, lab, servers, tool, n, window=window, warmup=warmup, profile=seconds
                )
            before = pace()
            entry = _row(tool, n, measure)
            # The pace on both sides of the row: the section's start says little about
            # the machine eight minutes on (issue 12 judges CPU scaled by it).
            entry["pace_s"] = (before + pace()) / 2
            out["runs"].append(entry)
    finally:
        servers.stop()
    return out
