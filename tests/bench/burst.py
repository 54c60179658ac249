"""P4 announcement burst: 10,000 and 50,000 /32s (from 198.18.0.0/16) configured on node1;
the time from the checker's start until every one is in the router's BIRD.

ExaBGP is started first and its session to BIRD established, with the checker held
back by :data:`~tests.bench.common.CGWRAP`; the clock starts when the wrapper is let
go (it execs the checker at once). Done when ``birdc show route protocol node1
count`` reaches N (polled every 20 ms). Then: did every command get its answer (no
deadlock: the controller's ``done`` count equals what it sent), and the checker's
peak RSS. announcer: one service with every prefix and a ``file`` check, rise 1;
EXA: one ``exabgp healthcheck`` with every prefix as ``--ip``, no check command,
rise 1 (it announces on its first iteration, one line at a time, each waiting for
ExaBGP's answer).

Every ExaBGP here runs with the lab's environment, i.e. the ``exabgp.reactor.speed``
announcer ships (:data:`tests.lab.exabgp.REACTOR_SPEED`, 0.1: its loop sleeps 1 ms
between turns, not 10).

The floor: a stand-in API process that writes exactly the commands announcer's
writer renders for those prefixes, all at once, with no Python start-up of note and
no checks; what is left is ExaBGP's own ingestion (with the shipped reactor speed,
and with ExaBGP's default 1.0 for comparison).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.lab import Lab, standin
from tests.lab.exabgp import REACTOR_SPEED

from .common import Cgroup, RssSampler, log, wait_for
from .profiling import PySpy
from .tools import (
    OwnExabgp,
    Timing,
    announcer_argv,
    announcer_service,
    bird_route_count,
    control_request,
    exa_argv,
    read_stamp,
    wait_session,
    write_announcer_config,
    write_exa_config,
)

TIMING = Timing(3600.0, 1.0, 1, 3)
DEFAULT_REACTOR = {"exabgp_reactor_speed": "1.0"}
"""ExaBGP's own default reactor speed, for the "floor-default" row."""
TOOLS = ("announcer", "exa", "floor", "floor-default")


def prefixes(n: int) -> list[str]:
    if n > 65536:
        raise ValueError("at most 65,536 /32s fit in 198.18.0.0/16")
    return [f"198.18.{i // 256}.{i % 256}/32" for i in range(n)]


def blocks(n: int) -> list[str]:
    """The same ``n`` addresses as :func:`prefixes`, as the fewest CIDR blocks."""
    first = ipaddress.IPv4Address("198.18.0.0")
    last = first + (n - 1)
    return [str(net) for net in ipaddress.summarize_address_range(first, last)]


def rendered(n: int) -> list[str]:
    """The commands announcer's writer sends for ``n`` prefixes announced with MED 100."""
    from announcer.exabgp import Target, render_announce
    from announcer.state import RouteAttributes

    return render_announce(prefixes(n), RouteAttributes(med=100), Target())


def _events(log_path: Path, event: str) -> list[float]:
    """Wall times of announcer's ``event=<event>`` lines in the ExaBGP log."""
    pattern = re.compile(rf"^ts=(\S+) .*\bevent={event}\b")
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        match = pattern.match(line)
        if match:
            stamp = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%S.%fZ")
            out.append(stamp.replace(tzinfo=UTC).timestamp())
    return out


def _argv(lab: Lab, tool: str, n: int, name: str) -> list[str]:
    directory = lab.node_dir("node1")
    if tool == "announcer":
        check = {"type": "file", "path": str(directory)}
        service = announcer_service("burst", prefixes(n), check)
        config = write_announcer_config(directory / f"{name}.toml", directory, [service], TIMING)
        return announcer_argv(config)
    if tool == "exa":
        # The prefixes as a few CIDR blocks that EXA splits into /32s itself
        # (--deaggregate-networks): thousands of `ip = ...` lines would cost EXA minutes
        # before its first announcement (its config file parser is quadratic).
        hc = write_exa_config(
            directory / f"{name}.exa.conf",
            ips=blocks(n),
            timing=TIMING,
            command=None,
            extra=["deaggregate-networks"],
        )
        return exa_argv(hc)
    return standin.write_standin(directory, rendered(n), directory / f"{name}.standin.log")


def run_one(lab: Lab, tool: str, n: int, *, timeout: float) -> dict[str, Any]:
    directory = lab.node_dir("node1")
    name = f"p4-{tool}-{n}"
    group = Cgroup(name)
    go = directory / f"{name}.go"
    stamp = directory / f"{name}.stamp"
    for path in (go, stamp):
        path.unlink(missing_ok=True)
    argv = group.wrap(_argv(lab, tool, n, name), go, stamp=stamp, poll=0.002)
    env = DEFAULT_REACTOR if tool == "floor-default" else None
    exabgp = OwnExabgp(lab, "node1", name, {"checker": argv}, env=env).start()
    result: dict[str, Any] = {"tool": tool, "n": n}
    sampler = RssSampler(group, period=0.25)
    try:
        wait_session(lab, "node1", 60.0)
        if bird_route_count(lab, "node1") != 0:
            raise RuntimeError("node1 already has routes in BIRD before the burst")
        pids = group.release(exabgp.api_pids, 1, go)
        sampler.start()
        t_exec = read_stamp(stamp)
        first = None
        deadline = time.monotonic() + timeout
        count = 0
        while time.monotonic() < deadline:
            count = bird_route_count(lab, "node1")
            if count and first is None:
                first = time.time()
            if count >= n or not exabgp.alive():
                break
            time.sleep(0.02)
        t_done = time.time()
        complete = count >= n
        result.update(
            {
                "complete": complete,
                "routes_in_bird": count,
                "seconds": t_done - t_exec if complete else None,
                "gave_up_after_s": None if complete else t_done - t_exec,
                "first_route_after_s": (first - t_exec) if first else None,
                "routes_per_s": n / (t_done - t_exec) if complete else None,
                "exabgp_alive": exabgp.alive(),
                "commands": len(rendered(n)) if tool.startswith("floor") else None,
            }
        )
        if tool == "announcer":
            starts = [t for t in _events(exabgp.log, "start") if t >= t_exec - 1]
            result["config_loaded_after_s"] = starts[0] - t_exec if starts else None
            result["restarts"] = max(0, len(starts) - 1)
            result["stalls"] = len([t for t in _events(exabgp.log, "stalled") if t >= t_exec - 1])
            wire: dict[str, Any] = {}

            def answered() -> bool:
                status = control_request(lab.control_socket("node1"), "status", timeout=10.0)
                wire.update(status.get("exabgp", {}))
                return bool(wire.get("sent")) and wire.get("pending") == 0

            if exabgp.alive():
                with contextlib.suppress(TimeoutError, Exception):
                    wait_for(answered, 30.0, 0.2, "every command answered")
            result.update(
                {"sent": wire.get("sent"), "done": wire.get("done"), "pending": wire.get("pending")}
            )
            result["commands"] = wire.get("sent")
            result["deadlock"] = not (complete and wire.get("pending") == 0)
        else:
            result["deadlock"] = not complete
            if tool == "exa":
                result["commands"] = n
        result["controller_alive"] = all(p in group.pids() for p in pids)
        result["peak_rss_mb"] = sampler.stop() / 1024
        result["cgroup_memory_peak_mb"] = group.memory_peak() / 1024 / 1024
    finally:
        sampler.stop()
        exabgp.stop()
        wait_for(lambda: bird_route_count(lab, "node1") == 0, 120.0, 0.2, "burst routes withdrawn")
        group.remove()
    return result


def profile_start(lab: Lab, n: int, seconds: float) -> dict[str, Any]:
    """py-spy over announcer's first ``seconds`` with ``n`` prefixes (a run of its own)."""
    if not PySpy.available():
        return {"skipped": "py-spy not installed (.venv/bin/pip install py-spy)"}
    directory = lab.node_dir("node1")
    name = f"p4-profile-{n}"
    group = Cgroup(name)
    go = directory / f"{name}.go"
    go.unlink(missing_ok=True)
    argv = group.wrap(_argv(lab, "announcer", n, name), go)
    exabgp = OwnExabgp(lab, "node1", name, {"checker": argv}).start()
    try:
        wait_session(lab, "node1", 60.0)
        pid = group.release(exabgp.api_pids, 1, go)[0]
        return PySpy.profile(pid, seconds, rate=250)
    finally:
        exabgp.stop()
        wait_for(lambda: bird_route_count(lab, "node1") == 0, 120.0, 0.2, "routes withdrawn")
        group.remove()


def run(
    lab: Lab,
    *,
    sizes: list[int],
    exa_sizes: list[int],
    timeout: float,
    profile: float,
    profile_size: int,
    out: dict[str, Any],
) -> dict[str, Any]:
    """Fills ``out`` as it goes (a failed run leaves the others' figures)."""
    lab.stop_exabgp("node1")
    out["reactor_speed"] = REACTOR_SPEED
    out.setdefault("runs", [])
    for n in sizes:
        for tool in TOOLS:
            if tool == "exa" and n not in exa_sizes:
                continue
            log(f"P4 {tool}: {n} prefixes")
            try:
                entry = run_one(lab, tool, n, timeout=timeout)
            except Exception as exc:
                log(f"  P4 {tool} {n} failed: {exc!r}")
                entry = {"tool": tool, "n": n, "error": f"{type(exc).__name__}: {exc}"}
            seconds = entry.get("seconds")
            log(
                f"  {tool} {n}: "
                + (f"{seconds:.2f} s" if seconds is not None else "INCOMPLETE")
                + f", peak RSS {entry.get('peak_rss_mb', 0):.0f} MB"
            )
            out["runs"].append(entry)
    if profile > 0:
        log(f"P4 profile: announcer start with {profile_size} prefixes, {profile:g} s of py-spy")
        try:
            out["profile"] = {"n": profile_size, **profile_start(lab, profile_size, profile)}
        except Exception as exc:
            out["profile"] = {"n": profile_size, "skipped": f"{type(exc).__name__}: {exc}"}
    return out
