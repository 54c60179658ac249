"""docs/benchmarks.md's P2L (connections across a drain, with and without drain
forwarding; the forwarding node's CPU): its goal and its section."""

from __future__ import annotations

from typing import Any

from .report import NA
from .report import _pct as pct
from .report import _table as table
from .report import _verdict as verdict

TITLES = {
    "on": "announcer, `forward_connections` on: `announcer drain web`",
    "mtu": "the same, the nodes' links at MTU 1,500",
    "off": "announcer, `forward_connections` off: `announcer drain web`",
    "exa": "EXA on node1: its `--disable` file",
}
OTHERS = ("node2", "node3")


def _broken(row: dict[str, Any], nodes: tuple[str, ...]) -> tuple[int, int]:
    """Broken and total streams of ``nodes`` in a row."""
    counts = [row["nodes"].get(node, {"broken": 0, "open": 0}) for node in nodes]
    return sum(c["broken"] for c in counts), sum(c["open"] for c in counts)


def goals(data: dict[str, Any] | None) -> list[list[str]]:
    """Issue 16's goal: with forwarding, none of the drained node's streams breaks."""
    on = (data or {}).get("rows", {}).get("on")
    if not on:
        return []
    bad, total = _broken(on, ("node1",))
    others, others_total = _broken(on, OTHERS)
    return [
        [
            "P2L drain with `forward_connections`: node1's streams broken",
            "0",
            f"{bad} / {total} (the others': {others} / {others_total}, the router's re-hash)",
            verdict(total > 0 and bad == 0),
        ]
    ]


def section(data: dict[str, Any]) -> list[str]:
    lines = [
        "## P2L Connections across a drain, with and without forwarding",
        "",
        f"The drain-forwarding lab of the integration tests (docs/drain.md): three nodes "
        f"behind BIRD (ECMP, L4 hash, the kernel's hash-threshold multipath), ExaBGP 5.0, a "
        f"3-member etcd, the nodes' links at MTU {data['underlay_mtu']:,} (a full-size "
        f"client packet plus VXLAN's 50 bytes). The client holds {data['streams']} "
        f"long-lived TCP streams to 192.0.2.10, each sending {data['chunk']:,} bytes "
        f"(full-size segments) and reading them back every {1000 * data['pause_s']:.0f} ms; "
        f"then node1 is taken out (announcer: drain_seconds {data['drain_seconds']:g}; EXA "
        f"checks every {data['exa_timing']}) and the streams run on "
        f"{data['hold_s']:g} s after its route is withdrawn. Broken: reset, or no echo for "
        f"5 s. The client's link sends one segment a packet (no GSO): packets are "
        f"full-size ones.",
        "",
    ]
    rows = []
    for key, title in TITLES.items():
        row = data.get("rows", {}).get(key)
        if not row:
            continue
        bad, total = _broken(row, ("node1",))
        others, others_total = _broken(row, OTHERS)
        forwarded = row.get("forwarded_packets") or {}
        rows.append(
            [
                title,
                f"**{bad}** / {total}",
                f"**{others}** / {others_total}",
                ", ".join(
                    f"{node} {row['nodes'].get(node, {}).get('broken', 0)} / "
                    f"{row['nodes'].get(node, {}).get('open', 0)}"
                    for node in OTHERS
                ),
                f"{sum(forwarded.values()):,}" if forwarded else "none (no tunnel)",
                f"{sum(row.get('fragmented', {}).values()):,}" if forwarded else NA,
                f"{row['traffic_moved_after_s']:.2f} / {row['withdrawn_after_s']:.2f}",
            ]
        )
    lines += table(
        [
            "Scenario",
            "node1's streams broken",
            "the others' broken",
            "per node",
            "packets forwarded (node2 + node3)",
            "of them fragmented",
            "node1 out of the router's FIB / withdrawn, after s",
        ],
        rows,
    )
    ready = data.get("rows", {}).get("on", {}).get("forwarding_ready")
    if ready:
        lines += [
            f"With forwarding, node1's route is lowered (and its traffic moves) only once its "
            f"peers say they forward, or after `ready_seconds`; node1's log: `{ready}`.",
            "",
        ]
    mtu = data.get("rows", {}).get("mtu")
    if mtu and mtu.get("forwarded_packets"):
        lines += [
            f"Fragmented: IPv4 packets node2 and node3 split (their /proc/net/snmp). At MTU "
            f"1,500 a full-size client packet in VXLAN (1,550 bytes) does not fit the link; "
            f"Linux's VXLAN leaves the outer packet's DF bit clear by default, so the peer "
            f"fragments it and node1 reassembles it: the streams live, at two packets and a "
            f"reassembly each, and only where the network between the nodes passes IP "
            f"fragments. An underlay MTU of 1,550 or more (the lab's {data['underlay_mtu']:,}) "
            f"forwards them whole.",
            "",
        ]
    lines += [
        "node1's streams are the ones a drain can save. The others' broken streams are the "
        "router's own re-hash: Linux's multipath splits the hash space by threshold, so "
        "when node1's next hop goes, part of node2's range moves to node3 (or the other "
        "way round); those streams reach a node that does not know them, and forwarding "
        "sends them to node1, which does not know them either. Only a router with "
        "resilient ECMP hashing keeps them (docs/drain.md, what it cannot save).",
        "",
    ]
    return lines + cpu_lines(data.get("cpu"))


def cpu_lines(cpu: dict[str, Any] | None) -> list[str]:
    """The forwarding node's CPU per 10,000 forwarded packets/s, and how it was measured."""
    if not cpu or not cpu.get("each"):
        return ["The forwarding node's CPU: not measured in this run.", ""]
    spread = ", ".join(f"{n} {c}" for n, c in cpu["spread"].items())
    lines = [
        "### The forwarding node's CPU",
        "",
        f"node3 stopped, so that node2 alone forwards: the same {sum(cpu['spread'].values())} "
        f"streams ({spread}; the client's link sends one segment a packet) run throughout "
        f"while node1 is drained and undrained in turn, {cpu['pairs']} times; over each "
        f"{cpu['window_s']:g} s window the whole machine's CPU is read from /proc/stat, "
        f"with node2's tunnel counter. Forwarding is softirq work, which belongs to no "
        f"process and no namespace, so the figure is the machine's **softirq** time with "
        f"forwarding minus the window before without, per 10,000 forwarded packets/s: "
        f"everything a forwarded packet costs, node2's conntrack lookup, mark, policy route "
        f"and VXLAN encapsulation, the router passing the outer packet and node1's "
        f"decapsulation (an upper bound of node2's own share). The machine's whole busy "
        f"time is shown beside it: it holds the other work on this shared machine too.",
        "",
    ]
    rows = []
    windows = cpu["windows"]
    for i, (without, with_) in enumerate(zip(windows[0::2], windows[1::2], strict=False), 1):
        rows.append(
            [
                i,
                f"{pct(without['softirq_cores'], 1)} → {pct(with_['softirq_cores'], 1)}",
                f"{pct(without['busy_cores'], 0)} → {pct(with_['busy_cores'], 0)}",
                f"{without['client_pps']:,.0f} / {with_['client_pps']:,.0f}",
                f"{with_['forwarded_pps']:,.0f}",
                f"{without['load1']:.1f} / {with_['load1']:.1f}",
            ]
        )
    lines += table(
        [
            "pair",
            "machine softirq, without → with forwarding (of one core)",
            "machine busy, without → with",
            "client's packets/s, without / with",
            "forwarded packets/s",
            "load, without / with",
        ],
        rows,
    )
    soft, busy = cpu["softirq"], cpu["busy"]
    lines += [
        f"**{pct(soft['per_10k'], 1)} of one core per 10,000 forwarded packets/s** (softirq, "
        f"median of {len(soft['each'])} pairs, from {pct(soft['range'][0], 1)} to "
        f"{pct(soft['range'][1], 1)}), at {cpu['forwarded_pps']:,.0f} forwarded packets/s. "
        f"Noise: the softirq of the windows without forwarding spans "
        f"{pct(soft['noise'], 1)} in the same unit (other labs on the machine pass packets "
        f"too). The whole busy time gives {pct(busy['per_10k'], 0)} (from "
        f"{pct(busy['range'][0], 0)} to {pct(busy['range'][1], 0)}; its windows without "
        f"forwarding span {pct(busy['noise'], 0)}): on this shared machine, too noisy to "
        f"say more than that. Streams broken during the windows: "
        + ", ".join(f"{n} {b}" for n, b in cpu.get("broken", {}).items())
        + ".",
        "",
    ]
    return lines + _broken_lines(cpu)


def _broken_lines(cpu: dict[str, Any]) -> list[str]:
    """When streams broke during the CPU windows (none should), and how."""
    at = cpu.get("broken_at_s")
    if not at:
        return []
    starts = [w["at"] for w in cpu["windows"]]
    why = "; ".join(
        f"{node}: " + ", ".join(f"{n} {error}" for error, n in errors.items())
        for node, errors in cpu.get("why", {}).items()
    )
    return [
        f"**Streams broke during the CPU part** ({len(at)}, from {at[0]:g} to {at[-1]:g} s "
        f"into it; the windows began at {', '.join(f'{s:.0f}' for s in starts)} s): {why}. "
        f"Pairs with no packet forwarded are left out of the figure.",
        "",
    ]
