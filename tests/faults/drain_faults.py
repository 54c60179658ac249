"""Fault 12: a planned removal with long-lived connections open.

64 TCP streams from the client to the anycast address, spread over node1 and node2 by the
router's ECMP hash (L4), then node1 taken out: by ``announcer drain`` (lowered, withdrawn
after drain_seconds) or by ``exabgp healthcheck``'s disable file (re-announced with its
disabled metric, MED 500). The router stops sending node1's flows to node1 the moment
node1's path stops being a best path: their packets go to node2, which knows no such
connection and answers with a reset. The rows measure that for both tools.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.lab import ANYCAST_V4, PREFIX_V4, wait_until

from .model import Row
from .registry import Ctx, Scenario, fill, judge, scenario
from .rig import Rig, Watch, base_config
from .streams import StreamClient, per_node, stream_servers

EXABGP = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "exabgp"


def _exa_config(rig: Rig, disable: Path) -> Path:
    """``exabgp healthcheck`` as a new user would run it: defaults, plus what the lab needs."""
    directory = rig.lab.node_dir("node1")
    path = directory / "exa-streams.conf"
    path.write_text(
        "\n".join(
            [
                "no-syslog",
                "no-ip-setup",
                "name = web",
                "interval = 1",
                "fast-interval = 0.25",
                "rise = 3",
                "fall = 3",
                "up-metric = 100",
                f"command = curl -sf -o /dev/null --max-time 1 http://{ANYCAST_V4}/health",
                f"disable = {disable}",
                f"ip = {PREFIX_V4}",
                "",
            ]
        )
    )
    return path


def _streams(ctx: Ctx, sc: Scenario, tool: str) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    lab = rig.lab
    count = 64
    drain_seconds = 4.0
    disable = lab.node_dir("node1") / "exa-disable"
    disable.unlink(missing_ok=True)
    if tool == "announcer":
        rig.start_node1(rig.new_profile("streams", base_config(drain_seconds=drain_seconds)))
    else:
        conf = _exa_config(rig, disable)
        prof = rig.new_profile("streams-exa")
        argv = [str(EXABGP), "healthcheck", "--config", str(conf)]
        rig.start_node1(prof, argv=argv, wait_normal=False)
        lab.wait_fib_nodes(PREFIX_V4, ["node1", "node2"], 30.0)
    try:
        with stream_servers(lab):
            streams = StreamClient(lab, count)
            spread = streams.ready()
            with Watch(rig) as w:
                time.sleep(1.0)
                w.inject()
                if tool == "announcer":
                    done = rig.cli("drain", "web", "--reason", "fault 12")
                    assert done.returncode == 0, done.stderr
                else:
                    disable.write_text("maintenance\n")
                w.router.wait(lambda p: p.lowered or p.med == 500 or not p.present, 15.0)
                wait_until(lambda: lab.fib_nodes(PREFIX_V4) == ["node2"], 15.0, what="FIB → node2")
                if tool == "announcer":
                    w.router.wait(lambda p: not p.present, drain_seconds + 10.0, what="withdrawn")
                time.sleep(2.0)
                ended = streams.ended()
                finish = streams.finish()
    finally:
        disable.unlink(missing_ok=True)
    moved = next(
        (t for t, nodes in w.router.fib_events() if nodes == ["node2"] and t >= w.t0 - 0.01),
        None,
    )
    nodes = per_node(spread, ended, moved)
    one = nodes.get("node1", {"open": 0, "reset": 0, "reset_after_fib_change_s": []})
    two = nodes.get("node2", {"open": 0, "reset": 0})
    delays = one["reset_after_fib_change_s"]
    how = (
        f"`announcer drain web` (lowered: MED 1000, 65535:0; withdrawn after {drain_seconds:g} s)"
        if tool == "announcer"
        else "`exabgp healthcheck`'s disable file created (re-announced with MED 500)"
    )
    spread_by_node = ", ".join(f"{node} {n}" for node, n in sorted(spread.items()))
    row.injected = f"{count} streams open ({spread_by_node}); then {how}"
    fill(row, w, events=("route",) if tool == "announcer" else ())
    if tool != "announcer":
        row.status = "(exabgp healthcheck has no status command)"
        row.log_line = ""
    lost_established = f"established streams: node1 {one['reset']} of {one['open']} reset"
    lost_established += f", node2 {two['reset']} of {two['open']}"
    row.lost_note = (row.lost_note + "; " if row.lost_note else "") + "new connections"
    row.expected = (
        "new connections: none lost. Established ones: node1's are reset the moment its path "
        "stops being best (the router re-hashes them to node2, which knows no such "
        "connection); node2's are untouched"
    )
    spread_text = f"{min(delays):.3f} to {max(delays):.3f} s after" if delays else "(no reset) vs"
    row.seen = (
        f"{lost_established}; node1's resets {spread_text} the FIB change; "
        f"{row.lost} of {row.requests} new connections lost; {finish and finish.get('open')} "
        "streams still open at the end"
    )
    row.figures = {"streams": nodes, "spread": spread, "fib_moved_at": moved}
    return judge(
        row,
        {
            "streams spread over both nodes": len(spread) == 2,
            "every node1 stream reset": one["reset"] == one["open"],
            "no node2 stream reset": two["reset"] == 0,
            # at the lowering, not at the withdraw drain_seconds later
            "node1's resets at the lowering": bool(delays) and max(delays) < drain_seconds - 1.0,
        },
    )


@scenario("12a", "drain with 64 long-lived connections (announcer drain)", quick=True)
def drain_streams(ctx: Ctx, sc: Scenario) -> Row:
    return _streams(ctx, sc, "announcer")


@scenario("12b", "the same with `exabgp healthcheck`'s disable file")
def disable_streams(ctx: Ctx, sc: Scenario) -> Row:
    return _streams(ctx, sc, "exa")
