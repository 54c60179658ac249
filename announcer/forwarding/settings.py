"""The ``[forwarding]`` table: this node's end of the drain-forwarding tunnel.

Node-wide (one tunnel device, one mark, one routing table); services opt in with
``forward_connections = true``. Kept free of kernel imports: the config loads it on
machines without libnftables."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TunnelType = Literal["vxlan", "ipip", "gre"]
VXLAN_ONLY = ("vni", "port")
"""Fields that mean something for VXLAN alone: given with another tunnel, refused (a
setting that silently does nothing misleads)."""


class ForwardingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    underlay: IPv4Address
    """This node's address on the network between the nodes: the tunnel's outer source,
    published in the fleet state so that peers find it."""
    tunnel: TunnelType = "vxlan"
    """VXLAN by default: every kernel has it; IPIP and GRE (modules ``ipip``, ``ip_gre``,
    which some kernels lack) cost fewer bytes per packet. Every node of a group needs the
    same one (a peer with another is not forwarded to, and logged)."""
    device: str = Field(default="anc-fwd", pattern=r"^[^/\s:]{1,15}$")
    vni: int = Field(default=4242, ge=1, le=0xFFFFFF, strict=True)
    port: int = Field(default=4789, ge=1, le=65535, strict=True)
    mtu: int = Field(default=1500, ge=576, le=9000, strict=True)
    """The tunnel's MTU: a full-size segment of a client (its path MTU) must fit; the
    underlay then needs ``mtu`` + the tunnel's overhead (:data:`TUNNEL_OVERHEAD`)."""
    mark: int = Field(default=0x414E, ge=1, le=0xFFFFFFFF, strict=True)
    """The packet mark (fwmark) of packets to forward."""
    table: int = Field(default=4140, ge=1, le=0xFFFFFFFF, strict=True)
    """The routing table holding the routes to the draining peer."""
    rule_priority: int = Field(default=90, ge=1, le=32765, strict=True)
    """The fwmark rule's priority; the ``local`` table's rule (priority 0) is moved
    behind it to ``local_priority`` while forwarding is set up, and back at stop."""
    local_priority: int = Field(default=100, ge=2, le=32765, strict=True)
    ready_seconds: float = Field(default=5.0, ge=0, le=300, strict=True)
    """A drain waits this long at most for every announcing peer to say that it passes
    this node's packets (then drains anyway, logged): packets a peer receives before it
    forwards are answered with a reset."""
    max_seconds: float = Field(default=3600.0, gt=0, le=7 * 86400, strict=True)
    """Peers forward to a drained node at most this long after its drain began, even if
    connections are left (published by the drained node, read on the peers' clocks)."""

    @model_validator(mode="after")
    def _order(self) -> ForwardingSettings:
        if self.rule_priority >= self.local_priority:
            raise ValueError(
                f"rule_priority ({self.rule_priority}) must be below local_priority "
                f"({self.local_priority}): the mark's rule must come before the local table"
            )
        given = sorted(set(VXLAN_ONLY) & self.model_fields_set)
        if self.tunnel != "vxlan" and given:
            names = ", ".join(given)
            raise ValueError(f'{names}: only for tunnel = "vxlan" (tunnel is "{self.tunnel}")')
        return self


@dataclass(frozen=True, slots=True)
class Tunnel:
    """What differs between tunnel types; the rest of forwarding is the same for all."""

    kind: str
    """The rtnetlink link kind of the device."""
    module: str
    """The kernel module that provides it (``check-config`` says when it is absent)."""
    overhead: int
    """Bytes the encapsulation adds to each forwarded packet (outer headers over IPv4)."""
    options: Callable[[ForwardingSettings], dict[str, Any]]
    """pyroute2's ``link("add")`` arguments of the kind (local address, no remote)."""
    neighbour: Callable[[IPv4Address], str] | None
    """The link-layer address of a peer's permanent neighbour entry on the device (the
    routes' gateway is the peer's underlay address), or None: no entry needed."""
    fdb: bool = False
    """The peer's MAC also goes in the device's forwarding database, with the peer's
    underlay address as the outer destination (VXLAN)."""


def tunnel_mac(underlay: IPv4Address) -> str:
    """The VXLAN device's MAC on the node at ``underlay``: locally administered,
    unicast, the address's four bytes last (peers compute it, nobody publishes it)."""
    return "02:a5:" + ":".join(f"{b:02x}" for b in underlay.packed)


def _vxlan(s: ForwardingSettings) -> dict[str, Any]:
    return {
        "vxlan_id": s.vni,
        "vxlan_local": str(s.underlay),
        "vxlan_port": s.port,
        "vxlan_learning": 0,
        "address": tunnel_mac(s.underlay),
    }


TUNNELS: dict[str, Tunnel] = {
    # Outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14. Ethernet inside: the peer's
    # tunnel MAC in the neighbour table, and in the fdb with its underlay address.
    "vxlan": Tunnel("vxlan", "vxlan", 50, _vxlan, tunnel_mac, fdb=True),
    # With a local address and no remote, IPIP and GRE devices take packets from any
    # remote to the local address (net/ipv4/ip_tunnel.c, ip_tunnel_lookup): one device
    # serves every peer. Sending, IPIP takes the outer destination from each route's
    # gateway (ip_tunnel_xmit, "NBMA tunnel"): nothing per peer. Outer IPv4 20.
    "ipip": Tunnel("ipip", "ipip", 20, lambda s: {"ipip_local": str(s.underlay)}, None),
    # GRE without a remote builds its outer header from the neighbour entry of the
    # gateway (ip_gre.c, ipgre_header): without one it is the device's own (local)
    # address and nothing leaves, so each peer gets an entry whose link-layer address is
    # its underlay address, as NBMA GRE does (opennhrp). Outer IPv4 20 + GRE 4, no key.
    "gre": Tunnel("gre", "ip_gre", 24, lambda s: {"gre_local": str(s.underlay)}, str),
}

TUNNEL_OVERHEAD = {name: tunnel.overhead for name, tunnel in TUNNELS.items()}
"""Bytes each encapsulation adds to a forwarded packet: the underlay's MTU must be this
much above ``mtu``."""
