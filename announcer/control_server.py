"""The control socket's server: the socket file, its connections, and how many requests
run at once. What the requests are is :mod:`announcer.control`.

The parts, each owning one thing:

- :class:`ListeningSocket`: the socket file. It is made mode 0660, group
  ``control_group``, without a moment in which anyone else could connect: bound
  inside a fresh private (0700) directory next to the final path, given its mode
  and group there, and then renamed into place (a stale socket is replaced, a
  live daemon's is not). The process umask (ExaBGP starts us with 0137) and
  other threads are left alone. At the end it is unlinked only if still ours.
- :class:`Admission`: each request line's validation and authorisation, the
  handler's call, and the reply.
- :class:`Reactor`: the one thread that accepts connections and reads request
  lines without blocking, with a deadline per line and a cap on waiting
  connections. It answers what needs no handler (malformed, not allowed) itself.
- :class:`WorkerPool`: the slots and the worker threads that run requests in them.
- :class:`Connections`: the connections open, shared by the reactor and the workers.
- :class:`ControlServer`: puts them together; ``start()`` and ``close()``.

Capacity. A request for the daemon runs on a worker thread in one of
``max_clients`` (16) shared slots or, for a mutating request of an authorised
peer and whatever follows on that connection (``drain --wait``'s polls), in one
of ``reserved`` (4) more: a flood of reads cannot keep a drain out. With no slot
free the answer is ``busy`` and the connection is closed; the ``announcer``
command tries again with growing pauses for up to its timeout (5 s).
Malformed and unauthorised requests need no slot. A connection holds a slot only
while its request runs. It has ``timeout`` (1 s) for each request line, from its
connect or from its last reply, and is then closed (without a reply if it sent
nothing, else ``bad_request``). At most ``max_pending`` (64) connections wait for
a request line; a new one makes room by dropping the oldest that never sent
anything (before one between requests, before one that drained). So there are
never more than 1 + 16 + 4 threads and about 64 + 20 connections, however many
clients come; the kernel queues up to 128 more (``LISTEN_BACKLOG``), after which
connect() fails with EAGAIN, which the command also waits out. Lines are capped
at ``max_request`` bytes. Nothing a client sends can block the daemon's main loop
or stop the server.
"""

from __future__ import annotations

import contextlib
import grp
import json
import math
import os
import queue
import selectors
import socket
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from announcer.control import Handler, Peer, Request, parse_request
from announcer.errors import ControlError
from announcer.fsutil import make_dirs
from announcer.log import Logger
from announcer.protocol import (
    ERROR_CODES,
    PROTOCOL_VERSION,
    ControlRefused,
    LineReader,
    LineTooLong,
    encode,
)

SOCKET_MODE: Final = 0o660
DIR_MODE: Final = 0o750
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH: Final = 107
LISTEN_BACKLOG: Final = 128
"""Connections the kernel queues before we accept them (a full queue: EAGAIN on connect)."""
ACCEPT_BATCH: Final = 16
"""Connections accepted per turn before the reactor reads from the others again."""
SHED_LOG_EVERY: Final = 5.0
"""Seconds between two warnings about connections refused or dropped for capacity."""

NO_PEER: Final = Peer(pid=-1, uid=-1, gid=-1)
"""A peer whose credentials could not be read (it has gone)."""

_LISTENER: Final = "listener"
_WAKER: Final = "waker"


# ---------------------------------------------------------------- replies


def error_reply(kind: str, message: str) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "ok": False, "code": kind, "error": message}


def ok_reply(result: Mapping[str, Any]) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "ok": True, "result": dict(result)}


def too_long_reply(limit: int) -> dict[str, Any]:
    return error_reply("bad_request", f"request longer than {limit} bytes; closing the connection")


def busy_reply(slots: int) -> dict[str, Any]:
    return error_reply(
        "busy", f"too many control requests at once (at most {slots}); try again shortly"
    )


def too_slow_reply(timeout: float) -> dict[str, Any]:
    return error_reply(
        "bad_request", f"no complete request line within {timeout:g}s; closing the connection"
    )


def send_now(sock: socket.socket, reply: dict[str, Any]) -> bool:
    """Send a short reply on a non-blocking socket; False if it did not all fit."""
    data = encode(reply)
    try:
        return sock.send(data) == len(data)
    except OSError:
        return False


def send_all(sock: socket.socket, reply: dict[str, Any]) -> bool:
    """Send a reply, blocking up to the socket's timeout; False if the client is gone."""
    try:
        data = encode(reply)
    except (TypeError, ValueError) as err:  # e.g. a circular result
        data = encode(error_reply("internal", f"cannot encode the reply: {err}"))
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True


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


# ---------------------------------------------------------------- the socket file


class ListeningSocket:
    """The socket file at ``path``: made private, given its mode and group, renamed into
    place (see the module docstring); unlinked by :meth:`close` only if still ours."""

    def __init__(self, path: Path, *, group: str | None, gid: int | None, log: Logger) -> None:
        self.path = path
        self.group = group
        self.gid = gid
        self.log = log
        self._ident: tuple[int, int] | None = None

    def open(self) -> socket.socket:
        """The listening socket, non-blocking, at ``path``.

        Raises :class:`ControlError` when the socket cannot be made, or when
        another daemon is alive and listening on ``path``.
        """
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
            self._bind(sock, tmp)
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
        return sock

    def _bind(self, sock: socket.socket, tmp: str) -> None:
        """Bind and listen at ``tmp`` (in the private directory), mode and group set."""
        if len(os.fsencode(tmp)) > MAX_SOCKET_PATH:
            raise ControlError(
                f"control_socket {self.path}: its directory's path is too long for a "
                "Unix socket; use a shorter control_socket",
                code=2,
            )
        sock.bind(tmp)
        os.chmod(tmp, SOCKET_MODE)
        if self.gid is not None:
            try:
                os.chown(tmp, -1, self.gid)
            except PermissionError as err:
                raise ControlError(
                    f"cannot give {self.path} to group {self.group}: {err.strerror} "
                    f"(the daemon must run as root or as a member of {self.group})",
                    code=2,
                ) from err
        sock.listen(LISTEN_BACKLOG)

    def close(self) -> None:
        """Unlink the socket file if it is still the one :meth:`open` made."""
        if self._ident is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._ident:
                os.unlink(self.path)
        except OSError:
            pass
        self._ident = None

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
            if self.gid is not None:
                os.chown(parent, -1, self.gid)
        except OSError as err:
            raise ControlError(f"cannot create directory {parent}: {err.strerror}", code=2) from err

    def _warn_if_unreachable(self, parent: Path) -> None:
        if self.gid is None:
            return
        try:
            st = os.stat(parent)
        except OSError:
            return
        other_x = st.st_mode & stat.S_IXOTH
        group_x = st.st_gid == self.gid and st.st_mode & stat.S_IXGRP
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
                reader = LineReader(4096)
                reader.feed(probe.recv(4096))
                pid = json.loads(reader.line() or b"").get("result", {}).get("pid")
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


# ---------------------------------------------------------------- requests


class Admission:
    """Who may do what, and the reply to each request line.

    ``handler(request, peer)`` runs after the request was validated and the peer
    authorised; it returns the ``result`` object, or raises :class:`ControlRefused`
    for an error reply with that code. Any other exception is logged and answered
    with code ``internal``.
    """

    def __init__(self, handler: Handler, *, group: str | None, log: Logger) -> None:
        self.handler = handler
        self.group = group
        self.gid: int | None = None
        """The group's id, once the server resolved it."""
        self.log = log
        self._own_uid = os.geteuid()

    def check(self, line: bytes, peer: Peer) -> Request | dict[str, Any]:
        """The validated, authorised request; else the error reply for it."""
        try:
            request = parse_request(line)
        except ControlRefused as err:
            self.log.debug("control_bad_request", uid=peer.uid, pid=peer.pid, why=str(err))
            return error_reply(err.kind, str(err))
        denied = self.authorize(request, peer)
        if denied is not None:
            self.log.warning(
                "control_denied", cmd=request.cmd, uid=peer.uid, pid=peer.pid, why=denied
            )
            return error_reply("permission_denied", denied)
        return request

    def authorize(self, request: Request, peer: Peer) -> str | None:
        """None if allowed, else the refusal text."""
        if not request.mutating or peer.uid in (0, self._own_uid):
            return None
        if self.gid is not None and (peer.gid == self.gid or self.gid in peer.groups):
            return None
        if self.group is None:
            return f"permission denied: uid {peer.uid} is not root (no control_group is configured)"
        return f"permission denied: uid {peer.uid} is not root and not in group {self.group}"

    def call(self, request: Request, peer: Peer) -> dict[str, Any]:
        """The handler's reply to an authorised request."""
        if request.mutating:
            self.log.info(
                "control", cmd=request.cmd, **request.log_fields(), uid=peer.uid, pid=peer.pid
            )
        try:
            result = self.handler(request, peer)
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


# ---------------------------------------------------------------- connections


@dataclass(frozen=True, slots=True)
class Limits:
    """What a :class:`ControlServer` serves within (see the module docstring)."""

    max_request: int = 65536
    """Bytes in a request line."""
    timeout: float = 1.0
    """Seconds a connection has for each request line, from its connect or its last reply."""
    max_clients: int = 16
    """Requests in the handler at once, for anyone."""
    reserved: int = 4
    """More requests in the handler at once, only for mutating requests of authorised peers."""
    max_pending: int = 64
    """Connections waiting for a request line (connected, or between requests)."""
    reply_timeout: float = 5.0
    """Seconds a client has to take its reply before it is dropped."""


class _Conn:
    """One client connection: its unread bytes, who it is, and how it has behaved."""

    __slots__ = ("deadline", "lines", "peer", "privileged", "served", "sock")

    def __init__(self, sock: socket.socket, deadline: float, limit: int) -> None:
        self.sock = sock
        self.lines = LineReader(limit)
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


class Connections:
    """The connections open, shared by the reactor and the workers (under ``lock``): a
    worker done with one hands it back, and the reactor, woken, waits for its next line.
    ``closing`` is set when the server stops: nothing is handed back any more."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self._socks: set[socket.socket] = set()
        self._returned: list[_Conn] = []
        self.wake_r, self._wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    @property
    def count(self) -> int:
        with self.lock:
            return len(self._socks)

    def add(self, sock: socket.socket) -> None:
        with self.lock:
            self._socks.add(sock)

    def discard(self, sock: socket.socket) -> None:
        with self.lock:
            self._socks.discard(sock)

    def finish(self, conn: _Conn, keep: bool) -> None:
        """A worker is done with ``conn``: back to the reactor if ``keep``, else closed."""
        with self.lock:
            # Under the lock: once closing, the reactor takes nothing back any more.
            keep = keep and not self.closing.is_set()
            if keep:
                self._returned.append(conn)
            else:
                self._socks.discard(conn.sock)
        if keep:
            self.wake()
        else:
            conn.sock.close()

    def take_back(self) -> list[_Conn]:
        with self.lock:
            back, self._returned = self._returned, []
        return back

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full: the reactor is due to wake anyway
            self._wake_w.send(b"\0")

    def shutdown(self) -> None:
        """Wake workers blocked sending to a client; close the waker."""
        with self.lock:
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._wake_w.close()


_Job = tuple[_Conn, Request, bool]
"""A connection handed to a worker: the request to run first, and whether it holds a
reserved slot (else a shared one)."""


class WorkerPool:
    """The slots, ``max_clients`` shared and ``reserved`` more for authorised mutating
    requests, and the worker threads that run requests in them: at most one thread per
    slot in use. A worker serves its connection until no complete line is left, then
    hands it back (holding no slot while it waits for its next request)."""

    def __init__(
        self, admission: Admission, connections: Connections, limits: Limits, log: Logger
    ) -> None:
        self.admission = admission
        self.connections = connections
        self.limits = limits
        self.log = log
        self._lock = threading.Lock()
        self._shared_used = 0
        self._reserve_used = 0
        self._workers = 0
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()

    @property
    def running(self) -> int:
        """Requests holding a slot (shared or reserved) right now."""
        with self._lock:
            return self._shared_used + self._reserve_used

    def acquire(self, *, may_reserve: bool) -> bool | None:
        """A slot: False a shared one, True a reserved one, None none left."""
        with self._lock:
            if self._shared_used < self.limits.max_clients:
                self._shared_used += 1
                return False
            if may_reserve and self._reserve_used < self.limits.reserved:
                self._reserve_used += 1
                return True
            return None

    def release(self, reserved: bool) -> None:
        with self._lock:
            if reserved:
                self._reserve_used -= 1
            else:
                self._shared_used -= 1

    def dispatch(self, conn: _Conn, request: Request, reserved: bool) -> bool:
        """Run ``request`` on a worker in the slot acquired; False (the slot released) if no
        thread could be started."""
        with self._lock:
            start = self._workers < self._shared_used + self._reserve_used
            if start:
                self._workers += 1
        if start:
            try:
                threading.Thread(target=self._worker, name="control-client", daemon=True).start()
            except RuntimeError:  # cannot start a thread: out of resources
                with self._lock:
                    self._workers -= 1
                self.release(reserved)
                return False
        self._jobs.put((conn, request, reserved))
        return True

    def stop(self) -> None:
        """Every worker ends once it is done with its connection."""
        with self._lock:
            workers = self._workers
        for _ in range(workers):
            self._jobs.put(None)

    def _worker(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                self._serve(*job)
        finally:
            with self._lock:
                self._workers -= 1

    def _serve(self, conn: _Conn, request: Request, reserved: bool) -> None:
        """Run ``request``, then any further lines already read; then hand the connection
        back to the reactor."""
        keep = False
        peer = conn.peer or NO_PEER
        closing = self.connections.closing
        try:
            conn.sock.settimeout(self.limits.reply_timeout)
            checked: Request | dict[str, Any] = request
            while not closing.is_set():
                if isinstance(checked, Request):
                    conn.privileged = conn.privileged or checked.mutating
                    checked = self.admission.call(checked, peer)
                if not send_all(conn.sock, checked):
                    return
                conn.served = True
                try:
                    line = conn.lines.line()
                except LineTooLong:
                    send_all(conn.sock, too_long_reply(self.limits.max_request))
                    return
                if line is None:
                    keep = not conn.lines.eof
                    return
                checked = self.admission.check(line, peer)
        except Exception as err:  # noqa: BLE001 - one connection must never take the server down
            self.log.error("control_connection_failed", why=f"{type(err).__name__}: {err}")
        finally:
            self.release(reserved)
            self.connections.finish(conn, keep)


# ---------------------------------------------------------------- the reactor


class ShedLog:
    """Counts connections refused ("busy") or dropped for capacity: a warning at the
    first, then at most one per SHED_LOG_EVERY seconds with the counts."""

    def __init__(self, log: Logger, limits: Limits) -> None:
        self.log = log
        self.limits = limits
        self._counts = {"busy": 0, "dropped": 0}
        self._logged = -math.inf

    def note(self, what: str, waiting: int) -> None:
        self._counts[what] += 1
        self.flush(waiting)

    def flush(self, waiting: int) -> None:
        if not any(self._counts.values()):
            return
        now = time.monotonic()
        if now - self._logged < SHED_LOG_EVERY:
            return
        self._logged = now
        counts, self._counts = self._counts, dict.fromkeys(self._counts, 0)
        self.log.warning(
            "control_busy",
            busy=counts["busy"],
            dropped=counts["dropped"],
            slots=self.limits.max_clients,
            reserved=self.limits.reserved,
            waiting=waiting,
        )


class Reactor:
    """The one thread that accepts connections and reads request lines without blocking.

    A line that needs no handler (malformed, not allowed) is answered here; one that
    does goes to the :class:`WorkerPool` in a slot, or is answered "busy". Each
    connection waiting for a line has ``timeout`` seconds for it; at most
    ``max_pending`` wait, past that the least useful one is dropped.
    """

    def __init__(
        self, listener: socket.socket, pool: WorkerPool, connections: Connections, log: Logger
    ) -> None:
        self.listener = listener
        self.pool = pool
        self.admission = pool.admission
        self.connections = connections
        self.limits = limits = pool.limits
        self.log = log
        self.shed = ShedLog(log, limits)
        self._closing = connections.closing
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, _LISTENER)
        self._selector.register(connections.wake_r, selectors.EVENT_READ, _WAKER)
        self._waiting: dict[_Conn, None] = {}
        """Connections waiting for a request line, oldest deadline first."""

    def run(self) -> None:
        try:
            while not self._closing.is_set():
                try:
                    self._turn()
                except Exception as err:  # noqa: BLE001 - the reactor must survive anything
                    self.log.error("control_failed", why=f"{type(err).__name__}: {err}")
                    self._closing.wait(0.05)
        finally:
            for conn in [*self._waiting, *self.connections.take_back()]:
                self._close(conn)
            self._selector.close()
            self.listener.close()
            self.connections.wake_r.close()

    def _turn(self) -> None:
        timeout = SHED_LOG_EVERY
        if self._waiting:
            first = next(iter(self._waiting))
            timeout = min(timeout, max(0.0, first.deadline - time.monotonic()))
        accept = False
        # Read what has arrived before accepting more: a full house drops the idle ones.
        for key, _ in self._selector.select(timeout):
            if key.data == _LISTENER:
                accept = True
            elif key.data == _WAKER:
                with contextlib.suppress(OSError):
                    self.connections.wake_r.recv(4096)
            elif key.data in self._waiting:  # not dropped earlier in this turn
                self._read(key.data)
        if accept:
            self._accept()
        self._take_back()
        self._expire()
        self.shed.flush(len(self._waiting))

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if self._closing.is_set():
                    return
                # EMFILE and friends: back off instead of spinning; never die.
                self.log.error("control_accept_failed", why=str(err))
                self._closing.wait(0.1)
                return
            conn = _Conn(sock, time.monotonic() + self.limits.timeout, self.limits.max_request)
            self.connections.add(sock)
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
        conn.lines.feed(chunk)
        self._serve(conn)
        return True

    def _serve(self, conn: _Conn) -> None:
        """Answer what needs no handler here; hand a request for the handler to a worker."""
        while True:
            try:
                line = conn.lines.line()
            except LineTooLong:
                self._answer_and_close(conn, too_long_reply(self.limits.max_request))
                return
            if line is None:
                if conn.lines.eof:
                    self._close(conn)
                return
            if conn.peer is None:
                try:
                    conn.peer = peer_of(conn.sock)
                except OSError:
                    conn.peer = NO_PEER
            checked = self.admission.check(line, conn.peer)
            if not isinstance(checked, Request):  # malformed or not allowed: no slot needed
                if not send_now(conn.sock, checked):
                    self._close(conn)
                    return
                # Answered: a new deadline for the next line, at the end of the queue.
                del self._waiting[conn]
                conn.deadline = time.monotonic() + self.limits.timeout
                self._waiting[conn] = None
                continue
            reserved = self.pool.acquire(may_reserve=checked.mutating or conn.privileged)
            if reserved is not None:
                self._unwait(conn)
                if self.pool.dispatch(conn, checked, reserved):
                    return
            self.shed.note("busy", len(self._waiting))
            self._answer_and_close(conn, busy_reply(self.limits.max_clients))
            return

    def _take_back(self) -> None:
        """Connections the workers are done with wait for their next request line."""
        now = time.monotonic()
        for conn in self.connections.take_back():
            if self._closing.is_set():
                self._close(conn)
                continue
            conn.sock.setblocking(False)
            self._make_room()
            self._wait(conn, now + self.limits.timeout)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._waiting:
            conn = next(iter(self._waiting))  # the oldest deadline
            if conn.deadline > now:
                return
            if conn.lines:
                self._answer_and_close(conn, too_slow_reply(self.limits.timeout))
            else:
                self._close(conn)  # an idle connection: close quietly, nothing was asked

    def _make_room(self) -> None:
        """Below ``max_pending`` waiting connections: drop the oldest of those that have
        given least (a squatter before a client between two requests, before one that
        drained). One whose request has just arrived is served instead."""
        for tries in range(4):
            if len(self._waiting) < self.limits.max_pending:
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
                self.shed.note("dropped", len(self._waiting))
                self._close(victim)

    def _wait(self, conn: _Conn, deadline: float | None = None) -> None:
        if deadline is not None:
            conn.deadline = deadline
        self._selector.register(conn.sock, selectors.EVENT_READ, conn)
        self._waiting[conn] = None  # at the end: deadlines stay in order

    def _unwait(self, conn: _Conn) -> None:
        if conn in self._waiting:
            del self._waiting[conn]
            self._selector.unregister(conn.sock)

    def _close(self, conn: _Conn) -> None:
        self._unwait(conn)
        self.connections.discard(conn.sock)
        conn.sock.close()

    def _answer_and_close(self, conn: _Conn, reply: dict[str, Any]) -> None:
        send_now(conn.sock, reply)
        self._close(conn)


# ---------------------------------------------------------------- the server


@dataclass(frozen=True, slots=True)
class _Serving:
    """The parts of one :meth:`ControlServer.start`, until its :meth:`ControlServer.close`."""

    socket_file: ListeningSocket
    listener: socket.socket
    connections: Connections
    pool: WorkerPool
    thread: threading.Thread


class ControlServer:
    """Serves the control socket at ``path`` with ``handler`` (see the module docstring
    for the parts and :class:`Admission` for the handler's contract), within
    :attr:`limits` (the keyword arguments of the same names, see :class:`Limits`).
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
        self.group = group
        self.log = log
        self.limits = Limits(
            max_request=max_request,
            timeout=timeout,
            max_clients=max_clients,
            reserved=reserved,
            max_pending=max(1, max_pending),
            reply_timeout=reply_timeout,
        )
        self.admission = Admission(handler, group=group, log=log)
        self._serving: _Serving | None = None

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Create the socket and start accepting connections.

        Raises :class:`ControlError` when the socket cannot be made, or when
        another daemon is alive and listening on ``path``.
        """
        if self._serving is not None:
            raise ControlError("control server already started")
        gid = self.admission.gid = resolve_group(self.group)
        socket_file = ListeningSocket(self.path, group=self.group, gid=gid, log=self.log)
        listener = socket_file.open()
        connections = Connections()
        pool = WorkerPool(self.admission, connections, self.limits, self.log)
        reactor = Reactor(listener, pool, connections, self.log)
        thread = threading.Thread(target=reactor.run, name="control", daemon=True)
        self._serving = _Serving(socket_file, listener, connections, pool, thread)
        thread.start()
        self.log.info(
            "control_listening",
            path=str(self.path),
            group=self.group,
            mode=f"{SOCKET_MODE:04o}",
            slots=self.limits.max_clients,
            reserved=self.limits.reserved,
            max_pending=self.limits.max_pending,
            timeout=self.limits.timeout,
        )

    def close(self) -> None:
        """Stop serving; unlink the socket only if it is still the one we created."""
        serving, self._serving = self._serving, None
        if serving is None:
            return
        serving.connections.closing.set()
        serving.socket_file.close()
        serving.connections.wake()
        if serving.thread is not threading.current_thread():
            serving.thread.join(timeout=2.0)
        serving.listener.close()  # the reactor closed it on its way out; for a stuck reactor
        serving.connections.shutdown()
        serving.pool.stop()

    @property
    def clients(self) -> int:
        """Open connections: waiting for a request, or being served."""
        return 0 if self._serving is None else self._serving.connections.count

    @property
    def running(self) -> int:
        """Requests holding a slot (shared or reserved) right now."""
        return 0 if self._serving is None else self._serving.pool.running


__all__ = [
    "LISTEN_BACKLOG",
    "Admission",
    "Connections",
    "ControlServer",
    "ListeningSocket",
    "Reactor",
    "WorkerPool",
    "peer_of",
    "resolve_group",
    "supplementary_groups",
]
