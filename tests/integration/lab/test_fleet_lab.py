"""The fleet guard in the namespace lab: three nodes behind BIRD running the real
``announcer run`` under ExaBGP 5.0, sharing a 3-member etcd (Debian's) that runs in the
router's namespace; a client counts requests. Asserted at the router (BIRD's paths)
and by the client.

Config of every node: one service ``web`` (HTTP check of /health, rise 2, fall 2,
drain_seconds 3), ``[fleet]`` group ``lab`` with lease_seconds 3, min_announcing 1 (the
default), max_drained 1.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest

from tests.lab import ANYCAST_V4, Lab, announcer_available, wait_until
from tests.lab.etcd import LabEtcd, etcd_available
from tests.lab.fleet import (
    LEASE,
    NODES3,
    announcer,
    counted,
    fleet_view,
    paths,
    start_all,
)

pytestmark = pytest.mark.lab

URL = f"http://{ANYCAST_V4}/"
GONE_MARGIN = 4.0
"""Seconds beyond lease_seconds for a killed node to leave the others' view: etcd's
expiry check runs every 500 ms, and the view is read every second."""


@pytest.fixture(scope="module")
def fleet_lab(lab_requirements: None) -> Iterator[tuple[Lab, LabEtcd]]:
    if not etcd_available():
        pytest.skip("needs etcd (apt-get install etcd-server)")
    if not announcer_available():
        pytest.skip("announcer is not installed in .venv: run scripts/bootstrap.sh")
    with Lab("5.0", nodes=NODES3) as lab:
        etcd = LabEtcd(lab).start()
        try:
            yield lab, etcd
        finally:
            etcd.stop()


@pytest.fixture
def lab(fleet_lab: tuple[Lab, LabEtcd]) -> Lab:
    """Back to the baseline: etcd whole, every node healthy, undrained, announcing."""
    lab, etcd = fleet_lab
    for i in range(etcd.size):
        if i not in etcd.procs:
            etcd.start_member(i)
    for i in range(etcd.size):
        etcd.wait_ready(i)
    start_all(lab, etcd)
    for node in NODES3:
        announcer(lab, node, "undrain", "--all")
    wait_until(lambda: set(paths(lab)) == set(NODES3), 30, what="three nodes announcing")
    wait_until(lambda: counted(lab, "node1") == 3, 30, what="the fleet counting three")
    return lab


def etcd_of(lab: Lab, fleet_lab: tuple[Lab, LabEtcd]) -> LabEtcd:
    return fleet_lab[1]


def test_all_three_fail_together_one_keeps_announcing_lowered(lab: Lab) -> None:
    """(a) Every node's /health reports the shared backend down while the web servers
    still answer: exactly one node keeps its route (lowered, MED 1000: held by the
    guard), the address keeps answering; when one node recovers the held one withdraws."""
    with lab.client_loop(URL, timeout=1.0, max_seconds=120.0) as loop:
        loop.wait_for_requests(20, 10.0)
        for node in NODES3:
            lab.set_healthy(node, False)
        wait_until(lambda: len(paths(lab)) == 1, 30, what="two withdrawn")
        time.sleep(2)  # let any wrong second withdraw show itself
        (held,) = paths(lab)
        assert paths(lab) == {held: 1000}
        status = json.loads(announcer(lab, held, "status", "--json").stdout)
        assert status["services"]["web"]["fleet_guard"].startswith("held by the fleet guard")
        other = next(n for n in NODES3 if n != held)
        lab.set_healthy(other, True)
        wait_until(lambda: set(paths(lab)) == {other}, 30, what="the held node withdrawn")
        stats = loop.stats()
    # At most the documented in-flight cut per FIB change (three changes here).
    assert stats.failures <= 3, stats.errors
    assert stats.total > 20


def test_a_killed_node_leaves_the_others_view_within_its_lease(lab: Lab) -> None:
    """(c) node3 SIGKILLed, announcer and ExaBGP alike (no lease revoked): the others
    see it gone within lease_seconds plus a stated margin. Before, `announcer fleet`
    shows each node's lease time left (read from etcd off the daemon's loop)."""
    nodes = fleet_view(lab, "node1")["services"]["web"]["nodes"]
    assert all(0 <= n["lease_left"] <= LEASE for n in nodes.values()), nodes
    for pid in lab.api_pids("node3"):
        os.kill(pid, signal.SIGKILL)
    lab.kill_exabgp("node3")
    killed = time.monotonic()

    def gone() -> bool:
        nodes = fleet_view(lab, "node1").get("services", {}).get("web", {}).get("nodes", {})
        return bool(nodes) and "node3" not in nodes

    wait_until(gone, LEASE + GONE_MARGIN + 10, what="node3 gone from node1's view")
    seen = time.monotonic() - killed
    print(f"FLEET node gone after {seen:.2f} s (lease {LEASE} s)")
    assert seen <= LEASE + GONE_MARGIN


def test_max_drained_one_drains_in_turn(lab: Lab) -> None:
    """(b) max_drained 1: draining node1 and node2 together drains node1 now and node2
    only once node1 is undrained; --no-queue refuses, --force drains anyway."""
    assert announcer(lab, "node1", "drain", "web").returncode == 0
    wait_until(lambda: paths(lab).get("node1") == 1000, 15, what="node1 draining")
    wait_until(
        lambda: fleet_view(lab, "node3")["services"]["web"]["drained_by"] == ["node1"],
        15,
        what="node3 seeing node1's slot",
    )
    refused = announcer(lab, "node3", "drain", "web", "--no-queue")
    assert refused.returncode != 0 and "no free drain slot" in refused.stderr
    assert announcer(lab, "node2", "drain", "web").returncode == 0
    wait_until(lambda: "node1" not in paths(lab), 15, what="node1 withdrawn")
    time.sleep(1)
    assert paths(lab).get("node2") == 100  # still waiting for the slot
    status = json.loads(announcer(lab, "node2", "status", "--json").stdout)
    assert "waiting for a drain slot" in status["services"]["web"]["fleet_slot"]
    assert announcer(lab, "node1", "undrain", "web").returncode == 0
    wait_until(lambda: paths(lab).get("node2") == 1000, 15, what="node2 draining in turn")
    assert announcer(lab, "node3", "drain", "web", "--force").returncode == 0
    wait_until(lambda: paths(lab).get("node3") == 1000, 15, what="node3 forced")


def test_etcd_losing_quorum_withdraws_nothing(lab: Lab, fleet_lab: tuple[Lab, LabEtcd]) -> None:
    """(d) Two of three etcd members killed: nothing is withdrawn, status says etcd is
    unreachable; with on_unknown = local the next health change withdraws as without a
    fleet; quorum back, the view comes back."""
    etcd = etcd_of(lab, fleet_lab)
    etcd.kill(1)
    etcd.kill(2)

    def unknown(node: str) -> Callable[[], bool]:
        return lambda: fleet_view(lab, node).get("etcd", {}).get("reachable") is False

    for node in NODES3:
        wait_until(unknown(node), 30, what=f"{node} seeing etcd unreachable")
    assert set(paths(lab)) == set(NODES3)
    lab.set_healthy("node1", False)
    wait_until(lambda: "node1" not in paths(lab), 30, what="node1 withdrawn (on_unknown local)")
    assert set(paths(lab)) == {"node2", "node3"}
    etcd.start_member(1)
    etcd.start_member(2)
    wait_until(lambda: not unknown("node2")(), 60, what="etcd back")
