"""Which peer gets each prefix's unknown packets: pure, from the fleet's view.

A service's packets go to a peer when that peer's record asks for them (an underlay
address, a ``forward_until`` not yet passed: set from just before its drain) and it has not
reported zero connections left. This node never forwards a service it is drained from
itself (it is then the one holding the connections). ``max_drained = 1`` makes at most
one such peer per service; should two appear anyway (a forced drain), the first by
name is chosen and the choice is reported, since a packet can only go one way.

A peer whose tunnel type differs from this node's is never chosen (what this node's
device sends, that peer's cannot decapsulate: its connections would break without a
word); :func:`mismatched` names such peers so that the daemon says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
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


LEGACY_TUNNEL = "vxlan"
"""The tunnel of a record without one: nodes from before the choice had VXLAN only."""


def tunnel_of(record: Record) -> str:
    return record.tunnel or LEGACY_TUNNEL


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


def asking(
    me: str,
    wanted: Mapping[str, Wanted],
    view: Mapping[str, Mapping[str, Record]],
    now: float,
) -> Iterator[tuple[str, str, Record, IPv4Address]]:
    """(service, node, record, underlay) of each peer that asks for a service's packets,
    by service then node name (none for a service this node is drained from)."""
    for service, want in wanted.items():
        if want.drained_here:
            continue
        for node, record in sorted(view.get(service, {}).items()):
            address = None if node == me else draining_peer(record, now)
            if address is not None:
                yield service, node, record, address


def targets(
    me: str,
    wanted: Mapping[str, Wanted],
    view: Mapping[str, Mapping[str, Record]],
    now: float,
    tunnel: str = LEGACY_TUNNEL,
) -> dict[str, Target]:
    """service -> where its unknown packets go now (services absent: nowhere), among
    the peers with this node's ``tunnel`` type."""
    found_by: dict[str, list[tuple[str, IPv4Address, int | None]]] = {}
    for service, node, record, address in asking(me, wanted, view, now):
        if tunnel_of(record) == tunnel:
            found_by.setdefault(service, []).append((node, address, record.connections))
    out: dict[str, Target] = {}
    for service, found in found_by.items():
        node, address, conns = found[0]
        out[service] = Target(node, address, conns, tuple(n for n, _, _ in found[1:]))
    return out


def mismatched(
    peers: Iterable[tuple[str, str, Record, IPv4Address]], tunnel: str
) -> dict[str, tuple[tuple[str, str], ...]]:
    """service -> (node, its tunnel type) of each of the :func:`asking` ``peers`` whose
    tunnel type is not ``tunnel`` (services without one: absent)."""
    out: dict[str, tuple[tuple[str, str], ...]] = {}
    for service, node, record, _ in peers:
        if tunnel_of(record) != tunnel:
            out[service] = (*out.get(service, ()), (node, tunnel_of(record)))
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
