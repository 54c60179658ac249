"""The HTTP check against a real ThreadingHTTPServer on 127.0.0.1, plus faked connections for
what a real server cannot show (the retry budget, the TLS context, the request's headers)."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h11
import pytest
from check_servers import HttpServer, Route, self_signed

from announcer.checks import HttpCheckSpec, build_check
from announcer.checks.http import ConnectionFactory, HttpCheck


def http_check(url: str, **fields: Any) -> HttpCheck:
    check = build_check(HttpCheckSpec(type="http", url=url, **fields))
    assert isinstance(check, HttpCheck)
    return check


def test_ok_status_passes(http_server: HttpServer) -> None:
    """A 200 from the server is healthy, and the reason shows the status."""
    http_server.routes["/health"] = Route(status=200)
    check = http_check(http_server.url())
    result = check.run(2.0)
    check.close()
    assert result.ok, result
    assert result.reason == "HTTP 200"
    assert 0 <= result.duration < 2.0
    assert check.name == f"http GET {http_server.url()}"


def test_status_outside_range_fails(http_server: HttpServer) -> None:
    """A 503 is outside the default 200-399 and fails with the status as the reason."""
    http_server.routes["/health"] = Route(status=503, body=b"down\n")
    check = http_check(http_server.url())
    result = check.run(2.0)
    check.close()
    assert not result.ok
    assert result.reason == "HTTP 503"


def test_expect_status_is_honoured(http_server: HttpServer) -> None:
    """With expect_status [204], a 200 fails and a 204 passes."""
    http_server.routes["/a"] = Route(status=200)
    http_server.routes["/b"] = Route(status=204, body=b"")
    a = http_check(http_server.url("/a"), expect_status=[204])
    b = http_check(http_server.url("/b"), expect_status=[204])
    assert a.run(2.0).reason == "HTTP 200"
    assert not a.run(2.0).ok
    assert b.run(2.0).ok
    a.close()
    b.close()


def test_redirect_is_judged_not_followed(http_server: HttpServer) -> None:
    """A 302 is judged as a status (passing the default 200-399) without being followed."""
    http_server.routes["/health"] = Route(status=302)
    check = http_check(http_server.url())
    result = check.run(2.0)
    check.close()
    assert result.ok
    assert result.reason == "HTTP 302"
    assert [r.path for r in http_server.requests] == ["/health"]


def test_body_regex_match_and_mismatch(http_server: HttpServer) -> None:
    """body_regex must match the body: a matching body passes, another fails naming the regex."""
    http_server.routes["/health"] = Route(body=b'{"status": "degraded"}')
    good = http_check(http_server.url(), body_regex=r'"status": "(ok|degraded)"')
    bad = http_check(http_server.url(), body_regex="ok")
    assert good.run(2.0).ok
    result = bad.run(2.0)
    assert not result.ok
    assert result.reason == "body did not match /ok/"
    good.close()
    bad.close()


def test_host_header_is_sent(http_server: HttpServer) -> None:
    """Configured headers (here Host, for a name-based virtual host) reach the server."""
    http_server.routes["/health"] = Route()
    check = http_check(http_server.url(), headers={"Host": "www.example.test", "X-Probe": "1"})
    assert check.run(2.0).ok
    check.close()
    seen = http_server.requests[-1].headers
    assert seen["host"] == "www.example.test"
    assert seen["x-probe"] == "1"


def test_method_is_used(http_server: HttpServer) -> None:
    """The configured method is the one sent."""
    http_server.routes["/health"] = Route()
    check = http_check(http_server.url(), method="HEAD")
    assert check.run(2.0).ok
    check.close()
    assert http_server.requests[-1].method == "HEAD"


def test_connection_is_reused_across_runs(http_server: HttpServer) -> None:
    """Several runs of one check travel over a single kept-alive TCP connection."""
    http_server.routes["/health"] = Route()
    check = http_check(http_server.url())
    results = [check.run(2.0) for _ in range(4)]
    check.close()
    assert all(r.ok for r in results), results
    assert len(http_server.requests) == 4
    assert len(http_server.connections) == 1


def test_close_drops_the_connection_and_is_idempotent(http_server: HttpServer) -> None:
    """After close() the next run opens a new connection; closing twice is harmless."""
    http_server.routes["/health"] = Route()
    check = http_check(http_server.url())
    assert check.run(2.0).ok
    check.close()
    check.close()
    assert check.run(2.0).ok
    check.close()
    assert len(http_server.connections) == 2


def test_slow_server_times_out(http_server: HttpServer) -> None:
    """A server slower than the timeout fails with a timeout reason, well within bounds,
    and the timeout is not retried."""
    http_server.routes["/health"] = Route(delay=10.0)
    check = http_check(http_server.url())
    started = time.monotonic()
    result = check.run(0.5)
    elapsed = time.monotonic() - started
    check.close()
    assert not result.ok
    assert result.reason == "timeout after 0.5s"
    assert elapsed < 3.0
    assert len(http_server.requests) == 1


def test_connection_refused(closed_port: int) -> None:
    """Nothing listening: fails fast with "connection refused"."""
    check = http_check(f"http://127.0.0.1:{closed_port}/")
    started = time.monotonic()
    result = check.run(2.0)
    check.close()
    assert not result.ok
    assert result.reason == "connection refused"
    assert time.monotonic() - started < 2.0


def test_failing_status_is_not_retried(http_server: HttpServer) -> None:
    """A 503 is the service's answer: one request, no retry to hide it."""
    http_server.routes["/health"] = Route(status=503)
    check = http_check(http_server.url(), retries=3)
    assert not check.run(2.0).ok
    check.close()
    assert len(http_server.requests) == 1


@pytest.fixture
def reset_once_server() -> Iterator[tuple[int, list[int]]]:
    """A raw server that resets its first connection after reading the request, then serves
    200s. Yields its port and the list of connections accepted (for counting)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    accepted: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(1)
            with conn:
                conn.settimeout(2)
                conn.recv(65536)
                if len(accepted) == 1:
                    # SO_LINGER 0: close() sends RST, as a crashed or restarting server does.
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join(2)
        listener.close()


def test_reset_connection_is_retried_once(reset_once_server: tuple[int, list[int]]) -> None:
    """A connection reset before any response is retried (retries=1) and the retry's answer
    counts."""
    port, accepted = reset_once_server
    check = http_check(f"http://127.0.0.1:{port}/")
    result = check.run(3.0)
    check.close()
    assert result.ok, result
    assert len(accepted) == 2


def test_reset_without_retries_fails(reset_once_server: tuple[int, list[int]]) -> None:
    """With retries=0 the same reset is reported, not hidden."""
    port, accepted = reset_once_server
    check = http_check(f"http://127.0.0.1:{port}/", retries=0)
    result = check.run(3.0)
    check.close()
    assert not result.ok
    assert result.reason in ("connection reset", "server closed the connection without a response")
    assert len(accepted) == 1


# ----------------------------------------------------------------- faked connection and clock


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def response(status: int = 200, body: bytes = b"ok", content_type: str = "") -> bytes:
    """The bytes of an HTTP/1.1 response."""
    head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return head.encode("latin-1") + b"\r\n" + body


class FakeStream:
    """A connection that never touches the network: each request (parsed with h11 as a server
    would) runs ``behave(n)``, which returns the response's bytes or raises. Records what the
    check sent."""

    def __init__(self, behave: Callable[[int], bytes | None], log: list[dict[str, Any]]) -> None:
        self.behave = behave
        self.log = log
        self.closed = False
        self._server = h11.Connection(h11.SERVER)
        self._pending: bytes | None = b""

    async def read(self) -> bytes:
        if self._pending is None:
            await asyncio.Event().wait()  # a server that never answers
        data, self._pending = self._pending or b"", b""
        return data

    def write(self, data: bytes) -> None:
        self._server.receive_data(data)
        request = self._server.next_event()
        assert isinstance(request, h11.Request)
        headers = {name.decode(): value.decode() for name, value in request.headers}
        self.log.append(
            {"method": request.method.decode(), "url": request.target.decode(), "headers": headers}
        )
        self._pending = self.behave(len(self.log))

    def alive(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True


def fake_factory(
    behave: Callable[[int], bytes | None],
) -> tuple[ConnectionFactory, list[dict[str, Any]], list[tuple[str, str, int, Any]]]:
    """A connection factory, the requests made through it, and the connections it made."""
    log: list[dict[str, Any]] = []
    made: list[tuple[str, str, int, Any]] = []

    async def factory(scheme: str, host: str, port: int, context: ssl.SSLContext | None) -> Any:
        made.append((scheme, host, port, context))
        return FakeStream(behave, log)

    return factory, log, made


def refused(_: int) -> bytes:
    raise ConnectionRefusedError(111, "Connection refused")


def ok_response(_: int) -> bytes:
    return response()


def test_tls_verification_is_on_by_default(tmp_path: Path) -> None:
    """Unless told otherwise the TLS context verifies the certificate and the host name;
    ca_file replaces the system store; verify_tls false turns both checks off."""
    cert, _ = self_signed(tmp_path)
    contexts = []
    for fields in ({}, {"ca_file": str(cert)}, {"verify_tls": False}):
        factory, _, made = fake_factory(ok_response)
        spec = HttpCheckSpec(type="http", url="https://127.0.0.1/", **fields)
        check = build_check(spec, connection_factory=factory)
        assert check.run(1.0).ok
        assert made[0][:3] == ("https", "127.0.0.1", 443)
        contexts.append(made[0][3])
    default, own_ca, unverified = contexts
    assert default.verify_mode == ssl.CERT_REQUIRED and default.check_hostname
    assert own_ca.verify_mode == ssl.CERT_REQUIRED and own_ca.check_hostname
    assert [int(c["serialNumber"], 16) for c in own_ca.get_ca_certs()] == [x509_serial(cert)], (
        "ca_file alone is trusted"
    )
    assert unverified.verify_mode == ssl.CERT_NONE and not unverified.check_hostname


def test_plain_http_has_no_tls_context_and_keeps_the_path_and_query() -> None:
    """http:// gets no TLS context; the request target is the URL's path and query, with
    our User-Agent unless the spec sets its own (case-insensitively)."""
    factory, log, made = fake_factory(ok_response)
    spec = HttpCheckSpec(
        type="http", url="http://[::1]:8080/health?deep=1", headers={"user-agent": "mine"}
    )
    assert build_check(spec, connection_factory=factory).run(1.0).ok
    assert made == [("http", "::1", 8080, None)]
    assert log[0]["url"] == "/health?deep=1"
    assert log[0]["headers"] == {
        "host": "[::1]:8080",
        "accept": "*/*",
        "accept-encoding": "identity",
        "user-agent": "mine",
    }


def test_credentials_in_the_url_become_basic_auth() -> None:
    """user:password@ in the URL is sent as an Authorization: Basic header."""
    factory, log, _ = fake_factory(ok_response)
    spec = HttpCheckSpec(type="http", url="http://us%40er:p%3Ass@127.0.0.1/")
    assert build_check(spec, connection_factory=factory).run(1.0).ok
    token = log[0]["headers"]["authorization"].removeprefix("Basic ")
    assert base64.b64decode(token) == b"us@er:p:ss"


def test_body_charset_comes_from_content_type() -> None:
    """body_regex sees the body decoded with the charset the server names."""
    factory, _, _ = fake_factory(
        lambda _: response(
            body="état".encode("latin-1"), content_type="text/plain; charset=latin-1"
        )
    )
    spec = HttpCheckSpec(type="http", url="http://127.0.0.1/", body_regex="^état$")
    assert build_check(spec, connection_factory=factory).run(1.0).ok


def test_retry_happens_only_while_time_remains() -> None:
    """A refused connection is retried when budget remains, but not once the first attempt
    has used (almost) all of it; the error is then reported as is, not as a timeout."""
    clock = FakeClock()

    def slow_refusal(n: int) -> bytes:
        clock.now += 0.99
        return refused(n)

    factory, log, _ = fake_factory(slow_refusal)
    spec = HttpCheckSpec(type="http", url="http://127.0.0.1/", retries=3)
    result = build_check(spec, clock=clock, connection_factory=factory).run(1.0)
    assert not result.ok
    assert result.reason == "connection refused"
    assert len(log) == 1
    assert result.duration == pytest.approx(0.99)

    factory, log, made = fake_factory(refused)
    spec = HttpCheckSpec(type="http", url="http://127.0.0.1/", retries=2)
    check = build_check(spec, clock=clock, connection_factory=factory)
    assert check.run(1.0).reason == "connection refused"
    assert len(log) == 3
    assert len(made) == 3  # each refused connection is dropped, the next attempt starts anew


def test_each_attempt_gets_only_the_remaining_budget() -> None:
    """The retry runs under what is left of the run's budget: a first attempt that used 0.2 s
    of 0.3 s (on the check's clock) leaves 0.1 s for a retry that never gets an answer."""
    clock = FakeClock()

    def behave(n: int) -> bytes | None:
        clock.now += 0.2
        return refused(n) if n == 1 else None

    factory, log, _ = fake_factory(behave)
    spec = HttpCheckSpec(type="http", url="http://127.0.0.1/")
    started = time.monotonic()
    result = build_check(spec, clock=clock, connection_factory=factory).run(0.3)
    elapsed = time.monotonic() - started
    assert (result.ok, result.reason, len(log)) == (False, "timeout after 0.3s", 2)
    assert 0.08 <= elapsed < 0.25


def test_bad_status_and_timeouts_are_not_retried() -> None:
    """Only failures before any response are retried: a 503 or a timeout is reported after
    one request, however many retries are allowed."""
    for behave, reason in (
        (lambda _: response(status=503), "HTTP 503"),
        (lambda _: (_ for _ in ()).throw(TimeoutError("timed out")), "timeout after 1.0s"),
    ):
        factory, log, _ = fake_factory(behave)
        spec = HttpCheckSpec(type="http", url="http://127.0.0.1/", retries=3)
        result = build_check(spec, connection_factory=factory).run(1.0)
        assert (result.ok, result.reason, len(log)) == (False, reason, 1)


def test_unexpected_exception_becomes_a_failed_result() -> None:
    """run() never raises: an exception nobody planned for fails the check, named by type."""

    def explode(_: int) -> bytes:
        raise RuntimeError("boom")

    factory, _, _ = fake_factory(explode)
    check = build_check(
        HttpCheckSpec(type="http", url="http://127.0.0.1/"), connection_factory=factory
    )
    result = check.run(1.0)
    assert not result.ok
    assert result.reason == "unexpected RuntimeError: boom"


# ----------------------------------------------------------------- a real TLS server


def x509_serial(cert: Path) -> int:
    """The certificate's serial number (the ssl module shows it as hex, zero-padded)."""
    from cryptography import x509

    return x509.load_pem_x509_certificate(cert.read_bytes()).serial_number


def test_tls_against_a_self_signed_server(tmp_path: Path) -> None:
    """Against a self-signed HTTPS server: the default (verify) fails naming TLS, ca_file
    with that cert passes, verify_tls false passes."""
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = HttpServer(tls=context)
    try:
        server.routes["/health"] = Route()
        default = http_check(server.url())
        result = default.run(3.0)
        default.close()
        assert not result.ok
        assert result.reason.startswith("TLS"), result.reason

        trusted = http_check(server.url(), ca_file=str(cert))
        unverified = http_check(server.url(), verify_tls=False)
        assert trusted.run(3.0).ok
        assert unverified.run(3.0).ok
        trusted.close()
        unverified.close()
    finally:
        server.stop()
