"""The HTTP(S) check: one request on a kept-alive session, judged by status and body.

Each check keeps its own :class:`requests.Session`, so consecutive runs reuse the
same TCP (and TLS) connection, as a load balancer's health checker would. The
session ignores the environment (no proxies, no ``.netrc``, no CA bundle
variables): a health check of a local service must not depend on how the
controller was started.

The whole run, including the retry, stays inside the ``timeout`` budget: each
attempt gets what is left of it as its connect and read timeouts, and the body
is read in chunks with the deadline checked between them. One read can still
wait for up to what was left when the request started, so a server that trickles
its body a byte at a time can stretch a run past the budget, but never unboundedly.

The retry (``retries``, default 1) is only for connection-level failures that
happen before any response, such as a refused connection or a kept-alive
connection the server closed while idle. A timeout, a TLS failure, a bad status
or a wrong body is never retried: a retry must not hide a failing service.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Callable, Iterator

import requests
import urllib3.exceptions
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_none

from checks._text import first_line, one_line, timeout_reason
from checks.base import CheckResult, Clock, monotonic, timed_run
from checks.specs import HttpCheckSpec, status_ranges

__all__ = ["HttpCheck", "SessionFactory"]

SessionFactory = Callable[[], requests.Session]
"""Makes the session a check keeps; injected so tests can fake the network."""

MAX_BODY = 1 << 20
"""Bytes of body read at most; ``body_regex`` sees no further, and a longer body costs the
kept-alive connection (it is closed rather than drained)."""

MIN_RETRY_BUDGET = 0.05
"""Seconds that must be left for a retry to be worth starting: less would turn a clear
"connection refused" into a meaningless timeout."""

_CHUNK = 16 * 1024


class _OutOfTime(Exception):
    """The run's budget is spent (raised between steps, where no library timeout applies)."""


def default_session() -> requests.Session:
    """A session that ignores proxy, ``.netrc`` and CA bundle settings from the environment."""
    session = requests.Session()
    session.trust_env = False
    return session


class HttpCheck:
    """Runs an :class:`HttpCheckSpec`; see the module docstring for the timing rules.

    A check is run by one caller at a time (it keeps one session).
    """

    def __init__(
        self,
        spec: HttpCheckSpec,
        *,
        clock: Clock = monotonic,
        session_factory: SessionFactory | None = None,
    ) -> None:
        self._spec = spec
        self._clock = clock
        self._session_factory = session_factory or default_session
        self._session: requests.Session | None = None
        self._ranges = status_ranges(spec.expect_status)
        self._verify: bool | str = spec.ca_file if spec.ca_file is not None else spec.verify_tls

    @property
    def name(self) -> str:
        return f"http {self._spec.method} {self._spec.url}"

    @property
    def spec(self) -> HttpCheckSpec:
        return self._spec

    def run(self, timeout: float) -> CheckResult:
        return timed_run(self._clock, lambda start: self._run(start + timeout, timeout))

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def _run(self, deadline: float, timeout: float) -> tuple[bool, str]:
        attempts = Retrying(
            stop=self._stop_rule(deadline),
            retry=retry_if_exception(_is_connection_level),
            wait=wait_none(),
            reraise=True,
        )
        try:
            return attempts(self._attempt, deadline)
        except _OutOfTime:
            return False, timeout_reason(timeout)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            return False, describe_error(exc, timeout)

    def _stop_rule(self, deadline: float) -> Callable[[RetryCallState], bool]:
        def stop(state: RetryCallState) -> bool:
            if state.attempt_number > self._spec.retries:
                return True
            return deadline - self._clock() < MIN_RETRY_BUDGET

        return stop

    def _attempt(self, deadline: float) -> tuple[bool, str]:
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise _OutOfTime
        if self._session is None:
            self._session = self._session_factory()
        spec = self._spec
        with self._session.request(
            spec.method,
            spec.url,
            headers=spec.headers,
            timeout=(remaining, remaining),
            verify=self._verify,
            allow_redirects=False,
            stream=True,
        ) as response:
            body = self._read_body(response, deadline)
            status = response.status_code
            if not any(low <= status <= high for low, high in self._ranges):
                return False, f"HTTP {status}"
            if spec.body_regex is not None:
                text = body.decode(_encoding(response), errors="replace")
                if spec.body_regex.search(text) is None:
                    return False, one_line(f"body did not match /{spec.body_regex.pattern}/")
            return True, f"HTTP {status}"

    def _read_body(self, response: requests.Response, deadline: float) -> bytes:
        """Up to :data:`MAX_BODY` bytes of body; reading it all lets the connection be reused."""
        body = bytearray()
        for chunk in response.iter_content(chunk_size=_CHUNK):
            body += chunk
            if len(body) >= MAX_BODY:
                break
            if self._clock() >= deadline:
                raise _OutOfTime
        return bytes(body[:MAX_BODY])


def _encoding(response: requests.Response) -> str:
    encoding = response.encoding or "utf-8"
    try:
        "".encode(encoding)
    except LookupError:
        return "utf-8"
    return encoding


def _is_connection_level(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure to talk at all, and so worth one more try."""
    if not isinstance(exc, requests.ConnectionError):
        return False
    if isinstance(exc, requests.Timeout | requests.exceptions.SSLError):
        return False
    return not any(_is_timeout(link) for link in _links(exc))


def _links(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps, through causes, contexts, args and ``reason``."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        nested: list[object] = [current.__cause__, current.__context__, *current.args]
        nested.append(getattr(current, "reason", None))
        todo.extend(item for item in nested if isinstance(item, BaseException))


def _is_timeout(exc: BaseException) -> bool:
    # urllib3 2 makes NewConnectionError (refused, unreachable...) a ConnectTimeoutError
    # for compatibility; it is not a timeout.
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return False
    return isinstance(exc, TimeoutError | urllib3.exceptions.TimeoutError | requests.Timeout)


def describe_error(exc: BaseException, timeout: float) -> str:
    """A short reason for a failed request."""
    links = list(_links(exc))
    if any(_is_timeout(link) for link in links):
        return timeout_reason(timeout)
    for link in links:
        if isinstance(link, ssl.SSLCertVerificationError):
            return one_line(f"TLS certificate not trusted: {link.verify_message or link}")
    if any(isinstance(link, ssl.SSLError | requests.exceptions.SSLError) for link in links):
        for link in links:
            if isinstance(link, ssl.SSLError):
                return one_line(f"TLS error: {link.reason or link}")
        return "TLS error"
    for link in links:
        if isinstance(link, ConnectionRefusedError):
            return "connection refused"
        if isinstance(link, http.client.RemoteDisconnected):
            return "server closed the connection without a response"
        if isinstance(link, ConnectionResetError):
            return "connection reset"
        if isinstance(link, socket.gaierror):
            return "cannot resolve host"
    for link in links:
        if isinstance(link, OSError) and link.strerror:
            return one_line(link.strerror.lower())
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection broken while reading the body"
    if isinstance(exc, requests.ConnectionError):
        return one_line(f"connection failed: {first_line(str(exc))}")
    return one_line(f"request failed: {type(exc).__name__}: {first_line(str(exc))}")
