"""Real servers on 127.0.0.1 for the check tests: HTTP, TCP and DNS, each on a port from the OS.

Every server runs in daemon threads, records what it saw, and is stopped by its
fixture (in conftest.py). Servers told to stall wait on an event that stopping
sets, so no test leaves a thread sleeping.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


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
