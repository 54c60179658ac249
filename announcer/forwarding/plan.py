"""Which peer gets each prefix's unknown packets: pure, from the fleet's view.

A service's packets go to a peer when that peer's record asks for them (an underlay
address, a ``forward_until`` not yet passed: set from just before its drain) and it has not
reported zero connections left. This node never forwards a service it is drained from
itself (it is then the one holding the connections). ``max_drained = 1`` makes at most
one such peer per service; should two appear anyway (a forced drain), the first by
name is chosen and the choice is reported, since a packet can only go one way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from announcer.fleet.records import Record


@dataclass(frozen=True, slots=True)
class Target:
    """Where one service's unknown packets go."""

    node: str
    underlay: IPv4Address
    connections: int | None
    others: tuple[str, ...] = ()
    """Other drained peers that would also have wanted them (should not happen)."""


@dataclass(frozen=True, slots=True)
class Wanted:
    """A service that forwards: its prefixes, and whether this node itself is drained."""

    prefixes: Sequence[IPv4Network]
    drained_here: bool


def draining_peer(record: Record, now: float) -> IPv4Address | None:
    """The peer's underlay address if it wants its connections' packets now, else None
    (it asks from just before its drain: ``forward_until`` set, not yet drained)."""
    if not record.underlay or record.connections == 0:
        return None
    if record.forward_until <= now:
        return None
    try:
        return IPv4Address(record.underlay)
    except ValueError:
        return None


def targets(
    me: str,
    wanted: Mapping[str, Wanted],
    view: Mapping[str, Mapping[str, Record]],
    now: float,
) -> dict[str, Target]:
    """service -> where its unknown packets go now (services absent: nowhere)."""
    out: dict[str, Target] = {}
    for service, want in wanted.items():
        if want.drained_here:
            continue
        found = []
        for node, record in sorted(view.get(service, {}).items()):
            if node == me:
                continue
            address = draining_peer(record, now)
            if address is not None:
                found.append((node, address, record.connections))
        if found:
            node, address, conns = found[0]
            out[service] = Target(node, address, conns, tuple(n for n, _, _ in found[1:]))
    return out


def routes(
    wanted: Mapping[str, Wanted], chosen: Mapping[str, Target]
) -> dict[IPv4Network, IPv4Address]:
    """The routes of the forwarding table: each chosen service's prefixes to its peer."""
    return {
        prefix: target.underlay
        for service, target in chosen.items()
        for prefix in wanted[service].prefixes
    }
