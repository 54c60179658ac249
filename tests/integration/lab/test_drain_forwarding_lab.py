"""Connection-preserving drain in the namespace lab: three nodes behind BIRD (ECMP, L4
hash), the real controller under ExaBGP 5.0, a 3-member etcd; a client holds 64
long-lived TCP streams to the anycast address, each echoing 16 KiB (full-size segments
both ways) every 50 ms. node1 is drained (drain_seconds 3) while they run.

With ``forward_connections``, node2 and node3 pass node1's packets to it through VXLAN
until its connections end: none of node1's streams breaks. Without it, the router's
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
import time
from collections.abc import Iterator
from functools import partial

import pytest

from tests.lab import Lab, announcer_available, wait_until
from tests.lab.etcd import LabEtcd, etcd_available
from tests.lab.fleet import LEASE, NODES3, announcer, paths
from tests.lab.forwarding import (
    Streams,
    broken,
    raise_underlay_mtu,
    start_stream_servers,
    why_broken,
)
from tests.lab.forwarding_nodes import (
    drain_node1_forwarded,
    forwarded_by,
    not_forwarding,
    run_nodes,
    status,
)

pytestmark = pytest.mark.lab

STREAMS = 64
AFTER_WITHDRAW = 4.0
"""Seconds the streams keep running after node1's withdraw (forwarded all along)."""


@pytest.fixture(scope="module")
def forwarding_lab(lab_requirements: None) -> Iterator[tuple[Lab, LabEtcd]]:
    if not etcd_available():
        pytest.skip("needs etcd (apt-get install etcd-server)")
    if not announcer_available():
        pytest.skip("announcer is not installed in .venv: run scripts/bootstrap.sh")
    with Lab("5.0", nodes=NODES3) as lab:
        raise_underlay_mtu(lab)
        servers = start_stream_servers(lab)
        etcd = LabEtcd(lab).start()
        try:
            yield lab, etcd
        finally:
            etcd.stop()
            for proc in servers:
                proc.stop(grace=1.0)


def test_drain_with_forwarding_breaks_no_stream(forwarding_lab: tuple[Lab, LabEtcd]) -> None:
    """With forward_connections, 0 of node1's streams (and 0 of the others') break
    through node1's drain and withdraw; its peers say where they pass its packets while
    it has connections, stop once it has none, and ``drain --wait`` then returns 0."""
    lab, etcd = forwarding_lab
    run_nodes(lab, etcd, forward=True)
    streams = Streams.open(lab, STREAMS, "forward")
    try:
        drain_node1_forwarded(lab, streams)
        time.sleep(AFTER_WITHDRAW)
        assert status(lab, "node1")["route"] == "WITHDRAWN"
    finally:
        raw = streams.finish()
        results = broken(raw)
    print(f"with forwarding: broken/total per node: {results}")
    ready = [line for line in lab.exabgp_log("node1").splitlines() if "forwarding_ready" in line]
    assert results["node1"][0] == 0, (results, why_broken(raw, "node1"), ready)
    waited = announcer(lab, "node1", "drain", "web", "--wait", "--timeout", "30")
    assert waited.returncode == 0, waited.stderr
    wait_until(
        lambda: "forwarding" not in status(lab, "node2"), 10, what="node2 no longer forwarding"
    )


def test_drain_without_forwarding_breaks_node1s_streams(
    forwarding_lab: tuple[Lab, LabEtcd],
) -> None:
    """Without forward_connections, every stream node1 held breaks at its drain (the
    router re-hashes them to peers that answer with a reset), none of the others; the
    controllers that forwarded before left no rule or tunnel behind."""
    lab, etcd = forwarding_lab
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
    forwarding_lab: tuple[Lab, LabEtcd],
) -> None:
    """node2's controller is SIGKILLed while it forwards node1's packets (ExaBGP starts
    a new one, the routes stay): the standing part and the route to node1 stay in the
    kernel meanwhile, the new controller takes them over, and 0 of node1's streams break."""
    lab, etcd = forwarding_lab
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
    forwarding_lab: tuple[Lab, LabEtcd],
) -> None:
    """node2's ExaBGP and controller stop (SIGTERM: its sessions close, its route goes,
    its standing part is removed) and start again while node1's streams are forwarded:
    node3 forwards what the router now sends it, node2 forwards again once back, and
    0 of node1's streams break (node2's own are cut by its abrupt stop, not counted)."""
    lab, etcd = forwarding_lab
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
    forwarding_lab: tuple[Lab, LabEtcd],
) -> None:
    """node1 dies (its link goes down) while its streams are forwarded to it: they are
    lost; no other stream breaks from then on, and the peers stop forwarding to it once
    its lease expires (the streams the drain's own re-hash broke before are not counted).
    Last in this module: node1 stays cut off."""
    lab, etcd = forwarding_lab
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
