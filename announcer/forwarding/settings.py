"""The ``[forwarding]`` table: this node's end of the drain-forwarding tunnel.

Node-wide (one tunnel device, one mark, one routing table); services opt in with
``forward_connections = true``. Kept free of kernel imports: the config loads it on
machines without libnftables."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TUNNEL_OVERHEAD = {"vxlan": 50}
"""Bytes each encapsulation adds to a forwarded packet (VXLAN over IPv4: outer IPv4 20,
UDP 8, VXLAN 8, inner Ethernet 14): the underlay's MTU must be this much above ``mtu``."""


class ForwardingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    underlay: IPv4Address
    """This node's address on the network between the nodes: the tunnel's outer source,
    published in the fleet state so that peers find it."""
    tunnel: Literal["vxlan"] = "vxlan"
    """VXLAN: every kernel has it (GRE, IPIP and FOU are modules many hosts lack)."""
    device: str = Field(default="anc-fwd", pattern=r"^[^/\s:]{1,15}$")
    vni: int = Field(default=4242, ge=1, le=0xFFFFFF, strict=True)
    port: int = Field(default=4789, ge=1, le=65535, strict=True)
    mtu: int = Field(default=1500, ge=576, le=9000, strict=True)
    """The tunnel's MTU: a full-size segment of a client (its path MTU) must fit; the
    underlay then needs ``mtu`` + 50 bytes (VXLAN)."""
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
        return self
