"""The loop checks (HTTP, TCP, DNS as coroutines) against real servers on 127.0.0.1: what a
non-blocking client can get wrong that a blocking one could not (TLS over a memory buffer,
a server that closes without close_notify, deadlines that must cut a trickling server off,
a kept connection that belongs to another loop)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from check_servers import ConnectionHandler, DnsServer, HttpServer, Route, TcpServer, server_tls

from announcer.checks import DnsCheckSpec, HttpCheckSpec, TcpCheckSpec, build_check
from announcer.checks.http import HttpCheck

StartTcp = Callable[[ConnectionHandler], TcpServer]


def http_check(url: str, **fields: Any) -> HttpCheck:
    check = build_check(HttpCheckSpec(type="http", url=url, **fields))
    assert isinstance(check, HttpCheck)
    return check


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[HttpServer, Path]]:
    """An HTTPS keep-alive server with a self-signed certificate (127.0.0.1 and localhost),
    and that certificate."""
    context, cert = server_tls(tmp_path, ("localhost",))
    names: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment,func-returns-value]
    server = HttpServer(tls=context)
    server.routes["/health"] = Route()
    server.sni = names  # type: ignore[attr-defined]
    try:
        yield server, cert
    finally:
        server.stop()


def test_tls_connection_is_kept_across_runs(tls_server: tuple[HttpServer, Path]) -> None:
    """Runs of a verifying HTTPS check reuse one TLS connection."""
    server, cert = tls_server
    check = http_check(server.url(), ca_file=str(cert))
    results = [check.run(3.0) for _ in range(3)]
    check.close()
    assert all(r.ok for r in results), results
    assert len(server.requests) == 3
    assert len(server.connections) == 1


def test_tls_sends_the_url_host_as_sni_and_verifies_it(tls_server: tuple[HttpServer, Path]) -> None:
    """A name in the URL is sent as SNI and checked against the certificate; a name the
    certificate does not carry fails as untrusted."""
    server, cert = tls_server
    good = http_check(f"https://localhost:{server.port}/health", ca_file=str(cert))
    result = good.run(3.0)
    good.close()
    assert result.ok, result
    assert "localhost" in server.sni  # type: ignore[attr-defined]
    bad = http_check(server.url().replace("127.0.0.1", "127.0.0.2"), ca_file=str(cert))
    result = bad.run(3.0)
    bad.close()
    assert not result.ok
    assert result.reason.startswith(("TLS", "connection refused")), result.reason


def tls_handler(
    context: ssl.SSLContext, reply: bytes
) -> Callable[[socket.socket, threading.Event], None]:
    """Serves one TLS connection: reads the request, writes ``reply``, then closes the socket
    without TLS's close_notify (SSLSocket.close does not send it; unwrap would)."""

    def handle(conn: socket.socket, release: threading.Event) -> None:
        conn.settimeout(5)
        tls = context.wrap_socket(conn, server_side=True)
        tls.recv(65536)
        tls.sendall(reply)
        tls.close()

    return handle


def test_tls_close_without_close_notify_ends_a_body_read_to_the_close(
    tcp_server: StartTcp, tmp_path: Path
) -> None:
    """An HTTP/1.0 body delimited by the close passes when the server closes without
    close_notify, as with a blocking TLS client."""
    context, cert = server_tls(tmp_path)
    server = tcp_server(tls_handler(context, b"HTTP/1.0 200 OK\r\n\r\nall good"))
    check = http_check(f"https://127.0.0.1:{server.port}/", ca_file=str(cert), body_regex="good")
    result = check.run(3.0)
    check.close()
    assert (result.ok, result.reason) == (True, "HTTP 200")


def test_tls_close_without_close_notify_inside_the_body_fails(
    tcp_server: StartTcp, tmp_path: Path
) -> None:
    """A body cut short by a close (with no close_notify) fails saying so."""
    context, cert = server_tls(tmp_path)
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"
    server = tcp_server(tls_handler(context, reply))
    check = http_check(f"https://127.0.0.1:{server.port}/", ca_file=str(cert))
    result = check.run(3.0)
    check.close()
    assert (result.ok, result.reason) == (False, "connection broken while reading the body")


def never_answer(conn: socket.socket, release: threading.Event) -> None:
    """Accept, read, and say nothing until the test ends."""
    release.wait(10)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_server_that_accepts_and_never_answers_times_out(tcp_server: StartTcp, scheme: str) -> None:
    """A silent server (for https: one that never finishes the handshake) fails with the
    timeout reason within the timeout, not long after."""
    server = tcp_server(never_answer)
    check = http_check(f"{scheme}://127.0.0.1:{server.port}/", verify_tls=False)
    started = time.monotonic()
    result = check.run(0.3)
    elapsed = time.monotonic() - started
    check.close()
    assert (result.ok, result.reason) == (False, "timeout after 0.3s")
    assert 0.25 <= elapsed < 0.6


def test_a_server_trickling_its_body_is_cut_off_at_the_deadline(tcp_server: StartTcp) -> None:
    """Bytes arriving every 50 ms never reset the deadline: the run ends at its timeout."""

    def trickle(conn: socket.socket, release: threading.Event) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        while not release.wait(0.05):
            conn.sendall(b"x")

    server = tcp_server(trickle)
    check = http_check(f"http://127.0.0.1:{server.port}/")
    started = time.monotonic()
    result = check.run(0.4)
    elapsed = time.monotonic() - started
    check.close()
    assert (result.ok, result.reason) == (False, "timeout after 0.4s")
    assert elapsed < 0.7


def test_connection_close_is_honoured(tcp_server: StartTcp) -> None:
    """A response saying "Connection: close" is judged, and the next run connects anew."""

    def once(conn: socket.socket, release: threading.Event) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")

    server = tcp_server(once)
    check = http_check(f"http://127.0.0.1:{server.port}/")
    assert [check.run(2.0).reason for _ in range(2)] == ["HTTP 204", "HTTP 204"]
    check.close()
    assert server.accepted == 2


def test_idle_connection_closed_by_the_server_is_replaced(tcp_server: StartTcp) -> None:
    """A kept-alive connection the server closed between runs costs no failure: the request
    on it sees the close before any response and is sent again on a new connection."""

    def one_request(conn: socket.socket, release: threading.Event) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        time.sleep(0.05)  # then close while the client idles

    server = tcp_server(one_request)
    check = http_check(f"http://127.0.0.1:{server.port}/")
    first = check.run(2.0)
    time.sleep(0.2)
    second = check.run(2.0)
    check.close()
    assert first.ok and second.ok, (first, second)
    assert server.accepted == 2


def test_a_body_over_the_limit_is_judged_on_its_start(tcp_server: StartTcp) -> None:
    """body_regex sees the first MiB; the rest is not read and the connection is dropped."""

    def big(conn: socket.socket, release: threading.Event) -> None:
        conn.recv(65536)
        size = 3 << 20
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\nstart".encode())
        with contextlib.suppress(OSError):
            conn.sendall(b"x" * (size - 5))

    server = tcp_server(big)
    check = http_check(f"http://127.0.0.1:{server.port}/", body_regex="^start")
    result = check.run(3.0)
    check.close()
    assert (result.ok, result.reason) == (True, "HTTP 200")


def test_garbage_instead_of_http_is_a_bad_response(tcp_server: StartTcp) -> None:
    """Something that is not HTTP fails as a bad response, named by h11's error."""

    def garbage(conn: socket.socket, release: threading.Event) -> None:
        conn.recv(65536)
        conn.sendall(b"SSH-2.0-OpenSSH\r\n\r\n")

    server = tcp_server(garbage)
    result = http_check(f"http://127.0.0.1:{server.port}/", retries=0).run(2.0)
    assert not result.ok
    assert result.reason.startswith("bad HTTP response: RemoteProtocolError"), result.reason


def test_basic_auth_and_headers_reach_the_server(http_server: HttpServer) -> None:
    """Credentials in the URL arrive as Basic auth; configured headers as given; Host as
    http.client would send it."""
    http_server.routes["/health"] = Route()
    url = http_server.url().replace("://", "://user:pw@")
    check = http_check(url, headers={"X-Probe": "1"})
    assert check.run(2.0).ok
    check.close()
    seen = http_server.requests[-1].headers
    assert seen["authorization"] == "Basic dXNlcjpwdw=="
    assert seen["x-probe"] == "1"
    assert seen["host"] == f"127.0.0.1:{http_server.port}"


def test_a_kept_connection_moves_to_another_loop(http_server: HttpServer) -> None:
    """A connection kept by a blocking run (its private loop) is not used from another loop:
    the run there connects anew and passes."""
    http_server.routes["/health"] = Route()
    check = http_check(http_server.url())
    assert check.run(2.0).ok
    assert asyncio.run(check.arun(2.0)).ok
    check.close()
    assert len(http_server.connections) == 2


def test_dns_server_that_never_replies_times_out(dns_server: Callable[..., DnsServer]) -> None:
    """A silent DNS server: the timeout reason, within the timeout."""
    server = dns_server(silent=True)
    check = build_check(
        DnsCheckSpec(type="dns", name="x.test", server="127.0.0.1", port=server.port)
    )
    started = time.monotonic()
    result = check.run(0.3)
    assert (result.ok, result.reason) == (False, "timeout after 0.3s")
    assert time.monotonic() - started < 0.6


def test_dns_port_closed_is_refused_at_once(closed_port: int) -> None:
    """Nothing on the DNS server's port: the kernel's port-unreachable ends the run early."""
    check = build_check(
        DnsCheckSpec(type="dns", name="x.test", server="127.0.0.1", port=closed_port)
    )
    started = time.monotonic()
    result = check.run(2.0)
    assert (result.ok, result.reason) == (False, "connection refused")
    assert time.monotonic() - started < 1.0


def test_tcp_refused_and_silent_on_one_loop(tcp_server: StartTcp, closed_port: int) -> None:
    """Many TCP checks at once on one loop: refused ones fail at once, silent ones at their
    timeout, none waits for another."""
    server = tcp_server(never_answer)

    def spec(port: int) -> TcpCheckSpec:
        return TcpCheckSpec(type="tcp", host="127.0.0.1", port=port, send="hi\n", expect="ok")

    refused = [build_check(spec(closed_port)) for _ in range(20)]
    silent = [build_check(spec(server.port)) for _ in range(20)]

    async def all_at_once() -> list[Any]:
        return await asyncio.gather(*(c.arun(0.3) for c in refused + silent))  # type: ignore[attr-defined]

    started = time.monotonic()
    results = asyncio.run(all_at_once())
    assert time.monotonic() - started < 0.8
    assert {r.reason for r in results[:20]} == {"connection refused"}
    assert {r.reason for r in results[20:]} == {"timeout after 0.3s"}
