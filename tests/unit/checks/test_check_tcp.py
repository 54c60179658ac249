"""The TCP check against real listeners on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from check_servers import ConnectionHandler, TcpServer

from announcer.checks import TcpCheckSpec, build_check

StartTcp = Callable[[ConnectionHandler], TcpServer]


def tcp_check(port: int, **fields: Any) -> Any:
    return build_check(TcpCheckSpec(type="tcp", host="127.0.0.1", port=port, **fields))


def hold_open(conn: socket.socket, release: threading.Event) -> None:
    """Accept and say nothing until the test ends."""
    release.wait(10)


def pong(conn: socket.socket, release: threading.Event) -> None:
    """Answer "PONG ..." to a "PING" line, "ERR" to anything else."""
    conn.settimeout(5)
    line = conn.recv(64)
    conn.sendall(b"PONG from test\r\n" if line == b"PING\r\n" else b"ERR\r\n")
    release.wait(10)


def banner_then_close(conn: socket.socket, release: threading.Event) -> None:
    conn.sendall(b"220 ready\r\n")


def test_connect_only_passes(tcp_server: StartTcp) -> None:
    """Without send/expect, an accepted connection is healthy."""
    server = tcp_server(hold_open)
    check = tcp_check(server.port)
    result = check.run(2.0)
    check.close()
    assert result.ok
    assert result.reason == "connected"
    assert check.name == f"tcp 127.0.0.1:{server.port}"
    deadline = time.monotonic() + 2
    while server.accepted == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.accepted == 1


def test_connection_refused(closed_port: int) -> None:
    """Nothing listening: fails with "connection refused"."""
    result = tcp_check(closed_port).run(2.0)
    assert not result.ok
    assert result.reason == "connection refused"


def test_send_and_expected_reply(tcp_server: StartTcp) -> None:
    """The probe is sent, and a reply starting with ``expect`` passes."""
    server = tcp_server(pong)
    result = tcp_check(server.port, send="PING\r\n", expect="PONG").run(2.0)
    assert result.ok, result
    assert result.reason == "reply starts with 'PONG'"


def test_wrong_reply_fails(tcp_server: StartTcp) -> None:
    """A reply that does not start with ``expect`` fails, showing what came back."""
    server = tcp_server(pong)
    result = tcp_check(server.port, send="HELLO\r\n", expect="PONG").run(2.0)
    assert not result.ok
    assert result.reason.startswith("reply 'ERR")
    assert "does not start with 'PONG'" in result.reason


def test_banner_without_send(tcp_server: StartTcp) -> None:
    """``expect`` alone reads a banner; the wrong banner fails."""
    server = tcp_server(banner_then_close)
    assert tcp_check(server.port, expect="220").run(2.0).ok
    assert not tcp_check(server.port, expect="554").run(2.0).ok


def test_closed_without_reply_fails(tcp_server: StartTcp) -> None:
    """A server that hangs up without answering fails with a reason saying so."""
    server = tcp_server(lambda conn, release: None)
    result = tcp_check(server.port, expect="+OK").run(2.0)
    assert not result.ok
    assert result.reason == "connection closed without a reply"


def test_silent_server_times_out(tcp_server: StartTcp) -> None:
    """A server that accepts but never replies: timeout, returned within generous bounds."""
    server = tcp_server(hold_open)
    check = tcp_check(server.port, send="PING\r\n", expect="PONG")
    started = time.monotonic()
    result = check.run(0.5)
    assert time.monotonic() - started < 3.0
    assert not result.ok
    assert result.reason == "timeout after 0.5s"
    assert 0.4 <= result.duration < 3.0
