"""The address guard's view of the kernel (:mod:`announcer.addresses`): which prefixes
are delivered here, rtnetlink messages applied in order, and the watcher's re-read
after an overrun. No netlink here: messages and sockets are stand-ins."""

from __future__ import annotations

import errno
import io
import ipaddress
import queue
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from announcer.addresses import (
    IFA_F_DADFAILED,
    IFA_F_TENTATIVE,
    RTN_LOCAL,
    RTPROT_KERNEL,
    KernelTable,
    Local,
    Watcher,
    presence,
)
from announcer.log import Logger

ip, net = ipaddress.ip_address, ipaddress.ip_network

LOCAL = Local(
    addresses=frozenset({ip("192.0.2.10"), ip("2001:db8::10")}),
    routes=frozenset({net("198.51.100.0/24")}),
)

DELIVERS = [
    ("192.0.2.10/32", True),  # its address
    ("192.0.2.11/32", False),  # a neighbour of it
    ("192.0.2.0/24", True),  # a wider prefix with an address inside
    ("203.0.113.0/24", False),  # nothing inside
    ("2001:db8::10/128", True),
    ("2001:db8::/64", True),
    ("2001:db8:1::/64", False),
    ("198.51.100.7/32", True),  # inside an AnyIP route
    ("198.51.100.0/23", True),  # overlaps an AnyIP route
    ("198.51.101.0/24", False),
]


@pytest.mark.parametrize(("prefix", "expected"), DELIVERS)
def test_delivers(prefix: str, expected: bool) -> None:
    """A host prefix needs its address or a local route; a wider one any address inside
    it or a local route overlapping it."""
    assert LOCAL.delivers(net(prefix)) is expected


class Msg(dict[str, Any]):
    """A stand-in for a pyroute2 message: header fields by key, attributes by name."""

    def __init__(self, attrs: dict[str, Any] | None = None, **fields: Any) -> None:
        super().__init__(fields)
        self.attrs = attrs or {}

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)


def addr(event: str, address: str, flags: int = 0, index: int = 1) -> Msg:
    plen = 128 if ":" in address else 32
    return Msg(
        {"IFA_ADDRESS": address, "IFA_FLAGS": flags},
        event=event,
        index=index,
        prefixlen=plen,
        flags=0,
    )


def route(event: str, dst: str, plen: int, kind: int = RTN_LOCAL, proto: int = 4) -> Msg:
    return Msg(
        {"RTA_DST": dst, "RTA_TABLE": 255, "RTA_OIF": 1},
        event=event,
        type=kind,
        proto=proto,
        table=255,
        dst_len=plen,
    )


TABLE_ROWS: list[tuple[str, list[Msg], set[str], bool]] = [
    ("an address added", [addr("RTM_NEWADDR", "192.0.2.10")], {"192.0.2.10/32"}, True),
    (
        "an address removed",
        [addr("RTM_NEWADDR", "192.0.2.10"), addr("RTM_DELADDR", "192.0.2.10")],
        set(),
        True,
    ),
    (
        "a tentative IPv6 address counts as absent until DAD ends",
        [addr("RTM_NEWADDR", "2001:db8::10", IFA_F_TENTATIVE)],
        set(),
        False,
    ),
    (
        "DAD finished: the same address again without the flag",
        [addr("RTM_NEWADDR", "2001:db8::10", IFA_F_TENTATIVE), addr("RTM_NEWADDR", "2001:db8::10")],
        {"2001:db8::10/128"},
        True,
    ),
    (
        "failed DAD makes it absent",
        [addr("RTM_NEWADDR", "2001:db8::10"), addr("RTM_NEWADDR", "2001:db8::10", IFA_F_DADFAILED)],
        set(),
        True,
    ),
    ("an AnyIP route", [route("RTM_NEWROUTE", "198.51.100.0", 24)], {"198.51.100.7/32"}, True),
    (
        "the kernel's own local route of an address is not counted (the address is)",
        [route("RTM_NEWROUTE", "2001:db8::10", 128, proto=RTPROT_KERNEL)],
        set(),
        False,
    ),
    (
        "a unicast route is not local",
        [route("RTM_NEWROUTE", "192.0.2.0", 24, kind=1)],
        set(),
        False,
    ),
    (
        "an AnyIP route removed",
        [route("RTM_NEWROUTE", "198.51.100.0", 24), route("RTM_DELROUTE", "198.51.100.0", 24)],
        set(),
        True,
    ),
]
PROBES = ("192.0.2.10/32", "2001:db8::10/128", "198.51.100.7/32")


@pytest.mark.parametrize(
    ("why", "messages", "present", "changed"), TABLE_ROWS, ids=[r[0] for r in TABLE_ROWS]
)
def test_kernel_table(why: str, messages: list[Msg], present: set[str], changed: bool) -> None:
    """Messages applied in order leave exactly the expected prefixes present."""
    table = KernelTable()
    assert table.apply(messages) is changed
    assert table.local().present(PROBES) == present


def test_presence_counts_managed_addresses_unless_their_add_failed() -> None:
    """A managed prefix counts as present (we add it before announcing) unless adding
    it failed; without any kernel picture every prefix counts."""
    prefixes = ("192.0.2.10/32", "192.0.2.20/32", "192.0.2.30/32")
    local = Local(addresses=frozenset({ip("192.0.2.10")}))
    ours = {"192.0.2.20/32": True, "192.0.2.10/32": False}
    assert presence(local, prefixes, ours) == {"192.0.2.20/32"}
    assert presence(None, prefixes, {}) == set(prefixes)


class FakeSocket:
    """Stands in for pyroute2's IPRoute: a dump, then scripted event batches (an
    exception in the script is raised by ``get``)."""

    def __init__(self, dump: list[Msg], script: Iterator[list[Msg] | Exception]) -> None:
        self.dump, self.script, self.groups = dump, script, 0

    def bind(self, groups: int) -> None:
        self.groups = groups

    def get(self) -> Iterable[Msg]:
        item = next(self.script)
        if isinstance(item, Exception):
            raise item
        return item

    def get_addr(self) -> Iterable[Msg]:
        return [m for m in self.dump if m["event"].endswith("ADDR")]

    def get_routes(self) -> Iterable[Msg]:
        return [m for m in self.dump if m["event"].endswith("ROUTE")]

    def close(self) -> None:
        pass


def test_watcher_reads_all_then_follows_events_and_rereads_after_an_overrun() -> None:
    """The first read is posted before start() returns; an event changes the picture;
    ENOBUFS (events lost) makes it read everything again and post that."""
    posted: queue.SimpleQueue[Local] = queue.SimpleQueue()
    before = [addr("RTM_NEWADDR", "192.0.2.10")]
    after = [addr("RTM_NEWADDR", "192.0.2.30")]  # what the kernel has after the overrun

    def events() -> Iterator[list[Msg] | Exception]:
        yield [addr("RTM_NEWADDR", "192.0.2.20")]
        yield OSError(errno.ENOBUFS, "No buffer space available")
        while True:
            yield [addr("RTM_DELADDR", "192.0.2.99")]  # nothing the table has: no post

    script = events()
    # Each read opens the events socket, then one to dump with.
    sockets = iter([FakeSocket(d, script) for d in ([], before, [], after)])
    log = io.StringIO()
    watcher = Watcher(posted.put, Logger(log), opener=lambda: next(sockets))
    watcher.start()
    first = posted.get_nowait()
    assert first.present(["192.0.2.10/32"]) == {"192.0.2.10/32"}
    second = posted.get(timeout=5)
    assert second.present(["192.0.2.10/32", "192.0.2.20/32"]) == {
        "192.0.2.10/32",
        "192.0.2.20/32",
    }
    third = posted.get(timeout=5)
    assert third.present(["192.0.2.10/32", "192.0.2.30/32"]) == {"192.0.2.30/32"}
    watcher.stop()
    assert "netlink_resync" in log.getvalue()
    assert "ENOBUFS" in log.getvalue()
