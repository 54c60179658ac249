"""Counting open TCP connections per prefix from /proc/net/tcp{,6}: established ones, and
those the kernel still exchanges packets with the client for (closing, data or FIN
unacknowledged)."""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path

import pytest

from announcer.connections import count_open

ESTABLISHED, TIME_WAIT, LISTEN = 0x01, 0x06, 0x0A
SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2 = 0x02, 0x03, 0x04, 0x05
CLOSE, CLOSE_WAIT, LAST_ACK, CLOSING = 0x07, 0x08, 0x09, 0x0B

HEADER_V4 = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
    "   uid  timeout inode\n"
)
HEADER_V6 = (
    "  sl  local_address                         remote_address                        st"
    " tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
)


def proc_hex(address: str) -> str:
    """An address as the kernel prints it: each 32-bit word in host order, as %08X."""
    packed = ip_address(address).packed
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{w:08X}" for w in words)


def line(sl: int, local: str, remote: str, state: int, lport: int = 443) -> str:
    return (
        f"{sl:4d}: {proc_hex(local)}:{lport:04X} {proc_hex(remote)}:D2A4 {state:02X}"
        " 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000"
        " 20 4 30 10 -1\n"
    )


def write_proc(root: Path, tcp: list[str] | None, tcp6: list[str] | None) -> Path:
    (root / "net").mkdir(parents=True, exist_ok=True)
    if tcp is not None:
        (root / "net" / "tcp").write_text(HEADER_V4 + "".join(tcp))
    if tcp6 is not None:
        (root / "net" / "tcp6").write_text(HEADER_V6 + "".join(tcp6))
    return root


def nets(*texts: str) -> list[IPv4Network | IPv6Network]:
    return [ip_network(t) for t in texts]


@pytest.fixture
def table(tmp_path: Path) -> Path:
    """A crafted v4 and v6 table with a mix of states and addresses."""
    tcp = [
        line(0, "10.0.0.1", "0.0.0.0", LISTEN),
        line(1, "10.0.0.1", "198.51.100.1", ESTABLISHED),
        line(2, "10.0.0.2", "198.51.100.2", ESTABLISHED),
        line(3, "10.0.0.1", "198.51.100.3", TIME_WAIT),
        line(4, "192.0.2.5", "198.51.100.4", ESTABLISHED),
        line(5, "198.51.100.9", "10.0.0.1", ESTABLISHED),  # remote in prefix, local not
        line(10000, "10.0.0.3", "198.51.100.5", ESTABLISHED),  # wide slot number
    ]
    tcp6 = [
        line(0, "2001:db8::1", "::", LISTEN),
        line(1, "2001:db8::1", "2001:db8:ffff::1", ESTABLISHED),
        line(2, "2001:db8:0:1::5", "2001:db8:ffff::2", ESTABLISHED),
        line(3, "2001:db8:1::1", "2001:db8:ffff::3", ESTABLISHED),
        line(4, "::ffff:10.0.0.7", "::ffff:198.51.100.7", ESTABLISHED),
        line(5, "::ffff:10.0.0.8", "::ffff:198.51.100.8", TIME_WAIT),
        line(6, "::ffff:203.0.113.1", "::ffff:198.51.100.9", ESTABLISHED),
    ]
    return write_proc(tmp_path / "proc", tcp, tcp6)


def test_v4_counts_only_established_with_local_address_in_prefix(table: Path) -> None:
    """Only state 01 lines whose LOCAL address is inside a prefix count (plus mapped ones)."""
    assert count_open(nets("10.0.0.1/32"), proc_root=table) == 1
    # 10.0.0.1, .2, .3 in tcp and ::ffff:10.0.0.7 in tcp6; LISTEN/TIME_WAIT and remote excluded.
    assert count_open(nets("10.0.0.0/24"), proc_root=table) == 4
    assert count_open(nets("192.0.2.0/24"), proc_root=table) == 1
    assert count_open(nets("198.51.100.0/24"), proc_root=table) == 1


@pytest.mark.parametrize(
    ("state", "counted"),
    [
        (ESTABLISHED, True),
        (SYN_RECV, True),
        (FIN_WAIT1, True),
        (CLOSE_WAIT, True),
        (LAST_ACK, True),
        (CLOSING, True),
        (SYN_SENT, False),
        (FIN_WAIT2, False),
        (TIME_WAIT, False),
        (CLOSE, False),
        (LISTEN, False),
    ],
)
def test_a_socket_counts_while_the_client_still_has_packets_for_it(
    tmp_path: Path, state: int, counted: bool
) -> None:
    """Open: established, its handshake's last ACK to come, the client done sending, or
    the server closed with data or its FIN not yet acknowledged; not once everything
    the server sent is acknowledged (FIN_WAIT2, TIME_WAIT), nor a listener."""
    root = write_proc(tmp_path / "proc", [line(0, "10.0.0.1", "198.51.100.1", state)], [])
    assert count_open(nets("10.0.0.1/32"), proc_root=root) == int(counted)


def test_several_prefixes_are_summed_without_double_counting(table: Path) -> None:
    """A socket matching two overlapping prefixes counts once; disjoint prefixes add up."""
    assert count_open(nets("10.0.0.0/24", "10.0.0.0/8"), proc_root=table) == 4
    assert count_open(nets("10.0.0.0/24", "192.0.2.5/32"), proc_root=table) == 5
    assert count_open(nets("10.0.0.0/24", "2001:db8::/48"), proc_root=table) == 4 + 2


def test_v6_prefixes_match_v6_local_addresses(table: Path) -> None:
    """IPv6 prefixes match by prefix length across all four 32-bit words."""
    assert count_open(nets("2001:db8::1/128"), proc_root=table) == 1
    assert count_open(nets("2001:db8::/64"), proc_root=table) == 1
    assert count_open(nets("2001:db8::/48"), proc_root=table) == 2
    assert count_open(nets("2001:db8::/32"), proc_root=table) == 3
    assert count_open(nets("2001:db9::/32"), proc_root=table) == 0


def test_ipv4_mapped_addresses_in_tcp6_count_for_v4_prefixes(table: Path) -> None:
    """::ffff:a.b.c.d in tcp6 counts for a.b.c.d's v4 prefixes, and for ::ffff:0:0/96."""
    assert count_open(nets("10.0.0.7/32"), proc_root=table) == 1
    assert count_open(nets("10.0.0.8/32"), proc_root=table) == 0  # TIME_WAIT
    assert count_open(nets("203.0.113.0/24"), proc_root=table) == 1
    assert count_open(nets("::ffff:0:0/96"), proc_root=table) == 2
    # A v6 prefix that is not the mapped range does not see mapped v4 sockets.
    assert count_open(nets("64:ff9b::/96"), proc_root=table) == 0


def test_address_format_is_host_order_words(tmp_path: Path) -> None:
    """On little-endian hosts the kernel writes 127.0.0.1 as 0100007F (literal fixture)."""
    if sys.byteorder != "little":
        pytest.skip("literal fixture is for little-endian hosts")
    root = tmp_path / "proc"
    (root / "net").mkdir(parents=True)
    (root / "net" / "tcp").write_text(
        HEADER_V4 + "   0: 0100007F:1F90 0100007F:D2A4 01 00000000:00000000 00:00000000 00000000"
        "     0        0 1 1 0 20 4 30 10 -1\n"
        + "   1: 0102A8C0:0050 0A02A8C0:D2A4 01 00000000:00000000 00:00000000 00000000"
        "     0        0 2 1 0 20 4 30 10 -1\n"
    )
    (root / "net" / "tcp6").write_text(
        HEADER_V6
        + "   0: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:D2A4"
        " 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1\n"
        + "   1: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:D2A5"
        " 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1\n"
        + "   2: B80D0120000000000000000001000000:0050 B80D0120000000000000000002000000:D2A6"
        " 01 00000000:00000000 00:00000000 00000000     0        0 5 1 0 20 4 30 10 -1\n"
    )
    assert count_open(nets("127.0.0.1/32"), proc_root=root) == 2
    assert count_open(nets("192.168.2.1/32"), proc_root=root) == 1
    assert count_open(nets("192.168.2.0/24"), proc_root=root) == 1
    assert count_open(nets("::1/128"), proc_root=root) == 1
    assert count_open(nets("2001:db8::1/128"), proc_root=root) == 1
    assert count_open(nets("2001:db8::/32"), proc_root=root) == 1


def test_a_missing_table_counts_as_zero(tmp_path: Path) -> None:
    """If only one of tcp/tcp6 can be read, the other contributes 0."""
    only_v4 = write_proc(tmp_path / "a", [line(0, "10.0.0.1", "1.1.1.1", ESTABLISHED)], None)
    assert count_open(nets("10.0.0.0/8"), proc_root=only_v4) == 1
    assert count_open(nets("2001:db8::/32"), proc_root=only_v4) is None
    only_v6 = write_proc(tmp_path / "b", None, [line(0, "::ffff:10.0.0.1", "::1", ESTABLISHED)])
    assert count_open(nets("10.0.0.0/8"), proc_root=only_v6) == 1


def test_unknown_when_no_table_can_be_read(tmp_path: Path) -> None:
    """Neither table readable (missing, or a directory in its place) gives None, not 0."""
    assert count_open(nets("10.0.0.0/8"), proc_root=tmp_path / "nowhere") is None
    root = tmp_path / "proc"
    (root / "net" / "tcp").mkdir(parents=True)
    (root / "net" / "tcp6").mkdir(parents=True)
    assert count_open(nets("10.0.0.0/8", "2001:db8::/32"), proc_root=root) is None


def test_garbage_and_empty_input_count_zero(tmp_path: Path) -> None:
    """Unparseable lines and empty prefix lists never raise; they count 0."""
    root = write_proc(tmp_path / "proc", [], [])
    (root / "net" / "tcp").write_bytes(b"\x00\xff garbage\n   0: ZZZZ:1 2:3 01 \n")
    assert count_open(nets("10.0.0.0/8"), proc_root=root) == 0
    assert count_open([], proc_root=tmp_path / "nowhere") == 0


# ---------------------------------------------------------------- the real kernel


def wait_for(fn: Callable[[], int | None], want: int, deadline: float = 5.0) -> int | None:
    """Poll ``fn`` until it returns ``want`` or the deadline passes; the last value."""
    end = time.monotonic() + deadline
    value = fn()
    while value != want and time.monotonic() < end:
        time.sleep(0.02)
        value = fn()
    return value


@pytest.fixture
def unique_loopback() -> str:
    """A random 127/8 address nobody else's test is using (all of 127/8 is local on Linux)."""
    rng = random.Random()
    return f"127.{rng.randint(100, 254)}.{rng.randint(1, 254)}.{rng.randint(1, 254)}"


Connect = Callable[[int, str, int, str | None, str], list[socket.socket]]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """Opens a listener, a client and the accepted socket; closes what is left at the end."""
    opened: list[socket.socket] = []

    def make(
        family: int, listen: str, client_family: int, client: str | None, target: str
    ) -> list[socket.socket]:
        listener = socket.socket(family, socket.SOCK_STREAM)
        opened.append(listener)
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.bind((listen, 0))
        listener.listen(1)
        conn = socket.socket(client_family, socket.SOCK_STREAM)
        opened.append(conn)
        if client is not None:
            conn.bind((client, 0))
        conn.connect((target, listener.getsockname()[1]))
        accepted, _ = listener.accept()
        opened.append(accepted)
        return [conn, accepted, listener]

    yield make
    for s in opened:
        s.close()


def test_real_ipv4_connection_counts_then_goes(unique_loopback: str, connect: Connect) -> None:
    """A real connection to a local address counts 1 while open and 0 after close.

    The client binds 127.0.0.1, so only the server end has the unique address;
    once the client has acknowledged the server's FIN nothing is left open.
    """
    prefix = nets(f"{unique_loopback}/32")
    assert count_open(prefix) == 0
    sockets = connect(socket.AF_INET, unique_loopback, socket.AF_INET, "127.0.0.1", unique_loopback)
    assert wait_for(lambda: count_open(prefix), 1) == 1
    for s in sockets:
        s.close()
    assert wait_for(lambda: count_open(prefix), 0) == 0


def test_real_download_whose_server_closed_counts_until_the_client_has_it(
    unique_loopback: str, connect: Connect
) -> None:
    """A server that wrote more than the client has read, then closed (FIN_WAIT1, the
    kernel still sending): the connection counts until the client has read it all
    (with forwarding, peers pass the client's ACKs on until then)."""
    prefix = nets(f"{unique_loopback}/32")
    client, server, _ = connect(
        socket.AF_INET, unique_loopback, socket.AF_INET, "127.0.0.1", unique_loopback
    )
    server.setblocking(False)
    sent = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            sent += server.send(b"x" * 65536)
    server.close()
    assert count_open(prefix) == 1  # owed data: FIN_WAIT1
    client.settimeout(5)
    got = 0
    while data := client.recv(65536):
        got += len(data)
    assert got == sent
    assert wait_for(lambda: count_open(prefix), 0) == 0


def test_real_mapped_connection_in_tcp6_counts_for_the_v4_prefix(
    unique_loopback: str, connect: Connect
) -> None:
    """A dual-stack v6 listener's accepted IPv4 connection (listed in tcp6) counts."""
    prefix = nets(f"{unique_loopback}/32")
    try:
        sockets = connect(
            socket.AF_INET6,
            f"::ffff:{unique_loopback}",
            socket.AF_INET,
            "127.0.0.1",
            unique_loopback,
        )
    except OSError as err:
        pytest.skip(f"no dual-stack IPv6 sockets here: {err}")
    assert wait_for(lambda: count_open(prefix), 1) == 1
    for s in sockets:
        s.close()
    assert wait_for(lambda: count_open(prefix), 0) == 0


def test_real_ipv6_loopback_connection_counts_both_ends(
    connect: Connect,
) -> None:
    """Over ::1 both ends are local: the count rises by 2, and falls back after close.

    ::1 is the only v6 loopback address, so other tests' traffic may be there too:
    the assertion is relative to the count before.
    """
    prefix = nets("::1/128")
    if not socket.has_ipv6:
        pytest.skip("Python built without IPv6")
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError as err:
        pytest.skip(f"no ::1 on this host: {err}")
    before = count_open(prefix)
    assert before is not None
    sockets = connect(socket.AF_INET6, "::1", socket.AF_INET6, None, "::1")
    assert wait_for(lambda: count_open(prefix), before + 2) == before + 2
    for s in sockets:
        s.close()
    assert wait_for(lambda: count_open(prefix), before) == before
