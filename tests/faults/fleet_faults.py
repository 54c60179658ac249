"""Fault 11: etcd fails under the fleet guard: nothing is withdrawn because of etcd alone.

node1 runs the controller with a ``[fleet]`` (group ``faults``, lease_seconds 3, etcd
timeout 1 s, min_announcing 1, on_unknown ``local``) against a 3-member etcd (Debian's
``etcd``, tests/lab/etcd.py) in the router's namespace, reached over node1's link; node2
is the usual stand-in (not a fleet member). Each row starts a fresh etcd, injects one
etcd fault while node1 is healthy, watches the router and the client for longer than the
lease, then repairs the fault and waits until node1 is back in etcd.

- 11a: the member node1 talks to (its first endpoint) killed. Besides nothing moving,
  the guard must still get answers from the other two: node1's check is then made to
  fail, and the guard holds the withdraw (lowered: node1 is the group's only announcing
  node) instead of withdrawing as it would with etcd unknown.
- 11b: quorum lost (two members killed): no answer from etcd at all.
- 11c: node1 cut off from etcd (nftables drops its packets to etcd's client ports):
  node1 sees etcd unreachable, etcd expires node1's lease (the others stop counting it);
  the cut lifted, node1 replaces its lease and writes its record again.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

from tests.lab import wait_until
from tests.lab.etcd import LabEtcd
from tests.lab.topology import ROUTER

from .model import Row
from .registry import Ctx, Scenario, fill, judge, scenario
from .rig import Rig, Watch, base_config

GROUP = "faults"
LEASE = 3
"""lease_seconds: short, so that a window of a few leases fits a quick run."""
PREFIX = f"/announcer/{GROUP}/services/web/"
CUT_TABLE = "announcer_fault_cut"
DEADLINE = 30.0
"""Seconds to wait for what a fault must bring about (a deadline, not a bound)."""


def fleet_config(etcd: LabEtcd) -> dict[str, Any]:
    config = base_config()
    config["fleet"] = {
        "endpoints": etcd.endpoints("node1"),
        "group": GROUP,
        "node": "node1",
        "lease_seconds": LEASE,
        "timeout": 1.0,
    }
    return config


def fleet_view(rig: Rig) -> dict[str, Any]:
    """``announcer fleet web`` through node1's control socket ({} without an answer)."""
    from announcer.client import ControlClient
    from announcer.errors import ControlError

    if rig.profile is None:
        return {}
    try:
        with ControlClient(rig.profile.socket, timeout=5.0, connect_retry=0.0) as client:
            return client.request("fleet", services=["web"])
    except (ControlError, OSError, ValueError):
        return {}


def reachable(rig: Rig) -> bool | None:
    value = fleet_view(rig).get("etcd", {}).get("reachable")
    return value if isinstance(value, bool) else None


def fleet_text(rig: Rig) -> str:
    """``announcer status`` and ``announcer fleet`` in one line."""
    view = fleet_view(rig)
    etcd = view.get("etcd", {})
    web = view.get("services", {}).get("web", {})
    text = f"{rig.status_text()}; fleet: etcd reachable {etcd.get('reachable')}"
    if etcd.get("error"):
        text += f" ({str(etcd['error'])[:100]})"
    if web:
        text += f", {web.get('announcing')} announcing, nodes {sorted(web.get('nodes', {}))}"
    return text


def etcd_nodes(rig: Rig, etcd: LabEtcd, member: int) -> list[str] | None:
    """The nodes with a record of ``web`` in etcd, read from ``member`` in the router's
    namespace as any peer would (None when it does not answer)."""
    end = PREFIX[:-1] + chr(ord(PREFIX[-1]) + 1)
    body = json.dumps({"key": _b64(PREFIX), "range_end": _b64(end)})
    url = f"http://127.0.0.1:{etcd.ports(member)[0]}/v3/kv/range"
    out = rig.lab.exec_in(
        ROUTER, ["curl", "-s", "-m", "2", "-X", "POST", url, "-d", body], check=False
    )
    try:
        data = json.loads(out or "{}")
    except ValueError:
        return None
    if "header" not in data:
        return None
    keys = [base64.b64decode(kv["key"]).decode() for kv in data.get("kvs", [])]
    return sorted(k[len(PREFIX) :] for k in keys)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@contextlib.contextmanager
def fleet_node1(rig: Rig, name: str) -> Iterator[LabEtcd]:
    """A fresh 3-member etcd and node1 running with the fleet, announcing and counted."""
    etcd = LabEtcd(rig.lab)
    for i in range(etcd.size):
        shutil.rmtree(rig.lab.tmpdir / f"etcd-m{i}", ignore_errors=True)
    etcd.start()
    try:
        rig.start_node1(rig.new_profile(name, fleet_config(etcd)))

        def counted() -> bool:
            web = fleet_view(rig).get("services", {}).get("web", {})
            return bool(web.get("announcing") == 1)

        wait_until(counted, 30.0, interval=0.2, what="node1 counted in etcd")
        yield etcd
    finally:
        uncut(rig)
        etcd.stop()


def cut(rig: Rig, etcd: LabEtcd) -> None:
    """Drop every packet node1 sends to etcd's client ports (a partition, not a refusal)."""
    ports = ", ".join(str(etcd.ports(i)[0]) for i in range(etcd.size))
    for command in (
        ["add", "table", "inet", CUT_TABLE],
        ["add", "chain", "inet", CUT_TABLE, "out", "{ type filter hook output priority 0; }"],
        ["add", "rule", "inet", CUT_TABLE, "out", "tcp", "dport", f"{{ {ports} }}", "drop"],
    ):
        rig.lab.exec_in("node1", ["nft", *command])


def uncut(rig: Rig) -> None:
    rig.lab.exec_in("node1", ["nft", "delete", "table", "inet", CUT_TABLE], check=False)


def _window(ctx: Ctx) -> float:
    """How long a fault is watched: past the lease (etcd's expiry) and past the client's
    retries (6 attempts of 1 s before etcd counts as unreachable)."""
    return 10.0 if ctx.quick else 15.0


@scenario("11a", "fleet: the etcd member node1 talks to killed")
def member_killed(ctx: Ctx, sc: Scenario) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    with fleet_node1(rig, "fleet-member") as etcd:
        with Watch(rig) as w:
            w.inject()
            etcd.kill(0)
            seen = set()
            end = time.monotonic() + _window(ctx)
            while time.monotonic() < end:
                seen.add(reachable(rig))
                time.sleep(0.5)
            still = w.quiet()
            lost_before = w.requests()[1]
            unreachable_line = rig.find_log(w.log0, contains="reachable=false")
            after_lease = etcd_nodes(rig, etcd, 1)
            # The guard answers through the two left: a failing check is held, not
            # withdrawn as "unknown" (on_unknown = local would withdraw).
            rig.lab.set_healthy("node1", False)
            w.router.wait(lambda p: not p.normal, 20.0, what="node1 lowered or withdrawn")
            time.sleep(1.5)  # a withdraw after the hold would show here
            held_path = w.router.current()
            guard = (rig.service() or {}).get("fleet_guard", "")
            fill(row, w, events=("fleet_guard",), status=fleet_text(rig))
            rig.lab.set_healthy("node1", True)
            rig.wait_normal(30.0)
        etcd.start_member(0)
        etcd.wait_ready(0)
    row.injected = (
        f"SIGKILL to etcd member m0 (node1's first endpoint); watched {_window(ctx):g} s "
        f"(lease_seconds {LEASE}); then node1's /health made to fail"
    )
    row.expected = (
        "no route change and no request lost from the kill; etcd stays reachable for node1 "
        "(the client moves to m1/m2) and node1's record stays in etcd past its lease; the "
        "guard still answers: node1's failing check is held (lowered: the group's only "
        "announcing node), not withdrawn"
    )
    row.seen = (
        f"{'no' if still else 'a'} route change in the {_window(ctx):g} s window, "
        f"{lost_before} requests lost in it; node1 saw etcd reachable {sorted(map(str, seen))}; "
        f"records in etcd after the window: {after_lease}; failing check: node1 "
        f"{held_path.describe()}, status {guard!r}"
    )
    row.figures = {"reachable_seen": sorted(map(str, seen)), "records": after_lease}
    return judge(
        row,
        {
            "no route change from the kill": still,
            "no request lost from the kill": lost_before == 0,
            "etcd reachable throughout": seen == {True} and unreachable_line is None,
            "node1's record kept": after_lease == ["node1"],
            "failing check held with the down attributes": held_path.present
            and held_path.med == 1000,
            "status says held by the fleet guard": guard.startswith("held by the fleet guard"),
            # at most the documented in-flight cut at each FIB change (lowered, back)
            "requests lost: at most one per FIB change": (row.lost or 0) <= 2,
        },
    )


@scenario("11b", "fleet: etcd loses quorum (2 of 3 members killed)", quick=True)
def quorum_lost(ctx: Ctx, sc: Scenario) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    with fleet_node1(rig, "fleet-quorum") as etcd, Watch(rig) as w:

        def lose_quorum() -> None:
            etcd.kill(1)
            etcd.kill(2)

        checks, _ = _through_unknown(ctx, row, w, lose_quorum)
        restored = time.monotonic()
        etcd.start_member(1)
        etcd.start_member(2)
        back = _wait_reachable(rig, True, 60.0)
        row.back_s = round(time.monotonic() - restored, 2) if back else None
        row.back_note = "from starting the two members until node1 reads etcd again"
        records = etcd_nodes(rig, etcd, 0)
    row.injected = (
        f"SIGKILL to etcd members m1 and m2 (m0, node1's first endpoint, left without a "
        f"quorum); watched {_window(ctx):g} s (lease_seconds {LEASE}); then both started again"
    )
    row.expected = (
        "no route change, no request lost; status: web UP ANNOUNCED, `announcer fleet`: etcd "
        "unreachable; log `fleet_etcd reachable=false`; quorum back: etcd reachable again "
        "and node1's record there"
    )
    row.seen += (
        f"; after the repair node1 reads etcd again {'yes' if back else 'no'}, records {records}"
    )
    checks["etcd reachable again, node1's record there"] = back and records == ["node1"]
    return judge(row, checks)


@scenario("11c", "fleet: node1 cut off from etcd (packets dropped)", quick=True)
def node_cut_off(ctx: Ctx, sc: Scenario) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    with fleet_node1(rig, "fleet-cut") as etcd, Watch(rig) as w:
        checks, expired = _through_unknown(
            ctx, row, w, lambda: cut(rig, etcd), lambda: _wait_records(rig, etcd, [], DEADLINE)
        )
        log0 = rig.log_offset()
        restored = time.monotonic()
        uncut(rig)
        rewritten = _wait_records(rig, etcd, ["node1"], 30.0)
        row.back_s = round(time.monotonic() - restored, 2) if rewritten else None
        row.back_note = "from lifting the cut until node1's record is in etcd again"
        relet = rig.find_log(log0, events=("fleet_lease_expired",))
    row.injected = (
        f"nftables in node1 drops its packets to etcd's client ports; watched "
        f"{_window(ctx):g} s (lease_seconds {LEASE}); then the rule removed"
    )
    row.expected = (
        "no route change, no request lost; node1: etcd unreachable (`fleet_etcd "
        "reachable=false`), web UP ANNOUNCED; etcd expires node1's lease (the others stop "
        "counting it); cut lifted: node1 finds its lease expired, takes a new one and "
        "writes its record again (`fleet_lease_expired`)"
    )
    row.seen += (
        f"; node1's record expired in etcd {'yes' if expired else 'no'}; written again after "
        f"the cut {'yes' if rewritten else 'no'}"
        + (f" (`{relet.fields.get('event')}`)" if relet is not None else "")
    )
    checks["node1's lease expired in etcd"] = expired
    checks["record written again after the cut"] = rewritten
    checks["log fleet_lease_expired"] = relet is not None
    return judge(row, checks)


def _through_unknown(
    ctx: Ctx,
    row: Row,
    w: Watch,
    fault: Callable[[], None],
    meanwhile: Callable[[], bool] = lambda: True,
) -> tuple[dict[str, bool], bool]:
    """Rows 11b and 11c: inject ``fault``, wait until node1 says etcd is unreachable,
    run ``meanwhile``, watch to the window's end and fill ``row``. Returns the checks
    both rows make (nothing moved; node1 says etcd is unreachable) and what
    ``meanwhile`` returned."""
    rig = w.rig
    w.inject()
    fault()
    seen_unknown = _wait_reachable(rig, False, DEADLINE)
    unknown_after = round(w.since(), 1)
    extra = meanwhile()
    remaining = _window(ctx) - w.since()
    if remaining > 0:
        time.sleep(remaining)
    fill(row, w, events=("fleet_etcd",), status=fleet_text(rig))
    svc = rig.service() or {}
    still = w.quiet()
    row.seen = (
        f"{'no' if still else 'a'} route change; {row.lost} of {row.requests} requests lost; "
        f"etcd unreachable seen {'yes' if seen_unknown else 'no'} ({unknown_after} s)"
    )
    row.figures = {"unknown_after_s": unknown_after}
    checks = {
        "no route change": still,
        "no request lost": row.lost == 0,
        "service UP ANNOUNCED": (svc.get("health"), svc.get("route")) == ("UP", "ANNOUNCED"),
        "node1 says etcd unreachable": seen_unknown,
        "log fleet_etcd reachable=false": "reachable=false" in row.log_line,
    }
    return checks, extra


def _wait_reachable(rig: Rig, wanted: bool, timeout: float) -> bool:
    end = time.monotonic() + max(timeout, 0.0)
    while time.monotonic() < end:
        if reachable(rig) is wanted:
            return True
        time.sleep(0.3)
    return False


def _wait_records(rig: Rig, etcd: LabEtcd, wanted: list[str], timeout: float) -> bool:
    end = time.monotonic() + max(timeout, 0.0)
    while True:
        if etcd_nodes(rig, etcd, 0) == wanted:
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(0.3)
