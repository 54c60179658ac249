"""The drain-forwarding lab (tests/integration/lab/test_drain_forwarding_lab.py): the
fleet's three nodes, their uplinks' MTU raised so that a full-size client packet fits in
VXLAN, an echo server per node and a client holding long-lived streams."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from announcer.forwarding.kernel import _module_available
from announcer.forwarding.settings import TUNNELS

from .etcd import LabEtcd
from .fleet import NODES3, config
from .lab import Lab
from .procs import Managed
from .topology import ANYCAST_V4, CLIENT, PREFIX_V4, ROUTER
from .waiting import wait_until

STREAMS_SCRIPT = Path(__file__).with_name("_streams.py")
STREAM_PORT = 9000
UNDERLAY_MTU = 1600
"""The nodes' links (both ends): 1,500 bytes of client packet + 50 of VXLAN (the largest
overhead of the tunnel types) fit; the
client's own link stays at 1,500, so its segments are full-size for the Internet."""


def forwarding_config(
    etcd: LabEtcd, lab: Lab, node: str, *, forward: bool, tunnel: str = "vxlan"
) -> dict[str, Any]:
    """The fleet's config, IPv4 prefix only; with ``forward``: forward_connections and
    [forwarding] with the node's link address as its underlay and ``tunnel``."""
    base = config(etcd, node)
    service = base["service"][0]
    service["prefixes"] = [PREFIX_V4]
    if forward:
        service["forward_connections"] = True
        base["forwarding"] = {"underlay": lab.links[node].peer_v4, "tunnel": tunnel}
    return base


def tunnel_unavailable(tunnel: str) -> str | None:
    """Why forwarding through ``tunnel`` cannot be tried on this kernel (its module is
    neither loaded nor installed), or None."""
    module = TUNNELS[tunnel].module
    if _module_available(module):
        return None
    return f"this kernel has no {module} module (neither loaded nor installed)"


def raise_underlay_mtu(lab: Lab, mtu: int = UNDERLAY_MTU) -> None:
    """The nodes' links (both ends) at ``mtu`` (the benchmark also tries 1,500)."""
    for node in NODES3:
        link = lab.links[node]
        lab.exec_in(ROUTER, ["ip", "link", "set", "dev", link.router_dev, "mtu", str(mtu)])
        lab.exec_in(node, ["ip", "link", "set", "dev", link.peer_dev, "mtu", str(mtu)])


def start_stream_servers(lab: Lab) -> dict[str, Managed]:
    """node -> its stream server (a test may stop one and start it again)."""
    return {node: start_stream_server(lab, node) for node in NODES3}


def start_stream_server(lab: Lab, node: str) -> Managed:
    ready = lab.node_dir(node) / "streams.ready"
    ready.unlink(missing_ok=True)
    argv = [sys.executable, str(STREAMS_SCRIPT), "server", "--address", ANYCAST_V4]
    argv += ["--port", str(STREAM_PORT), "--name", node, "--ready-file", str(ready)]
    argv += ["--lab", lab.id]
    proc = lab.spawn(node, f"streams {node}", argv, lab.node_dir(node) / "streams.log")
    wait_until(ready.exists, 10, what=f"stream server of {node}")
    return proc


@dataclass
class Streams:
    """The client's streams while they run; :meth:`finish` ends them and reads results."""

    lab: Lab
    proc: Managed
    directory: Path
    nodes: list[str | None]

    @classmethod
    def open(cls, lab: Lab, count: int, tag: str) -> Streams:
        directory = lab.tmpdir / f"streams-{tag}"
        directory.mkdir()
        ready = directory / "ready"
        argv = [sys.executable, str(STREAMS_SCRIPT), "client", "--address", ANYCAST_V4]
        argv += ["--port", str(STREAM_PORT), "--count", str(count)]
        argv += ["--ready-file", str(ready), "--stop-file", str(directory / "stop")]
        argv += ["--end-file", str(directory / "end")]
        argv += ["--result", str(directory / "result.json"), "--lab", lab.id]
        proc = lab.spawn(CLIENT, f"streams client {tag}", argv, directory / "client.log")
        wait_until(ready.exists, 20, what="the client's streams connected")
        return cls(lab, proc, directory, json.loads(ready.read_text()))

    def end(self, node: str, spread: float) -> None:
        """The streams ``node`` serves end cleanly, one wave after another over
        ``spread`` seconds from now (the others run on until :meth:`finish`)."""
        tmp = self.directory / "end.tmp"
        tmp.write_text(f"{node} {time.time()} {spread}\n")
        tmp.replace(self.directory / "end")

    def finish(self, timeout: float = 30) -> list[dict[str, Any]]:
        (self.directory / "stop").write_text("stop\n")
        result = self.directory / "result.json"
        wait_until(result.exists, timeout, what="the client's streams closed")
        self.proc.stop(grace=2.0)
        out: list[dict[str, Any]] = json.loads(result.read_text())
        return out


def broken(results: list[dict[str, Any]], since: float = 0.0) -> dict[str, tuple[int, int]]:
    """node -> (broken, total) of the streams it served (broken at ``since`` or later)."""
    total = Counter(str(r["node"]) for r in results)
    bad = Counter(str(r["node"]) for r in results if r["error"] and r.get("at", 0.0) >= since)
    return {node: (bad[node], total[node]) for node in sorted(total)}


def why_broken(results: list[dict[str, Any]], node: str) -> dict[str, int]:
    """How ``node``'s streams broke: each error (a reset, a 5 s stall) and how many."""
    return dict(Counter(str(r["error"]) for r in results if r["node"] == node and r["error"]))
