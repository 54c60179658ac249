"""Fault 7: checks that misbehave, and whether the rest of the controller notices.

Each row adds one misbehaving service to node1's controller by a reload (the fault),
leaves it a while, removes it by another reload, and compares: a ``witness`` service
(a file check every 0.2 s) must run every round and never fail, ``web`` must not move at
the router, and the controller's descriptors, threads and child processes are counted
before the fault and after its removal (a leak is what is left).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from tests.lab.procs import all_pids, cmdline, is_alive

from .model import Row
from .registry import Ctx, Scenario, fill, judge, scenario
from .rig import PYTHON, Rig, Watch, base_config, fd_count, thread_count

BAD = Path(__file__).with_name("_bad.py")
WITNESS_INTERVAL = 0.2


def _base(rig: Rig) -> dict[str, Any]:
    flag = rig.lab.node_dir("node1") / "witness-ok"
    flag.write_text("ok\n")
    config = base_config()
    config["service"].append(
        {
            "name": "witness",
            "prefixes": ["192.0.2.14/32"],
            "checks": [{"type": "file", "path": str(flag)}],
            "interval": WITNESS_INTERVAL,
            "fast_interval": 0.1,
            "rise": 1,
            "fall": 1,
            "announce": {"med": 100},
        }
    )
    return config


def _marked(marker: str) -> list[int]:
    """Live processes whose argv is exactly ``sleep <marker>`` (the checks' grandchildren)."""
    return [p for p in all_pids() if cmdline(p) == ["sleep", marker] and is_alive(p)]


def _counts(rig: Rig, pid: int, marker: str | None) -> dict[str, int]:
    return {
        "fds": fd_count(pid) or 0,
        "threads": thread_count(pid) or 0,
        "children": len(rig.descendants(pid)),
        "escaped": len(_marked(marker)) if marker else 0,
    }


def _witness(rig: Rig) -> dict[str, Any]:
    found = (rig.status() or {}).get("services", {}).get("witness", {})
    return found if isinstance(found, dict) else {}


def _check_fault(
    ctx: Ctx,
    sc: Scenario,
    *,
    services: list[dict[str, Any]],
    injected: str,
    server: tuple[str, int] | None = None,
    marker: str | None = None,
    window: float | None = None,
    settle: float | None = None,
    defect: str = "",
) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    lab = rig.lab
    window = window if window is not None else (4.0 if ctx.quick else 10.0)
    bad_server = None
    if server is not None:
        mode, port = server
        argv = [str(PYTHON), str(BAD), mode, "--port", str(port), "--lab", lab.id]
        bad_server = lab.spawn("node1", f"bad {mode}", argv, lab.node_dir("node1") / "bad.log")
    base = _base(rig)
    prof = rig.new_profile(f"chk-{sc.id}", base)
    try:
        rig.start_node1(prof)
        pid = rig.controller_pid()
        time.sleep(1.0)
        before = _counts(rig, pid, marker)
        with Watch(rig) as w:
            prof.write({**base, "service": [*base["service"], *services]})
            w.inject()
            added = rig.cli("reload")
            wit0, at0 = _witness(rig), time.monotonic()
            time.sleep(window)
            wit1, at1 = _witness(rig), time.monotonic()
            during = _counts(rig, pid, marker)
            prof.write(base)
            removed = rig.cli("reload")
            time.sleep(2.0)  # the removed services retire; their last checks end
            after = _counts(rig, pid, marker)
            escaped = _marked(marker) if marker else []
            same_pid = rig.lab.api_pids("node1") == [pid]
            later = None
            if settle is not None:
                time.sleep(settle)  # threads started for the fault end when idle this long
                later = _counts(rig, pid, marker)
    finally:
        if bad_server is not None:
            bad_server.stop(grace=1.0)
    for leftover in escaped:  # the lab's own cleanup, not the controller's
        os.kill(leftover, signal.SIGKILL)
    ran = wit1.get("checks_run", 0) - wit0.get("checks_run", 0)
    due = (at1 - at0) / WITNESS_INTERVAL
    failures = wit1.get("check_failures", 0) - wit0.get("check_failures", 0)
    row.injected = injected
    row.defect = defect
    fill(row, w, events=("check",))
    row.status = (
        f"witness: {wit1.get('health')} {wit1.get('route')}, {ran} rounds, {failures} failed; "
        + row.status
    )
    row.expected = (
        "the misbehaving check fails on its own timeout; every other service keeps its "
        "interval and never fails; web untouched; no descriptor, thread or process left"
    )
    row.seen = (
        f"witness ran {ran} of {due:.0f} rounds due ({failures} failed); controller before / "
        f"during / after: fds {before['fds']}/{during['fds']}/{after['fds']}, threads "
        f"{before['threads']}/{during['threads']}/{after['threads']}, child processes "
        f"{before['children']}/{during['children']}/{after['children']}"
        + (f", escaped grandchildren {during['escaped']}/{after['escaped']}" if marker else "")
        + (f"; {settle:g} s later threads {later['threads']}" if later is not None else "")
    )
    row.figures = {
        "before": before,
        "during": during,
        "after": after,
        "later": later,
        "witness_ran": ran,
        "witness_due": due,
        "witness_failed": failures,
    }
    untouched = w.quiet()
    checks = {
        "reloads accepted": added.returncode == 0 and removed.returncode == 0,
        "witness kept its interval (>= 80 % of rounds)": ran >= 0.8 * due - 1,
        "witness never failed": failures == 0,
        "web untouched at the router": untouched,
        "controller still the same process": same_pid,
        "no descriptor left": after["fds"] <= before["fds"] + 1,
        "no child process left": after["children"] <= before["children"],
    }
    if marker:
        checks["no escaped grandchild left"] = after["escaped"] == 0
    if later is not None:
        # the pool's own threads (workers, 32 by default) start when needed and stay
        checks["threads back to the pool's size"] = later["threads"] <= before["threads"] + 32
    return judge(row, checks)


def _bad_service(name: str, index: int, check: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "prefixes": [f"192.0.2.{100 + index}/32"],
        "checks": [check],
        "interval": 1.0,
        "timeout": 0.5,
        "announce": {"med": 100},
        **extra,
    }


@scenario("7a", "command check ignoring SIGTERM, forking children", quick=True)
def command_children(ctx: Ctx, sc: Scenario) -> Row:
    marker = "3071"
    command = f"trap '' TERM; sleep {marker} & sleep {marker} & sleep {marker}; wait"
    return _check_fault(
        ctx,
        sc,
        services=[_bad_service("bad", 0, {"type": "command", "command": command, "shell": True})],
        injected=f"a command check (timeout 0.5 s, every 1 s) that ignores SIGTERM and forks "
        f'three children: sh -c "{command}"',
        marker=marker,
    )


@scenario("7b", "command check forking children with setsid")
def command_setsid(ctx: Ctx, sc: Scenario) -> Row:
    marker = "3072"
    command = f"trap '' TERM; setsid sleep {marker} & setsid sleep {marker} & sleep {marker}"
    return _check_fault(
        ctx,
        sc,
        services=[_bad_service("bad", 0, {"type": "command", "command": command, "shell": True})],
        injected=f"a command check (timeout 0.5 s, every 1 s) whose children leave its session "
        f'with setsid: sh -c "{command}"',
        marker=marker,
        defect="found and fixed: the setsid'd children outlived every timed-out run (killing "
        "the check's process group does not reach them), more processes every round. "
        "checks/command.py now stops and kills the check's whole process tree, found "
        "through /proc/PID/task/*/children while the check still holds it; regression test "
        "tests/unit/checks/test_check_command_setsid.py. Still open: a child detached by a "
        "command that already exited (a double fork) belongs to init by then",
    )


@scenario("7c", "HTTP server that accepts and never answers", quick=True)
def http_silent(ctx: Ctx, sc: Scenario) -> Row:
    return _check_fault(
        ctx,
        sc,
        services=[_bad_service("bad", 0, {"type": "http", "url": "http://127.0.0.1:8081/"})],
        injected="an HTTP check (timeout 0.5 s) against a server that accepts and never answers",
        server=("silent-http", 8081),
    )


@scenario("7d", "HTTP server answering one byte a second")
def http_trickle(ctx: Ctx, sc: Scenario) -> Row:
    return _check_fault(
        ctx,
        sc,
        services=[_bad_service("bad", 0, {"type": "http", "url": "http://127.0.0.1:8082/"})],
        injected="an HTTP check (timeout 0.5 s) against a server sending its answer one byte "
        "a second",
        server=("trickle-http", 8082),
    )


@scenario("7e", "DNS server that never replies")
def dns_silent(ctx: Ctx, sc: Scenario) -> Row:
    check = {"type": "dns", "name": "web.example.test", "server": "127.0.0.1", "port": 5354}
    return _check_fault(
        ctx,
        sc,
        services=[_bad_service("bad", 0, check)],
        injected="a DNS check (timeout 0.5 s) against a server that reads queries and never "
        "replies",
        server=("silent-dns", 5354),
    )


@scenario("7f", "1,000 checks timing out at once")
def thousand_timeouts(ctx: Ctx, sc: Scenario) -> Row:
    services = [
        {
            "name": f"slow{i}",
            "prefixes": [f"198.19.{i // 256}.{i % 256}/32"],
            "checks": [{"type": "http", "url": "http://127.0.0.1:8083/"}],
            "interval": 1.0,
            "timeout": 0.5,
            "announce": {"med": 100},
        }
        for i in range(1000)
    ]
    return _check_fault(
        ctx,
        sc,
        services=services,
        injected="1,000 services added, each an HTTP check every 1 s (timeout 0.5 s) against "
        "a server that accepts and never answers: 1,000 checks time out together",
        server=("silent-http", 8083),
        settle=25.0,
        defect="found and fixed: the check threads (workers, 32) all sat out the slow checks' "
        "timeouts, so other services' checks waited in the queue past their round's deadline, "
        "were counted as hung, and healthy services (web, witness) were withdrawn. "
        "announcer/workers.py now starts threads beyond `workers` while its queue stalls (up "
        "to 1,024, ending once no job waited for 10 s), a check that answered at once last "
        "time gets a thread of its own instead of queueing behind the stall (announcer/rounds.py, "
        "urgent), and an idle thread no longer keeps its last job (a retired check's socket "
        "stayed open); regression tests tests/unit/test_workers_overflow.py",
    )
