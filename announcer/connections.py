"""Count open TCP connections to a service's prefixes, from ``/proc/net/tcp{,6}``.

While a service drains, the number of connections still open on its anycast
addresses tells the operator (and status) how much traffic is left to move; with
drain forwarding the peers pass the drained node's packets on until it reaches 0.

Open means the client still has packets to exchange with the socket: ESTABLISHED,
SYN_RECV (its handshake's last ACK is to come), CLOSE_WAIT (the client is done
sending, the server may still send), and FIN_WAIT1, LAST_ACK and CLOSING (the server
has closed, but the kernel still owes the client queued data or the FIN, and waits for
its ACKs: a large download whose server has already closed is in FIN_WAIT1). Not
FIN_WAIT2 or TIME_WAIT: everything the server sent has been acknowledged.

The kernel prints each socket's addresses as hex digits of 32-bit words in
host byte order: ``0100007F`` is 127.0.0.1 on a little-endian machine, and an
IPv6 address is four such words. Rather than convert every line's address to
network order, each prefix is converted once into that representation (the
per-word byte swap is a fixed permutation of bits, so ``(addr & mask) == net``
holds in either order). A scan is then one regular expression over the file's
bytes that only matches the open states' lines, and one ``int(..., 16)`` per match.

IPv4 prefixes also match IPv4-mapped addresses (``::ffff:a.b.c.d``) in
``tcp6``, where the kernel lists IPv4 connections of dual-stack sockets.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

__all__ = ["count_open"]

# "   12: 0100007F:1F90 0100007F:D2A4 01 ..." - local address, remote address, state.
# States (include/net/tcp_states.h) 01 ESTABLISHED, 03 SYN_RECV, 04 FIN_WAIT1,
# 08 CLOSE_WAIT, 09 LAST_ACK, 0B CLOSING; only those lines match, so only their
# addresses are copied.
# ": " appears once per line (after the slot number), so no anchor is needed, and
# leaving it out halves the scan time.
_OPEN = re.compile(rb": ([0-9A-Fa-f]+):[0-9A-Fa-f]+ [0-9A-Fa-f]+:[0-9A-Fa-f]+ 0[13489B] ")
_MAPPED_V4 = 0xFFFF << 32  # ::ffff:0:0/96

_Match = tuple[tuple[int, int], ...]
"""(mask, network) pairs, both in the kernel's printed representation."""


def _proc_order(value: int, size: int) -> int:
    """``value`` (an address in network order, ``size`` bytes) as ``/proc`` prints it."""
    raw = value.to_bytes(size, "big")
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, size, 4))
    return int.from_bytes(raw, "big")


def _matchers(prefixes: Sequence[IPv4Network | IPv6Network]) -> tuple[_Match, _Match]:
    v4: list[tuple[int, int]] = []
    v6: list[tuple[int, int]] = []
    for net in prefixes:
        if isinstance(net, IPv4Network):
            mask, base = int(net.netmask), int(net.network_address)
            v4.append((_proc_order(mask, 4), _proc_order(base, 4)))
            mapped_mask = ((1 << 128) - 1) ^ ((1 << (32 - net.prefixlen)) - 1)
            v6.append((_proc_order(mapped_mask, 16), _proc_order(_MAPPED_V4 | base, 16)))
        else:
            mask, base = int(net.netmask), int(net.network_address)
            v6.append((_proc_order(mask, 16), _proc_order(base, 16)))
    return tuple(v4), tuple(v6)


def _count(path: Path, matchers: _Match) -> int | None:
    """Matching open sockets in one table, or None if it cannot be read."""
    try:
        with path.open("rb") as f:
            data = f.read()
    except OSError:
        return None
    n = 0
    for local in _OPEN.findall(data):
        addr = int(local, 16)
        for mask, net in matchers:
            if addr & mask == net:
                n += 1
                break
    return n


def count_open(
    prefixes: Sequence[IPv4Network | IPv6Network], *, proc_root: Path = Path("/proc")
) -> int | None:
    """Open TCP connections (see the module) whose local address lies in any of
    ``prefixes``.

    Reads ``net/tcp`` (if there is an IPv4 prefix) and ``net/tcp6`` under
    ``proc_root``. A table that cannot be read counts as 0; if none of the
    tables needed can be read the count is unknown and the result is None.
    Never raises. Counts the current network namespace only, both ends of a
    connection if both are local (as on loopback).
    """
    if not prefixes:
        return 0
    v4, v6 = _matchers(prefixes)
    counts = [_count(proc_root / "net" / "tcp6", v6)]
    if v4:
        counts.append(_count(proc_root / "net" / "tcp", v4))
    known = [c for c in counts if c is not None]
    return sum(known) if known else None
