# Adding a control command touches two source files (plus its tests and docs):
#
#   announcer/control.py  one request model: a Request subclass with its fields (each
#                         field name needs a checker in _CHECKERS), ``cmd``,
#                         ``mutating`` (who may send it, and whether it may use the
#                         reserved slots) and ``run`` (its handler, on the daemon's
#                         side), registered with @command;
#   announcer/client.py   one ClientCommand: its CLI arguments and help, the request
#                         fields it sends, how its answer is rendered and its exit status.
#
# Nothing else names a command: parse_request, daemon_handler and the server
# (announcer/control_server.py) go by REQUESTS below; the CLI's parser, run_command and
# ControlClient (which refuses a command it does not know) by announcer.client.COMMANDS.
"""The control socket's commands: JSON lines over a Unix stream socket.

Protocol (version 1). Each request is one JSON object on one line; each gets
exactly one reply line, in order; a connection may carry any number of
requests (``drain --wait`` polls ``status`` on one connection)::

    {"v": 1, "cmd": "status", "services": ["web"]}
    {"v": 1, "cmd": "drain", "services": ["web"], "reason": "kernel upgrade"}
    {"v": 1, "cmd": "drain", "all": true}
    {"v": 1, "cmd": "undrain", "services": ["web"]}
    {"v": 1, "cmd": "reload"}
    {"v": 1, "cmd": "check", "services": ["web"]}
    {"v": 1, "cmd": "ping"}

    {"v": 1, "ok": true, "result": {...}}
    {"v": 1, "ok": false, "code": "permission_denied", "error": "permission denied: ..."}

Error codes: ``bad_request`` (malformed, wrong types, unknown keys, too long,
too slow), ``unsupported_version``, ``permission_denied``, ``unknown_service``,
``refused`` (e.g. a reload with a broken config), ``busy`` (no slot free, and
the connection is closed; or the main loop did not answer in time: either way
try again after a pause) and ``internal`` (the handler raised).

Who may do what: commands that are not ``mutating`` (``status``, ``ping``)
anyone who can connect; ``drain``, ``undrain``, ``reload`` and ``check`` (it
starts rounds of checks) root, the daemon's own user, and members (primary or
supplementary) of the configured group. Peers are identified by the kernel
(``SO_PEERCRED``), supplementary groups read from ``/proc/PID/status``.

This module holds one request model per command (:class:`Request` and its
subclasses, found by name in :data:`REQUESTS`), :func:`parse_request`, and
:func:`daemon_handler`, which runs a request's handler against the daemon
(marshalled onto its main thread with ``Daemon.call``). How the socket is made
and served, and how many requests run at once, is :mod:`announcer.control_server`.
"""

from __future__ import annotations

import json
import os
import pwd
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Final, Protocol, TypeVar, cast

from announcer.errors import ConfigError
from announcer.protocol import (
    ERROR_CODES,
    PROTOCOL_VERSION,
    ChangeResult,
    ControlRefused,
    DaemonStatus,
)
from announcer.state import DrainSource

MAX_SERVICES: Final = 4096
MAX_NAME: Final = 256
MAX_REASON: Final = 1024


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end, as the kernel saw it at ``connect()``."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()
    """Supplementary groups (empty if ``/proc/PID/status`` could not be read)."""


class FleetView(Protocol):
    """What ``announcer fleet`` needs of the fleet guard (announcer.fleet.guard)."""

    def snapshot(self, service: str | None = None) -> dict[str, Any]: ...

    def lease_left(self, snapshot: dict[str, Any]) -> None: ...


class ControlledDaemon(Protocol):
    """What the handlers need of :class:`announcer.daemon.Daemon`."""

    @property
    def fleet(self) -> FleetView | None: ...

    def call(self, fn: Callable[[], Any], timeout: float = 5.0) -> Any: ...

    def snapshot(self) -> dict[str, Any]: ...

    def drain(self, name: str, source: DrainSource, reason: str = "", **how: Any) -> bool: ...

    def undrain(self, name: str, source: DrainSource) -> bool: ...

    def commit(self) -> str | None: ...

    def check_now(self, names: list[str]) -> Callable[[], dict[str, Any] | None]: ...

    def reload(self) -> dict[str, Any]:
        """Apply the config file's difference; :class:`ConfigError` if it does not load."""
        ...


class DaemonAccess:
    """The daemon as the handlers reach it: on its main thread, within a time limit.

    Drains made here use drain source ``source``; an undrain lifts only that
    source, so a maintenance-file drain stays until the file goes.
    ``call_timeout`` stays under the client's 5 s so a stuck main loop is
    answered "busy" rather than left to time out.
    """

    def __init__(self, daemon: ControlledDaemon, source: DrainSource, call_timeout: float) -> None:
        self.daemon = daemon
        self.source = source
        self.call_timeout = call_timeout

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on the daemon's main thread; "busy" if it is not taken in time."""
        try:
            return self.daemon.call(fn, self.call_timeout)
        except queue.Empty:
            raise ControlRefused(
                f"the daemon's main loop did not answer within {self.call_timeout:g}s "
                "(the request may still take effect); check with status",
                "busy",
            ) from None

    def snapshot(self) -> DaemonStatus:
        """The daemon's snapshot (call it on the main thread)."""
        return cast(DaemonStatus, self.daemon.snapshot())

    @staticmethod
    def pick(snap: DaemonStatus, names: tuple[str, ...], everything: bool) -> list[str]:
        """The services a request names (all of them for ``everything``); names are
        checked before anything changes."""
        known = snap.get("services", {})
        if everything:
            return list(known)
        missing = [n for n in names if n not in known]
        if missing:
            raise ControlRefused(
                f"unknown service{'s' if len(missing) > 1 else ''} "
                f"{', '.join(repr(n) for n in missing)} (known: {', '.join(known) or 'none'})",
                "unknown_service",
            )
        return list(names)


# ---------------------------------------------------------------- parsing


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(message: str) -> ControlRefused:
    return ControlRefused(message, "bad_request")


def _names(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _bad(f'"{key}" must be a list of names, got {_short(value)}')
    if len(value) > MAX_SERVICES:
        raise _bad(f'"{key}" lists more than {MAX_SERVICES} names')
    for name in value:
        if not isinstance(name, str) or not name or len(name) > MAX_NAME:
            raise _bad(f'"{key}" must hold non-empty names, got {_short(name)}')
    return tuple(dict.fromkeys(value))


def _flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _bad(f'"{key}" must be true or false, got {_short(value)}')
    return value


def _text(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise _bad(f'"{key}" must be a string, got {_short(value)}')
    if len(value) > MAX_REASON:
        raise _bad(f'"{key}" is longer than {MAX_REASON} characters')
    return value


def _seconds(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f'"{key}" must be a number of seconds, got {_short(value)}')
    if not 0 < value <= 86400:
        raise _bad(f'"{key}" must be more than 0 and at most 86400 seconds')
    return float(value)


_CHECKERS: Final[dict[str, Callable[[str, object], object]]] = {
    "services": _names,
    "all": _flag,
    "reason": _text,
    "stop": _flag,
    "force": _flag,
    "no_queue": _flag,
    "timeout": _seconds,
}
"""How each request field is checked, by its key (the same key means the same thing
in every command)."""


# ---------------------------------------------------------------- the request models


@dataclass(frozen=True, slots=True)
class Request:
    """A validated request: one subclass per command, registered with :func:`command`.

    Its dataclass fields are the keys the command takes besides ``"v"`` and
    ``"cmd"``, each checked by the checker of its name in ``_CHECKERS``;
    :meth:`check` adds the rules between fields. :meth:`run` is the command's
    handler on the daemon's side (:func:`daemon_handler` calls it on a worker
    thread; what touches the daemon goes through ``daemon.on_main``).
    """

    cmd: ClassVar[str]
    mutating: ClassVar[bool] = False
    """Changes the daemon: only root, the daemon's user and the group may send it, and
    it (with what follows on its connection) may use the reserved slots."""

    def check(self) -> None:
        """Raise :class:`ControlRefused` (``bad_request``) for fields that do not go together."""

    def run(self, daemon: DaemonAccess, peer: Peer) -> dict[str, Any]:
        raise NotImplementedError

    def log_fields(self) -> dict[str, Any]:
        """What the log says about the request (the fields that are set)."""
        out: dict[str, Any] = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            out[spec.name] = (",".join(value) if isinstance(value, tuple) else value) or None
        return out


REQUESTS: Final[dict[str, type[Request]]] = {}
"""Every command's request model, by name: the protocol's command table."""

R = TypeVar("R", bound=type[Request])


def command(model: R) -> R:
    """Register a request model (use it above ``@dataclass``)."""
    unchecked = [f.name for f in fields(model) if f.name not in _CHECKERS]
    if unchecked:
        raise TypeError(f"{model.__name__}: no checker for field(s) {', '.join(unchecked)}")
    REQUESTS[model.cmd] = model
    return model


@command
@dataclass(frozen=True, slots=True)
class StatusRequest(Request):
    """Every service's status, or only the named ones'."""

    cmd: ClassVar[str] = "status"
    services: tuple[str, ...] = ()

    def run(self, daemon: DaemonAccess, peer: Peer) -> dict[str, Any]:
        def status() -> DaemonStatus:
            snap = daemon.snapshot()
            if self.services:
                names = daemon.pick(snap, self.services, False)
                snap["services"] = {n: snap["services"][n] for n in names}
            return snap

        return cast(dict[str, Any], daemon.on_main(status))


@dataclass(frozen=True, slots=True)
class _ChangeRequest(Request):
    """A drain or an undrain of the named services, or of all of them.

    Answers ``{"services": {name: {...status fields, "changed": bool}}, "state_error": ...}``
    (``state_error``: why the change could not be saved to the state file, or null).
    """

    mutating: ClassVar[bool] = True
    drains: ClassVar[bool]
    services: tuple[str, ...] = ()
    all: bool = False
    reason: str = ""

    def check(self) -> None:
        if self.all and self.services:
            raise _bad(f'{self.cmd}: give service names or "all": true, not both')
        if not self.all and not self.services:
            raise _bad(f'{self.cmd}: name at least one service, or give "all": true')

    def source(self, daemon: DaemonAccess) -> DrainSource:
        return daemon.source

    def default_reason(self, peer: Peer) -> str:
        return ""

    def apply(self, daemon: ControlledDaemon, name: str, source: DrainSource, reason: str) -> None:
        raise NotImplementedError

    def run(self, daemon: DaemonAccess, peer: Peer) -> dict[str, Any]:
        # The default reason is made here, not on the main thread (NSS may be slow).
        reason = self.reason or self.default_reason(peer)
        return cast(dict[str, Any], daemon.on_main(lambda: self._change(daemon, reason)))

    def _change(self, daemon: DaemonAccess, reason: str) -> ChangeResult:
        before = daemon.snapshot()
        names = daemon.pick(before, self.services, self.all)
        source = self.source(daemon)
        for name in names:
            self.apply(daemon.daemon, name, source, reason)
        # Saved and sent before answering: the answer says whether the change was saved.
        unsaved = daemon.daemon.commit()
        after = daemon.snapshot().get("services", {})
        out: ChangeResult = {"services": {}, "state_error": unsaved}
        for name in names:
            had = source in before["services"][name].get("drain_sources", ())
            out["services"][name] = {**after.get(name, {}), "changed": had != self.drains}
        return out


@command
@dataclass(frozen=True, slots=True)
class DrainRequest(_ChangeRequest):
    """Lower the routes now, withdraw them after drain_seconds."""

    cmd: ClassVar[str] = "drain"
    drains: ClassVar[bool] = True
    stop: bool = False
    """A drain for a service stop: not persisted, forgotten at the next start."""
    force: bool = False
    """With a fleet: take a drain slot even if none is free, and withdraw at the end
    without asking the fleet guard."""
    no_queue: bool = False
    """With a fleet: refuse rather than wait for a drain slot."""
    timeout: float = 0.0
    """With ``stop``: how long the stop waits in all; with a fleet a drain slot is waited
    for until only the drain's own drain_seconds are left, then it drains anyway."""

    def source(self, daemon: DaemonAccess) -> DrainSource:
        return DrainSource.STOP if self.stop else daemon.source

    def default_reason(self, peer: Peer) -> str:
        return "service stop" if self.stop else f"drained by {_user(peer.uid)}"

    def apply(self, daemon: ControlledDaemon, name: str, source: DrainSource, reason: str) -> None:
        # Only what is set: a daemon without a fleet takes the plain call.
        how: dict[str, Any] = {}
        if self.force:
            how["force"] = True
        if self.no_queue:
            how["queue"] = False
        if self.stop and self.timeout:
            how["patience"] = self.timeout
        daemon.drain(name, source, reason, **how)


@command
@dataclass(frozen=True, slots=True)
class UndrainRequest(_ChangeRequest):
    """Lift this source's drain; the route follows health again."""

    cmd: ClassVar[str] = "undrain"
    drains: ClassVar[bool] = False

    def apply(self, daemon: ControlledDaemon, name: str, source: DrainSource, reason: str) -> None:
        daemon.undrain(name, source)


@command
@dataclass(frozen=True, slots=True)
class ReloadRequest(Request):
    """Re-read the config and apply the difference; a config that does not load is
    refused, and the daemon keeps running on the previous one."""

    cmd: ClassVar[str] = "reload"
    mutating: ClassVar[bool] = True

    def run(self, daemon: DaemonAccess, peer: Peer) -> dict[str, Any]:
        try:
            result = dict(daemon.on_main(daemon.daemon.reload))
        except ConfigError as err:
            raise ControlRefused(
                f"reload failed; still running on the previous config:\n{err}", "refused"
            ) from None
        result.pop("ok", None)  # the daemon's own mark of success; the reply has its own
        return result


CHECK_POLL: Final = 0.05
"""Seconds between looks at whether ``check``'s rounds have closed."""


@command
@dataclass(frozen=True, slots=True)
class CheckRequest(Request):
    """Run a round of the named services' checks now (every service's, with none named);
    answers each check's result once the rounds have closed (at the latest at their
    deadline: the service's timeout plus a grace period)."""

    cmd: ClassVar[str] = "check"
    mutating: ClassVar[bool] = True
    services: tuple[str, ...] = ()

    def run(self, daemon: DaemonAccess, peer: Peer) -> dict[str, Any]:
        def start() -> Callable[[], dict[str, Any] | None]:
            names = daemon.pick(daemon.snapshot(), self.services, not self.services)
            return daemon.daemon.check_now(names)

        poll = daemon.on_main(start)
        # Polled on this worker thread, so the main loop never waits for a check.
        while (results := daemon.on_main(poll)) is None:
            time.sleep(CHECK_POLL)
        return {"services": results}


@command
@dataclass(frozen=True, slots=True)
class FleetRequest(Request):
    """The group as this node last read it from etcd: each service's nodes, their
    routes and health, who is announcing, and what the guard is doing here."""

    cmd: ClassVar[str] = "fleet"
    services: tuple[str, ...] = ()

    def check(self) -> None:
        if len(self.services) > 1:
            raise _bad("fleet: name one service, or none for all of them")

    def run(self, daemon: DaemonAccess, peer: Peer) -> dict[str, Any]:
        def view() -> dict[str, Any]:
            guard = daemon.daemon.fleet
            if guard is None:
                raise ControlRefused("no [fleet] in the config: this node decides alone", "refused")
            if self.services:
                daemon.pick(daemon.snapshot(), self.services, False)
            return guard.snapshot(self.services[0] if self.services else None)

        snap = cast(dict[str, Any], daemon.on_main(view))
        guard = daemon.daemon.fleet
        if guard is not None:
            guard.lease_left(snap)  # here, off the main loop: it asks etcd
        return snap


@command
@dataclass(frozen=True, slots=True)
class PingRequest(Request):
    """Is a daemon listening, and which: answered off the main thread."""

    cmd: ClassVar[str] = "ping"

    def run(self, daemon: DaemonAccess, peer: Peer) -> dict[str, Any]:
        return {"pong": True, "pid": os.getpid(), "protocol": PROTOCOL_VERSION}


COMMANDS: Final = tuple(REQUESTS)
MUTATING: Final = frozenset(name for name, model in REQUESTS.items() if model.mutating)


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return f"uid {uid}"


def parse_request(line: bytes) -> Request:
    """Validate one request line; raises :class:`ControlRefused` (never anything else)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("request is not valid UTF-8") from None
    text = text.strip()
    if not text:
        raise _bad('empty request; send one JSON object per line, e.g. {"v": 1, "cmd": "ping"}')
    try:
        data = json.loads(text)
    except RecursionError:
        raise _bad("request is nested too deeply") from None
    except ValueError as err:
        raise _bad(f"request is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise _bad(f"request must be a JSON object, not {type(data).__name__}")
    if "v" not in data:
        raise _bad(f'missing protocol version "v" (this daemon speaks v{PROTOCOL_VERSION})')
    version = data["v"]
    if not _is_int(version):
        raise _bad(f'"v" must be an integer, got {_short(version)}')
    if version != PROTOCOL_VERSION:
        raise ControlRefused(
            f"protocol version {version} is not supported; this daemon speaks "
            f"v{PROTOCOL_VERSION} (is the announcer command newer than the daemon?)",
            "unsupported_version",
        )
    cmd = data.get("cmd")
    if cmd is None:
        raise _bad(f'missing "cmd" (one of {", ".join(COMMANDS)})')
    model = REQUESTS.get(cmd) if isinstance(cmd, str) else None
    if model is None:
        raise _bad(f'unknown "cmd" {_short(cmd)} (one of {", ".join(COMMANDS)})')
    keys = [f.name for f in fields(model)]
    unknown = sorted(_short(k) for k in data if k not in {"v", "cmd", *keys})
    if unknown:
        raise _bad(f"unknown key(s) for {cmd}: {', '.join(unknown[:5])}")
    values = {k: _CHECKERS[k](k, data[k]) for k in keys if k in data}
    request = model(**values)
    request.check()
    return request


# ---------------------------------------------------------------- the daemon's handler

Handler = Callable[[Request, Peer], dict[str, Any]]
"""What a :class:`~announcer.control_server.ControlServer` serves: run on a worker thread
with a validated request of an authorised peer; returns the reply's ``result``, or raises
:class:`ControlRefused` for an error reply with its code."""


def daemon_handler(
    daemon: ControlledDaemon,
    *,
    source: DrainSource = DrainSource.OPERATOR,
    call_timeout: float = 4.0,
) -> Handler:
    """The handler a :class:`~announcer.control_server.ControlServer` serves a
    :class:`~announcer.daemon.Daemon` with: each request's own :meth:`Request.run`
    (see :class:`DaemonAccess` for ``source`` and ``call_timeout``)."""
    access = DaemonAccess(daemon, source, call_timeout)

    def handle(request: Request, peer: Peer) -> dict[str, Any]:
        return request.run(access, peer)

    return handle


__all__ = [
    "COMMANDS",
    "ERROR_CODES",
    "MUTATING",
    "PROTOCOL_VERSION",
    "REQUESTS",
    "ControlRefused",
    "ControlledDaemon",
    "DaemonAccess",
    "DrainRequest",
    "Handler",
    "Peer",
    "PingRequest",
    "ReloadRequest",
    "Request",
    "StatusRequest",
    "UndrainRequest",
    "command",
    "daemon_handler",
    "parse_request",
]
