"""The daemon's control socket: JSON lines over a Unix stream socket.

Protocol (version 1). Each request is one JSON object on one line; each gets
exactly one reply line, in order; a connection may carry any number of
requests (``drain --wait`` polls ``status`` on one connection)::

    {"v": 1, "cmd": "status", "services": ["web"]}
    {"v": 1, "cmd": "drain", "services": ["web"], "reason": "kernel upgrade"}
    {"v": 1, "cmd": "drain", "all": true}
    {"v": 1, "cmd": "undrain", "services": ["web"]}
    {"v": 1, "cmd": "reload"}
    {"v": 1, "cmd": "ping"}

    {"v": 1, "ok": true, "result": {...}}
    {"v": 1, "ok": false, "code": "permission_denied", "error": "permission denied: ..."}

Error codes: ``bad_request`` (malformed, wrong types, unknown keys, too long,
too slow), ``unsupported_version``, ``permission_denied``, ``unknown_service``,
``refused`` (e.g. a reload with a broken config), ``busy`` (no slot free, see
below, and the connection is closed; or the main loop did not answer in time:
either way try again after a pause) and ``internal`` (the handler raised).

Who may do what: ``status`` and ``ping`` anyone who can connect; ``drain``,
``undrain`` and ``reload`` root, the daemon's own user, and members (primary or
supplementary) of the configured group. Peers are identified by the kernel
(``SO_PEERCRED``), supplementary groups read from ``/proc/PID/status``.

The socket is made mode 0660, group ``control_group``, without a moment in
which anyone else could connect: it is bound inside a fresh private (0700)
directory next to the final path, given its mode and group there, and then
renamed into place. The process umask (ExaBGP starts us with 0137) and other
threads are left alone.

Capacity. One thread (the reactor) accepts connections and reads request lines
without blocking. A request for the daemon runs on a worker thread in one of
``max_clients`` (16) shared slots or, for a mutating request of an authorised
peer and whatever follows on that connection (``drain --wait``'s polls), in one
of ``reserved`` (4) more: a flood of reads cannot keep a drain out. With no slot
free the answer is ``busy`` and the connection is closed; the ``announcer``
command tries again with growing pauses for up to its timeout (5 s).
Malformed and unauthorised requests need no slot: the reactor answers them. A
connection holds a slot only while its request runs. It has ``timeout`` (1 s)
for each request line, from its connect or from its last reply, and is then
closed (without a reply if it sent nothing, else ``bad_request``). At most
``max_pending`` (64) connections wait for a request line; a new one makes room
by dropping the oldest that never sent anything (before one between requests,
before one that drained). So there are never more than 1 + 16 + 4 threads and
about 64 + 20 connections, however many clients come; the kernel queues up to
128 more (``LISTEN_BACKLOG``), after which connect() fails with EAGAIN, which
the command also waits out. Lines are capped at ``max_request`` bytes. Nothing
a client sends can block the daemon's main loop or stop the server.

The handler is the only code that touches daemon state and must marshal onto
the daemon's main thread itself (:func:`daemon_handler` does, with
``Daemon.call``).
"""

from __future__ import annotations

import contextlib
import grp
import json
import math
import os
import pwd
import queue
import selectors
import socket
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from announcer.errors import ControlError
from announcer.fsutil import make_dirs
from announcer.log import Logger
from announcer.protocol import COMMANDS, PROTOCOL_VERSION, ControlRefused

MUTATING: Final = frozenset({"drain", "undrain", "reload"})
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
SOCKET_MODE: Final = 0o660
DIR_MODE: Final = 0o750
OPERATOR_SOURCE: Final = "operator"
"""The drain source of drains made through the socket (the daemon persists it)."""
STOP_SOURCE: Final = "stop"
"""Drain source of ``drain --stop`` (a service being stopped): never persisted."""

MAX_SERVICES: Final = 4096
MAX_NAME: Final = 256
MAX_REASON: Final = 1024
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH: Final = 107

# Which keys each command accepts besides "v" and "cmd".
_FIELDS: Final[dict[str, frozenset[str]]] = {
    "status": frozenset({"services"}),
    "drain": frozenset({"services", "all", "reason", "stop"}),
    "undrain": frozenset({"services", "all", "reason"}),
    "reload": frozenset(),
    "ping": frozenset(),
}


@dataclass(frozen=True, slots=True)
class Request:
    """A validated request."""

    cmd: str
    services: tuple[str, ...] = ()
    all: bool = False
    reason: str = ""
    stop: bool = False
    """A drain for a service stop: not persisted, forgotten at the next start."""

    @property
    def mutating(self) -> bool:
        return self.cmd in MUTATING


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end, as the kernel saw it at ``connect()``."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()
    """Supplementary groups (empty if ``/proc/PID/status`` could not be read)."""


Handler = Callable[[Request, Peer], dict[str, Any]]


# ---------------------------------------------------------------- requests


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(message: str) -> ControlRefused:
    return ControlRefused(message, "bad_request")


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
    if not isinstance(cmd, str) or cmd not in _FIELDS:
        raise _bad(f'unknown "cmd" {_short(cmd)} (one of {", ".join(COMMANDS)})')
    unknown = sorted(_short(k) for k in data if k not in {"v", "cmd"} | _FIELDS[cmd])
    if unknown:
        raise _bad(f"unknown key(s) for {cmd}: {', '.join(unknown[:5])}")

    services = data.get("services", [])
    if not isinstance(services, list):
        raise _bad(f'"services" must be a list of names, got {_short(services)}')
    if len(services) > MAX_SERVICES:
        raise _bad(f'"services" lists more than {MAX_SERVICES} names')
    names: list[str] = []
    for name in services:
        if not isinstance(name, str) or not name or len(name) > MAX_NAME:
            raise _bad(f'"services" must hold non-empty names, got {_short(name)}')
        if name not in names:
            names.append(name)
    everything = data.get("all", False)
    if not isinstance(everything, bool):
        raise _bad(f'"all" must be true or false, got {_short(everything)}')
    reason = data.get("reason", "")
    if not isinstance(reason, str):
        raise _bad(f'"reason" must be a string, got {_short(reason)}')
    if len(reason) > MAX_REASON:
        raise _bad(f'"reason" is longer than {MAX_REASON} characters')
    stop = data.get("stop", False)
    if not isinstance(stop, bool):
        raise _bad(f'"stop" must be true or false, got {_short(stop)}')
    if cmd in ("drain", "undrain"):
        if everything and names:
            raise _bad(f'{cmd}: give service names or "all": true, not both')
        if not everything and not names:
            raise _bad(f'{cmd}: name at least one service, or give "all": true')
    return Request(cmd=cmd, services=tuple(names), all=everything, reason=reason, stop=stop)


def encode(message: Mapping[str, Any]) -> bytes:
    """One reply or request line (compact JSON, ASCII only, newline-terminated)."""
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


def error_reply(kind: str, message: str) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "ok": False, "code": kind, "error": message}


def ok_reply(result: Mapping[str, Any]) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "ok": True, "result": dict(result)}


# ---------------------------------------------------------------- peers


def supplementary_groups(pid: int) -> frozenset[int]:
    """The ``Groups:`` of ``/proc/PID/status``; empty when unreadable (the peer has gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()


def peer_of(conn: socket.socket) -> Peer:
    """The credentials of a connected Unix socket's peer (``SO_PEERCRED``)."""
    size = struct.calcsize("3i")
    pid, uid, gid = struct.unpack(
        "3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size)
    )
    return Peer(
        pid=pid, uid=uid, gid=gid, groups=supplementary_groups(pid) if pid > 0 else frozenset()
    )


def resolve_group(group: str | None) -> int | None:
    """The gid of a group name (or of a number given as text); ControlError if unknown."""
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise ControlError(
            f"control_group {group!r} does not exist (create it, e.g. groupadd {group})", code=2
        ) from None


# ---------------------------------------------------------------- server

LISTEN_BACKLOG: Final = 128
"""Connections the kernel queues before we accept them (a full queue: EAGAIN on connect)."""
ACCEPT_BATCH: Final = 16
"""Connections accepted per turn before the reactor reads from the others again."""
SHED_LOG_EVERY: Final = 5.0
"""Seconds between two warnings about connections refused or dropped for capacity."""

_LISTENER: Final = "listener"
_WAKER: Final = "waker"


class _TooLong(Exception):
    pass


class _Conn:
    """One client connection: its unread bytes, who it is, and how it has behaved."""

    __slots__ = ("buf", "deadline", "eof", "peer", "privileged", "served", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.eof = False
        self.deadline = deadline
        """When the request line being waited for must be complete (monotonic)."""
        self.peer: Peer | None = None
        self.served = False
        """A request was answered: a client that talks, not one just holding a connection."""
        self.privileged = False
        """An authorised peer made a mutating request here: what follows on this connection
        (``drain --wait``'s status polls) may use the reserved slots too."""

    @property
    def rank(self) -> int:
        """Lower ranks are dropped first when too many connections wait for a request."""
        return 2 if self.privileged else 1 if self.served else 0

    def next_line(self, limit: int) -> bytes | None:
        """The next complete line without its newline (at the end of the stream, what is
        left), or None; :class:`_TooLong` past ``limit`` bytes."""
        nl = self.buf.find(b"\n")
        if nl >= 0:
            line = bytes(self.buf[:nl])
            del self.buf[: nl + 1]
            if len(line) > limit:
                raise _TooLong
            return line
        if len(self.buf) > limit:
            raise _TooLong
        if self.eof and self.buf:
            # A last line without a newline (the client half-closed): still answer it.
            line = bytes(self.buf)
            self.buf.clear()
            return line
        return None


_Job = tuple[_Conn, Request, bool]
"""A connection handed to a worker: the request to run first, and whether it holds a
reserved slot (else a shared one)."""


class _Pool:
    """The worker threads of one :meth:`ControlServer.start` and their queue of jobs."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.workers = 0
        """Threads started and not yet stopped (changed under the server's lock)."""


class ControlServer:
    """Serves the control socket at ``path``; see the module docstring.

    One thread (the reactor) accepts connections and reads request lines without
    blocking; a request that needs the handler goes to a worker thread, holding
    one of ``max_clients`` shared slots or, for a mutating request of an authorised
    peer (and what follows on its connection), one of ``reserved`` more. Requests
    that need no handler (malformed, not allowed) are answered by the reactor.
    At most ``max_pending`` connections wait for a request line, each for at most
    ``timeout`` seconds per line; past that cap the least useful one is dropped.

    ``handler(request, peer)`` runs on a worker thread after the request was
    validated and the peer authorised; it returns the ``result`` object, or raises
    :class:`ControlRefused` for an error reply with that code. Any other exception
    is logged and answered with code ``internal``.
    """

    def __init__(
        self,
        path: Path,
        handler: Handler,
        *,
        group: str | None,
        log: Logger,
        max_request: int = 65536,
        timeout: float = 1.0,
        max_clients: int = 16,
        reserved: int = 4,
        max_pending: int = 64,
        reply_timeout: float = 5.0,
    ) -> None:
        self.path = Path(path)
        self._handler = handler
        self.group = group
        self.log = log
        self.max_request = max_request
        self.timeout = timeout
        """Seconds a connection has for each request line, from its connect or its last reply."""
        self.max_clients = max_clients
        """Requests in the handler at once, for anyone."""
        self.reserved = reserved
        """More requests in the handler at once, only for mutating requests of authorised peers."""
        self.max_pending = max(1, max_pending)
        """Connections waiting for a request line (connected, or between requests)."""
        self.reply_timeout = reply_timeout
        """Seconds a client has to take its reply before it is dropped."""
        self._gid: int | None = None
        self._own_uid = os.geteuid()
        self._sock: socket.socket | None = None
        self._ident: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Shared between the reactor and the workers, under _lock.
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._shared_used = 0
        self._reserve_used = 0
        self._pool = _Pool()
        self._returned: list[_Conn] = []
        self._wake_w: socket.socket | None = None
        # The reactor's own.
        self._selector: selectors.BaseSelector | None = None
        self._waiting: dict[_Conn, None] = {}
        """Connections waiting for a request line, oldest deadline first."""
        self._shed = {"busy": 0, "dropped": 0}
        self._shed_logged = -math.inf

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ socket setup

    def start(self) -> None:
        """Create the socket (see the module docstring) and start accepting connections.

        Raises :class:`ControlError` when the socket cannot be made, or when
        another daemon is alive and listening on ``path``.
        """
        if self._sock is not None:
            raise ControlError("control server already started")
        self._gid = resolve_group(self.group)
        path = self.path
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise ControlError(
                f"control_socket {path} is longer than {MAX_SOCKET_PATH} bytes, "
                "the limit of a Unix socket path",
                code=2,
            )
        self._ensure_dir(path.parent)
        self._refuse_if_alive(path)
        try:
            private = tempfile.mkdtemp(prefix=".ctl-", dir=path.parent)
            # mkdtemp asks for 0700 but the umask still applies (ExaBGP's 0137 would
            # leave 0600, which we could not even enter): set it outright.
            os.chmod(private, 0o700)
        except OSError as err:
            raise ControlError(f"cannot create a socket in {path.parent}: {err}", code=2) from err
        tmp = os.path.join(private, "s")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if len(os.fsencode(tmp)) > MAX_SOCKET_PATH:
                raise ControlError(
                    f"control_socket {path}: its directory's path is too long for a "
                    "Unix socket; use a shorter control_socket",
                    code=2,
                )
            sock.bind(tmp)
            os.chmod(tmp, SOCKET_MODE)
            if self._gid is not None:
                try:
                    os.chown(tmp, -1, self._gid)
                except PermissionError as err:
                    raise ControlError(
                        f"cannot give {path} to group {self.group}: {err.strerror} "
                        f"(the daemon must run as root or as a member of {self.group})",
                        code=2,
                    ) from err
            sock.listen(LISTEN_BACKLOG)
            st = os.stat(tmp)
            os.replace(tmp, path)  # atomic; replaces a stale socket
            self._ident = (st.st_dev, st.st_ino)
        except ControlError:
            sock.close()
            raise
        except OSError as err:
            sock.close()
            raise ControlError(f"cannot create control socket {path}: {err}", code=2) from err
        finally:
            try:
                if os.path.lexists(tmp):
                    os.unlink(tmp)
                os.rmdir(private)
            except OSError as err:
                self.log.warning("control_cleanup", path=private, why=str(err))
        sock.setblocking(False)
        waker, self._wake_w = socket.socketpair()
        waker.setblocking(False)
        self._wake_w.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ, _LISTENER)
        selector.register(waker, selectors.EVENT_READ, _WAKER)
        self._selector = selector
        self._waiting = {}
        self._pool = _Pool()  # workers of an earlier start() stop on their own queue
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(sock, waker, selector), name="control", daemon=True
        )
        self._thread.start()
        self.log.info(
            "control_listening",
            path=str(path),
            group=self.group,
            mode=f"{SOCKET_MODE:04o}",
            slots=self.max_clients,
            reserved=self.reserved,
            max_pending=self.max_pending,
            timeout=self.timeout,
        )

    def _ensure_dir(self, parent: Path) -> None:
        if parent.is_dir():
            self._warn_if_unreachable(parent)
            return
        try:
            make_dirs(parent, DIR_MODE)
            if not parent.is_dir():
                raise ControlError(
                    f"cannot create control socket: {parent} is not a directory", code=2
                )
            if self._gid is not None:
                os.chown(parent, -1, self._gid)
        except OSError as err:
            raise ControlError(f"cannot create directory {parent}: {err.strerror}", code=2) from err

    def _warn_if_unreachable(self, parent: Path) -> None:
        if self._gid is None:
            return
        try:
            st = os.stat(parent)
        except OSError:
            return
        other_x = st.st_mode & stat.S_IXOTH
        group_x = st.st_gid == self._gid and st.st_mode & stat.S_IXGRP
        if not (other_x or group_x):
            self.log.warning(
                "control_dir",
                path=str(parent),
                why=f"members of {self.group} cannot reach the socket: the directory is "
                f"mode {stat.S_IMODE(st.st_mode):04o} and group {st.st_gid}",
            )

    def _refuse_if_alive(self, path: Path) -> None:
        """Leave a stale socket to be replaced; refuse if a live daemon listens there."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{path} exists and is not a socket; refusing to replace it", code=2)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            try:
                probe.connect(str(path))
            except (ConnectionRefusedError, FileNotFoundError):
                self.log.info("control_stale_socket", path=str(path), action="replace")
                return
            except OSError as err:
                raise ControlError(
                    f"{path} is in use (connecting to it gave: {err}); is another "
                    "announcer daemon running?",
                    code=2,
                ) from err
            who = "something"
            try:
                probe.sendall(encode({"v": PROTOCOL_VERSION, "cmd": "ping"}))
                reply = json.loads(probe.recv(4096).split(b"\n", 1)[0])
                pid = reply.get("result", {}).get("pid")
                who = f"another announcer daemon (pid {pid})" if pid else "another daemon"
            except (OSError, ValueError, AttributeError):
                pass
            raise ControlError(
                f"{who} is already listening on {path}; stop it first, or give this "
                "one another control_socket",
                code=2,
            )
        finally:
            probe.close()

    # ------------------------------------------------------------ shutdown

    def close(self) -> None:
        """Stop serving; unlink the socket only if it is still the one we created."""
        self._stop.set()
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._ident is not None:
            try:
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._ident:
                    os.unlink(self.path)
            except OSError:
                pass
            self._ident = None
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        self._thread = None
        sock.close()  # the reactor closed it on its way out; this is for a stuck reactor
        pool = self._pool
        with self._lock:
            conns = list(self._conns)
            workers = pool.workers
        for conn in conns:  # wakes workers blocked sending to a client
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for _ in range(workers):
            pool.jobs.put(None)
        if self._wake_w is not None:
            self._wake_w.close()

    @property
    def clients(self) -> int:
        """Open connections: waiting for a request, or being served."""
        with self._lock:
            return len(self._conns)

    @property
    def running(self) -> int:
        """Requests holding a slot (shared or reserved) right now."""
        with self._lock:
            return self._shared_used + self._reserve_used

    def _wake(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(OSError):  # full: the reactor is due to wake anyway
                self._wake_w.send(b"\0")

    # ------------------------------------------------------------ the reactor

    def _run(
        self, listener: socket.socket, waker: socket.socket, selector: selectors.BaseSelector
    ) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._turn(listener, waker, selector)
                except Exception as err:  # noqa: BLE001 - the reactor must survive anything
                    self.log.error("control_failed", why=f"{type(err).__name__}: {err}")
                    self._stop.wait(0.05)
        finally:
            with self._lock:
                back, self._returned = self._returned, []
            for conn in [*self._waiting, *back]:
                self._close(conn)
            selector.close()
            listener.close()
            waker.close()

    def _turn(
        self, listener: socket.socket, waker: socket.socket, selector: selectors.BaseSelector
    ) -> None:
        timeout = SHED_LOG_EVERY
        if self._waiting:
            first = next(iter(self._waiting))
            timeout = min(timeout, max(0.0, first.deadline - time.monotonic()))
        accept = False
        # Read what has arrived before accepting more: a full house drops the idle ones.
        for key, _ in selector.select(timeout):
            if key.data == _LISTENER:
                accept = True
            elif key.data == _WAKER:
                with contextlib.suppress(OSError):
                    waker.recv(4096)
            elif key.data in self._waiting:  # not dropped earlier in this turn
                self._read(key.data)
        if accept:
            self._accept(listener)
        self._take_back()
        self._expire()
        self._log_shed()

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if self._stop.is_set():
                    return
                # EMFILE and friends: back off instead of spinning; never die.
                self.log.error("control_accept_failed", why=str(err))
                self._stop.wait(0.1)
                return
            conn = _Conn(sock, time.monotonic() + self.timeout)
            with self._lock:
                self._conns.add(sock)
            try:
                sock.setblocking(False)
                self._make_room()
                self._wait(conn)
            except BaseException:
                self._close(conn)
                raise
            self._read(conn)  # a client usually sends its request right after connecting

    def _read(self, conn: _Conn) -> bool:
        """Take what ``conn`` sent and act on it; False if nothing had arrived."""
        try:
            chunk = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:  # e.g. reset by the client
            chunk = b""
        if chunk:
            conn.buf += chunk
        else:
            conn.eof = True
        self._serve_waiting(conn)
        return True

    def _serve_waiting(self, conn: _Conn) -> None:
        """Answer what needs no handler here; hand a request for the handler to a worker."""
        while True:
            try:
                line = conn.next_line(self.max_request)
            except _TooLong:
                self._answer_and_close(conn, self._too_long())
                return
            if line is None:
                if conn.eof:
                    self._close(conn)
                return
            if conn.peer is None:
                try:
                    conn.peer = peer_of(conn.sock)
                except OSError:
                    conn.peer = Peer(pid=-1, uid=-1, gid=-1)
            checked = self._check(line, conn.peer)
            if not isinstance(checked, Request):  # malformed or not allowed: no slot needed
                if not self._send_now(conn, checked):
                    self._close(conn)
                    return
                # Answered: a new deadline for the next line, at the end of the queue.
                del self._waiting[conn]
                conn.deadline = time.monotonic() + self.timeout
                self._waiting[conn] = None
                continue
            reserved = self._acquire(may_reserve=checked.mutating or conn.privileged)
            if reserved is None:
                self._note_shed("busy")
                self._answer_and_close(conn, self._busy())
                return
            self._unwait(conn)
            self._dispatch(conn, checked, reserved)
            return

    def _take_back(self) -> None:
        """Connections the workers are done with wait for their next request line."""
        with self._lock:
            back, self._returned = self._returned, []
        now = time.monotonic()
        for conn in back:
            if self._stop.is_set():
                self._close(conn)
                continue
            conn.sock.setblocking(False)
            self._make_room()
            self._wait(conn, now + self.timeout)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._waiting:
            conn = next(iter(self._waiting))  # the oldest deadline
            if conn.deadline > now:
                return
            if conn.buf:
                self._answer_and_close(
                    conn,
                    error_reply(
                        "bad_request",
                        f"no complete request line within {self.timeout:g}s; "
                        "closing the connection",
                    ),
                )
            else:
                self._close(conn)  # an idle connection: close quietly, nothing was asked

    def _make_room(self) -> None:
        """Below ``max_pending`` waiting connections: drop the oldest of those that have
        given least (a squatter before a client between two requests, before one that
        drained). One whose request has just arrived is served instead."""
        for tries in range(4):
            if len(self._waiting) < self.max_pending:
                return
            victim: _Conn | None = None
            for conn in self._waiting:
                if victim is None or conn.rank < victim.rank:
                    victim = conn
                    if victim.rank == 0:
                        break
            if victim is None:
                return
            if tries < 3 and self._read(victim):
                continue  # it spoke: answered, handed on or closed; else look again
            if victim in self._waiting:
                self._note_shed("dropped")
                self._close(victim)

    def _reactor_selector(self) -> selectors.BaseSelector:
        if self._selector is None:
            raise RuntimeError("the control server was not started")
        return self._selector

    def _wait(self, conn: _Conn, deadline: float | None = None) -> None:
        if deadline is not None:
            conn.deadline = deadline
        self._reactor_selector().register(conn.sock, selectors.EVENT_READ, conn)
        self._waiting[conn] = None  # at the end: deadlines stay in order

    def _unwait(self, conn: _Conn) -> None:
        if conn in self._waiting:
            del self._waiting[conn]
            self._reactor_selector().unregister(conn.sock)

    def _close(self, conn: _Conn) -> None:
        self._unwait(conn)
        with self._lock:
            self._conns.discard(conn.sock)
        conn.sock.close()

    def _send_now(self, conn: _Conn, reply: dict[str, Any]) -> bool:
        """Send a short reply without blocking; False if it did not all fit."""
        data = encode(reply)
        try:
            return conn.sock.send(data) == len(data)
        except OSError:
            return False

    def _answer_and_close(self, conn: _Conn, reply: dict[str, Any]) -> None:
        self._send_now(conn, reply)
        self._close(conn)

    def _too_long(self) -> dict[str, Any]:
        return error_reply(
            "bad_request", f"request longer than {self.max_request} bytes; closing the connection"
        )

    def _busy(self) -> dict[str, Any]:
        return error_reply(
            "busy",
            f"too many control requests at once (at most {self.max_clients}); try again shortly",
        )

    def _note_shed(self, what: str) -> None:
        self._shed[what] += 1
        self._log_shed()

    def _log_shed(self) -> None:
        """A warning at the first refusal, then at most one per SHED_LOG_EVERY with counts."""
        if not any(self._shed.values()):
            return
        now = time.monotonic()
        if now - self._shed_logged < SHED_LOG_EVERY:
            return
        self._shed_logged = now
        counts, self._shed = self._shed, dict.fromkeys(self._shed, 0)
        self.log.warning(
            "control_busy",
            busy=counts["busy"],
            dropped=counts["dropped"],
            slots=self.max_clients,
            reserved=self.reserved,
            waiting=len(self._waiting),
        )

    # ------------------------------------------------------------ slots and workers

    def _acquire(self, *, may_reserve: bool) -> bool | None:
        """A slot: False a shared one, True a reserved one, None none left."""
        with self._lock:
            if self._shared_used < self.max_clients:
                self._shared_used += 1
                return False
            if may_reserve and self._reserve_used < self.reserved:
                self._reserve_used += 1
                return True
            return None

    def _release(self, reserved: bool) -> None:
        with self._lock:
            if reserved:
                self._reserve_used -= 1
            else:
                self._shared_used -= 1

    def _dispatch(self, conn: _Conn, request: Request, reserved: bool) -> None:
        pool = self._pool
        with self._lock:
            # A worker per slot in use at most: the thread count stays bounded.
            start = pool.workers < self._shared_used + self._reserve_used
            if start:
                pool.workers += 1
        if start:
            try:
                threading.Thread(
                    target=self._worker, args=(pool,), name="control-client", daemon=True
                ).start()
            except RuntimeError:  # cannot start a thread: out of resources
                with self._lock:
                    pool.workers -= 1
                self._release(reserved)
                self._note_shed("busy")
                self._answer_and_close(conn, self._busy())
                return
        pool.jobs.put((conn, request, reserved))

    def _worker(self, pool: _Pool) -> None:
        try:
            while (job := pool.jobs.get()) is not None:
                self._work(*job)
        finally:
            with self._lock:
                pool.workers -= 1

    def _work(self, conn: _Conn, request: Request, reserved: bool) -> None:
        """Run ``request``, then any further lines already read; then give the connection
        back to the reactor (it holds no slot while it waits for the next request)."""
        keep = False
        peer = conn.peer or Peer(pid=-1, uid=-1, gid=-1)
        try:
            conn.sock.settimeout(self.reply_timeout)
            checked: Request | dict[str, Any] = request
            while not self._stop.is_set():
                if isinstance(checked, Request):
                    conn.privileged = conn.privileged or checked.mutating
                    checked = self._call(checked, peer)
                if not self._send(conn.sock, checked):
                    return
                conn.served = True
                try:
                    line = conn.next_line(self.max_request)
                except _TooLong:
                    self._send(conn.sock, self._too_long())
                    return
                if line is None:
                    keep = not conn.eof
                    return
                checked = self._check(line, peer)
        except Exception as err:  # noqa: BLE001 - one connection must never take the server down
            self.log.error("control_connection_failed", why=f"{type(err).__name__}: {err}")
        finally:
            self._release(reserved)
            with self._lock:
                # Under the lock: once stopping, the reactor takes nothing back any more.
                keep = keep and not self._stop.is_set()
                if keep:
                    self._returned.append(conn)
                else:
                    self._conns.discard(conn.sock)
            if keep:
                self._wake()
            else:
                conn.sock.close()

    def _send(self, conn: socket.socket, reply: dict[str, Any]) -> bool:
        try:
            data = encode(reply)
        except (TypeError, ValueError) as err:  # e.g. a circular result
            data = encode(error_reply("internal", f"cannot encode the reply: {err}"))
        try:
            conn.sendall(data)
        except OSError:
            return False
        return True

    # ------------------------------------------------------------ requests

    def _check(self, line: bytes, peer: Peer) -> Request | dict[str, Any]:
        """The validated, authorised request; else the error reply for it."""
        try:
            request = parse_request(line)
        except ControlRefused as err:
            self.log.debug("control_bad_request", uid=peer.uid, pid=peer.pid, why=str(err))
            return error_reply(err.kind, str(err))
        denied = self._authorize(request, peer)
        if denied is not None:
            self.log.warning(
                "control_denied", cmd=request.cmd, uid=peer.uid, pid=peer.pid, why=denied
            )
            return error_reply("permission_denied", denied)
        return request

    def _call(self, request: Request, peer: Peer) -> dict[str, Any]:
        """The handler's reply to an authorised request."""
        if request.mutating:
            self.log.info(
                "control",
                cmd=request.cmd,
                services=",".join(request.services) or None,
                all=request.all or None,
                reason=request.reason or None,
                uid=peer.uid,
                pid=peer.pid,
            )
        try:
            result = self._handler(request, peer)
        except ControlRefused as err:
            kind = err.kind if err.kind in ERROR_CODES else "refused"
            return error_reply(kind, str(err))
        except ControlError as err:
            return error_reply("refused", str(err))
        except Exception as err:  # noqa: BLE001 - reported to the client and logged
            text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            self.log.error("control_handler_failed", cmd=request.cmd, why=text)
            return error_reply("internal", f"internal error: {text}")
        if not isinstance(result, dict):
            self.log.error("control_handler_failed", cmd=request.cmd, why="result is not a dict")
            return error_reply("internal", "internal error: the handler returned no object")
        return ok_reply(result)

    def _authorize(self, request: Request, peer: Peer) -> str | None:
        """None if allowed, else the refusal text."""
        if not request.mutating or peer.uid in (0, self._own_uid):
            return None
        if self._gid is not None and (peer.gid == self._gid or self._gid in peer.groups):
            return None
        if self.group is None:
            return f"permission denied: uid {peer.uid} is not root (no control_group is configured)"
        return f"permission denied: uid {peer.uid} is not root and not in group {self.group}"


# ---------------------------------------------------------------- the daemon's handler


class ControlledDaemon(Protocol):
    """What :func:`daemon_handler` needs of :class:`announcer.daemon.Daemon`."""

    def call(self, fn: Callable[[], Any], timeout: float = 5.0) -> Any: ...

    def snapshot(self) -> dict[str, Any]: ...

    def drain(self, name: str, source: str, reason: str = "") -> bool: ...

    def undrain(self, name: str, source: str) -> bool: ...

    def commit(self) -> str | None: ...

    def reload(self) -> dict[str, Any]: ...


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return f"uid {uid}"


def daemon_handler(
    daemon: ControlledDaemon,
    *,
    source: str = OPERATOR_SOURCE,
    call_timeout: float = 4.0,
) -> Handler:
    """The handler a :class:`ControlServer` serves a :class:`~announcer.daemon.Daemon` with.

    Every command but ``ping`` runs on the daemon's main thread through
    ``daemon.call``. Drains made here use drain source ``source``; an undrain
    lifts only that source, so a maintenance-file drain stays until the file
    goes. ``call_timeout`` stays under the client's 5 s so a stuck main loop is
    answered "busy" rather than left to time out. ``drain``/``undrain`` answer
    ``{"services": {name: {...status fields, "changed": bool}}, "state_error": ...}``
    (``state_error``: why the change could not be saved to the state file, or
    null); names are checked before anything changes.
    """

    def on_main(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        try:
            result: dict[str, Any] = daemon.call(fn, call_timeout)
        except queue.Empty:
            raise ControlRefused(
                f"the daemon's main loop did not answer within {call_timeout:g}s "
                "(the request may still take effect); check with status",
                "busy",
            ) from None
        return result

    def pick(request: Request, snap: dict[str, Any]) -> list[str]:
        known: dict[str, Any] = snap.get("services", {})
        if request.all:
            return list(known)
        missing = [n for n in request.services if n not in known]
        if missing:
            raise ControlRefused(
                f"unknown service{'s' if len(missing) > 1 else ''} "
                f"{', '.join(repr(n) for n in missing)} (known: {', '.join(known) or 'none'})",
                "unknown_service",
            )
        return list(request.services)

    def status(request: Request) -> dict[str, Any]:
        snap = daemon.snapshot()
        if request.services:
            names = pick(request, snap)
            snap["services"] = {n: snap["services"][n] for n in names}
        return snap

    def change(request: Request, reason: str) -> dict[str, Any]:
        before = daemon.snapshot()
        names = pick(request, before)
        used = STOP_SOURCE if request.stop else source
        for name in names:
            if request.cmd == "drain":
                daemon.drain(name, used, reason)
            else:
                daemon.undrain(name, used)
        # Saved and sent before answering: the answer says whether the change was saved.
        unsaved = daemon.commit()
        after = daemon.snapshot()["services"]
        out: dict[str, Any] = {}
        for name in names:
            had = used in before["services"][name].get("drain_sources", ())
            out[name] = {**after.get(name, {}), "changed": had != (request.cmd == "drain")}
        return {"services": out, "state_error": unsaved}

    def reload() -> dict[str, Any]:
        result = dict(daemon.reload())
        if result.pop("ok", True) is False:
            raise ControlRefused(
                f"reload failed; still running on the previous config:\n{result.get('error')}",
                "refused",
            )
        return result

    def handle(request: Request, peer: Peer) -> dict[str, Any]:
        if request.cmd == "ping":
            return {"pong": True, "pid": os.getpid(), "protocol": PROTOCOL_VERSION}
        if request.cmd == "status":
            return on_main(lambda: status(request))
        if request.cmd == "reload":
            return on_main(reload)
        # Look the user up here, not on the main thread (NSS may be slow).
        default = "service stop" if request.stop else f"drained by {_user(peer.uid)}"
        reason = request.reason or default
        return on_main(lambda: change(request, reason))

    return handle


__all__ = [
    "COMMANDS",
    "ERROR_CODES",
    "MUTATING",
    "PROTOCOL_VERSION",
    "ControlRefused",
    "ControlServer",
    "ControlledDaemon",
    "Handler",
    "Peer",
    "Request",
    "daemon_handler",
    "encode",
    "parse_request",
    "peer_of",
    "supplementary_groups",
]
