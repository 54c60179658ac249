"""What a node tells its group about one service, and where in etcd it says it.

One key per (group, service, node)::

    <key_prefix><group>/services/<service>/<node>   ->  JSON Record, bound to the node's lease

A node that dies, or loses etcd, disappears from the others' view when its lease expires.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

ANNOUNCING_ROUTES = ("ANNOUNCED", "LOWERED")
"""Routes that carry traffic and count toward ``min_announcing`` (DRAINING does not)."""


@dataclass(frozen=True, slots=True)
class Record:
    node: str
    route: str
    health: str
    drained: bool = False
    reason: str = ""
    announcing: bool = False
    """Route ANNOUNCED or LOWERED, acknowledged by ExaBGP, a BGP session up, not drained:
    judged by the node itself (it alone sees its ExaBGP)."""
    since: float = 0.0
    """Wall-clock time of the last change of the fields above (for operators only)."""
    seq: int = 0
    """Bumped on every write by this node: a transaction's own write is recognisable
    when read back after a lost answer."""
    underlay: str = ""
    """With ``forward_connections``: the node's tunnel end (docs/drain.md); else empty."""
    connections: int | None = None
    """With ``forward_connections``, while drained: established connections still open
    to the prefixes (None: not counted yet). Peers forward while it is not 0."""
    forwarding_to: str = ""
    """With ``forward_connections``: the draining peer this node passes the service's
    unknown packets to (the draining node waits for every peer to say so)."""
    forward_until: float = 0.0
    """With ``forward_connections``, while drained: the wall-clock time after which
    peers stop forwarding to this node whatever the count (0: do not forward)."""
    tunnel: str = ""
    """With ``forward_connections``: the node's tunnel type; a peer with another type
    cannot reach it and does not try (empty: a node from before the choice, VXLAN)."""

    def same(self, other: Record | None) -> bool:
        """Equal but for ``since`` and ``seq``: nothing worth a write changed."""
        if other is None:
            return False
        return replace(self, since=0.0, seq=0) == replace(other, since=0.0, seq=0)

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Record | None:
        """The record in ``raw``, or None if it is not one (never raises)."""
        try:
            data: Any = json.loads(raw)
            fields = {k: data[k] for k in cls.__slots__ if k in data}
            record = cls(**fields)
        except (ValueError, TypeError, KeyError):
            return None
        return record if isinstance(record.node, str) and isinstance(record.route, str) else None


class Keys:
    """The key layout of one group (``prefix`` ends with a slash)."""

    def __init__(self, prefix: str, group: str) -> None:
        self.prefix, self.group = prefix, group
        self.group_root = f"{prefix}{group}/"
        self.services_root = f"{self.group_root}services/"

    def service(self, service: str) -> str:
        """The folder of one service's node keys (ends with a slash)."""
        return f"{self.services_root}{service}/"

    def node(self, service: str, node: str) -> str:
        return f"{self.service(service)}{node}"

    def parse(self, key: str) -> tuple[str, str] | None:
        """(service, node) of a node key under this group, else None."""
        if not key.startswith(self.services_root):
            return None
        service, sep, node = key[len(self.services_root) :].partition("/")
        return (service, node) if sep and node and "/" not in node else None
