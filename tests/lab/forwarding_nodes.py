"""The drain-forwarding lab's nodes, for its tests (test_drain_forwarding_lab.py) and the
benchmark's P2L (tests/bench/drainfwd.py): starting the controllers with or without
forwarding, draining node1 until its peers pass its packets on, and what status says."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import partial

from .etcd import LabEtcd
from .fleet import NODES3, announcer, counted, paths
from .forwarding import Streams, forwarding_config
from .lab import Lab
from .waiting import wait_until


def run_nodes(
    lab: Lab,
    etcd: LabEtcd,
    *,
    forward: bool,
    tunnel: str = "vxlan",
    nodes: Sequence[str] = NODES3,
    others: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """``nodes``' controllers (re)started with the config wanted (forwarding through
    ``tunnel``), all announcing; a node
    in ``others`` runs that API process instead of announcer (e.g. `exabgp healthcheck`).
    The lab's nodes not in ``nodes`` are left stopped."""
    others = others or {}
    for node in lab.nodes:
        lab.stop_exabgp(node)
    argv = {
        node: others.get(node)
        or lab.announcer_argv(
            node, forwarding_config(etcd, lab, node, forward=forward, tunnel=tunnel)
        )
        for node in nodes
    }
    lab.ensure(argv)
    controllers = [node for node in nodes if node not in others]
    for node in controllers:  # a drain is kept across restarts; the socket may not be up yet
        wait_until(partial(undrained, lab, node), 15, what=f"{node} undrained")
    wait_until(lambda: set(paths(lab)) == set(nodes), 30, what=f"{len(nodes)} nodes announcing")
    if controllers:
        wait_until(
            lambda: counted(lab, controllers[0]) == len(controllers),
            30,
            what=f"the fleet counting {len(controllers)}",
        )


def undrained(lab: Lab, node: str) -> bool:
    return announcer(lab, node, "undrain", "--all").returncode == 0


def not_forwarding(lab: Lab, node: str) -> bool:
    return "forwarding" not in status(lab, node)


def status(lab: Lab, node: str) -> dict[str, object]:
    out = announcer(lab, node, "status", "--json")
    web: dict[str, object] = json.loads(out.stdout)["services"]["web"]
    return web


def forwarded_by(lab: Lab, node: str) -> bool:
    """``node`` says it passes node1's packets on."""
    return "node1" in str(status(lab, node).get("forwarding", ""))


def drain_node1_forwarded(lab: Lab, streams: Streams) -> None:
    """Drain node1 (which holds some of the streams), then wait until its path is gone
    from the router and node2 passes its packets on."""
    assert streams.nodes.count("node1") > 0, f"node1 got no stream: {streams.nodes}"
    assert announcer(lab, "node1", "drain", "web").returncode == 0
    wait_until(lambda: "node1" not in paths(lab), 15, what="node1's path gone")
    wait_until(partial(forwarded_by, lab, "node2"), 10, what="node2 passing node1's packets")
