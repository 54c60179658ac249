"""Real servers on 127.0.0.1 for the check tests: HTTP, TCP and DNS, each on a port from the OS.

Every server runs in daemon threads, records what it saw, and is stopped by its
fixture (in conftest.py). Servers told to stall wait on an event that stopping
sets, so no test leaves a thread sleeping.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest


@dataclass(frozen=True)
class Route:
    """What the HTTP server answers on one path."""

    status: int = 200
    body: bytes = b"ok\n"
    delay: float = 0.0
    content_type: str = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    client_port: int


class HttpServer:
    """A ThreadingHTTPServer speaking HTTP/1.1 with keep-alive, recording every request."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[SeenRequest] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                with owner._lock:
                    owner.requests.append(
                        SeenRequest(
                            method=self.command,
                            path=self.path,
                            headers={k.lower(): v for k, v in self.headers.items()},
                            client_port=self.client_address[1],
                        )
                    )
                route = owner.routes.get(self.path, Route(status=404, body=b"not found\n"))
                if route.delay:
                    owner.release.wait(route.delay)
                try:
                    self.send_response(route.status)
                    self.send_header("Content-Type", route.content_type)
                    self.send_header("Content-Length", str(len(route.body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(route.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # a check that timed out has closed its end: expected, not an error

            do_GET = _answer
            do_HEAD = _answer
            do_POST = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url(self, path: str = "/health") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    @property
    def connections(self) -> set[int]:
        """Client ports seen: one per TCP connection."""
        with self._lock:
            return {request.client_port for request in self.requests}

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


ConnectionHandler = Callable[[socket.socket, threading.Event], None]
"""Serves one accepted TCP connection; the event is set when the server stops."""


class TcpServer:
    """A TCP listener; ``handle`` gets each accepted connection and the release event."""

    def __init__(self, handle: ConnectionHandler) -> None:
        self.release = threading.Event()
        self.accepted = 0
        self.received: list[bytes] = []
        self._handle = handle
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self.release.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self._handle(conn, self.release)

    def stop(self) -> None:
        self.release.set()
        self._thread.join(2)
        self._listener.close()


@dataclass
class DnsServer:
    """A tiny authoritative UDP responder built on dnspython's message API.

    ``records`` maps (name, rdtype) to record texts; a name with no entry at all
    gets NXDOMAIN, a known name asked for another type gets an empty NOERROR.
    ``rcode`` forces an error code; ``silent`` reads queries and never answers.
    """

    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    rcode: dns.rcode.Rcode | None = None
    silent: bool = False
    queries: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.queries += 1
            if self.silent:
                continue
            query = dns.message.from_wire(wire)
            response = dns.message.make_response(query)
            question = query.question[0]
            qname = question.name.to_text()
            qtype = dns.rdatatype.to_text(question.rdtype)
            if self.rcode is not None:
                response.set_rcode(self.rcode)
            elif not any(name == qname for name, _ in self.records):
                response.set_rcode(dns.rcode.NXDOMAIN)
            else:
                owner = qname
                alias = self.records.get((qname, "CNAME"))
                if alias and qtype != "CNAME":
                    response.answer.append(dns.rrset.from_text(qname, 60, "IN", "CNAME", *alias))
                    owner = alias[0]
                values = self.records.get((owner, qtype))
                if values:
                    response.answer.append(dns.rrset.from_text(owner, 60, "IN", qtype, *values))
            self._sock.sendto(response.to_wire(), peer)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


def self_signed(tmp_path: Path, names: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and the DNS ``names``) and its key, made with
    ``cryptography`` (the test skips without it)."""
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
    alt: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    alt += [x509.DNSName(dns_name) for dns_name in names]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
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


def server_tls(tmp_path: Path, names: tuple[str, ...] = ()) -> tuple[ssl.SSLContext, Path]:
    """A server-side TLS context with a fresh self-signed certificate, and that certificate."""
    cert, key = self_signed(tmp_path, names)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, cert
