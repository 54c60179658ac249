"""P1 failover: kill node1's web server at a random point of the check cycle and time how long
until node1's path leaves the router's kernel FIB (``ip monitor`` timestamps).

Row (d) SIGKILLs the server instead and gives announcer the event-driven ``process``
check on the server's pid file; beside it EXA at its fastest setting (the HTTP check
of (c): it has no other) and the floor (:mod:`tests.bench.floor`: a stand-in API
process that writes the withdraw the instant a pidfd says the server died).
Row (c) also measures its CPU floor (:mod:`tests.bench.checkfloor`): the least a
fresh-connection check every 0.1 s costs on this machine, on an asyncio loop and with
a blocking socket, with nothing of a controller around it.

node2 keeps announcing the anycast /32 with the same MED (a stand-in API process),
so the FIB goes from ECMP {node1, node2} to {node2}: that change is the failover.
Per configuration and tool it also measures the CPU the health checker's whole
process tree costs while the service is healthy (cgroup cpuacct over a window),
and ExaBGP's own CPU over the same window.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.lab import NODES, PREFIX_V4, Lab

from . import idlecost
from .common import PYTHON, Cgroup, cpu_seconds, log, summary
from .fibmon import FibMonitor
from .tools import (
    HEALTH_URL,
    Timing,
    announcer_argv,
    announcer_service,
    curl_command,
    exa_argv,
    write_announcer_config,
    write_exa_config,
)

FLOOR = Path(__file__).with_name("floor.py")
CHECK_FLOOR = Path(__file__).with_name("checkfloor.py")


@dataclass(frozen=True)
class Profile:
    key: str
    title: str
    timing: Timing
    tools: tuple[str, ...] = ("announcer", "exa")
    crash: bool = False
    """SIGKILL the web server (else SIGTERM: the same to a server with no handler)."""
    check: str = "http"
    """announcer's check: ``http`` (/health) or ``process`` (the server's pid file)."""


FAST = Timing(0.1, 0.05, 3, 2, timeout=0.1)
PROFILES = (
    Profile("a", "EXA's tuned numbers", Timing(0.2, 0.1, 3, 3)),
    Profile("b", "announcer's shipped default", Timing(1.0, 0.25, 3, 3)),
    Profile("c", "announcer's fast profile", FAST),
    # EXA has no process check: its fastest setting is (c)'s HTTP check
    Profile(
        "d",
        "web server SIGKILLed",
        FAST,
        tools=("announcer", "exa", "floor"),
        crash=True,
        check="process",
    ),
)
ROWS = (*(p.key for p in PROFILES), "idle")


def announcer_check(lab: Lab, check: str) -> dict[str, Any]:
    """announcer's check of node1's web server: HTTP on /health, or the process check."""
    if check == "process":
        pid_file = lab.http_pid_file("node1")
        return {"type": "process", "pid_file": str(pid_file), "immediate": True, "grace": 0.0}
    return {"type": "http", "url": HEALTH_URL}


def floor_argv(lab: Lab, name: str) -> list[str]:
    directory = lab.node_dir("node1")
    argv = [str(PYTHON), str(FLOOR), "--pid-file", str(lab.http_pid_file("node1"))]
    return [*argv, "--prefix", PREFIX_V4, "--log", str(directory / f"{name}.log")]


def tool_argv(lab: Lab, tool: str, name: str, timing: Timing, check: str = "http") -> list[str]:
    """The API process argv for ``tool`` on node1 with ``timing`` (configs written now)."""
    directory = lab.node_dir("node1")
    if tool == "floor":
        return floor_argv(lab, name)
    if tool == "announcer":
        service = announcer_service("web", [PREFIX_V4], announcer_check(lab, check))
        path = write_announcer_config(directory / f"{name}.toml", directory, [service], timing)
        return announcer_argv(path)
    path = write_exa_config(
        directory / f"{name}.exa.conf",
        ips=[PREFIX_V4],
        timing=timing,
        command=curl_command(HEALTH_URL, timing.check_timeout),
        disable=directory / "exa-disable",
    )
    return exa_argv(path)


def start_tool(
    lab: Lab,
    group: Cgroup,
    tool: str,
    name: str,
    timing: Timing,
    monitor: FibMonitor,
    check: str = "http",
) -> None:
    """node1 runs ExaBGP with ``tool`` (in ``group``) as its API process, node2 the stand-in;
    returns once both are in the FIB."""
    go = lab.node_dir("node1") / f"{name}.go"
    go.unlink(missing_ok=True)
    argv = group.wrap(tool_argv(lab, tool, name, timing, check), go)
    timeout = 60.0
    lab.ensure({"node1": argv, "node2": lab.standin_argv("node2")}, timeout=timeout)
    group.release(lambda: lab.api_pids("node1"), 1, go)
    both = {lab.links[n].peer_v4 for n in NODES}
    monitor.wait_state(PREFIX_V4, lambda g: set(g) == both, timeout)


def measure_cpu(lab: Lab, group: Cgroup, seconds: float) -> dict[str, float]:
    """CPU of the checker's tree and of node1's ExaBGP over ``seconds``, per second."""
    exabgp = lab.exabgp_pid("node1") or 0
    cpu0, exa0, t0 = group.cpu(), cpu_seconds(exabgp), time.monotonic()
    time.sleep(seconds)
    cpu1, exa1, t1 = group.cpu(), cpu_seconds(exabgp), time.monotonic()
    return {
        "checker_core_fraction": (cpu1 - cpu0) / (t1 - t0),
        "exabgp_core_fraction": (exa1 - exa0) / (t1 - t0),
        "window_s": t1 - t0,
    }


def measure_cpu_floor(lab: Lab, interval: float, seconds: float) -> dict[str, Any]:
    """The CPU of a bare fresh-connection check of node1's web server every ``interval``,
    per second, on an asyncio loop and with a blocking socket (run in node1)."""
    floors: dict[str, Any] = {}
    for mode in ("asyncio", "blocking"):
        argv = [str(PYTHON), str(CHECK_FLOOR), "--url", HEALTH_URL, "--mode", mode]
        argv += ["--interval", f"{interval:g}", "--seconds", f"{seconds:g}"]
        try:
            out = json.loads(lab.exec_in("node1", argv, timeout=seconds + 30.0))
        except Exception as exc:
            floors[mode] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        floors[mode] = {**out, "core_fraction": out["cpu_s"] / out["wall_s"]}
    return floors


def run_trials(
    lab: Lab,
    monitor: FibMonitor,
    timing: Timing,
    trials: int,
    rng: random.Random,
    crash: bool = False,
) -> tuple[list[float], int]:
    node1 = lab.links["node1"].peer_v4
    both = {lab.links[n].peer_v4 for n in NODES}
    limit = 10.0 + 3 * timing.interval * (timing.fall + 1)
    results: list[float] = []
    missed = 0
    for _ in range(trials):
        time.sleep(rng.uniform(0.0, timing.interval))
        t0 = time.time()
        if crash:
            lab.kill_http("node1")
        else:
            lab.stop_http("node1")
        try:
            event = monitor.wait(PREFIX_V4, lambda g: node1 not in g, after=t0, timeout=limit)
            results.append(event.stamp - t0)
        except TimeoutError as exc:
            log(f"  P1 trial missed: {exc}")
            missed += 1
        lab.start_http("node1")
        monitor.wait_state(PREFIX_V4, lambda g: set(g) == both, 60.0)
        monitor.trim()
        time.sleep(0.05)
    return results, missed


def run(
    lab: Lab,
    monitor: FibMonitor,
    *,
    trials: int,
    cpu_window: float,
    seed: int,
    out: dict[str, Any],
    rows: tuple[str, ...] = ROWS,
    idle_window: float = 60.0,
    idle_warmup: float = 3.0,
) -> dict[str, Any]:
    """Fills ``out`` as it goes (a failed run leaves the others' figures); ``rows`` selects
    the configurations (``--p1 d``: only the new row, for a targeted run)."""
    rng = random.Random(seed)
    out.update({"trials": trials, "cpu_window_s": cpu_window, "profiles": []})
    for profile in PROFILES:
        if profile.key not in rows:
            continue
        entry: dict[str, Any] = {
            "key": profile.key,
            "title": profile.title,
            "timing": profile.timing.__dict__,
            "label": profile.timing.label(),
            "tools": list(profile.tools),
            "crash": profile.crash,
            "check": profile.check,
        }
        out["profiles"].append(entry)
        for tool in profile.tools:
            log(f"P1 ({profile.key}) {profile.title}: {tool}, {trials} trials")
            group = Cgroup(f"p1{profile.key}-{tool}")
            try:
                name = f"p1{profile.key}-{tool}"
                start_tool(lab, group, tool, name, profile.timing, monitor, profile.check)
                time.sleep(1.0)
                cpu = measure_cpu(lab, group, cpu_window)
                failovers, missed = run_trials(
                    lab, monitor, profile.timing, trials, rng, profile.crash
                )
                entry[tool] = {"failover": summary(failovers), "missed": missed, **cpu}
                entry[tool]["samples"] = [round(x, 4) for x in failovers]
                fo = entry[tool]["failover"]
                log(
                    f"  {tool}: p50 {fo.get('p50', math.nan):.3f} s, "
                    f"p99 {fo.get('p99', math.nan):.3f} s, max {fo.get('max', math.nan):.3f} s, "
                    f"CPU {100 * cpu['checker_core_fraction']:.2f} % of a core"
                )
            except Exception as exc:
                log(f"  P1 ({profile.key}) {tool} failed: {exc!r}")
                entry[tool] = {"error": f"{type(exc).__name__}: {exc}", "failover": {"n": 0}}
                lab.ensure({n: lab.standin_argv(n) for n in NODES})
            finally:
                lab.stop_exabgp("node1")
                group.remove()
        if profile.key == "c":
            entry["cpu_floor"] = floor = measure_cpu_floor(lab, profile.timing.interval, cpu_window)
            log(
                "  the floor: "
                + ", ".join(
                    f"{mode} {100 * f['core_fraction']:.2f} %"
                    if "core_fraction" in f
                    else f"{mode} failed: {f.get('error')}"
                    for mode, f in floor.items()
                )
            )
    if "idle" in rows:
        log(f"P1 idle CPU with the process check vs without, {idle_window:g} s")
        idle = out.setdefault("idle", {})
        try:
            idlecost.run(lab, window=idle_window, warmup=idle_warmup, out=idle)
        except Exception as exc:
            log(f"  P1 idle CPU failed: {exc!r}")
            idle["error"] = f"{type(exc).__name__}: {exc}"
    return out
