"""What both ends of the control socket share: the version, the error a refusal raises,
the one line reader, the shape of a status answer, and the CLI's exit statuses.

Kept apart from :mod:`announcer.control` (the commands) and
:mod:`announcer.control_server` (the server) so the CLI's client side imports
only this: an operator's ``announcer status`` should not pay for the daemon's
imports (docs/benchmarks.md, P5). Standard library only, and light at that.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Final, TypedDict

from announcer.attributes import AttributesJSON
from announcer.errors import ControlError

__all__ = [
    "ERROR_CODES",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_STATUS_HELP",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "PROTOCOL_VERSION",
    "Attributes",
    "ChangeResult",
    "ChangedService",
    "ControlRefused",
    "DaemonStatus",
    "ExabgpStatus",
    "LineReader",
    "LineTooLong",
    "ReloadResult",
    "ServiceStatus",
    "encode",
]

PROTOCOL_VERSION: Final = 1
ERROR_CODES: Final = frozenset(
    {
        "bad_request",
        "permission_denied",
        "unknown_service",
        "refused",
        "busy",
        "internal",
        "unsupported_version",
    }
)

# ---------------------------------------------------------------- exit statuses

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_STATUS_HELP: Final = """\
exit status:
  0  success
  1  refused or failed (the message says why)
  2  usage or configuration error (the message names file, service and field)
  3  the daemon is not reachable (not running, wrong --socket, or no permission)
"""
"""The exit statuses of every ``announcer`` command, for the ends of their ``--help``."""


class ControlRefused(ControlError):
    """An error reply: ``kind`` is the protocol's error code (``code`` the CLI exit status).

    A handler raises it to answer with that code, e.g.
    ``ControlRefused("unknown service 'x'", "unknown_service")``; the client
    raises it for every error reply it receives.
    """

    def __init__(self, message: str, kind: str = "refused") -> None:
        super().__init__(message, code=EXIT_FAILED)
        self.kind = kind


# ---------------------------------------------------------------- lines


def encode(message: Mapping[str, Any], *, default: Callable[[Any], Any] | None = str) -> bytes:
    """One request or reply line: compact JSON, ASCII only, newline-terminated.

    ``default`` turns what JSON cannot hold into text (a reply's paths); None raises
    TypeError instead (a request is refused before it is sent).
    """
    return json.dumps(message, separators=(",", ":"), default=default).encode() + b"\n"


class LineTooLong(Exception):
    """A line, or what has arrived of one, is longer than the reader's limit."""


class LineReader:
    """Bytes in, lines out: the one line reader of both ends of the socket.

    :meth:`feed` what was received (``b""`` for the end of the stream); :meth:`line`
    gives the next complete line without its newline, or None. Past ``limit`` bytes
    it raises :class:`LineTooLong`. At the end of the stream what is left is a last
    line (a client that half-closed after a request without a newline).
    """

    __slots__ = ("_buf", "eof", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()
        self.eof = False

    def __len__(self) -> int:
        """Bytes received and not yet taken as a line."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> None:
        if chunk:
            self._buf += chunk
        else:
            self.eof = True

    def clear(self) -> None:
        self._buf.clear()

    def line(self) -> bytes | None:
        buf = self._buf
        nl = buf.find(b"\n")
        if nl < 0 and len(buf) > self.limit:
            raise LineTooLong
        if nl < 0 and not (self.eof and buf):
            return None
        end = len(buf) if nl < 0 else nl
        line = bytes(buf[:end])
        del buf[: end + 1]
        if len(line) > self.limit:
            raise LineTooLong
        return line


# ---------------------------------------------------------------- answers


Attributes = AttributesJSON
"""The BGP attributes a route is on the wire with (defined in :mod:`announcer.attributes`)."""


class ServiceStatus(TypedDict, total=False):
    """One service in a status answer: what ``Daemon.snapshot()`` gives per service.

    ``total=False``: a daemon of another version may add or lack keys, and a client
    renders what is there.
    """

    health: str
    route: str
    prefixes: list[str]
    wire_prefixes: list[str]
    attributes: Attributes | None
    drained: bool
    drain_sources: list[str]
    drain_reason: str
    drain_left: float | None
    health_for: float
    route_for: float
    last_ok: bool | None
    last_reason: str
    last_duration: float
    checks_run: int
    check_failures: int
    transitions: int
    retiring: bool
    connections: int | None
    dampened_for: float | None
    address_guard: bool
    held: dict[str, str]
    """Prefixes the address guard keeps off the wire, and why."""
    fleet_guard: str
    """Only with a [fleet], while the guard holds or is asked: e.g. "held by the fleet
    guard: 1 announcing, min 2"."""
    fleet_slot: str
    """Only with a [fleet], while a drain waits for a drain slot: who holds them."""
    drain_waiting: bool
    """Only while a drain asked for has not begun (``drained`` is still false): it waits
    for a drain slot, or with forward_connections for the peers to forward."""
    forward_connections: bool
    """Only with forward_connections (docs/drain.md): ``drain --wait`` then also waits
    for the connections to end."""
    forwarding: str
    """Only with forward_connections, while it does something: where this node passes a
    draining peer's packets, that a drain waits for the peers, or what is not set up."""
    last_event: EventStatus
    """Only once an ``immediate`` check reported an event (the process check)."""


class EventStatus(TypedDict, total=False):
    """The last event of a service's ``immediate`` checks."""

    check: str
    reason: str
    ago: float
    down: bool
    """It took the service DOWN at once (else the service's ``require`` still held)."""
    route: str
    """The route change it set off (``ANNOUNCED -> WITHDRAWN``), "" for none."""
    written: float | None
    """Seconds from the event to that change's command written to ExaBGP."""


class ChangedService(ServiceStatus, total=False):
    """A service in a drain or undrain answer: its status after the change, and whether
    the request changed anything."""

    changed: bool


class ExabgpStatus(TypedDict, total=False):
    sent: int
    done: int
    error: int
    pending: int
    last_error: str | None


class DaemonStatus(TypedDict, total=False):
    """The answer to ``status``: ``Daemon.snapshot()``."""

    uptime: float
    neighbors: dict[str, str]
    exabgp: ExabgpStatus
    config_error: str | None
    state_error: str | None
    reload_note: str | None
    services: dict[str, ServiceStatus]


class ChangeResult(TypedDict, total=False):
    """The answer to ``drain`` and ``undrain``; ``state_error`` (why the change could not
    be saved) is missing from daemons older than it."""

    services: dict[str, ChangedService]
    state_error: str | None


class ReloadResult(TypedDict, total=False):
    """The answer to ``reload``. A daemon that returned its reload's outcome as it was
    answered a refused reload with ``ok`` false and the ``error`` inside the result."""

    changes: dict[str, list[str]]
    note: str | None
    ok: bool
    error: str
