"""Names and addresses of the lab: who is linked to whom, and with which addresses."""

from __future__ import annotations

from dataclasses import dataclass

ANYCAST_V4 = "192.0.2.10"
ANYCAST_V6 = "2001:db8::10"
PREFIX_V4 = f"{ANYCAST_V4}/32"
PREFIX_V6 = f"{ANYCAST_V6}/128"
ROUTER_ID = "10.0.0.1"
HTTP_PORT = 80

ROUTER = "router"
NODES = ("node1", "node2")
CLIENT = "client"
NAMESPACES = (ROUTER, *NODES, CLIENT)


@dataclass(frozen=True)
class Link:
    """The point-to-point link between the router and one other namespace."""

    peer: str
    """``node1``, ``node2`` or ``client``."""
    index: int
    """Subnet number: 10.0.<index>.0/24 and fd00:<index>::/64."""
    router_dev: str
    """Interface name on the router side (<= 15 characters)."""
    peer_dev: str
    """Interface name on the peer side (<= 15 characters)."""

    @property
    def router_v4(self) -> str:
        return f"10.0.{self.index}.1"

    @property
    def peer_v4(self) -> str:
        return f"10.0.{self.index}.2"

    @property
    def router_v6(self) -> str:
        return f"fd00:{self.index}::1"

    @property
    def peer_v6(self) -> str:
        return f"fd00:{self.index}::2"


def links(prefix: str, nodes: tuple[str, ...] = NODES) -> dict[str, Link]:
    """The links (one per node, then the client's) of a lab whose names start with
    ``prefix`` (e.g. ``anl-1a2b3c``)."""
    short = {**{node: node.removeprefix("node") for node in nodes}, CLIENT: "c"}
    result = {}
    for index, peer in enumerate((*nodes, CLIENT), start=1):
        link = Link(
            peer=peer,
            index=index,
            router_dev=f"{prefix}-r{short[peer]}",
            peer_dev=f"{prefix}-{short[peer]}r",
        )
        for dev in (link.router_dev, link.peer_dev):
            if len(dev) > 15:
                raise ValueError(f"interface name {dev!r} is longer than 15 characters")
        result[peer] = link
    return result
