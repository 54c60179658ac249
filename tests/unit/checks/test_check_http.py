"""The HTTP check against a real ThreadingHTTPServer on 127.0.0.1, plus faked sessions for
what a real server cannot show (the retry budget, the arguments given to requests)."""

from __future__ import annotations

import datetime
import io
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from check_servers import HttpServer, Route

from checks import HttpCheckSpec, build_check
from checks.http import HttpCheck


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


# ----------------------------------------------------------------- faked session and clock


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class RecordingSession(requests.Session):
    """A session that never touches the network: each request runs ``behave``."""

    def __init__(self, behave: Any) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []
        self.behave = behave

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        self.calls.append({"method": method, "url": url, **kwargs})
        return self.behave(len(self.calls))


def refused(_: int) -> requests.Response:
    raise requests.ConnectionError(ConnectionRefusedError(111, "Connection refused"))


def ok_response(_: int) -> requests.Response:
    response = requests.Response()
    response.status_code = 200
    response.raw = io.BytesIO(b"ok")
    return response


def test_tls_verification_is_on_by_default() -> None:
    """Unless told otherwise, requests is asked to verify certificates; ca_file replaces the
    system store; verify_tls false turns verification off."""
    sessions: list[RecordingSession] = []

    def factory() -> requests.Session:
        sessions.append(RecordingSession(ok_response))
        return sessions[-1]

    for fields in ({}, {"ca_file": "/etc/ca.pem"}, {"verify_tls": False}):
        spec = HttpCheckSpec(type="http", url="https://127.0.0.1/", **fields)
        check = build_check(spec, session_factory=factory)
        assert check.run(1.0).ok
    verify = [s.calls[0]["verify"] for s in sessions]
    assert verify == [True, "/etc/ca.pem", False]
    assert sessions[0].calls[0]["allow_redirects"] is False


def test_retry_happens_only_while_time_remains() -> None:
    """A refused connection is retried when budget remains, but not once the first attempt
    has used (almost) all of it; the error is then reported as is, not as a timeout."""
    clock = FakeClock()

    def slow_refusal(n: int) -> requests.Response:
        clock.now += 0.99
        return refused(n)

    session = RecordingSession(slow_refusal)
    check = build_check(
        HttpCheckSpec(type="http", url="http://127.0.0.1/", retries=3),
        clock=clock,
        session_factory=lambda: session,
    )
    result = check.run(1.0)
    assert not result.ok
    assert result.reason == "connection refused"
    assert len(session.calls) == 1
    assert result.duration == pytest.approx(0.99)

    fast = RecordingSession(refused)
    check = build_check(
        HttpCheckSpec(type="http", url="http://127.0.0.1/", retries=2),
        clock=clock,
        session_factory=lambda: fast,
    )
    assert check.run(1.0).reason == "connection refused"
    assert len(fast.calls) == 3


def test_each_attempt_gets_only_the_remaining_budget() -> None:
    """The retry's connect and read timeouts are what is left of the run's budget."""
    clock = FakeClock()

    def behave(n: int) -> requests.Response:
        clock.now += 0.4
        return refused(n) if n == 1 else ok_response(n)

    session = RecordingSession(behave)
    check = build_check(
        HttpCheckSpec(type="http", url="http://127.0.0.1/"),
        clock=clock,
        session_factory=lambda: session,
    )
    assert check.run(1.0).ok
    timeouts = [call["timeout"] for call in session.calls]
    assert timeouts[0] == pytest.approx((1.0, 1.0))
    assert timeouts[1] == pytest.approx((0.6, 0.6))


def test_unexpected_exception_becomes_a_failed_result() -> None:
    """run() never raises: an exception nobody planned for fails the check, named by type."""

    def explode(_: int) -> requests.Response:
        raise RuntimeError("boom")

    check = build_check(
        HttpCheckSpec(type="http", url="http://127.0.0.1/"),
        session_factory=lambda: RecordingSession(explode),
    )
    result = check.run(1.0)
    assert not result.ok
    assert result.reason == "unexpected RuntimeError: boom"


# ----------------------------------------------------------------- a real TLS server


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with ``cryptography`` (skip without)."""
    pytest.importorskip(
        "cryptography", reason="cryptography is not installed: no easy way to make a test cert"
    )
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "announcer test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = tmp_path / "cert.pem"
    key_path = tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_against_a_self_signed_server(tmp_path: Path) -> None:
    """Against a self-signed HTTPS server: the default (verify) fails naming TLS, ca_file
    with that cert passes, verify_tls false passes."""
    cert, key = _self_signed(tmp_path)
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
