"""The HTTP(S) check: one request on a kept-alive connection, judged by status and body.

Each check keeps one connection, so consecutive runs reuse the same TCP (and
TLS) connection, as a load balancer's health checker would. The check is a
coroutine on an :mod:`asyncio` loop (the daemon runs every HTTP, TCP and DNS
check on one loop thread, :mod:`announcer.runner`); :mod:`h11` turns the
request into bytes and the bytes back into a response, so no HTTP is parsed
here. Nothing comes from the environment (no proxies, no ``.netrc``, no CA
bundle variables): a health check of a local service must not depend on how
the controller was started.

Why not ``requests`` or :mod:`http.client`: at scale the HTTP check is nearly
all of the controller's CPU; both need a thread blocked on each socket, and
switching between a thousand such threads cost more than the checks
themselves (docs/benchmarks.md, P3). A health check needs none of what
``requests`` adds: no redirects (a 3xx is judged like any status), no cookies,
no proxies, no content decoding.

The whole run, including the retry, stays inside the ``timeout`` budget: each
attempt runs under what is left of it (connect, TLS handshake, request and the
whole response), so a server that trickles its body a byte at a time is cut
off at the deadline too.

The retry (``retries``, default 1) is only for connection-level failures that
happen before any response, such as a refused connection or a kept-alive
connection the server closed while idle. A timeout, a TLS failure, a bad status
or a wrong body is never retried: a retry must not hide a failing service.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import socket
import ssl
from collections.abc import Awaitable, Callable
from email.message import Message
from typing import Protocol
from urllib.parse import unquote, urlsplit

import h11

from announcer.checks._text import one_line, timeout_reason, unexpected
from announcer.checks.aio import open_socket, run_blocking, timed_arun
from announcer.checks.base import CheckResult, Clock, monotonic
from announcer.checks.http_protocol import (
    MAX_BODY,
    BodyCut,
    HttpConnection,
    NoResponse,
    ResponseReader,
    ServerClosed,
    Whole,
    connect,
)
from announcer.checks.specs import HttpCheckSpec, status_ranges

__all__ = [
    "MAX_BODY",
    "Connection",
    "ConnectionFactory",
    "HttpCheck",
    "ServerClosed",
    "Stream",
    "default_connection",
]

MIN_RETRY_BUDGET = 0.05
"""Seconds that must be left for a retry to be worth starting: less would turn a clear
"connection refused" into a meaningless timeout."""

USER_AGENT = "announcer-healthcheck"

_END = h11.EndOfMessage()  # immutable: one for every request


class Stream(Protocol):
    """A connected byte stream to read a response from, as a test's fake connection is (the
    real one, :class:`HttpConnection`, hands the bytes to the response as they arrive)."""

    async def read(self) -> bytes:
        """Some bytes, ``b""`` once the server has closed its side."""
        ...

    def write(self, data: bytes) -> None: ...

    def alive(self) -> bool:
        """Still usable for another request from the running loop."""
        ...

    def close(self) -> None:
        """Drop the connection; callable from any thread, twice too."""
        ...


Connection = Stream | HttpConnection

ConnectionFactory = Callable[[str, str, int, ssl.SSLContext | None], Awaitable[Connection]]
"""``(scheme, host, port, tls_context)`` to a connection; injected so tests can fake
the network. The context is ``None`` for plain HTTP."""


async def default_connection(
    scheme: str, host: str, port: int, context: ssl.SSLContext | None
) -> Connection:
    """A TCP connection, with TLS (verification and SNI per ``context``) for https."""
    return await connect(await open_socket(host, port), host, context)


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
        self._stream: Connection | None = None
        # The run begun by start(), answered by _answered().
        self._on_done: Callable[[CheckResult], None] | None = None
        self._begun = self._limit = 0.0
        self._retry: asyncio.Task[CheckResult] | None = None
        self._http = h11.Connection(h11.CLIENT)
        self._accepted = _accepted(status_ranges(spec.expect_status))
        parts = urlsplit(spec.url)
        self._scheme = parts.scheme.lower()
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._scheme == "https" else 80)
        self._context = tls_context(spec) if self._scheme == "https" else None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = _request_headers(spec, parts.username, parts.password)
        if not any(key.lower() == "host" for key in headers):
            # What http.client sends: the port only when it is not the scheme's own.
            host = f"[{self._host}]" if ":" in self._host else self._host
            default = 443 if self._scheme == "https" else 80
            headers = {"Host": host if self._port == default else f"{host}:{self._port}"} | headers
        self._request = h11.Request(
            method=spec.method, target=target, headers=list(headers.items())
        )
        self._sent = self._plain_request()

    @property
    def name(self) -> str:
        return f"http {self._spec.method} {self._spec.url}"

    def run(self, timeout: float) -> CheckResult:
        return run_blocking(lambda: self.arun(timeout))

    async def arun(self, timeout: float) -> CheckResult:
        return await self._timed(timeout, None)

    def start(self, timeout: float, on_done: Callable[[CheckResult], None]) -> bool:
        """Begin a run on the running loop when the kept connection can carry it at once
        (nearly every run): callbacks from the connection then call ``on_done``, with no
        Task or coroutine. False, with nothing begun, when the run needs :meth:`arun`
        (a connection to make). Never raises (but the loop may stop before ``on_done``)."""
        stream = self._stream
        if not (
            isinstance(stream, HttpConnection)
            and stream.alive()
            and self._http.our_state is h11.IDLE
        ):
            return False
        self._begun, self._limit, self._on_done = self._clock(), timeout, on_done
        stream.begin(*self._prepare(), timeout, self._answered)
        return True

    def _answered(self, whole: Whole | None, error: BaseException | None) -> None:
        """How a run begun by :meth:`start` ended: judged here, or retried on a task."""
        on_done, begun, timeout = self._on_done, self._begun, self._limit
        self._on_done = None
        if on_done is None:
            return
        ok, reason = False, ""
        if whole is None:
            self.close()
            error = error or TimeoutError()
            if isinstance(error, NoResponse) and self._retry_fits(1, begun + timeout):
                # Kept here: the loop holds its tasks only weakly.
                self._retry = asyncio.get_running_loop().create_task(self._timed(timeout, begun))
                self._retry.add_done_callback(
                    lambda task: task.cancelled() or on_done(task.result())
                )
                return
            cause = (error.__cause__ or error) if isinstance(error, NoResponse) else error
            ok, reason = False, describe_error(cause, timeout) or unexpected(cause)
        else:
            response, body, reusable = whole
            if not reusable:
                self.close()
            try:
                ok, reason = self._judge(response, body)
            except Exception as exc:  # noqa: BLE001 - a check never raises
                ok, reason = False, unexpected(exc)
        on_done(CheckResult(ok, reason, max(0.0, self._clock() - begun)))

    async def _timed(self, timeout: float, begun: float | None) -> CheckResult:
        """A run timed from ``begun`` (now if None); one attempt already made if given."""
        return await timed_arun(
            self._clock,
            lambda start: self._run(start + timeout, timeout, 0 if begun is None else 1),
            lambda exc: describe_error(exc, timeout),
            begun,
        )

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def _retry_fits(self, attempt: int, deadline: float) -> bool:
        """Another attempt after ``attempt`` failed before any response is allowed and has time."""
        return attempt <= self._spec.retries and deadline - self._clock() >= MIN_RETRY_BUDGET

    def _request_bytes(self, http: h11.Connection) -> bytes:
        return (http.send(self._request) or b"") + (http.send(_END) or b"")

    def _plain_request(self) -> bytes | None:
        """The request's bytes when reading its response needs nothing h11 learns from
        sending it: not HEAD or CONNECT (no body framing of their own), no Upgrade, no
        Expect, no Connection: close. Sending through h11 is then skipped (its state
        machine cost about a tenth of the loop's time per check)."""
        if self._request.method in (b"HEAD", b"CONNECT"):
            return None
        http = h11.Connection(h11.CLIENT)
        data = self._request_bytes(http)
        plain = (http.our_state, http.their_state) == (h11.DONE, h11.SEND_RESPONSE)
        return data if plain and not http.client_is_waiting_for_100_continue else None

    def _sent_request(self) -> h11.Connection:
        """A connection that has sent the request: what a response it must know it for needs."""
        http = h11.Connection(h11.CLIENT)
        self._request_bytes(http)
        return http

    def _prepare(self) -> tuple[bytes, ResponseReader]:
        """The request's bytes and the reader of its response."""
        if self._sent is not None:
            return self._sent, ResponseReader(h11.Connection(h11.CLIENT), self._sent_request)
        return self._request_bytes(self._http), ResponseReader(self._http)

    async def _run(self, deadline: float, timeout: float, attempt: int) -> tuple[bool, str]:
        while True:
            attempt += 1
            remaining = deadline - self._clock()
            if remaining <= 0:
                return False, timeout_reason(timeout)
            try:
                return await self._attempt(deadline, remaining)
            except TimeoutError:
                return False, timeout_reason(timeout)
            except NoResponse as exc:
                if not self._retry_fits(attempt, deadline):
                    cause = exc.__cause__ or exc
                    return False, describe_error(cause, timeout) or unexpected(cause)

    async def _attempt(self, deadline: float, remaining: float) -> tuple[bool, str]:
        """One request within ``remaining`` seconds (the rest of the run's budget)."""
        stream = self._stream
        if stream is None or not stream.alive() or self._http.our_state is not h11.IDLE:
            # None yet, closed by the server while idle, or kept by another loop: a new one.
            self.close()
            try:
                async with asyncio.timeout(remaining):
                    stream = await self._factory(
                        self._scheme, self._host, self._port, self._context
                    )
            except ConnectionError as exc:
                raise NoResponse from exc
            self._stream, self._http = stream, h11.Connection(h11.CLIENT)
            remaining = deadline - self._clock()
        try:
            request, reader = self._prepare()
            if isinstance(stream, HttpConnection):
                response, body, reusable = await stream.exchange(request, reader, remaining)
            else:
                async with asyncio.timeout(remaining):
                    response, body, reusable = await _read_from(stream, request, reader)
        except BaseException:
            self.close()  # half a request or response: the connection cannot be reused
            raise
        if not reusable:
            self.close()
        return self._judge(response, body)

    def _judge(self, response: h11.Response, body: bytes) -> tuple[bool, str]:
        status = response.status_code
        if status not in self._accepted:
            return False, f"HTTP {status}"
        regex = self._spec.body_regex
        if regex is not None:
            content_type = next(
                (value for name, value in response.headers if name == b"content-type"), b""
            )
            text = body.decode(_charset(content_type.decode("latin-1")), errors="replace")
            if regex.search(text) is None:
                return False, one_line(f"body did not match /{regex.pattern}/")
        return True, f"HTTP {status}"


async def _read_from(stream: Stream, request: bytes, reader: ResponseReader) -> Whole:
    """Send ``request`` on ``stream`` and read until ``reader`` has the whole response."""
    try:
        stream.write(request)
    except ConnectionError as exc:
        raise NoResponse from exc
    while True:
        try:
            data = await stream.read()
        except ConnectionError as exc:
            if not reader.started:
                raise NoResponse from exc
            raise
        whole = reader.feed(data)
        if whole is not None:
            return whole


@functools.lru_cache(maxsize=64)
def _accepted(ranges: tuple[tuple[int, int], ...]) -> frozenset[int]:
    """The status codes ``ranges`` accept, as a set shared by the checks that expect the same
    (a lookup per run instead of a walk over the ranges)."""
    return frozenset(code for low, high in ranges for code in range(low, high + 1))


def _request_headers(spec: HttpCheckSpec, user: str | None, password: str | None) -> dict[str, str]:
    """The request's headers: ours, then credentials from the URL, then the spec's own
    (which win, case-insensitively). ``Host`` comes from the URL unless the spec sets it."""
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*", "Accept-Encoding": "identity"}
    if user is not None:
        pair = f"{unquote(user)}:{unquote(password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    given = {key.lower() for key in spec.headers}
    headers = {k: v for k, v in headers.items() if k.lower() not in given}
    headers.update(spec.headers)
    return headers


def _charset(content_type: str) -> str:
    """The body's charset from ``Content-Type``; UTF-8 when absent or unknown."""
    message = Message()
    message["Content-Type"] = content_type
    charset = message.get_content_charset() or "utf-8"
    try:
        "".encode(charset)
    except LookupError:
        return "utf-8"
    return charset


def describe_error(exc: BaseException, timeout: float) -> str | None:
    """A short reason for a failed request; None for an error no request should raise."""
    if isinstance(exc, TimeoutError):
        return timeout_reason(timeout)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return one_line(f"TLS certificate not trusted: {exc.verify_message or exc}")
    if isinstance(exc, ssl.SSLError):
        return one_line(f"TLS error: {exc.reason or exc}")
    if isinstance(exc, ServerClosed):
        return "server closed the connection without a response"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, socket.gaierror):
        return "cannot resolve host"
    if isinstance(exc, BodyCut):
        return "connection broken while reading the body"
    if isinstance(exc, h11.RemoteProtocolError):
        detail = one_line(str(exc), 120)
        name = type(exc).__name__
        return one_line(
            f"bad HTTP response: {name}: {detail}" if detail else f"bad HTTP response: {name}"
        )
    if isinstance(exc, OSError) and exc.strerror:
        return one_line(exc.strerror.lower())
    if isinstance(exc, OSError):
        return one_line(f"request failed: {type(exc).__name__}: {exc}")
    return None  # a bug, not the network: named by type (unexpected ...)
