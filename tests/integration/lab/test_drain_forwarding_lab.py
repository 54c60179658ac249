"""Connection-preserving drain in the namespace lab: three nodes behind BIRD (ECMP, L4
hash), the real controller under ExaBGP 5.0, a 3-member etcd; a client holds 64
long-lived TCP streams to the anycast address, each echoing 16 KiB (full-size segments
both ways) every 50 ms. node1 is drained (drain_seconds 3) while they run.

With ``forward_connections``, node2 and node3 pass node1's packets to it through VXLAN
until its connections end: none of node1's streams breaks. The headline test runs once
more with IPIP (a kernel without the ``ipip`` module skips it); GRE and the tunnel
devices themselves are covered by test_forwarding_kernel_lab.py, which keeps the
module within its share of ``make test``. Without it, the router's
re-hash resets every stream node1 held.

The other nodes' streams: Linux's multipath routes (what BIRD installs) hash by
threshold, so when node1's next hop goes, part of node2's hash range moves to node3
too (or the other way round): those streams reach a node that does not know them and
break, with forwarding or without (node1 does not know them either). Only a router with
resilient (consistent) ECMP hashing keeps them; the figures are printed, not asserted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from functools import partial

import pytest

from tests.lab import Lab, announcer_available, wait_until
from tests.lab.announcer_config import ANNOUNCER_BIN
from tests.lab.etcd import LabEtcd, etcd_available
from tests.lab.fleet import LEASE, NODES3, announcer, paths
from tests.lab.forwarding import (
    Streams,
    broken,
    forwarding_config,
    raise_underlay_mtu,
    start_stream_server,
    start_stream_servers,
    tunnel_unavailable,
    why_broken,
)
from tests.lab.forwarding_nodes import (
    drain_node1_forwarded,
    forwarded_by,
    not_forwarding,
    run_nodes,
    status,
)
from tests.lab.procs import Managed
from tests.lab.topology import ANYCAST_V4, PREFIX_V4

pytestmark = pytest.mark.lab

STREAMS = 64
AFTER_WITHDRAW = 4.0
"""Seconds the streams keep running after node1's withdraw (forwarded all along)."""
SPREAD = 2.0
"""Seconds over which node1's streams end by themselves, after its withdraw."""
LATER_STREAMS = 8
"""Connections opened once node1's route went: none of them may reach node1."""
EXTRA_PREFIX = "192.0.2.30/32"
"""A prefix a reload adds to the forwarding service (not local anywhere: never announced)."""


ForwardingLab = tuple[Lab, LabEtcd, dict[str, Managed]]
"""The lab, its etcd, and each node's stream server (a test may stop one: it starts it
again before it ends)."""


@pytest.fixture(scope="module")
def forwarding_lab(lab_requirements: None) -> Iterator[ForwardingLab]:
    if not etcd_available():
        pytest.skip("needs etcd (apt-get install etcd-server)")
    if not announcer_available():
        pytest.skip("announcer is not installed in .venv: run scripts/bootstrap.sh")
    with Lab("5.0", nodes=NODES3) as lab:
        raise_underlay_mtu(lab)
        servers = start_stream_servers(lab)
        etcd = LabEtcd(lab).start()
        try:
            yield lab, etcd, servers
        finally:
            etcd.stop()
            for proc in servers.values():
                proc.stop(grace=1.0)


@pytest.mark.parametrize("tunnel", ["vxlan", "ipip"])
def test_drain_with_forwarding_breaks_no_stream(forwarding_lab: ForwardingLab, tunnel: str) -> None:
    """With forward_connections (through a VXLAN or an IPIP tunnel), 0 of node1's
    streams break through node1's drain and withdraw; its peers say where they pass its
    packets while it has connections, stop once it has none, and ``drain --wait`` then
    returns 0."""
    why = tunnel_unavailable(tunnel)
    if why:
        pytest.skip(why)
    lab, etcd, _ = forwarding_lab
    run_nodes(lab, etcd, forward=True, tunnel=tunnel)
    streams = Streams.open(lab, STREAMS, f"forward-{tunnel}")
    try:
        drain_node1_forwarded(lab, streams)
        time.sleep(AFTER_WITHDRAW)
        assert status(lab, "node1")["route"] == "WITHDRAWN"
    finally:
        raw = streams.finish()
        results = broken(raw)
    print(f"with forwarding ({tunnel}): broken/total per node: {results}")
    ready = [line for line in lab.exabgp_log("node1").splitlines() if "forwarding_ready" in line]
    assert results["node1"][0] == 0, (results, why_broken(raw, "node1"), ready)
    waited = announcer(lab, "node1", "drain", "web", "--wait", "--timeout", "30")
    assert waited.returncode == 0, waited.stderr
    wait_until(
        lambda: "forwarding" not in status(lab, "node2"), 10, what="node2 no longer forwarding"
    )


def test_node1s_server_stopped_right_after_drain_wait_breaks_none(
    forwarding_lab: ForwardingLab,
) -> None:
    """``announcer drain web --wait`` on node1 (forwarding on) still waits after the
    withdraw while node1's streams run, and returns 0 once they have ended on their own
    (cleanly, over SPREAD seconds); node1's stream server killed at that moment breaks
    none of node1's streams (``drain --wait && systemctl stop nginx`` loses nothing), and
    the connections opened once node1's route went reached node2 and node3 only."""
    lab, etcd, servers = forwarding_lab
    run_nodes(lab, etcd, forward=True)
    streams = Streams.open(lab, STREAMS, "stop-after-wait")
    later: Streams | None = None
    argv = [str(ANNOUNCER_BIN), "drain", "web", "--wait", "--timeout", "60"]
    argv += ["--socket", str(lab.control_socket("node1"))]
    waiter = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert streams.nodes.count("node1") > 0, f"node1 got no stream: {streams.nodes}"
        wait_until(lambda: "node1" not in paths(lab), 15, what="node1's path gone")
        wait_until(partial(forwarded_by, lab, "node2"), 10, what="node2 passing node1's packets")
        later = Streams.open(lab, LATER_STREAMS, "opened-during-drain")
        wait_until(lambda: status(lab, "node1")["route"] == "WITHDRAWN", 15, what="withdrawn")
        time.sleep(1.0)  # node1's streams forwarded past the withdraw
        if waiter.poll() is not None:
            pytest.fail(f"drain --wait returned while node1's streams ran: {waiter.communicate()}")
        streams.end("node1", SPREAD)
        _, waited = waiter.communicate(timeout=SPREAD + 30)
        returned = time.time()
        servers["node1"].kill()  # at once, as `drain --wait && systemctl stop` would
        time.sleep(1.0)  # a connection still alive on node1 would now break
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
        raw = streams.finish()
        new = later.finish() if later is not None else []
        if not servers["node1"].alive():
            servers["node1"] = start_stream_server(lab, "node1")
    results = broken(raw)
    mine = [r for r in raw if r["node"] == "node1"]
    last_end = max(float(r.get("ended") or 0.0) for r in mine)
    print(
        f"server stopped after drain --wait: broken/total per node: {results}; "
        f"drain --wait returned {returned - last_end:.2f} s after node1's last stream ended; "
        f"opened during the drain: {broken(new)}"
    )
    assert waiter.returncode == 0, waited
    assert results["node1"][0] == 0, (results, why_broken(raw, "node1"))
    assert all(r.get("ended") for r in mine), mine  # each ended by itself, not at the stop
    assert {r["node"] for r in new} <= {"node2", "node3"}, new


def test_a_reload_reaches_the_kernel_or_says_a_restart_is_needed(
    forwarding_lab: ForwardingLab,
) -> None:
    """On node2 (the real controller): a reload that adds a prefix to the forwarding
    service puts it in the nftables set, the tunnel device staying the same one; one
    that changes [forwarding] leaves the kernel as it is and says a restart is needed;
    one that turns forward_connections off removes the standing part."""
    lab, etcd, _ = forwarding_lab
    run_nodes(lab, etcd, forward=True)
    before = lab.exec_in("node2", ["ip", "-d", "link", "show", "anc-fwd"])
    more = forwarding_config(etcd, lab, "node2", forward=True)
    more["service"][0]["prefixes"] = [PREFIX_V4, EXTRA_PREFIX]
    assert "note" not in reload_node2(lab, more)
    elements = lab.exec_in("node2", ["nft", "list", "set", "ip", "announcer_forward", "prefixes"])
    assert EXTRA_PREFIX.removesuffix("/32") in elements and ANYCAST_V4 in elements, elements
    assert lab.exec_in("node2", ["ip", "-d", "link", "show", "anc-fwd"]) == before
    other = forwarding_config(etcd, lab, "node2", forward=True)
    other["forwarding"]["vni"] = 77
    assert "restart needed to apply: forwarding" in reload_node2(lab, other)
    assert "vxlan id 4242" in lab.exec_in("node2", ["ip", "-d", "link", "show", "anc-fwd"])
    reload_node2(lab, forwarding_config(etcd, lab, "node2", forward=False))
    assert "anc-fwd" not in lab.exec_in("node2", ["ip", "link"])
    rules = lab.exec_in("node2", ["ip", "rule"])
    assert "fwmark" not in rules and "0:\tfrom all lookup local" in rules, rules


def reload_node2(lab: Lab, config: dict[str, object]) -> str:
    """Rewrite node2's config and reload it: what ``announcer reload`` printed."""
    lab.write_announcer_config("node2", config)
    done = announcer(lab, "node2", "reload")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_drain_without_forwarding_breaks_node1s_streams(
    forwarding_lab: ForwardingLab,
) -> None:
    """Without forward_connections, every stream node1 held breaks at its drain (the
    router re-hashes them to peers that answer with a reset), none of the others; the
    controllers that forwarded before left no rule or tunnel behind."""
    lab, etcd, _ = forwarding_lab
    run_nodes(lab, etcd, forward=False)
    for node in NODES3:
        rules = lab.exec_in(node, ["ip", "rule"])
        assert "fwmark" not in rules and "0:\tfrom all lookup local" in rules, rules
        assert "anc-fwd" not in lab.exec_in(node, ["ip", "link"])
    streams = Streams.open(lab, STREAMS, "plain")
    try:
        assert streams.nodes.count("node1") > 0, f"node1 got no stream: {streams.nodes}"
        assert announcer(lab, "node1", "drain", "web").returncode == 0
        wait_until(lambda: "node1" not in paths(lab), 15, what="node1's path gone")
        time.sleep(AFTER_WITHDRAW)
    finally:
        results = broken(streams.finish())
    print(f"without forwarding: broken/total per node: {results}")
    bad1, total1 = results["node1"]
    assert bad1 == total1 > 0, results


def test_a_peer_controller_killed_during_the_drain_breaks_none_of_node1s(
    forwarding_lab: ForwardingLab,
) -> None:
    """node2's controller is SIGKILLed while it forwards node1's packets (ExaBGP starts
    a new one, the routes stay): the standing part and the route to node1 stay in the
    kernel meanwhile, the new controller takes them over, and 0 of node1's streams break."""
    lab, etcd, _ = forwarding_lab
    run_nodes(lab, etcd, forward=True)
    streams = Streams.open(lab, STREAMS, "peer-kill")
    try:
        drain_node1_forwarded(lab, streams)
        old = lab.wait_api_pid("node2")
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: lab.wait_api_pid("node2") != old, 10, what="node2's new controller")
        wait_until(
            partial(forwarded_by, lab, "node2"),
            15,
            what="node2's new controller passing node1's packets",
        )
        time.sleep(AFTER_WITHDRAW)
    finally:
        raw = streams.finish()
        results = broken(raw)
    print(f"peer controller killed: broken/total per node: {results}")
    assert results["node1"][0] == 0, (results, why_broken(raw, "node1"))


def test_a_peer_restarting_during_the_drain_breaks_none_of_node1s(
    forwarding_lab: ForwardingLab,
) -> None:
    """node2's ExaBGP and controller stop (SIGTERM: its sessions close, its route goes,
    its standing part is removed) and start again while node1's streams are forwarded:
    node3 forwards what the router now sends it, node2 forwards again once back, and
    0 of node1's streams break (node2's own are cut by its abrupt stop, not counted)."""
    lab, etcd, _ = forwarding_lab
    run_nodes(lab, etcd, forward=True)
    streams = Streams.open(lab, STREAMS, "peer-restart")
    try:
        drain_node1_forwarded(lab, streams)
        lab.stop_exabgp("node2")
        lab.start_exabgp("node2")
        wait_until(lambda: "node2" in paths(lab), 30, what="node2 announcing again")
        wait_until(
            partial(forwarded_by, lab, "node2"), 15, what="node2 passing node1's packets again"
        )
        time.sleep(AFTER_WITHDRAW)
    finally:
        raw = streams.finish()
        results = broken(raw)
    print(f"peer restarted: broken/total per node: {results}")
    assert results["node1"][0] == 0, (results, why_broken(raw, "node1"))


def test_the_draining_node_dying_loses_its_streams_and_nobody_elses(
    forwarding_lab: ForwardingLab,
) -> None:
    """node1 dies (its link goes down) while its streams are forwarded to it: they are
    lost; no other stream breaks from then on, and the peers stop forwarding to it once
    its lease expires (the streams the drain's own re-hash broke before are not counted).
    Last in this module: node1 stays cut off."""
    lab, etcd, _ = forwarding_lab
    run_nodes(lab, etcd, forward=True)
    streams = Streams.open(lab, STREAMS, "death")
    try:
        drain_node1_forwarded(lab, streams)
        time.sleep(1.0)
        died = time.time()
        lab.exec_in("node1", ["ip", "link", "set", "dev", lab.links["node1"].peer_dev, "down"])
        for node in ("node2", "node3"):
            wait_until(
                partial(not_forwarding, lab, node),
                LEASE + 10,
                what=f"{node} no longer forwarding to the dead node1",
            )
        time.sleep(2.0)
    finally:
        results = streams.finish(timeout=60)
    after = broken(results, since=died)
    print(f"draining node died: broken/total since its death per node: {after}")
    assert after["node1"][0] == after["node1"][1] > 0, (after, why_broken(results, "node1"))
    assert all(bad == 0 for node, (bad, _) in after.items() if node != "node1"), after
