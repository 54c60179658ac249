"""Prometheus metrics: what the daemon knows, in its own registry, served on demand.

:class:`Metrics` owns a private :class:`~prometheus_client.CollectorRegistry`
(never the process-global one, so tests and several instances do not collide)
and offers one method per thing the daemon observes. Values are pushed by the
main thread as they change; a scrape renders them at that moment.

Label values stay bounded: services come from the configuration, states from
the state machine, and a failed check's free-text reason is reduced to one of
:data:`REASONS` by :func:`classify_reason`.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from typing import TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.metrics import MetricWrapperBase

from announcer import __version__

_M = TypeVar("_M", bound=MetricWrapperBase)

HEALTH_STATES = ("INIT", "RISING", "UP", "FALLING", "DOWN")
ROUTE_STATES = ("WITHDRAWN", "ANNOUNCED", "DRAINING", "LOWERED", "UNKNOWN")
"""``UNKNOWN``: after a takeover, until the first decision asserts the wire."""
REASONS = (
    "timeout",
    "connection_refused",
    "connection_reset",
    "http_status",
    "body_mismatch",
    "dns",
    "command_exit",
    "file",
    "process",
    "hung",
    "other",
)
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Check durations from a local file stat (~1 ms) to the longest sensible timeout (10 s)."""
EVENT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
"""Seconds from an event to its command written: well under a millisecond on an idle loop
(docs/benchmarks.md, P1), so the buckets reach further down than the checks' durations."""

MAX_SOURCE = 32
"""Drain sources longer than this are cut (they are names like ``maintenance``, ``cli``)."""

# Matched at the start of the reason, so with several failed checks ("a; b") the
# first one decides. Wordings are those of the checks package and the daemon.
_HUNG = re.compile(r"[^;]*\(check hung\)", re.IGNORECASE)
_TIMEOUT = re.compile(r"(timeout\b|timed out|connection timed out)", re.IGNORECASE)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), label)
    for pattern, label in (
        (r"connection refused|connection failed: [^;]*refused", "connection_refused"),
        (
            r"connection reset|connection closed|connection broken|connection aborted"
            r"|server closed the connection|broken pipe",
            "connection_reset",
        ),
        (r"http \d{3}\b", "http_status"),
        (
            r"body did not match|reply [^;]* does not start with|[^;]* not among the answers",
            "body_mismatch",
        ),
        (
            r"cannot resolve host|bad dns response|no \S+ records in the answer"
            r"|(NXDOMAIN|SERVFAIL|REFUSED|FORMERR|NOTIMP|YXDOMAIN|YXRRSET|NXRRSET|NOTAUTH"
            r"|NOTZONE|BADVERS)\s*($|;)",
            "dns",
        ),
        (r"exit -?\d+\b|killed by |cannot run: ", "command_exit"),
        (r"(missing|dangling symlink|present|absent): |cannot check ", "file"),
    )
)


def classify_reason(reason: str, kind: str | None = None) -> str:
    """One of :data:`REASONS` for a failed check's ``reason`` text.

    ``kind`` is the check's type (``"http"``, ``"tcp"``, ``"dns"``,
    ``"command"``, ``"file"``, ``"process"``) when known: a command's reason is its
    own first line of output, so any failure of a command check that is not a timeout
    or a hang is ``command_exit``, any of a file check's is ``file`` and any of a
    process check's ``process``.
    """
    text = reason.strip()
    if _HUNG.match(text):
        return "hung"
    if _TIMEOUT.match(text):
        return "timeout"
    if kind == "command":
        return "command_exit"
    if kind in ("file", "process"):
        return kind
    for pattern, label in _PATTERNS:
        if pattern.match(text):
            return label
    return "other"


class MetricsServer:
    """The running HTTP endpoint; :meth:`close` stops it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self._closed = False
        address = server.server_address
        self.host: str = str(address[0])
        self.port: int = int(address[1])

    def close(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """No access log: stderr is the daemon's event log."""


class Metrics:
    """Every metric the daemon exports; see ``docs/metrics.md`` for the list.

    Thread-safe: prometheus_client's values are, and the bookkeeping of which
    series belong to which service is under a lock.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, version: str = __version__
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self._health = Gauge(
            "announcer_service_health",
            "Health state of the service (1 for the current state, 0 for the others).",
            ["service", "state"],
            registry=r,
        )
        self._route = Gauge(
            "announcer_service_route",
            "Route state of the service (1 for the current state, 0 for the others).",
            ["service", "state"],
            registry=r,
        )
        self._duration = Histogram(
            "announcer_check_duration_seconds",
            "Duration of health check runs.",
            ["service"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._failures = Counter(
            "announcer_check_failures_total",
            "Failed health check runs, by bucketed reason.",
            ["service", "reason"],
            registry=r,
        )
        self._transitions = Counter(
            "announcer_route_transitions_total",
            "Route state changes.",
            ["service", "from", "to"],
            registry=r,
        )
        self._acks = Counter(
            "announcer_exabgp_acks_total",
            "Acknowledgements ExaBGP sent for our commands.",
            ["result"],
            registry=r,
        )
        self._commands = Counter(
            "announcer_exabgp_commands_total", "Commands written to ExaBGP.", registry=r
        )
        self._drains = Counter(
            "announcer_drains_total",
            "Drains started, by what asked for them.",
            ["service", "source"],
            registry=r,
        )
        self._connections = Gauge(
            "announcer_drain_connections",
            "Open TCP connections on the service's prefixes (absent when unknown).",
            ["service"],
            registry=r,
        )
        self._dampened = Gauge(
            "announcer_dampened",
            "1 while the service's announcements are held back by flap dampening.",
            ["service"],
            registry=r,
        )
        self._held = Gauge(
            "announcer_prefixes_held",
            "Prefixes the address guard keeps off the wire: reason absent (no local "
            "address or local route) or returning (back, waiting for a passing check).",
            ["service", "reason"],
            registry=r,
        )
        self._state_saved = Gauge(
            "announcer_state_saved",
            "1 while the state file (drains, the wire) is written successfully; 0 while "
            "writes fail, when a drain would be forgotten by a restarted controller.",
            registry=r,
        )
        self._state_saved.set(1)
        self._config_ok = Gauge(
            "announcer_config_ok",
            "0 while the config file does not load (the last reload failed, or the process "
            "started on the last good config); 1 when it runs what the file says.",
            registry=r,
        )
        self._hooks = Counter(
            "announcer_hook_runs_total",
            "Hook commands run after route changes, by result (ok, failed, timeout).",
            ["service", "result"],
            registry=r,
        )
        self._events = Counter(
            "announcer_check_events_total",
            "Failures immediate checks reported as events (a watched process died), by "
            "what they did: down (the service went DOWN at once) or none.",
            ["service", "action"],
            registry=r,
        )
        self._event_written = Histogram(
            "announcer_event_to_write_seconds",
            "Seconds from an event that changed the route to its command written to ExaBGP.",
            ["service"],
            buckets=EVENT_BUCKETS,
            registry=r,
        )
        self._info = Info("announcer", "Build information.", registry=r)
        self._info.info({"version": version})
        for result in ("done", "error"):
            self._acks.labels(result)
        self._last_acks = {"done": 0, "error": 0}
        self._last_sent = 0
        self._lock = threading.Lock()
        self._series: dict[str, set[tuple[MetricWrapperBase, tuple[str, ...]]]] = {}

    # ------------------------------------------------------------ bookkeeping

    def _child(self, metric: _M, service: str, *rest: str) -> _M:
        labels = (service, *rest)
        with self._lock:
            known = self._series.get(service)
            if known is None:
                known = self._series[service] = set()
                self._init_service(service, known)
            known.add((metric, labels))
        return metric.labels(*labels)

    def _init_service(
        self, service: str, known: set[tuple[MetricWrapperBase, tuple[str, ...]]]
    ) -> None:
        """Create a new service's always-present series at 0, so rate() works from the start."""
        for reason in REASONS:
            self._failures.labels(service, reason)
            known.add((self._failures, (service, reason)))
        self._duration.labels(service)
        known.add((self._duration, (service,)))
        self._dampened.labels(service).set(0)
        known.add((self._dampened, (service,)))

    # ------------------------------------------------------------ observations

    def observe_check(
        self, service: str, ok: bool, reason: str, duration: float, kind: str | None = None
    ) -> None:
        """One check run: its duration, and if it failed, its reason's bucket."""
        child = self._child(self._duration, service)
        child.observe(max(0.0, duration))
        if not ok:
            failed = self._child(self._failures, service, classify_reason(reason, kind))
            failed.inc()

    def set_state(self, service: str, health: str, route: str) -> None:
        """The service's current health and route state (``Health.X.value``, ``Route.Y.value``)."""
        self._one_hot(self._health, service, HEALTH_STATES, health)
        self._one_hot(self._route, service, ROUTE_STATES, route)

    def _one_hot(self, gauge: Gauge, service: str, states: Iterable[str], current: str) -> None:
        for state in states:
            child = self._child(gauge, service, state)
            child.set(1 if state == current else 0)

    def transition(self, service: str, frm: str, to: str) -> None:
        """A route state change."""
        child = self._child(self._transitions, service, frm, to)
        child.inc()

    def acks(self, done: int, error: int) -> None:
        """The writer's running totals of ``done`` and ``error`` acks (not deltas)."""
        with self._lock:
            for result, total in (("done", done), ("error", error)):
                self._acks.labels(result).inc(_delta(self._last_acks[result], total))
                self._last_acks[result] = total

    def commands(self, sent: int) -> None:
        """The writer's running total of commands sent (not a delta)."""
        with self._lock:
            self._commands.inc(_delta(self._last_sent, sent))
            self._last_sent = sent

    def drain(self, service: str, source: str) -> None:
        """A drain started (``source``: what asked, e.g. ``maintenance``)."""
        child = self._child(self._drains, service, source[:MAX_SOURCE])
        child.inc()

    def connections(self, service: str, n: int | None) -> None:
        """Connections still on the service's prefixes; None (unknown) removes the series."""
        if n is None:
            with self._lock:
                self._series.get(service, set()).discard((self._connections, (service,)))
                _remove(self._connections, (service,))
            return
        child = self._child(self._connections, service)
        child.set(n)

    def dampened(self, service: str, on: bool) -> None:
        """Whether flap dampening holds the service's announcements back."""
        child = self._child(self._dampened, service)
        child.set(1 if on else 0)

    def held(self, service: str, absent: int, returning: int) -> None:
        self._child(self._held, service, "absent").set(absent)
        self._child(self._held, service, "returning").set(returning)

    def check_event(self, service: str, action: str) -> None:
        self._child(self._events, service, action).inc()

    def event_written(self, service: str, delay: float) -> None:
        self._child(self._event_written, service).observe(delay)

    def hook(self, service: str, result: str) -> None:
        """A hook command finished: ``ok``, ``failed`` or ``timeout`` (killed)."""
        child = self._child(self._hooks, service, result)
        child.inc()

    def state_saved(self, ok: bool) -> None:
        """Whether the last write of the state file succeeded."""
        self._state_saved.set(1 if ok else 0)

    def config_ok(self, ok: bool) -> None:
        """Whether the config file loaded (at start, or at the last reload)."""
        self._config_ok.set(1 if ok else 0)

    def remove_service(self, service: str) -> None:
        """Forget every series of ``service`` (it left the configuration on a reload)."""
        with self._lock:
            for metric, labels in self._series.pop(service, set()):
                _remove(metric, labels)

    # ------------------------------------------------------------ exposition

    def render(self) -> bytes:
        """The text exposition format (what a scrape returns)."""
        return generate_latest(self.registry)

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> MetricsServer:
        """Serve ``/metrics`` (any path) over HTTP on ``host:port`` from a daemon thread.

        ``port`` 0 picks a free port (see ``.port``). Raises OSError if the address
        cannot be bound; the caller decides whether that is fatal.
        """
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]

        class Server(ThreadingMixIn, WSGIServer):
            daemon_threads = True
            address_family = family

        server = make_server(
            str(address[0]),
            int(address[1]),
            make_wsgi_app(self.registry),
            server_class=Server,
            handler_class=_QuietHandler,
        )
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="metrics", daemon=True
        )
        thread.start()
        return MetricsServer(server, thread)


def _delta(last: int, total: int) -> int:
    """How much a running total grew; a total that went down restarted from 0."""
    return total - last if total >= last else total


def _remove(metric: MetricWrapperBase, labels: tuple[str, ...]) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
