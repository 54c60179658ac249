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
``refused`` (e.g. a reload with a broken config), ``busy`` (too many clients,
or the main loop did not answer in time) and ``internal`` (the handler raised).

Who may do what: ``status`` and ``ping`` anyone who can connect; ``drain``,
``undrain`` and ``reload`` root, the daemon's own user, and members (primary or
supplementary) of the configured group. Peers are identified by the kernel
(``SO_PEERCRED``), supplementary groups read from ``/proc/PID/status``.

The socket is made mode 0660, group ``control_group``, without a moment in
which anyone else could connect: it is bound inside a fresh private (0700)
directory next to the final path, given its mode and group there, and then
renamed into place. The process umask (ExaBGP starts us with 0137) and other
threads are left alone.

Each connection is served on its own thread with a deadline per request line
and a size cap (a connection idle for that long is closed without a reply);
nothing a client sends can block the daemon's main loop or stop the server.
The handler is the only code that touches daemon state and
must marshal onto the daemon's main thread itself (:func:`daemon_handler` does,
with ``Daemon.call``).
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import queue
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


class _TooLong(Exception):
    pass


class _TooSlow(Exception):
    pass


class _LineReader:
    """Reads newline-terminated requests with a size cap and a deadline per line."""

    def __init__(self, conn: socket.socket, limit: int, timeout: float) -> None:
        self._conn = conn
        self._limit = limit
        self._timeout = timeout
        self._buf = bytearray()
        self._eof = False

    @property
    def pending(self) -> bool:
        """Part of a request has arrived."""
        return bool(self._buf)

    def readline(self) -> bytes | None:
        """The next line without its newline; None at a clean end of the connection."""
        deadline = time.monotonic() + self._timeout
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                if len(line) > self._limit:
                    raise _TooLong
                return line
            if len(self._buf) > self._limit:
                raise _TooLong
            if self._eof:
                if not self._buf:
                    return None
                # A last line without a newline (the client half-closed): still answer it.
                line = bytes(self._buf)
                self._buf.clear()
                return line
            left = deadline - time.monotonic()
            if left <= 0:
                raise _TooSlow
            self._conn.settimeout(left)
            try:
                chunk = self._conn.recv(65536)
            except TimeoutError:
                raise _TooSlow from None
            if chunk:
                self._buf += chunk
            else:
                self._eof = True


class ControlServer:
    """Serves the control socket at ``path`` on daemon threads; see the module docstring.

    ``handler(request, peer)`` runs on the connection's thread after the request
    was validated and the peer authorised; it returns the ``result`` object, or
    raises :class:`ControlRefused` for an error reply with that code. Any other
    exception is logged and answered with code ``internal``.
    """

    def __init__(
        self,
        path: Path,
        handler: Handler,
        *,
        group: str | None,
        log: Logger,
        max_request: int = 65536,
        timeout: float = 5.0,
        max_clients: int = 16,
    ) -> None:
        self.path = Path(path)
        self._handler = handler
        self.group = group
        self.log = log
        self.max_request = max_request
        self.timeout = timeout
        self.max_clients = max_clients
        self._gid: int | None = None
        self._own_uid = os.geteuid()
        self._sock: socket.socket | None = None
        self._ident: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._thread: threading.Thread | None = None

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
            sock.listen(max(16, self.max_clients * 2))
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
        sock.settimeout(0.5)
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(target=self._accept_loop, name="control", daemon=True)
        self._thread.start()
        self.log.info(
            "control_listening",
            path=str(path),
            group=self.group,
            mode=f"{SOCKET_MODE:04o}",
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
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        self._thread = None

    @property
    def clients(self) -> int:
        """Connections being served right now."""
        with self._lock:
            return len(self._conns)

    # ------------------------------------------------------------ serving

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            sock = self._sock
            if sock is None:
                return
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError as err:
                if self._stop.is_set():
                    return
                # EMFILE and friends: back off instead of spinning; never die.
                self.log.error("control_accept_failed", why=str(err))
                time.sleep(0.1)
                continue
            try:
                self._admit(conn)
            except Exception as err:  # noqa: BLE001 - the accept loop must survive anything
                self.log.error("control_accept_failed", why=f"{type(err).__name__}: {err}")
                conn.close()

    def _admit(self, conn: socket.socket) -> None:
        with self._lock:
            busy = len(self._conns) >= self.max_clients
            if not busy:
                self._conns.add(conn)
        if busy:
            self._reject_busy(conn)
            return
        thread = threading.Thread(
            target=self._serve, args=(conn,), name="control-client", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # cannot start a thread: out of resources
            with self._lock:
                self._conns.discard(conn)
            self._reject_busy(conn)

    def _reject_busy(self, conn: socket.socket) -> None:
        self.log.warning("control_busy", clients=self.max_clients)
        try:
            conn.setblocking(False)  # a fresh connection's buffer is empty: this never blocks
            conn.send(
                encode(
                    error_reply(
                        "busy",
                        f"too many control connections (at most {self.max_clients}); "
                        "try again shortly",
                    )
                )
            )
        except OSError:
            pass
        finally:
            conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            try:
                peer = peer_of(conn)
            except OSError:
                peer = Peer(pid=-1, uid=-1, gid=-1)
            reader = _LineReader(conn, self.max_request, self.timeout)
            while not self._stop.is_set():
                try:
                    line = reader.readline()
                except _TooLong:
                    self._send(
                        conn,
                        error_reply(
                            "bad_request",
                            f"request longer than {self.max_request} bytes; closing the connection",
                        ),
                    )
                    return
                except _TooSlow:
                    if not reader.pending:
                        return  # an idle connection: close quietly, nothing was asked
                    self._send(
                        conn,
                        error_reply(
                            "bad_request",
                            f"no complete request line within {self.timeout:g}s; "
                            "closing the connection",
                        ),
                    )
                    return
                if line is None:
                    return
                if not self._send(conn, self._respond(line, peer)):
                    return
        except Exception as err:  # noqa: BLE001 - one connection must never take the server down
            self.log.error("control_connection_failed", why=f"{type(err).__name__}: {err}")
        finally:
            with self._lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _send(self, conn: socket.socket, reply: dict[str, Any]) -> bool:
        try:
            data = encode(reply)
        except (TypeError, ValueError) as err:  # e.g. a circular result
            data = encode(error_reply("internal", f"cannot encode the reply: {err}"))
        try:
            conn.settimeout(self.timeout)
            conn.sendall(data)
        except OSError:
            return False
        return True

    def _respond(self, line: bytes, peer: Peer) -> dict[str, Any]:
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
