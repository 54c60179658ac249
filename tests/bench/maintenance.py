"""P2 maintenance loss: a client loop (a new TCP connection per request) against the anycast
address while node1's service is taken down, four ways:

(a) announcer: ``announcer drain web --wait``, then stop the web server;
(b) announcer: stop the web server, no drain (the checks find out);
(c) EXA: create its ``--disable`` file, wait, then stop the web server;
(d) EXA: stop the web server, no disable.

Both tools run with the same check timing; the failed requests are counted. Then, beside
them, what a planned removal does to established connections (the fault suite's row 12,
with its stream code): :data:`STREAMS` long-lived TCP streams spread over both nodes by the
router's ECMP hash, then node1 taken out by

(e) announcer: ``announcer drain web`` (lowered, withdrawn after :data:`DRAIN_SECONDS`);
(f) EXA: its ``--disable`` file;

and each node's streams counted: reset, kept.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from tests.faults.streams import StreamClient, per_node, stream_servers
from tests.lab import NODES, PREFIX_V4, Lab

from .common import ANNOUNCER_BIN, Cgroup, log
from .fibmon import FibMonitor
from .tools import Timing, control_request

URL = "http://192.0.2.10/"
_rng = random.Random(2)
TIMING = Timing(1.0, 0.25, 3, 3)
"""announcer's shipped default, used by both tools here."""
DRAIN_SECONDS = 2.0
STREAMS = 64
"""Long-lived streams of (e) and (f), as many as the fault suite's row 12 opens."""


def node_gateways(lab: Lab) -> tuple[str, set[str]]:
    return lab.links["node1"].peer_v4, {lab.links[n].peer_v4 for n in NODES}


def traffic(
    lab: Lab,
    monitor: FibMonitor,
    action: Callable[[], dict[str, Any]],
    min_requests: int,
    warmup_requests: int,
) -> dict[str, Any]:
    """Run ``action`` while the client loop runs; keep the loop going until it made
    ``min_requests`` requests in all (bounded), then count the failures."""
    loop = lab.client_loop(URL, timeout=1.0, max_requests=min_requests * 20, max_seconds=180.0)
    loop.start()
    try:
        loop.wait_for_requests(warmup_requests, 60.0)
        # a random point of the check cycle (the restore before ended in step with it)
        time.sleep(_rng.uniform(0.0, TIMING.interval))
        began = time.time()
        info = action()
        loop.wait_for_requests(min_requests, 120.0)
    finally:
        stats = loop.stop()
    errors = Counter((r.error or "?").split(":")[0] for r in stats.errors)
    # A request in flight when the router's next hops change can land on the other node
    # (it re-hashes every packet), which answers with a reset: routing cannot prevent it.
    stamps = [e.stamp for e in monitor.changes(PREFIX_V4)]
    rehash = [
        r
        for r in stats.errors
        if "reset" in (r.error or "").lower()
        and any(r.started - 0.002 <= t <= r.started + r.elapsed + 0.002 for t in stamps)
    ]
    window = [r for r in stats.results if r.started >= began]
    return {
        "requests": stats.total,
        "failed": stats.failures,
        "cut_by_rehash": len(rehash),
        "errors": dict(errors),
        "per_node": dict(stats.per_node),
        "requests_after_action": len(window),
        "requests_per_s": stats.total
        / max(1e-9, stats.results[-1].started - stats.results[0].started)
        if stats.results
        else 0.0,
        **info,
    }


def repeated(
    lab: Lab,
    monitor: FibMonitor,
    action: Callable[[], dict[str, Any]],
    undo: Callable[[], None] | None,
    *,
    min_requests: int,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    """:func:`traffic` ``repeats`` times (restoring node1 after each); totals and each run."""
    runs = []
    for _ in range(repeats):
        runs.append(traffic(lab, monitor, action, min_requests, warmup))
        restore(lab, monitor, undo)
    errors: Counter[str] = Counter()
    for r in runs:
        errors.update(r["errors"])
    moved = sorted(r["traffic_moved_after_s"] for r in runs)
    return {
        "repeats": repeats,
        "failed": sum(r["failed"] for r in runs),
        "requests": sum(r["requests"] for r in runs),
        "failed_each": [r["failed"] for r in runs],
        "cut_by_rehash": sum(r["cut_by_rehash"] for r in runs),
        "errors": dict(errors),
        "traffic_moved_after_s": moved[len(moved) // 2],
        "traffic_moved_each_s": [round(r["traffic_moved_after_s"], 3) for r in runs],
        "requests_per_s": sum(r["requests_per_s"] for r in runs) / len(runs),
        "runs": runs,
    }


def restore(lab: Lab, monitor: FibMonitor, extra: Callable[[], None] | None = None) -> None:
    if not lab.http_running("node1"):
        lab.start_http("node1")
    if extra is not None:
        extra()
    _, both = node_gateways(lab)
    monitor.wait_state(PREFIX_V4, lambda g: set(g) == both, 60.0)
    monitor.trim()


def wait_gone(lab: Lab, monitor: FibMonitor, after: float, timeout: float = 30.0) -> float:
    node1, _ = node_gateways(lab)
    return monitor.wait(PREFIX_V4, lambda g: node1 not in g, after=after, timeout=timeout).stamp


def stop_only(lab: Lab, monitor: FibMonitor) -> dict[str, Any]:
    """Stop node1's web server with no warning: the health checker must notice (b, d)."""
    t0 = time.time()
    lab.stop_http("node1")
    moved = wait_gone(lab, monitor, t0)
    time.sleep(1.0)
    return {"traffic_moved_after_s": moved - t0}


def streams(
    lab: Lab,
    monitor: FibMonitor,
    take_out: Callable[[], None],
    put_back: Callable[[], None],
    count: int = STREAMS,
) -> dict[str, Any]:
    """``count`` streams open over both nodes, then ``take_out`` node1 (e, f): when the
    router moved, and per node how many streams were reset and how many kept."""
    with stream_servers(lab):
        client = StreamClient(lab, count)
        try:
            spread = client.ready()
            time.sleep(0.5)
            t0 = time.time()
            take_out()
            moved = wait_gone(lab, monitor, t0)
            # past announcer's withdraw: a stream cut then, not at the lowering, would show
            time.sleep(DRAIN_SECONDS + 1.0)
        finally:
            ended = client.ended()
            done = client.finish()
    restore(lab, monitor, put_back)
    return {
        "streams": count,
        "spread": spread,
        "nodes": per_node(spread, ended, moved),
        "open_at_end": done.get("open") if done else None,
        "traffic_moved_after_s": moved - t0,
    }


def run_announcer(
    lab: Lab,
    monitor: FibMonitor,
    socket_path: Any,
    *,
    min_requests: int,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def drain_then_stop() -> dict[str, Any]:
        t0 = time.time()
        argv = [str(ANNOUNCER_BIN), "drain", "web", "--wait", "--timeout", "60"]
        proc = subprocess.run(
            [*argv, "--socket", str(socket_path)],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        t1 = time.time()
        moved = wait_gone(lab, monitor, t0)
        lab.stop_http("node1")
        time.sleep(1.0)
        return {
            "cli_exit": proc.returncode,
            "drain_wait_s": t1 - t0,
            "traffic_moved_after_s": moved - t0,
        }

    def undrain() -> None:
        control_request(socket_path, "undrain", services=["web"])

    log("P2 (a) announcer: drain --wait, then stop the web server")
    out["a"] = repeated(
        lab,
        monitor,
        drain_then_stop,
        undrain,
        min_requests=min_requests,
        warmup=warmup,
        repeats=repeats,
    )

    log("P2 (b) announcer: stop the web server, no drain")
    out["b"] = repeated(
        lab,
        monitor,
        lambda: stop_only(lab, monitor),
        None,
        min_requests=min_requests,
        warmup=warmup,
        repeats=repeats,
    )

    def drain() -> None:
        control_request(socket_path, "drain", services=["web"])

    log(f"P2 (e) announcer: {STREAMS} long-lived streams, drain")
    out["e"] = streams(lab, monitor, drain, undrain)
    return out


def run_exa(
    lab: Lab,
    monitor: FibMonitor,
    disable: Any,
    *,
    min_requests: int,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def disable_then_stop() -> dict[str, Any]:
        t0 = time.time()
        disable.write_text("maintenance\n")
        moved = wait_gone(lab, monitor, t0)
        time.sleep(DRAIN_SECONDS)  # the same wait announcer's drain has before its withdraw
        lab.stop_http("node1")
        time.sleep(1.0)
        return {"traffic_moved_after_s": moved - t0}

    def enable() -> None:
        disable.unlink(missing_ok=True)

    log("P2 (c) EXA: disable file, wait, stop the web server")
    out["c"] = repeated(
        lab,
        monitor,
        disable_then_stop,
        enable,
        min_requests=min_requests,
        warmup=warmup,
        repeats=repeats,
    )

    log("P2 (d) EXA: stop the web server, no disable")
    out["d"] = repeated(
        lab,
        monitor,
        lambda: stop_only(lab, monitor),
        None,
        min_requests=min_requests,
        warmup=warmup,
        repeats=repeats,
    )

    def disable_only() -> None:
        disable.write_text("maintenance\n")

    log(f"P2 (f) EXA: {STREAMS} long-lived streams, disable file")
    out["f"] = streams(lab, monitor, disable_only, enable)
    return out


def start(lab: Lab, monitor: FibMonitor, tool: str, group: Cgroup) -> dict[str, Any]:
    """node1 runs ``tool`` with :data:`TIMING` (announcer: drain_seconds 2; EXA: a disable
    file); returns paths the scenarios need."""
    from .failover import start_tool

    start_tool(lab, group, tool, f"p2-{tool}", TIMING, monitor)
    directory = lab.node_dir("node1")
    return {"socket": lab.control_socket("node1"), "disable": directory / "exa-disable"}
