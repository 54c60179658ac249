"""P2L: established connections across a drain of node1, with and without drain
forwarding (docs/drain.md), in the drain-forwarding lab of the integration tests
(tests/lab/forwarding.py: three nodes behind BIRD, ECMP with the L4 hash, ExaBGP 5.0, a
3-member etcd, the nodes' links at MTU 1,600 so that a full-size client packet fits in
VXLAN). :data:`STREAMS` long-lived streams from the client, each echoing 16 KiB
(full-size segments both ways) every 50 ms, then node1 taken out by

- ``on``: announcer with ``forward_connections``: ``announcer drain web``;
- ``mtu``: the same with the nodes' links at MTU 1,500, too small for a full-size
  packet in VXLAN: the peers' IP fragmentation counter says what the kernel did;
- ``off``: announcer without it: the same drain;
- ``exa``: `exabgp healthcheck` on node1 (node2 and node3 run announcer without
  forwarding): its ``--disable`` file;

and per node, how many of its streams broke; node2's and node3's tunnels count the
packets they forwarded.

Then the forwarding node's CPU (``cpu``): node3 stopped, so that the router sends all of
node1's packets to node2 once node1 is drained (and node2's own stay where they are:
from two next hops to one, nothing else moves). The same streams run throughout; node1
is drained and undrained in turn, and over each window the whole machine's busy CPU is
read from /proc/stat (softirq work, where the kernel forwards, belongs to no process
and no namespace), beside node2's tunnel counter. CPU with forwarding minus the window
before it without, per 10,000 forwarded packets/s. That difference holds everything a
forwarded packet costs the machine: node2's conntrack lookup, mark, policy route and
encapsulation, the router passing the outer packet, node1's decapsulation. It is
noisy (a shared 2-vCPU machine): the windows without forwarding, compared with each
other, give the noise.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from announcer.forwarding.settings import ForwardingSettings
from tests.lab import PREFIX_V4, Lab, cleanup_stale, wait_until
from tests.lab._streams import CHUNK, PAUSE
from tests.lab.etcd import LabEtcd
from tests.lab.fleet import NODES3, announcer, paths
from tests.lab.forwarding import (
    UNDERLAY_MTU,
    Streams,
    broken,
    raise_underlay_mtu,
    start_stream_servers,
    why_broken,
)
from tests.lab.forwarding_nodes import drain_node1_forwarded as drain_forwarded
from tests.lab.forwarding_nodes import not_forwarding, run_nodes
from tests.lab.topology import CLIENT, ROUTER

from .common import log
from .failover import tool_argv
from .fibmon import FibMonitor
from .maintenance import TIMING

STREAMS = 64
DRAIN_SECONDS = 3.0
"""The fleet lab's drain_seconds (tests/lab/fleet.py)."""
HOLD = 4.0
"""Seconds the streams run on after node1's route is withdrawn (forwarded all along)."""
SETTLE = 1.0
"""Seconds after a change of route before a CPU window starts."""
TUNNEL = ForwardingSettings.model_fields["device"].default
PEERS = ("node2", "node3")
SMALL_MTU = 1500
"""The ``mtu`` row's links: a 1,500-byte client packet plus VXLAN's 50 does not fit."""
CLK_TCK = os.sysconf("SC_CLK_TCK")


def run(params: dict[str, Any], out: dict[str, Any]) -> None:
    """The three rows, then the CPU windows, in one lab; figures into ``out``."""
    cleanup_stale()
    out.update(
        streams=STREAMS,
        chunk=CHUNK,
        pause_s=PAUSE,
        underlay_mtu=UNDERLAY_MTU,
        drain_seconds=DRAIN_SECONDS,
        hold_s=HOLD,
        exa_timing=TIMING.label(),
    )
    with Lab("5.0", nodes=NODES3) as lab:
        log(f"P2L: lab {lab.id}")
        raise_underlay_mtu(lab)
        one_segment_per_packet(lab)
        servers = start_stream_servers(lab)
        etcd = LabEtcd(lab).start()
        monitor = FibMonitor(lab.ns(ROUTER), [PREFIX_V4]).start()
        try:
            rows = out.setdefault("rows", {})
            log(f"P2L on: {STREAMS} streams, announcer drain with forward_connections")
            run_nodes(lab, etcd, forward=True)
            rows["on"] = across_drain(lab, monitor, "on", lambda s: drain_forwarded(lab, s))
            log(f"P2L mtu: the same with the nodes' links at MTU {SMALL_MTU}")
            raise_underlay_mtu(lab, SMALL_MTU)
            try:
                run_nodes(lab, etcd, forward=True)
                rows["mtu"] = across_drain(lab, monitor, "mtu", lambda s: drain_forwarded(lab, s))
            finally:
                raise_underlay_mtu(lab)
            log("P2L off: the same drain without forward_connections")
            run_nodes(lab, etcd, forward=False)
            rows["off"] = across_drain(lab, monitor, "off", lambda s: drain(lab))
            log("P2L exa: exabgp healthcheck on node1, its disable file")
            disable = lab.node_dir("node1") / "exa-disable"
            exa = {"node1": tool_argv(lab, "exa", "p2l-exa", TIMING)}
            run_nodes(lab, etcd, forward=False, others=exa)

            def disable_exa(streams: Streams) -> None:
                disable.write_text("p2l\n")

            try:
                rows["exa"] = across_drain(lab, monitor, "exa", disable_exa)
            finally:
                disable.unlink(missing_ok=True)
            log(f"P2L cpu: {params['p2l_cpu_pairs']} pairs of {params['p2l_cpu_window']:g} s")
            out["cpu"] = forwarding_cpu(
                lab, etcd, pairs=params["p2l_cpu_pairs"], window=params["p2l_cpu_window"]
            )
        finally:
            monitor.stop()
            etcd.stop()
            for proc in servers.values():
                proc.stop(grace=1.0)


def one_segment_per_packet(lab: Lab) -> None:
    """The client's link sends each TCP segment as a packet of its own (a veth would
    pass 16 KiB as one GSO packet): full-size 1,500-byte packets, as from a real
    network, which is what the packet counts and the MTU are about."""
    lab.exec_in(
        CLIENT, ["ip", "link", "set", "dev", lab.links[CLIENT].peer_dev, "gso_max_segs", "1"]
    )


def drain(lab: Lab) -> None:
    if announcer(lab, "node1", "drain", "web").returncode != 0:
        raise RuntimeError("announcer drain web failed on node1")


def across_drain(
    lab: Lab, monitor: FibMonitor, tag: str, take_out: Callable[[Streams], None]
) -> dict[str, Any]:
    """Open the streams, ``take_out`` node1, hold :data:`HOLD` s past its withdraw, then
    count each node's broken streams and the packets the peers' tunnels sent; when the
    router's FIB dropped node1 (its traffic moved: at the lowering) and when BIRD lost
    its route (the withdraw)."""
    sent, split = tunnel_packets(lab), fragmented(lab)
    node1 = lab.links["node1"].peer_v4
    streams = Streams.open(lab, STREAMS, f"p2l-{tag}")
    try:
        t0 = time.time()
        take_out(streams)
        moved = monitor.wait(PREFIX_V4, lambda g: node1 not in g, after=t0, timeout=15)
        wait_until(lambda: "node1" not in paths(lab), 15, what="node1's route withdrawn")
        withdrawn = time.time() - t0
        time.sleep(HOLD)
    finally:
        raw = streams.finish()
    after = tunnel_packets(lab)
    counts = broken(raw)
    log_lines = lab.exabgp_log("node1").splitlines()
    ready = [line for line in log_lines if "forwarding_ready" in line and "ready=" in line]
    return {
        # how node1's drain waited for its peers (the router moves once they forward)
        "forwarding_ready": ready[-1][ready[-1].index("forwarding_ready") :] if ready else None,
        "nodes": {node: {"broken": bad, "open": total} for node, (bad, total) in counts.items()},
        "why": {node: why_broken(raw, node) for node in counts if counts[node][0]},
        "forwarded_packets": {node: after[node] - sent.get(node, 0) for node in after},
        "fragmented": {node: n - split[node] for node, n in fragmented(lab).items()},
        "traffic_moved_after_s": moved.stamp - t0,
        "withdrawn_after_s": withdrawn,
    }


def tunnel_packets(lab: Lab, nodes: Sequence[str] = PEERS) -> dict[str, int]:
    """node -> packets its forwarding tunnel sent so far (nodes without one left out)."""
    out = {}
    for node in nodes:
        sent = link_packets(lab, node, TUNNEL, "tx")
        if sent is not None:
            out[node] = sent
    return out


def fragmented(lab: Lab) -> dict[str, int]:
    """node -> IPv4 packets it fragmented so far (/proc/net/snmp's Ip FragOKs, read in
    the node's namespace): a forwarded packet too big for the underlay once in VXLAN."""
    out = {}
    for node in PEERS:
        header, values = (
            line.split()
            for line in lab.exec_in(node, ["cat", "/proc/net/snmp"]).splitlines()
            if line.startswith("Ip: ")
        )
        out[node] = int(values[header.index("FragOKs")])
    return out


def link_packets(lab: Lab, name: str, device: str, way: str) -> int | None:
    """The packet counter of ``device`` in namespace ``name`` (None: no such device)."""
    text = lab.exec_in(name, ["ip", "-j", "-s", "link", "show", "dev", device], check=False)
    try:
        return int(json.loads(text)[0]["stats64"][way]["packets"])
    except (ValueError, LookupError):
        return None


def cpu_jiffies() -> tuple[int, int]:
    """The machine's busy and softirq jiffies so far (/proc/stat's first line; idle,
    iowait and steal are not busy)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return user + nice + system + irq + softirq, softirq


def measure(lab: Lab, seconds: float) -> dict[str, float]:
    """One window: the machine's busy and softirq cores, node2's forwarded packets/s
    and the client's sent packets/s."""
    client_dev = lab.links[CLIENT].peer_dev

    def snapshot() -> tuple[float, int, int, int, int]:
        busy, softirq = cpu_jiffies()
        forwarded = tunnel_packets(lab, ("node2",)).get("node2", 0)
        sent = link_packets(lab, CLIENT, client_dev, "tx") or 0
        return time.monotonic(), busy, softirq, forwarded, sent

    first = snapshot()
    time.sleep(seconds)
    last = snapshot()
    elapsed = last[0] - first[0]
    busy, softirq, forwarded, sent = (b - a for a, b in zip(first[1:], last[1:], strict=True))
    return {
        "seconds": elapsed,
        "busy_cores": busy / CLK_TCK / elapsed,
        "softirq_cores": softirq / CLK_TCK / elapsed,
        "forwarded_pps": forwarded / elapsed,
        "client_pps": sent / elapsed,
        "load1": os.getloadavg()[0],
    }


def forwarding_cpu(lab: Lab, etcd: LabEtcd, *, pairs: int, window: float) -> dict[str, Any]:
    """Windows without and with node2 forwarding node1's streams, in turn (module doc)."""
    two = ("node1", "node2")
    run_nodes(lab, etcd, forward=True, nodes=two)
    streams = Streams.open(lab, STREAMS, "p2l-cpu")
    spread = {node: streams.nodes.count(node) for node in two}
    windows: list[dict[str, Any]] = []
    began = time.time()
    try:
        for _ in range(pairs):
            time.sleep(SETTLE)
            windows.append({"forwarding": False, "at": time.time() - began, **measure(lab, window)})
            drain_forwarded(lab, streams)
            time.sleep(SETTLE)
            windows.append({"forwarding": True, "at": time.time() - began, **measure(lab, window)})
            if announcer(lab, "node1", "undrain", "web").returncode != 0:
                raise RuntimeError("announcer undrain web failed on node1")
            wait_until(lambda: "node1" in paths(lab), 15, what="node1's path back")
            wait_until(lambda: not_forwarding(lab, "node2"), 15, what="node2 done forwarding")
    finally:
        raw = streams.finish()
        lab.stop_exabgp("node1")
        lab.stop_exabgp("node2")
    return {
        "pairs": pairs,
        "window_s": window,
        "spread": spread,
        "broken": {node: bad for node, (bad, _) in broken(raw).items()},
        # when and how streams broke (the windows' "at" are on the same clock)
        "broken_at_s": sorted(round(r["at"] - began, 1) for r in raw if r["error"] and "at" in r),
        "why": {node: why_broken(raw, node) for node in two if why_broken(raw, node)},
        "windows": windows,
        **per_10k(windows),
    }


def per_10k(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per kind of CPU (softirq: the kernel's packet work; busy: everything), each pair's
    cores with forwarding minus without per 10,000 forwarded packets/s, their median and
    range, and the noise: how far apart the windows without forwarding lie, in the same
    unit at the median forwarded rate."""
    pairs = [
        (a, b) for a, b in zip(windows[0::2], windows[1::2], strict=False) if b["forwarded_pps"]
    ]
    if not pairs:
        return {"each": []}
    rate = statistics.median(b["forwarded_pps"] for _, b in pairs) / 10_000
    out: dict[str, Any] = {"each": [], "forwarded_pps": rate * 10_000}
    for kind in ("softirq", "busy"):
        key = f"{kind}_cores"
        each = [(b[key] - a[key]) / (b["forwarded_pps"] / 10_000) for a, b in pairs]
        base = [w[key] for w in windows if not w["forwarding"]]
        out[kind] = {
            "per_10k": statistics.median(each),
            "each": each,
            "range": [min(each), max(each)],
            "noise": (max(base) - min(base)) / rate,
        }
    out["each"] = out["softirq"]["each"]
    return out
