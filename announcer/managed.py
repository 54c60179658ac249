"""Managed addresses (``manage_addresses = "<interface>"``): a service's host addresses
are put on the interface before their prefix is first announced, and taken off only
once the withdraw was acknowledged by ExaBGP and :data:`REMOVE_DELAY` more seconds
passed (an ack means ExaBGP accepted the command, not that the router has it yet),
never while any service still has a prefix on the wire covering it, and not at all
after an error that may be the withdraw's own. Removing the address first would
blackhole the clients the router still sends here (ExaBGP #993).

Needs CAP_NET_ADMIN (docs/packaging.md has the systemd drop-in). A failed add is
logged; the address guard then counts the prefix absent, which withdraws it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from announcer.addresses import IFA_F_NODAD
from announcer.exabgp import Writer
from announcer.log import Logger
from announcer.runtime import ServiceRuntime

REMOVE_DELAY = 1.0
"""Seconds between ExaBGP's ack of the withdraw and the address leaving the interface."""


class AddrSocket(Protocol):
    """The part of pyroute2's ``IPRoute`` used here (a fake in unit tests)."""

    def link_lookup(self, *, ifname: str) -> list[int]: ...

    def addr(self, command: str, **kwargs: Any) -> Any: ...


def _iproute() -> AddrSocket:
    from announcer.netlink import iproute

    sock: AddrSocket = iproute()
    return sock


def host_prefixes(prefixes: Iterable[str]) -> tuple[str, ...]:
    """The prefixes that are one address: the ones an interface can carry."""
    return tuple(p for p in prefixes if ipaddress.ip_network(p).num_addresses == 1)


def _covers(wire: Iterable[str], prefix: str) -> bool:
    """Whether a prefix on the wire is, or contains, the address ``prefix``."""
    address = ipaddress.ip_network(prefix).network_address
    return any(w == prefix or address in ipaddress.ip_network(w) for w in wire)


@dataclass
class _Removal:
    service: str
    interface: str
    answered_at: int
    """The withdraw is acknowledged once ExaBGP has answered this many commands."""
    errors: int
    """ExaBGP's error count when the withdraw was queued: any error by the time it is
    answered may be the withdraw's own (refused, or given up unanswered)."""
    at: float | None = None
    """When the address may go (the ack's arrival plus the delay)."""


class ManagedAddresses:
    """The addresses this controller put on interfaces, and the removals it waits for."""

    def __init__(
        self,
        writer: Writer,
        queued: Callable[[], int],
        log: Logger,
        opener: Callable[[], AddrSocket] = _iproute,
    ) -> None:
        self.writer, self._queued, self.log, self._open = writer, queued, log, opener
        self._sock: AddrSocket | None = None
        self.failed: set[str] = set()
        """Prefixes whose address could not be added (the guard holds them)."""
        self.removals: dict[str, _Removal] = {}

    def ours(self, rt: ServiceRuntime) -> Mapping[str, bool]:
        """For the address guard: each managed prefix and whether it counts as present
        (it does, unless adding it failed: the add comes right before the announce)."""
        if rt.service.manage_addresses is None:
            return {}
        return {p: p not in self.failed for p in host_prefixes(rt.policy.prefixes)}

    def _answered(self) -> int:
        return self.writer.done + self.writer.errors

    def before_announce(self, rt: ServiceRuntime, prefixes: Iterable[str]) -> bool:
        """Put the addresses on the interface; False if one could not be added."""
        interface = rt.service.manage_addresses
        if interface is None:
            return True
        ok = True
        for p in host_prefixes(prefixes):
            self.removals.pop(p, None)  # announced again: it stays
            ok &= self._change("add", interface, p, rt.name)
        return ok

    def after_withdraw(self, rt: ServiceRuntime, prefixes: Iterable[str]) -> None:
        """The withdraw of ``prefixes`` was just queued: their addresses go once it is
        answered (every command up to it, as ExaBGP answers in order)."""
        interface = rt.service.manage_addresses
        if interface is None:
            return
        through = self._answered() + self.writer.pending + self._queued()
        for p in host_prefixes(prefixes):
            self.removals[p] = _Removal(rt.name, interface, through, self.writer.errors)

    def _acked(self, removal: _Removal) -> bool:
        if not self.writer.acks:  # no answers to wait for: written is as good as it gets
            return self._queued() == 0
        return self._answered() >= removal.answered_at

    def next_deadline(self, now: float) -> float | None:
        """When :meth:`due` has something to do (now, when an ack just arrived)."""
        times = [
            r.at if r.at is not None else now for r in self.removals.values() if self._acked(r)
        ]
        return min(times) if times else None

    def due(self, now: float, runtimes: Mapping[str, ServiceRuntime]) -> None:
        """Take off the addresses whose withdraw was answered long enough ago."""
        if not self.removals:
            return
        for p, removal in list(self.removals.items()):
            if removal.at is None:
                if self._acked(removal):
                    removal.at = now + REMOVE_DELAY
                continue
            if now < removal.at:
                continue
            del self.removals[p]
            if self.writer.errors > removal.errors:
                why = "ExaBGP refused or never answered a command up to the withdraw"
                self.log.warning("address_kept", service=removal.service, prefix=p, why=why)
                continue
            holders = [rt.name for rt in runtimes.values() if _covers(rt.state.wire_prefixes, p)]
            if holders:
                why = "still announced"
                self.log.info(
                    "address_kept", service=removal.service, prefix=p, why=why, by=holders
                )
                continue
            self._change("del", removal.interface, p, removal.service)

    def _change(self, command: str, interface: str, prefix: str, service: str) -> bool:
        net = ipaddress.ip_network(prefix)
        try:
            if self._sock is None:
                self._sock = self._open()
            index = self._sock.link_lookup(ifname=interface)
            if not index:
                raise LookupError(f"no interface {interface!r}")
            flags = IFA_F_NODAD if net.version == 6 else 0  # usable at once, not tentative
            self._sock.addr(
                command,
                index=index[0],
                address=str(net.network_address),
                prefixlen=net.prefixlen,
                flags=flags,
            )
        except Exception as err:  # noqa: BLE001 - pyroute2's NetlinkError is no OSError
            code = getattr(err, "code", None)
            if (command, code) in (("add", 17), ("del", 99)):  # EEXIST, EADDRNOTAVAIL
                return True  # already as wanted
            self.log.error(
                f"address_{command}_failed",
                service=service,
                prefix=prefix,
                interface=interface,
                why=str(err),
            )
            if command == "add":
                self.failed.add(prefix)
            return False
        self.failed.discard(prefix)
        self.log.info(
            "address_added" if command == "add" else "address_removed",
            service=service,
            prefix=prefix,
            interface=interface,
        )
        return True
