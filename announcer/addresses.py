"""What the kernel would deliver here: the address guard's view of the node.

:class:`Local` is the picture (addresses on interfaces, usable ones only, and local
routes such as AnyIP's ``ip route add local 192.0.2.0/24 dev lo``) and answers which
prefixes are present. :class:`KernelTable` keeps it up to date from rtnetlink messages,
and :class:`Watcher` follows the kernel on a thread of its own: one full read at start
(and after an overrun, ENOBUFS, which means events were lost), then only the events, so
nothing is spent while nothing changes. Each change is posted to the daemon's queue.

pyroute2 0.7 (Debian 12 and 13) and 0.9 (PyPI) differ in their internals; only what both
offer alike is used: ``IPRoute()``, ``bind(groups=...)``, ``get()``, ``get_addr()``,
``get_routes()``, ``link_lookup()``, ``addr()`` and messages' ``[...]``/``get_attr``.
"""

from __future__ import annotations

import errno
import ipaddress
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from announcer.log import Logger

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# rtnetlink constants (linux/rtnetlink.h, linux/if_addr.h): stable kernel ABI.
RTN_LOCAL = 2
RTPROT_KERNEL = 2
IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
_UNUSABLE = IFA_F_TENTATIVE | IFA_F_DADFAILED
_GROUPS = 0x10 | 0x40 | 0x100 | 0x400  # RTMGRP_IPV4_IFADDR, _IPV4_ROUTE, _IPV6_IFADDR, _IPV6_ROUTE


@dataclass(frozen=True)
class Local:
    """Addresses the kernel answers on here, and its local routes (AnyIP)."""

    addresses: frozenset[IPAddress] = frozenset()
    routes: frozenset[IPNetwork] = frozenset()

    def delivers(self, prefix: IPNetwork) -> bool:
        """A host prefix needs its address (or a local route covering it); a wider
        prefix at least one local address inside it, or a local route overlapping it."""
        if prefix.num_addresses == 1:
            if prefix.network_address in self.addresses:
                return True
        elif any(a in prefix for a in self.addresses):
            return True
        return any(r.version == prefix.version and r.overlaps(prefix) for r in self.routes)

    def present(self, prefixes: Iterable[str]) -> frozenset[str]:
        """Which of ``prefixes`` (strings, as the policy has them) are delivered here."""
        return frozenset(p for p in prefixes if self.delivers(ipaddress.ip_network(p)))


class Message(Protocol):
    """What is used of a pyroute2 rtnetlink message."""

    def __getitem__(self, key: str) -> Any: ...

    def get_attr(self, name: str) -> Any: ...


Key = tuple[Any, ...]


def parse(msg: Message) -> tuple[Key, IPAddress | IPNetwork | None] | None:
    """One rtnetlink message as (key, what it makes local, or None: nothing any more);
    None for messages that do not concern the guard (other route types, the kernel's
    own local routes, which mirror addresses and would hide a tentative one)."""
    event = msg["event"]
    if event in ("RTM_NEWADDR", "RTM_DELADDR"):
        raw = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if raw is None:
            return None
        key: Key = ("addr", msg["index"], raw, msg["prefixlen"])
        flags = msg.get_attr("IFA_FLAGS")
        flags = msg["flags"] if flags is None else flags
        usable = event == "RTM_NEWADDR" and not flags & _UNUSABLE
        return key, ipaddress.ip_address(raw) if usable else None
    if event in ("RTM_NEWROUTE", "RTM_DELROUTE"):
        if msg["type"] != RTN_LOCAL or msg["proto"] == RTPROT_KERNEL:
            return None
        dst = msg.get_attr("RTA_DST")
        if dst is None:
            return None
        table = msg.get_attr("RTA_TABLE") or msg["table"]
        key = ("route", table, dst, msg["dst_len"], msg.get_attr("RTA_OIF"))
        net = ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False)
        return key, net if event == "RTM_NEWROUTE" else None
    return None


@dataclass
class KernelTable:
    """The guard's entries, keyed as the kernel keys them, updated message by message."""

    entries: dict[Key, IPAddress | IPNetwork] = field(default_factory=dict)

    def apply(self, messages: Iterable[Message]) -> bool:
        """Apply messages in order; whether anything the guard sees changed."""
        changed = False
        for msg in messages:
            parsed = parse(msg)
            if parsed is None:
                continue
            key, value = parsed
            if value is None:
                changed |= self.entries.pop(key, None) is not None
            elif self.entries.get(key) != value:
                self.entries[key] = value
                changed = True
        return changed

    def local(self) -> Local:
        values = self.entries.values()
        addresses = frozenset(v for v in values if isinstance(v, IPAddress))
        routes = frozenset(v for v in values if not isinstance(v, IPAddress))
        return Local(addresses, routes)


class Socket(Protocol):
    """The part of pyroute2's ``IPRoute`` used here (a fake in unit tests)."""

    def bind(self, groups: int) -> Any: ...

    def get(self) -> Iterable[Message]: ...

    def get_addr(self) -> Iterable[Message]: ...

    def get_routes(self) -> Iterable[Message]: ...

    def close(self) -> Any: ...


def _iproute() -> Socket:
    from pyroute2 import IPRoute  # a late import: only the daemon needs netlink

    sock: Socket = IPRoute()
    return sock


Post = Callable[[Local], None]
WatcherFactory = Callable[[Post], "Watcher"]


class Watcher:
    """Follows the kernel's addresses and local routes on its own thread; ``post`` gets
    every new :class:`Local`. :meth:`start` reads the whole state before returning, so
    the daemon knows it before its first round closes."""

    RETRY = 1.0
    """Seconds before reopening after an error other than an overrun."""

    def __init__(self, post: Post, log: Logger, opener: Callable[[], Socket] = _iproute) -> None:
        self._post, self.log, self._open = post, log, opener
        self._events: Socket | None = None
        self._table = KernelTable()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.resyncs = 0
        """Full re-reads after the first (an overrun, an error)."""

    def start(self, timeout: float = 5.0) -> Watcher:
        """Start the thread; return once it has read everything (or ``timeout`` passed)."""
        threading.Thread(target=self._run, name="netlink", daemon=True).start()
        self._ready.wait(timeout)
        return self

    def stop(self) -> None:
        self._stop.set()

    def _resync(self) -> None:
        """Subscribe first, then read everything: an event racing the dump is applied
        after it, and events are idempotent, so the table ends as the kernel is."""
        if self._events is not None:
            self._events.close()
            self._events = None
        events = self._open()
        try:
            events.bind(groups=_GROUPS)
            dump = self._open()
            try:
                table = KernelTable()
                table.apply([*dump.get_addr(), *dump.get_routes()])
            finally:
                dump.close()
        except BaseException:
            events.close()
            raise
        self._table, self._events = table, events
        self._post(table.local())

    def _run(self) -> None:
        # Every socket is opened on this thread: pyroute2 0.9's synchronous API runs an
        # asyncio loop per thread, and a socket used from another thread never sees events.
        self._resync_quietly()
        self._ready.set()
        while not self._stop.is_set():
            if self._events is None:
                self._resync_quietly()
                continue
            try:
                if self._table.apply(self._events.get()):
                    self._post(self._table.local())
            except OSError as err:
                if self._stop.is_set():
                    return
                overrun = err.errno == errno.ENOBUFS
                self.log.warning(
                    "netlink_resync",
                    why="events lost (ENOBUFS)" if overrun else str(err),
                    action="reading every address and local route again",
                )
                if not overrun:
                    time.sleep(self.RETRY)
                self.resyncs += 1
                self._resync_quietly()

    def _resync_quietly(self) -> None:
        try:
            self._resync()
        except OSError as err:
            self.log.error("netlink_failed", why=str(err), retry_in=self.RETRY)
            time.sleep(self.RETRY)


def presence(
    local: Local | None, prefixes: tuple[str, ...], ours: Mapping[str, bool]
) -> frozenset[str]:
    """The service's prefixes that count as present: delivered here (all of them while
    nothing is known), or managed by us (``ours``: prefix -> we could add its address)."""
    found = local.present(prefixes) if local is not None else frozenset(prefixes)
    mine = {p for p, ok in ours.items() if ok}
    return frozenset(p for p in found if ours.get(p, True)) | mine
