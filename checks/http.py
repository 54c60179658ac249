"""The HTTP(S) check: one request on a kept-alive connection, judged by status and body.

Each check keeps one connection of the standard library's :mod:`http.client`, so
consecutive runs reuse the same TCP (and TLS) connection, as a load balancer's
health checker would. The request's bytes are fixed when the check is built.
Nothing comes from the environment (no proxies, no ``.netrc``, no CA bundle
variables): a health check of a local service must not depend on how the
controller was started.

Why not ``requests``: at scale the HTTP check is nearly all of the controller's
CPU, and ``requests`` costs about four times what the connection under it does
for the same kept-alive GET (docs/benchmarks.md, P3 and its profile). A health
check needs none of what it adds on top: no redirects (a 3xx is judged like any
status), no cookies, no proxies, no content decoding.

The whole run, including the retry, stays inside the ``timeout`` budget: each
attempt gets what is left of it as its connect and read timeouts, and the body
is read in chunks with the deadline checked between them. One read can still
wait for up to what was left when it started, so a server that trickles its body
a byte at a time can stretch a run past the budget, but never unboundedly.

The retry (``retries``, default 1) is only for connection-level failures that
happen before any response, such as a refused connection or a kept-alive
connection the server closed while idle. A timeout, a TLS failure, a bad status
or a wrong body is never retried: a retry must not hide a failing service.
"""

from __future__ import annotations

import base64
import functools
import http.client
import socket
import ssl
from collections.abc import Callable
from email.message import Message
from typing import Protocol
from urllib.parse import unquote, urlsplit

from announcer.checks._text import one_line, timeout_reason
from announcer.checks.base import CheckResult, Clock, monotonic, timed_run
from announcer.checks.specs import HttpCheckSpec, status_ranges

__all__ = ["Connection", "ConnectionFactory", "HttpCheck", "Response", "default_connection"]

MAX_BODY = 1 << 20
"""Bytes of body read at most; ``body_regex`` sees no further, and a longer body costs the
kept-alive connection (it is closed rather than drained)."""

MIN_RETRY_BUDGET = 0.05
"""Seconds that must be left for a retry to be worth starting: less would turn a clear
"connection refused" into a meaningless timeout."""

USER_AGENT = "announcer-healthcheck"

_CHUNK = 16 * 1024


class Response(Protocol):
    """What the check reads of a response (:class:`http.client.HTTPResponse` has it)."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Message: ...

    def read(self, amt: int | None = None, /) -> bytes: ...


class Connection(Protocol):
    """What the check needs of a connection (:class:`http.client.HTTPConnection` has it)."""

    timeout: float | None
    sock: socket.socket | None

    def request(
        self, method: str, url: str, body: None = None, headers: dict[str, str] = ..., /
    ) -> None: ...

    def getresponse(self) -> Response: ...

    def close(self) -> None: ...


ConnectionFactory = Callable[[str, str, int, ssl.SSLContext | None], Connection]
"""``(scheme, host, port, tls_context)`` to a new, not yet connected connection; injected so
tests can fake the network. The context is ``None`` for plain HTTP."""


def default_connection(
    scheme: str, host: str, port: int, context: ssl.SSLContext | None
) -> Connection:
    """An :mod:`http.client` connection; it connects on its first request."""
    if scheme == "https":
        return http.client.HTTPSConnection(host, port, context=context)
    return http.client.HTTPConnection(host, port)


def tls_context(spec: HttpCheckSpec) -> ssl.SSLContext:
    """Verifying (the system's CAs, or ``ca_file`` alone) unless ``verify_tls`` is false.

    Checks with the same settings share one context: loading the CA store costs
    milliseconds and memory, and a context may be used from several threads.
    """
    return _tls_context(spec.ca_file, spec.verify_tls)


@functools.lru_cache(maxsize=64)
def _tls_context(ca_file: str | None, verify: bool) -> ssl.SSLContext:
    if ca_file is not None:
        return ssl.create_default_context(cafile=ca_file)
    if verify:
        return ssl.create_default_context()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class _OutOfTime(Exception):
    """The run's budget is spent (raised between steps, where no socket timeout applies)."""


class _NoResponse(Exception):
    """The connection failed before any response: the one failure worth another attempt."""


class HttpCheck:
    """Runs an :class:`HttpCheckSpec`; see the module docstring for the timing rules.

    A check is run by one caller at a time (it keeps one connection).
    """

    def __init__(
        self,
        spec: HttpCheckSpec,
        *,
        clock: Clock = monotonic,
        connection_factory: ConnectionFactory | None = None,
    ) -> None:
        self._spec = spec
        self._clock = clock
        self._factory = connection_factory or default_connection
        self._conn: Connection | None = None
        self._ranges = status_ranges(spec.expect_status)
        parts = urlsplit(spec.url)
        self._scheme = parts.scheme.lower()
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._scheme == "https" else 80)
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._context = tls_context(spec) if self._scheme == "https" else None
        self._headers = _request_headers(spec, parts.username, parts.password)

    @property
    def name(self) -> str:
        return f"http {self._spec.method} {self._spec.url}"

    @property
    def spec(self) -> HttpCheckSpec:
        return self._spec

    def run(self, timeout: float) -> CheckResult:
        return timed_run(self._clock, lambda start: self._run(start + timeout, timeout))

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _run(self, deadline: float, timeout: float) -> tuple[bool, str]:
        # A plain loop, not tenacity: a Retrying call costs 12 us, 13 % of a whole
        # kept-alive check, and this rule needs none of its policies.
        attempt = 0
        try:
            while True:
                attempt += 1
                try:
                    return self._attempt(deadline)
                except _NoResponse:
                    if attempt > self._spec.retries:
                        raise
                    if deadline - self._clock() < MIN_RETRY_BUDGET:
                        raise
        except _OutOfTime:
            return False, timeout_reason(timeout)
        except _NoResponse as exc:
            return False, describe_error(exc.__cause__ or exc, timeout)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return False, describe_error(exc, timeout)

    def _connection(self, remaining: float) -> tuple[Connection, bool]:
        """The kept connection (made if need be) with ``remaining`` as its timeout, and
        whether it still has to connect."""
        conn = self._conn
        if conn is None:
            conn = self._conn = self._factory(self._scheme, self._host, self._port, self._context)
        sock = conn.sock
        if sock is None:
            conn.timeout = remaining  # used by the connect
            return conn, True
        sock.settimeout(remaining)
        return conn, False

    def _attempt(self, deadline: float) -> tuple[bool, str]:
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise _OutOfTime
        conn, connecting = self._connection(remaining)
        try:
            conn.request(self._spec.method, self._target, None, self._headers)
            if connecting and conn.sock is not None:
                # the connect took its share; the answer gets what is left
                conn.sock.settimeout(max(deadline - self._clock(), 0.001))
            response = conn.getresponse()
        except (ConnectionError, http.client.RemoteDisconnected) as exc:
            # Refused, reset or closed before a status line: nothing was answered.
            self.close()
            raise _NoResponse from exc
        try:
            body, complete = self._read_body(response, deadline)
        except BaseException:
            self.close()
            raise
        if not complete:
            self.close()
        status = response.status
        if not any(low <= status <= high for low, high in self._ranges):
            return False, f"HTTP {status}"
        regex = self._spec.body_regex
        if regex is not None:
            text = body.decode(_charset(response.headers), errors="replace")
            if regex.search(text) is None:
                return False, one_line(f"body did not match /{regex.pattern}/")
        return True, f"HTTP {status}"

    def _read_body(self, response: Response, deadline: float) -> tuple[bytes, bool]:
        """Up to :data:`MAX_BODY` bytes, and whether that was all of it (reading all of it
        is what lets the connection be reused)."""
        body = bytearray()
        while True:
            chunk = response.read(_CHUNK)
            if not chunk:
                return bytes(body), True
            body += chunk
            if len(body) >= MAX_BODY:
                return bytes(body[:MAX_BODY]), False
            if self._clock() >= deadline:
                raise _OutOfTime


def _request_headers(spec: HttpCheckSpec, user: str | None, password: str | None) -> dict[str, str]:
    """The request's headers: ours, then credentials from the URL, then the spec's own
    (which win, case-insensitively). ``Host`` comes from the URL unless the spec sets it."""
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
    if user is not None:
        pair = f"{unquote(user)}:{unquote(password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    given = {key.lower() for key in spec.headers}
    headers = {k: v for k, v in headers.items() if k.lower() not in given}
    headers.update(spec.headers)
    return headers


def _charset(headers: Message) -> str:
    """The body's charset from ``Content-Type``; UTF-8 when absent or unknown."""
    charset = headers.get_content_charset() or "utf-8"
    try:
        "".encode(charset)
    except LookupError:
        return "utf-8"
    return charset


def describe_error(exc: BaseException, timeout: float) -> str:
    """A short reason for a failed request."""
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
        return timeout_reason(timeout)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return one_line(f"TLS certificate not trusted: {exc.verify_message or exc}")
    if isinstance(exc, ssl.SSLError):
        return one_line(f"TLS error: {exc.reason or exc}")
    if isinstance(exc, http.client.RemoteDisconnected):
        return "server closed the connection without a response"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, socket.gaierror):
        return "cannot resolve host"
    if isinstance(exc, http.client.IncompleteRead):
        return "connection broken while reading the body"
    if isinstance(exc, http.client.HTTPException):
        detail = one_line(str(exc), 120)
        name = type(exc).__name__
        return one_line(
            f"bad HTTP response: {name}: {detail}" if detail else f"bad HTTP response: {name}"
        )
    if isinstance(exc, OSError) and exc.strerror:
        return one_line(exc.strerror.lower())
    return one_line(f"request failed: {type(exc).__name__}: {exc}")
