"""Fault 4: ExaBGP killed and restarted; the BGP session reset by the router (BIRD
``restart``) and by the hold timer with the link blackholed.

node1 runs three services: ``web`` (the anycast prefix, healthy), ``kept`` (drained by
the operator before the fault, so withdrawn) and ``draining`` (drained just before the
fault with a 120 s drain period, so lowered). After the fault ``web`` must be back with
its attributes (MED 100, 65001:100, 65001:0:1) and neither drain may be lost: ``kept``
not announced, ``draining`` lowered (or, after an ExaBGP restart, which takes every route
with it, not announced again).
"""

from __future__ import annotations

import time
from typing import Any

from tests.lab import PREFIX_V4, Lab

from .model import Row
from .registry import Ctx, Scenario, fill, judge, scenario
from .rig import Rig, Watch, base_config
from .router import PathState

BOTH = ("5.0", "4.2")
KEPT = "192.0.2.11/32"
DRAINING = "192.0.2.12/32"


def _config(rig: Rig) -> dict[str, Any]:
    flag = rig.lab.node_dir("node1") / "always-ok"
    flag.write_text("ok\n")
    config = base_config()
    check = [{"type": "file", "path": str(flag)}]
    config["service"] += [
        {"name": "kept", "prefixes": [KEPT], "checks": check, "announce": {"med": 100}},
        {
            "name": "draining",
            "prefixes": [DRAINING],
            "checks": check,
            "announce": {"med": 100},
            "drain_seconds": 120,
        },
    ]
    return config


def _prepare(rig: Rig, name: str) -> None:
    """node1 with the three services: ``kept`` drained and withdrawn, ``draining`` lowered."""
    rig.start_node1(rig.new_profile(name, _config(rig)))
    for prefix in (KEPT, DRAINING):
        rig.lab.wait_paths(prefix, lambda p: "node1" in p, 20.0, what=f"{prefix} announced")
    assert rig.cli("drain", "kept", "--reason", "fault 4 (kept)").returncode == 0
    assert rig.cli("drain", "draining", "--reason", "fault 4 (draining)").returncode == 0
    rig.lab.wait_paths(KEPT, lambda p: "node1" not in p, 20.0, what="kept withdrawn")
    rig.lab.wait_paths(
        DRAINING,
        lambda p: "node1" in p and PathState.of(p["node1"]).lowered,
        20.0,
        what="draining lowered",
    )


def _web_ok(lab: Lab) -> bool:
    path = lab.bird_paths_by_node(PREFIX_V4).get("node1")
    return (
        path is not None
        and path.med == 100
        and (65001, 100) in path.communities
        and (65001, 0, 1) in path.large_communities
        and not PathState.of(path).lowered
    )


def _drains(rig: Rig, lowered_expected: bool) -> dict[str, bool]:
    """The drains' checks after the fault, at the router and in status."""
    lab = rig.lab
    kept = lab.bird_paths_by_node(KEPT).get("node1")
    draining = lab.bird_paths_by_node(DRAINING).get("node1")
    snap = rig.status() or {}
    services = snap.get("services", {})
    checks = {
        "kept: not announced": kept is None,
        "kept: still drained in status": bool(services.get("kept", {}).get("drained")),
        "draining: still drained in status": bool(services.get("draining", {}).get("drained")),
    }
    if lowered_expected:
        checks["draining: back lowered, not normal"] = PathState.of(draining).lowered
    else:
        checks["draining: not announced again"] = draining is None
    return checks


def _status(rig: Rig) -> str:
    snap = rig.status() or {}
    parts = []
    for name, svc in snap.get("services", {}).items():
        text = f"{name}: {svc['health']} {svc['route']}"
        if svc.get("drained"):
            text += " drained"
        parts.append(text)
    return "; ".join(parts) or "no answer"


@scenario("4a", "ExaBGP SIGKILL, then started again", versions=BOTH, quick=True)
def exabgp_killed(ctx: Ctx, sc: Scenario) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    _prepare(rig, "exa-kill")
    argv = rig.lab.api_argv("node1")
    with Watch(rig, prefixes=(PREFIX_V4, KEPT, DRAINING)) as w:
        w.inject()
        rig.lab.kill_exabgp("node1")
        gone = w.router.wait(lambda p: not p.present, 20.0, what="node1 gone")
        time.sleep(1.0)  # the unit's RestartSec, shortened
        restarted = time.time()
        rig.lab.start_exabgp("node1", argv, timeout=40.0)
        back = rig.wait_normal(40.0) - w.m0
        time.sleep(1.5)  # a drain lost would show as a late announcement
    row.injected = (
        "SIGKILL to node1's ExaBGP (its controller sees EOF and exits), ExaBGP started again "
        "1 s later; `kept` drained before, `draining` in a 120 s drain"
    )
    row.back_s = back
    row.back_note = "web announced normally again"
    fill(row, w, events=("restored",))
    row.router = w.router.describe(w.t0, prefixes=(PREFIX_V4, KEPT, DRAINING))
    row.status = _status(rig)
    row.expected = (
        "the router drops node1's routes at once (TCP closed); after the restart web comes "
        "back with MED 100 and its communities; both drains kept: neither drained prefix "
        "announced again"
    )
    row.seen = (
        f"routes gone {gone - w.t0:.2f} s after the kill; web back {back - (restarted - w.t0):.2f}"
        f" s after ExaBGP's restart; {row.lost} of {row.requests} requests lost"
    )
    return judge(row, {"web back with its attributes": _web_ok(rig.lab), **_drains(rig, False)})


def _session_reset(
    ctx: Ctx, sc: Scenario, name: str, inject: str, cause: str, blackhole: float | None
) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    _prepare(rig, name)
    lab = rig.lab
    link = lab.links["node1"]
    ends = (("router", link.router_dev), ("node1", link.peer_dev))
    with Watch(rig, prefixes=(PREFIX_V4, KEPT, DRAINING)) as w:
        w.inject()
        if blackhole is None:
            lab.birdc("restart", "node1")
            lab.birdc("restart", "node1_v6")
            # The route can be back within a few ms: the FIB's events (ip monitor) never miss
            # its leaving; wait for node1 to be learnt again, then find when it left.
            rig.wait_normal(60.0)
            left = [t for t, nodes in w.router.fib_events() if "node1" not in nodes]
            gone = left[0] if left else time.time()
        else:
            for ns, dev in ends:
                # a queue that holds nothing: every packet on the link is dropped, both ways
                drop = ["tc", "qdisc", "replace", "dev", dev, "root", "pfifo", "limit", "0"]
                lab.exec_in(ns, drop)
            try:
                gone = w.router.wait(lambda p: not p.present, blackhole + 10.0, what="hold")
            finally:
                time.sleep(max(0.0, blackhole - w.since()))
                for ns, dev in ends:
                    lab.exec_in(ns, ["tc", "qdisc", "del", "dev", dev, "root"], check=False)
        unblocked = time.monotonic()
        back = rig.wait_normal(60.0)
        time.sleep(1.5)
    row.injected = inject
    row.back_s = back - w.m0
    row.back_note = "web announced normally again"
    fill(row, w, events=("neighbor",))
    row.router = w.router.describe(w.t0, prefixes=(PREFIX_V4, KEPT, DRAINING))
    row.status = _status(rig)
    row.expected = (
        f"{cause}; once the session is up again ExaBGP re-sends what it holds: web with its "
        "attributes, `draining` still lowered, `kept` not announced"
    )
    row.seen = (
        f"node1's routes gone {gone - w.t0:.2f} s after the fault; web back "
        f"{back - unblocked:.2f} s after the "
        + ("reset" if blackhole is None else "link came back")
        + f"; {row.lost} of {row.requests} requests lost"
    )
    row.figures = {"gone_s": gone - w.t0, "back_after_s": back - unblocked}
    return judge(row, {"web back with its attributes": _web_ok(lab), **_drains(rig, True)})


@scenario("4b", "BGP session reset by the router (BIRD restart)", versions=BOTH, quick=True)
def bird_restart(ctx: Ctx, sc: Scenario) -> Row:
    return _session_reset(
        ctx,
        sc,
        "bird-restart",
        "`birdc restart node1` and `node1_v6`: the router resets both sessions",
        "the router drops node1's routes at once",
        None,
    )


@scenario("4c", "hold timer expires: the link to the router blackholed", versions=BOTH)
def hold_timer(ctx: Ctx, sc: Scenario) -> Row:
    seconds = 6.0
    return _session_reset(
        ctx,
        sc,
        "hold-timer",
        f"every packet on node1's link to the router dropped, both ways, for {seconds:g} s "
        "(hold time 3 s on both sides)",
        "the router drops node1's routes when its hold timer (3 s) expires; until then "
        "the requests it sends to node1 are lost",
        seconds,
    )
