"""The control socket's server side (:mod:`announcer.control`), against real sockets.

A real :class:`ControlServer` runs on a socket in a temporary directory with a
recording fake handler (and, at the end, with :func:`daemon_handler` in front
of a real running :class:`~announcer.daemon.Daemon`). The socket is given a
group: as root ``daemon`` (a group the test process is not in), as a normal user
its own group (the only kind it may give a file to). Tests about other users run
as root only: they run a stdlib-only client as ``nobody`` in a subprocess.
"""

from __future__ import annotations

import contextlib
import grp
import io
import json
import os
import pwd
import queue
import random
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

# With only files from tests/unit selected, pytest puts tests/unit on sys.path, and
# tests/unit/checks (no __init__.py) would then shadow the real ``checks`` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from announcer import config as cfg
from announcer.client import ControlClient, wait_withdrawn
from announcer.control import (
    COMMANDS,
    ERROR_CODES,
    ControlRefused,
    DrainRequest,
    Peer,
    PingRequest,
    Request,
    StatusRequest,
    UndrainRequest,
    daemon_handler,
    parse_request,
)
from announcer.control_server import ControlServer
from announcer.errors import ControlError
from announcer.log import Logger
from announcer.protocol import DaemonStatus, ServiceStatus
from announcer.state import DrainSource

NOBODY = 65534

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: runs a client as another user (nobody)"
)


def _socket_group() -> tuple[str, int]:
    """The group the tests give the socket: ``daemon`` as root (if it exists), else the
    current process's own group (a normal user may chown only to its own groups)."""
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            return "daemon", grp.getgrnam("daemon").gr_gid
    gid = os.getgid()
    try:
        return grp.getgrgid(gid).gr_name, gid
    except KeyError:
        return str(gid), gid  # control_group also takes a number


GROUP, GID = _socket_group()


# ---------------------------------------------------------------- fixtures and helpers


class Recorder:
    """A fake handler: records every call and echoes the request back."""

    def __init__(self) -> None:
        self.calls: list[tuple[Request, Peer]] = []
        self.lock = threading.Lock()
        self.behaviour: Callable[[Request, Peer], dict[str, Any]] | None = None

    def __call__(self, request: Request, peer: Peer) -> dict[str, Any]:
        with self.lock:
            self.calls.append((request, peer))
        if self.behaviour is not None:
            return self.behaviour(request, peer)
        return {
            "cmd": request.cmd,
            "services": list(getattr(request, "services", ())),
            "all": getattr(request, "all", False),
            "reason": getattr(request, "reason", ""),
            "uid": peer.uid,
            "pid": peer.pid,
        }

    def cmds(self) -> list[str]:
        with self.lock:
            return [r.cmd for r, _ in self.calls]


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A directory under /tmp that ``nobody`` can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="annctl-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def logbuf() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def start(
    sock_dir: Path, recorder: Recorder, logbuf: io.StringIO
) -> Iterator[Callable[..., ControlServer]]:
    """Starts servers (default: recorder handler, group GROUP); closes them all."""
    servers: list[ControlServer] = []

    def run(path: Path | None = None, **kw: Any) -> ControlServer:
        kw.setdefault("group", GROUP)
        kw.setdefault("log", Logger(logbuf, level="debug"))
        handler = kw.pop("handler", recorder)
        server = ControlServer(path or sock_dir / "ctl.sock", handler, **kw)
        server.start()
        servers.append(server)
        return server

    try:
        yield run
    finally:
        for server in servers:
            server.close()


class Raw:
    """A bare protocol client: bytes in, one parsed reply line out."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = b""

    def send(self, data: bytes) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sock.sendall(data)

    def reply(self) -> dict[str, Any] | None:
        """The next reply, or None when the server closed the connection."""
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        data = json.loads(line)
        assert isinstance(data, dict)
        return data

    def ask(self, obj: Any) -> dict[str, Any] | None:
        self.send(json.dumps(obj).encode() + b"\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


def ping(path: Path) -> dict[str, Any] | None:
    raw = Raw(path)
    try:
        return raw.ask({"v": 1, "cmd": "ping"})
    finally:
        raw.close()


# A client that needs nothing but the standard library, run as another user.
PEER_SCRIPT = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except OSError as err:
    print(json.dumps({"connect_errno": err.errno}))
    raise SystemExit(0)
f = s.makefile("rwb")
for line in sys.argv[2:]:
    f.write(line.encode() + b"\n")
    f.flush()
    print(f.readline().decode().strip())
"""


def as_user(path: Path, *requests: dict[str, Any], **ids: Any) -> list[dict[str, Any]]:
    """Send requests on one connection as another user (``user``/``group``/``extra_groups``)."""
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    proc = subprocess.run(
        [python, "-I", "-c", PEER_SCRIPT, str(path), *(json.dumps(r) for r in requests)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
        check=True,
        **ids,
    )
    return [json.loads(line) for line in proc.stdout.splitlines()]


DRAIN = {"v": 1, "cmd": "drain", "services": ["web"], "reason": "test"}
STATUS = {"v": 1, "cmd": "status"}


# ---------------------------------------------------------------- round trips


def test_every_command_round_trips_on_one_connection(
    start: Callable[..., ControlServer], recorder: Recorder
) -> None:
    """Each command, sent in sequence on one connection, reaches the handler with its
    validated fields and the peer's credentials, and its result comes back under ``result``."""
    server = start()
    fields: dict[str, dict[str, Any]] = {
        "status": {"services": ["web"]},
        "drain": {"services": ["web", "dns", "web"], "reason": "kernel upgrade"},
        "undrain": {"all": True},
        "reload": {},
        "check": {"services": ["web"]},
        "ping": {},
        "fleet": {"services": ["web"]},
    }
    with ControlClient(server.path) as client:
        for cmd in COMMANDS:
            result = client.request(cmd, **fields[cmd])
            assert result["cmd"] == cmd
            assert result["uid"] == os.geteuid()
            assert result["pid"] == os.getpid()
    assert recorder.cmds() == list(COMMANDS)
    drain = recorder.calls[1][0]
    assert drain == DrainRequest(("web", "dns"), False, "kernel upgrade")  # de-duplicated
    assert recorder.calls[2][0] == UndrainRequest((), True, "")
    peer = recorder.calls[0][1]
    assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.geteuid(), os.getegid())
    assert peer.groups == frozenset(os.getgroups())


def test_replies_are_versioned_json_lines(start: Callable[..., ControlServer]) -> None:
    """Every reply is one JSON object on one line carrying ``"v": 1``, for success and error."""
    server = start()
    raw = Raw(server.path)
    raw.send(b'{"v": 1, "cmd": "ping"}\n{"v": 1, "cmd": "nope"}\n')
    first, second = raw.reply(), raw.reply()
    raw.close()
    assert first is not None and second is not None
    assert set(first) == {"v", "ok", "result"} and first["v"] == 1 and first["ok"] is True
    assert second["v"] == 1 and second["ok"] is False and second["code"] == "bad_request"


# ---------------------------------------------------------------- creation


def test_socket_is_mode_0660_with_the_group_and_parent_made_0750(
    start: Callable[..., ControlServer], sock_dir: Path
) -> None:
    """A missing parent directory is created 0750 with the group (so members can reach
    the socket); the socket itself is 0660 with the configured group."""
    path = sock_dir / "run" / "announcer" / "ctl.sock"
    old = os.umask(0o137)  # what ExaBGP gives its processes
    try:
        start(path)
    finally:
        os.umask(old)
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == GID
    parent = os.lstat(path.parent)
    assert stat.S_IMODE(parent.st_mode) == 0o750
    assert parent.st_gid == GID
    assert sorted(os.listdir(path.parent)) == ["ctl.sock"]  # the private temp dir is gone


def test_socket_is_private_until_it_is_renamed_into_place(
    start: Callable[..., ControlServer], sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket only appears at its path by an atomic rename, and at that moment it is
    already 0660 with the group, and its temporary home is a 0700 directory in the same
    directory (same filesystem): no window where anyone else could connect."""
    path = sock_dir / "ctl.sock"
    real_replace = os.replace
    seen: list[dict[str, Any]] = []

    def spy(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(dst) == path:
            home = os.path.dirname(src)
            seen.append(
                {
                    "sock": os.lstat(src),
                    "home": os.lstat(home),
                    "home_parent": os.path.dirname(home),
                    "exists_before": os.path.lexists(path),
                }
            )
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", spy)
    old = os.umask(0)  # a plain bind would now make a 0777 socket
    try:
        start(path)
    finally:
        os.umask(old)
    assert len(seen) == 1
    moment = seen[0]
    assert stat.S_ISSOCK(moment["sock"].st_mode)
    assert stat.S_IMODE(moment["sock"].st_mode) == 0o660
    assert moment["sock"].st_gid == GID
    assert stat.S_ISDIR(moment["home"].st_mode)
    assert stat.S_IMODE(moment["home"].st_mode) == 0o700
    assert moment["home_parent"] == str(sock_dir)
    assert moment["exists_before"] is False
    assert ping(path) is not None


# Watches a directory from another process (true parallelism, no GIL) until told to stop
# on stdin, and prints every distinct (name, mode, gid) it saw.
WATCH_SCRIPT = r"""
import json, os, sys, threading
where, target = sys.argv[1], sys.argv[2]
seen, done = set(), threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
print("ready", flush=True)
n = 0
while not done.is_set():
    n += 1
    names = os.listdir(where) if n % 8 == 0 else [target]
    for name in names:
        try:
            st = os.lstat(os.path.join(where, name))
        except FileNotFoundError:
            continue
        seen.add((name, st.st_mode, st.st_gid))
print(json.dumps(sorted(seen)))
"""


def test_socket_never_appears_world_accessible(sock_dir: Path, recorder: Recorder) -> None:
    """Under umask 0 (a plain bind would make a 0777 socket), another process lstat()ing
    the socket's path (and listing the directory) in a tight loop while the server is
    created and closed 300 times sees the socket only as 0660 with the group, and no
    other entry but 0700 directories."""
    path = sock_dir / "ctl.sock"
    watcher = subprocess.Popen(
        [sys.executable, "-I", "-c", WATCH_SCRIPT, str(sock_dir), path.name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert watcher.stdout is not None
    assert watcher.stdout.readline().strip() == "ready"
    old = os.umask(0)
    try:
        for _ in range(300):
            server = ControlServer(path, recorder, group=GROUP, log=Logger(io.StringIO()))
            server.start()
            server.close()
    finally:
        os.umask(old)
        out, _ = watcher.communicate("stop", timeout=30)
    seen = [tuple(x) for x in json.loads(out)]
    assert any(name == path.name for name, _, _ in seen), "the watcher never saw the socket"
    for name, mode, gid in seen:
        if name == path.name:
            assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660 and gid == GID, oct(mode)
        else:
            assert stat.S_ISDIR(mode) and stat.S_IMODE(mode) & 0o077 == 0, (name, oct(mode))


def test_stale_socket_is_replaced(start: Callable[..., ControlServer], sock_dir: Path) -> None:
    """A socket left by a dead daemon (bound, nobody listening) is replaced silently."""
    path = sock_dir / "ctl.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    old_inode = os.lstat(path).st_ino
    start(path)
    assert os.lstat(path).st_ino != old_inode
    reply = ping(path)
    assert reply is not None and reply["ok"] is True


def test_refuses_to_start_while_another_daemon_answers(
    start: Callable[..., ControlServer], sock_dir: Path, recorder: Recorder
) -> None:
    """A second server on the path of a live one refuses with a clear error and leaves
    the first one's socket in place and answering."""
    first = start()
    inode = os.lstat(first.path).st_ino
    second = ControlServer(first.path, recorder, group=None, log=Logger(io.StringIO()))
    with pytest.raises(ControlError, match="already listening on"):
        second.start()
    second.close()
    assert os.lstat(first.path).st_ino == inode
    reply = ping(first.path)
    assert reply is not None and reply["ok"] is True


def test_refuses_to_replace_something_that_is_not_a_socket(
    sock_dir: Path, recorder: Recorder
) -> None:
    """A regular file at the socket's path is left alone, with an error naming it."""
    path = sock_dir / "ctl.sock"
    path.write_text("precious")
    server = ControlServer(path, recorder, group=None, log=Logger(io.StringIO()))
    with pytest.raises(ControlError, match="is not a socket"):
        server.start()
    assert path.read_text() == "precious"


def test_unknown_group_is_a_clear_error(sock_dir: Path, recorder: Recorder) -> None:
    """A control_group that does not exist stops start() with a message naming it."""
    server = ControlServer(
        sock_dir / "ctl.sock", recorder, group="no-such-group-xyz", log=Logger(io.StringIO())
    )
    with pytest.raises(ControlError, match="no-such-group-xyz"):
        server.start()
    assert not (sock_dir / "ctl.sock").exists()


def test_close_unlinks_only_its_own_socket(
    start: Callable[..., ControlServer], sock_dir: Path
) -> None:
    """close() removes the socket it made, but not one a successor put at the same path."""
    server = start()
    server.close()
    assert not server.path.exists()

    server = start()
    os.unlink(server.path)
    successor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    successor.bind(str(server.path))
    try:
        server.close()
        assert stat.S_ISSOCK(os.lstat(server.path).st_mode)
    finally:
        successor.close()


# ---------------------------------------------------------------- who may do what


@needs_root
def test_non_member_may_read_status_but_is_refused_a_drain(
    start: Callable[..., ControlServer], recorder: Recorder
) -> None:
    """``nobody`` (not in the group) gets status and ping, but drain, undrain and reload
    are answered permission_denied and never reach the handler. (The socket is opened to
    everyone here, as an admin could for monitoring, to reach the check behind the mode.)"""
    server = start()
    server.path.chmod(0o666)
    replies = as_user(
        server.path,
        STATUS,
        {"v": 1, "cmd": "ping"},
        DRAIN,
        {"v": 1, "cmd": "undrain", "all": True},
        {"v": 1, "cmd": "reload"},
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
    )
    assert [r["ok"] for r in replies] == [True, True, False, False, False]
    assert replies[0]["result"]["uid"] == NOBODY
    for reply in replies[2:]:
        assert reply["code"] == "permission_denied"
        assert (
            reply["error"]
            == f"permission denied: uid {NOBODY} is not root and not in group {GROUP}"
        )
    assert recorder.cmds() == ["status", "ping"]


@needs_root
def test_socket_mode_keeps_others_out_entirely(start: Callable[..., ControlServer]) -> None:
    """With the socket as created (0660), a user outside the group cannot even connect."""
    server = start()
    replies = as_user(server.path, STATUS, user=NOBODY, group=NOBODY, extra_groups=[])
    assert replies == [{"connect_errno": 13}]  # EACCES


@needs_root
@pytest.mark.parametrize("how", ["supplementary", "primary"])
def test_group_member_may_drain(
    start: Callable[..., ControlServer], sock_dir: Path, recorder: Recorder, how: str
) -> None:
    """A member of the group, by a supplementary group (read from /proc/PID/status) or
    by primary gid, may drain; it reaches the socket through the 0750 directory the
    server created for the group."""
    server = start(sock_dir / "run" / "ctl.sock")
    ids: dict[str, Any] = (
        {"group": NOBODY, "extra_groups": [GID]}
        if how == "supplementary"
        else {"group": GID, "extra_groups": []}
    )
    (reply,) = as_user(server.path, DRAIN, user=NOBODY, **ids)
    assert reply["ok"] is True, reply
    assert recorder.cmds() == ["drain"]
    peer = recorder.calls[0][1]
    assert peer.uid == NOBODY
    if how == "supplementary":
        assert GID in peer.groups and peer.gid == NOBODY
    else:
        assert peer.gid == GID


def test_without_a_group_only_root_and_the_daemon_user_may_change_things(
    start: Callable[..., ControlServer],
) -> None:
    """With no control_group, the refusal says so (checked through the server's own rule)."""
    server = start(group=None)
    request = DrainRequest(("web",))
    assert server.admission.authorize(request, Peer(1, 0, 0)) is None
    assert server.admission.authorize(request, Peer(1, os.geteuid(), 0)) is None
    assert server.admission.authorize(StatusRequest(), Peer(1, 4242, 4242)) is None
    assert server.admission.authorize(request, Peer(1, 4242, 4242)) == (
        "permission denied: uid 4242 is not root (no control_group is configured)"
    )


# ---------------------------------------------------------------- robustness

BAD_LINES: list[tuple[bytes, str, str]] = [
    (b"hello", "bad_request", "not valid JSON"),
    (b"[1, 2]", "bad_request", "must be a JSON object"),
    (b'"ping"', "bad_request", "must be a JSON object"),
    (b"\xff\xfe{}", "bad_request", "UTF-8"),
    (b"", "bad_request", "empty request"),
    (b"[" * 50000, "bad_request", ""),
    (b'{"cmd": "ping"}', "bad_request", 'missing protocol version "v"'),
    (b'{"v": 2, "cmd": "ping"}', "unsupported_version", "speaks v1"),
    (b'{"v": true, "cmd": "ping"}', "bad_request", "must be an integer"),
    (b'{"v": "1", "cmd": "ping"}', "bad_request", "must be an integer"),
    (b'{"v": 1}', "bad_request", 'missing "cmd"'),
    (b'{"v": 1, "cmd": "reboot"}', "bad_request", "unknown"),
    (b'{"v": 1, "cmd": 7}', "bad_request", "unknown"),
    (b'{"v": 1, "cmd": "ping", "x": 1}', "bad_request", "unknown key"),
    (b'{"v": 1, "cmd": "reload", "all": true}', "bad_request", "unknown key"),
    (b'{"v": 1, "cmd": "status", "reason": "x"}', "bad_request", "unknown key"),
    (b'{"v": 1, "cmd": "status", "services": "web"}', "bad_request", "list of names"),
    (b'{"v": 1, "cmd": "status", "services": [1]}', "bad_request", "non-empty names"),
    (b'{"v": 1, "cmd": "status", "services": [""]}', "bad_request", "non-empty names"),
    (b'{"v": 1, "cmd": "drain", "all": "yes"}', "bad_request", "true or false"),
    (b'{"v": 1, "cmd": "drain", "all": 1}', "bad_request", "true or false"),
    (b'{"v": 1, "cmd": "drain", "services": ["a"], "reason": 5}', "bad_request", "string"),
    (b'{"v": 1, "cmd": "drain"}', "bad_request", "at least one service"),
    (b'{"v": 1, "cmd": "drain", "all": true, "services": ["a"]}', "bad_request", "not both"),
    (b'{"v": 1, "cmd": "undrain", "services": []}', "bad_request", "at least one service"),
]


def test_malformed_requests_get_error_replies_and_the_connection_goes_on(
    start: Callable[..., ControlServer], recorder: Recorder
) -> None:
    """Each malformed request on one connection gets an error reply with the right code and
    a useful message; none reaches the handler; a valid request afterwards still works."""
    server = start()
    raw = Raw(server.path)
    for line, code, text in BAD_LINES:
        raw.send(line + b"\n")
        reply = raw.reply()
        assert reply is not None, line[:40]
        assert reply["ok"] is False and reply["code"] == code, (line[:40], reply)
        assert text in reply["error"], (line[:40], reply)
    assert recorder.calls == []
    reply = raw.ask({"v": 1, "cmd": "ping"})
    raw.close()
    assert reply is not None and reply["ok"] is True


def test_oversized_request_gets_an_error_and_is_closed(
    start: Callable[..., ControlServer], recorder: Recorder
) -> None:
    """More than max_request bytes without a newline: an error reply, then the server
    closes that connection (and keeps serving others)."""
    server = start(max_request=1024)
    raw = Raw(server.path)
    raw.send(b"x" * 5000)
    reply = raw.reply()
    assert reply is not None and reply["code"] == "bad_request"
    assert "longer than 1024 bytes" in reply["error"]
    assert raw.reply() is None  # closed
    raw.close()
    # A complete line that is too long is refused the same way.
    raw = Raw(server.path)
    raw.send(b'{"v": 1, "cmd": "ping", "pad": "' + b"y" * 2000 + b'"}\n')
    reply = raw.reply()
    assert reply is not None and "longer than" in reply["error"]
    raw.close()
    assert ping(server.path) is not None
    assert recorder.cmds() == ["ping"]


def test_slow_request_times_out_with_an_error(
    start: Callable[..., ControlServer], recorder: Recorder
) -> None:
    """A client that does not finish its line within the timeout gets an error reply and
    is disconnected; meanwhile and afterwards others are served at once."""
    server = start(timeout=1.0)
    slow = Raw(server.path)
    slow.send(b'{"v": 1, "cmd": ')
    began = time.monotonic()
    reply = ping(server.path)  # not held up by the slow client
    assert reply is not None and reply["ok"] is True
    assert time.monotonic() - began < 0.9
    reply = slow.reply()
    took = time.monotonic() - began
    assert reply is not None and reply["code"] == "bad_request"
    assert "within 1s" in reply["error"]
    assert 0.8 < took < 4.0
    assert slow.reply() is None
    slow.close()
    assert ping(server.path) is not None
    assert recorder.cmds() == ["ping", "ping"]


def test_idle_connection_is_closed_quietly(start: Callable[..., ControlServer]) -> None:
    """A connection that sends nothing for the timeout is closed without a reply (so a
    client reusing it later never reads a stale error as its answer)."""
    server = start(timeout=0.3)
    idle = Raw(server.path)
    assert idle.reply() is None
    idle.close()


def test_trickling_bytes_does_not_extend_the_deadline(
    start: Callable[..., ControlServer], recorder: Recorder
) -> None:
    """The timeout is per request line, not per read: a client sending one byte every
    0.1 s is still cut off with an error once the line's 0.5 s have passed."""
    server = start(timeout=0.5)
    slow = Raw(server.path)
    began = time.monotonic()
    reply = None
    while time.monotonic() - began < 3.0:
        slow.send(b" ")
        slow.sock.settimeout(0.1)
        try:
            reply = slow.reply()
            break
        except TimeoutError:
            continue
    took = time.monotonic() - began
    slow.close()
    assert reply is not None and "within 0.5s" in reply["error"]
    assert took < 1.5
    assert recorder.calls == []


def test_a_blocked_handler_does_not_block_other_clients(
    start: Callable[..., ControlServer], recorder: Recorder
) -> None:
    """While one request's handler is stuck (the daemon's main loop is busy), another
    connection is still accepted and answered."""
    release = threading.Event()

    def behaviour(request: Request, peer: Peer) -> dict[str, Any]:
        if request.cmd == "reload":
            release.wait(10)
        return {"cmd": request.cmd}

    recorder.behaviour = behaviour
    server = start()
    stuck = Raw(server.path)
    stuck.send(b'{"v": 1, "cmd": "reload"}\n')
    try:
        reply = ping(server.path)
        assert reply is not None and reply["result"] == {"cmd": "ping"}
    finally:
        release.set()
    reply = stuck.reply()
    stuck.close()
    assert reply is not None and reply["result"] == {"cmd": "reload"}


def test_handler_exception_becomes_internal_and_is_logged(
    start: Callable[..., ControlServer], recorder: Recorder, logbuf: io.StringIO
) -> None:
    """A handler that raises is answered with code internal and the exception's text; the
    error is logged and the connection keeps working."""

    def behaviour(request: Request, peer: Peer) -> dict[str, Any]:
        if request.cmd == "status":
            raise RuntimeError("snapshot exploded")
        return {}

    recorder.behaviour = behaviour
    server = start()
    raw = Raw(server.path)
    reply = raw.ask(STATUS)
    assert reply is not None
    assert reply["code"] == "internal"
    assert "RuntimeError: snapshot exploded" in reply["error"]
    reply = raw.ask({"v": 1, "cmd": "ping"})
    raw.close()
    assert reply is not None and reply["ok"] is True
    assert "control_handler_failed" in logbuf.getvalue()
    assert "snapshot exploded" in logbuf.getvalue()


def test_handler_refusals_keep_their_code(
    start: Callable[..., ControlServer], recorder: Recorder
) -> None:
    """A handler raising ControlRefused(kind) is answered with that code and message."""

    def behaviour(request: Request, peer: Peer) -> dict[str, Any]:
        raise ControlRefused("unknown service 'nope' (known: web)", "unknown_service")

    recorder.behaviour = behaviour
    server = start()
    raw = Raw(server.path)
    reply = raw.ask(DRAIN)
    raw.close()
    assert reply == {
        "v": 1,
        "ok": False,
        "code": "unknown_service",
        "error": "unknown service 'nope' (known: web)",
    }


def test_a_last_line_without_newline_is_still_answered(start: Callable[..., ControlServer]) -> None:
    """A client that half-closes after a request without a trailing newline gets its reply."""
    server = start()
    raw = Raw(server.path)
    raw.send(b'{"v": 1, "cmd": "ping"}')
    raw.sock.shutdown(socket.SHUT_WR)
    reply = raw.reply()
    raw.close()
    assert reply is not None and reply["ok"] is True


# ---------------------------------------------------------------- capacity

PING = {"v": 1, "cmd": "ping"}
FLOOD_STATUS = {"v": 1, "cmd": "status", "services": ["flood"]}


class Gate:
    """A handler behaviour that holds the requests ``hold`` picks until ``release`` is set
    (a slow main loop), counting how many it holds."""

    def __init__(self, hold: Callable[[Request], bool]) -> None:
        self.hold = hold
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.held = 0

    def __call__(self, request: Request, peer: Peer) -> dict[str, Any]:
        if self.hold(request):
            with self.lock:
                self.held += 1
            try:
                self.release.wait(30)
            finally:
                with self.lock:
                    self.held -= 1
        return {"cmd": request.cmd}


def connect_nowait(path: Path, deadline: float) -> socket.socket:
    """A connected non-blocking socket (tried again while the accept queue is full)."""
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(str(path))
        except BlockingIOError:
            sock.close()
            assert time.monotonic() < deadline, "the accept queue stayed full"
            time.sleep(0.005)
            continue
        return sock


def outcome(sock: socket.socket, timeout: float = 10.0) -> str:
    """What became of a connection: "ok", an error code, or "closed" (closed without a
    reply); a TimeoutError if the server did neither within ``timeout``."""
    sock.settimeout(timeout)
    buf = b""
    while b"\n" not in buf:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return "closed"
        buf += chunk
    reply = json.loads(buf.split(b"\n", 1)[0])
    return "ok" if reply["ok"] else str(reply["code"])


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def test_requests_past_the_shared_slots_are_answered_busy(
    start: Callable[..., ControlServer], recorder: Recorder
) -> None:
    """Connections between requests hold no slot. With max_clients requests in the handler,
    one more is answered "busy" and its connection closed (with no reserve, even a drain),
    while a malformed one is still answered (no handler needed); once a slot frees up,
    requests are served again."""
    gate = Gate(lambda r: r.cmd == "status")
    recorder.behaviour = gate
    server = start(max_clients=2, reserved=0)
    idle = [Raw(server.path) for _ in range(5)]
    for raw in idle:  # served, then idle: no slot held
        reply = raw.ask(PING)
        assert reply is not None and reply["ok"] is True
    _until(lambda: server.running == 0)  # a worker frees its slot just after replying
    held = [Raw(server.path), Raw(server.path)]
    for raw in held:
        raw.send(json.dumps(STATUS).encode() + b"\n")
    _until(lambda: gate.held == 2)
    try:
        for request in (STATUS, DRAIN):
            extra = Raw(server.path)
            reply = extra.ask(request)
            assert reply is not None and reply["code"] == "busy", reply
            assert "at most 2" in reply["error"]
            assert extra.reply() is None
            extra.close()
        reply = idle[0].ask({"v": 1, "cmd": "nope"})
        assert reply is not None and reply["code"] == "bad_request"
    finally:
        gate.release.set()
    for raw in held:
        reply = raw.reply()
        assert reply is not None and reply["ok"] is True
        raw.close()
    reply = idle[1].ask(PING)
    assert reply is not None and reply["ok"] is True
    for raw in idle:
        raw.close()
    assert recorder.cmds() == ["ping"] * 5 + ["status", "status", "ping"]


def test_a_drain_gets_through_while_status_requests_fill_every_slot(
    start: Callable[..., ControlServer], recorder: Recorder
) -> None:
    """300 clients ask for status while the handler holds each (a slow main loop): the first
    max_clients fill the shared slots, later ones are answered busy. A drain from an
    authorised peer (this process, the daemon's own user) is still answered, from the
    reserve, and so are the status polls that follow on its connection (drain --wait); a
    status on a fresh connection is busy (reads do not use the reserve). Threads stay
    bounded; once released, every flood client got ok, busy or a close, and every
    connection goes away."""
    gate = Gate(lambda r: getattr(r, "services", ()) == ("flood",))
    recorder.behaviour = gate
    server = start()
    baseline = threading.active_count()
    deadline = time.monotonic() + 30
    flood: list[socket.socket] = []
    try:
        for _ in range(300):
            sock = connect_nowait(server.path, deadline)
            flood.append(sock)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # turned away
                sock.send(json.dumps(FLOOD_STATUS).encode() + b"\n")
        _until(lambda: gate.held == server.limits.max_clients, timeout=10)

        with ControlClient(server.path) as client:
            assert client.request("drain", services=["web"], reason="flood")["cmd"] == "drain"
            for _ in range(3):  # drain --wait's polls, on the same connection
                assert client.request("status")["cmd"] == "status"
        bound = server.limits.max_clients + server.limits.reserved
        assert threading.active_count() - baseline <= bound
        with pytest.raises(ControlRefused) as err:
            ControlClient(server.path, retry_for=0.2).request("status")
        assert err.value.kind == "busy"
        assert gate.held == server.limits.max_clients
        assert threading.active_count() - baseline <= bound
    finally:
        gate.release.set()
    try:
        outcomes = [outcome(sock) for sock in flood]
    finally:
        for sock in flood:
            sock.close()
    assert set(outcomes) <= {"ok", "busy", "closed"}, set(outcomes)
    assert outcomes.count("ok") >= server.limits.max_clients
    assert recorder.cmds().count("drain") == 1
    _until(lambda: server.clients == 0)


@needs_root
def test_an_unauthorised_peer_gets_no_reserved_slot(
    start: Callable[..., ControlServer], recorder: Recorder
) -> None:
    """While status requests fill every shared slot, ``nobody`` (not root, not in the group)
    asking to drain or undrain is refused permission_denied, not served from the reserve,
    and its status is busy; the handler sees none of them. (The socket is opened to
    everyone here, to reach the check behind the mode.)"""
    gate = Gate(lambda r: r.cmd == "status")
    recorder.behaviour = gate
    server = start(max_clients=2)
    server.path.chmod(0o666)
    held = [Raw(server.path), Raw(server.path)]
    for raw in held:
        raw.send(json.dumps(STATUS).encode() + b"\n")
    _until(lambda: gate.held == 2)
    try:
        replies = as_user(
            server.path,
            DRAIN,
            {"v": 1, "cmd": "undrain", "all": True},
            STATUS,
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
        )
    finally:
        gate.release.set()
    assert [r["code"] for r in replies] == ["permission_denied", "permission_denied", "busy"]
    for raw in held:
        assert raw.reply() is not None
        raw.close()
    assert recorder.cmds() == ["status", "status"]


def test_connections_that_send_nothing_are_dropped_and_starve_no_one(
    start: Callable[..., ControlServer], recorder: Recorder
) -> None:
    """200 clients connect and send nothing. The server keeps at most max_pending of them
    waiting (making room by dropping the oldest), closes every one within its line timeout,
    and meanwhile a drain and a status through the CLI's client code are answered. Threads
    and open connections stay bounded."""
    server = start()
    baseline = threading.active_count()
    deadline = time.monotonic() + 30
    idle: list[socket.socket] = []
    try:
        idle.extend(connect_nowait(server.path, deadline) for _ in range(200))
        with ControlClient(server.path) as client:
            assert client.request("drain", services=["web"])["cmd"] == "drain"
        with ControlClient(server.path) as client:
            assert client.request("status")["cmd"] == "status"
        limits = server.limits
        assert server.clients <= limits.max_pending + limits.max_clients + limits.reserved
        assert threading.active_count() - baseline <= limits.max_clients + limits.reserved
        outcomes = [outcome(sock) for sock in idle]
    finally:
        for sock in idle:
            sock.close()
    assert outcomes == ["closed"] * len(idle)
    assert recorder.cmds() == ["drain", "status"]
    _until(lambda: server.clients == 0)


def test_past_max_pending_the_oldest_silent_connection_goes_first(
    start: Callable[..., ControlServer],
) -> None:
    """With max_pending connections waiting, each new one makes room by dropping the oldest
    that has never sent anything; a connection that has made requests (a drain above all)
    outlives them."""
    server = start(max_pending=4, timeout=30.0)
    operator, talker = Raw(server.path), Raw(server.path)
    for raw, request in ((operator, DRAIN), (talker, PING)):
        reply = raw.ask(request)
        assert reply is not None and reply["ok"] is True
    deadline = time.monotonic() + 30
    silent = [connect_nowait(server.path, deadline) for _ in range(10)]
    try:
        assert [outcome(sock) for sock in silent[:8]] == ["closed"] * 8
        assert still_open(silent[8]) and still_open(silent[9])
        for raw, request in ((operator, STATUS), (talker, PING)):
            reply = raw.ask(request)
            assert reply is not None and reply["ok"] is True
    finally:
        for sock in silent:
            sock.close()
        operator.close()
        talker.close()


def test_a_client_asking_every_few_hundred_ms_keeps_its_connection(
    start: Callable[..., ControlServer],
) -> None:
    """The line timeout (1 s) counts from the last reply: a client polling every 0.3 s
    (drain --wait polls every 0.2 s) for almost twice that long keeps its one connection."""
    server = start()
    assert server.limits.timeout == 1.0
    raw = Raw(server.path)
    try:
        for _ in range(6):
            reply = raw.ask(STATUS)
            assert reply is not None and reply["ok"] is True
            time.sleep(0.3)
    finally:
        raw.close()


# ---------------------------------------------------------------- fuzzing

_VALID: list[dict[str, Any]] = [
    {"v": 1, "cmd": "ping"},
    {"v": 1, "cmd": "status"},
    {"v": 1, "cmd": "status", "services": ["web"]},
    {"v": 1, "cmd": "drain", "services": ["web"], "reason": "x"},
    {"v": 1, "cmd": "undrain", "all": True},
    {"v": 1, "cmd": "reload"},
]
_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2,
    2**70,
    1.5,
    "",
    "web",
    "\u0000\n",
    "\u00e9\U0001f600",
    [],
    [1],
    ["web"],
    [""],
    [None, "x"],
    {},
    {"v": 1},
    "x" * 300,
]
_KEYS = ["v", "cmd", "services", "all", "reason", "x", "", "V", "\u00e9"]


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 4 else 4)
    if kind < 4:
        return rng.choice(_VALUES)
    if kind < 6:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(_KEYS): _random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def fuzz_line(rng: random.Random, limit: int) -> bytes:
    """One request line (without its newline): garbage, or a mangled or valid request."""
    kind = rng.randrange(10)
    if kind == 0:
        data = rng.randbytes(rng.randrange(300))
    elif kind == 1:
        data = "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(100))).encode()
    elif kind == 2:
        req = dict(rng.choice(_VALID))
        req[rng.choice(_KEYS)] = _random_json(rng)
        data = json.dumps(req).encode()
    elif kind == 3:
        req = dict(rng.choice(_VALID))
        req.pop(rng.choice(list(req)))
        data = json.dumps(req).encode()
    elif kind == 4:
        data = json.dumps(_random_json(rng)).encode()
    elif kind == 5:
        text = json.dumps(rng.choice(_VALID)).encode()
        data = text[: rng.randrange(len(text))]
    elif kind == 6:
        data = rng.choice([b"[", b"{", b'{"a":']) * rng.randrange(1, 3000)
    elif kind == 7:
        mangled = bytearray(json.dumps(rng.choice(_VALID)).encode())
        for _ in range(rng.randrange(1, 4)):
            mangled[rng.randrange(len(mangled))] = rng.randrange(256)
        data = bytes(mangled)
    elif kind == 8:
        data = b"z" * rng.randrange(limit, limit * 3)  # too long
    else:
        data = json.dumps(rng.choice(_VALID)).encode()
    return data.replace(b"\n", b" ")


def test_fuzz_ten_thousand_requests_never_break_the_server(
    start: Callable[..., ControlServer], recorder: Recorder
) -> None:
    """10,000 random, mangled, oversized and valid request lines (seeded) each get one
    well-formed reply with a known code (never "internal": the handler never raised),
    valid ones succeed, within a time bound; a ping answers afterwards."""
    limit = 2048
    server = start(max_request=limit)
    rng = random.Random(20261126)
    raw = Raw(server.path)
    began = time.monotonic()
    codes: dict[str, int] = {}
    for _ in range(10_000):
        line = fuzz_line(rng, limit)
        raw.send(line + b"\n")
        reply = raw.reply()
        assert reply is not None, line[:80]
        assert reply["v"] == 1 and isinstance(reply["ok"], bool), reply
        if reply["ok"]:
            codes["ok"] = codes.get("ok", 0) + 1
        else:
            assert reply["code"] in ERROR_CODES and reply["code"] != "internal", reply
            assert isinstance(reply["error"], str) and reply["error"]
            codes[reply["code"]] = codes.get(reply["code"], 0) + 1
            if "longer than" in reply["error"]:
                assert raw.reply() is None
                raw.close()
                raw = Raw(server.path)
        assert time.monotonic() - began < 90, "fuzzing took too long"
    raw.close()
    assert codes.get("ok", 0) > 500 and codes.get("bad_request", 0) > 5000, codes
    reply = ping(server.path)
    assert reply is not None and reply["ok"] is True


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        _json.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {"v": st.just(1), "cmd": st.sampled_from(COMMANDS)},
            optional={
                "services": _json,
                "all": _json,
                "reason": _json,
                "extra": _json,
            },
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_parse_request_only_ever_refuses_cleanly(line: bytes) -> None:
    """Whatever the bytes, parse_request returns a Request or raises ControlRefused with
    a protocol code (bad_request or unsupported_version); nothing else escapes."""
    try:
        request = parse_request(line)
    except ControlRefused as err:
        assert err.kind in ("bad_request", "unsupported_version")
        assert str(err)
    else:
        assert request.cmd in COMMANDS
        assert all(isinstance(n, str) and n for n in getattr(request, "services", ()))


@settings(max_examples=200, deadline=None)
@given(
    cmd=st.sampled_from(["status", "drain", "undrain"]),
    names=st.lists(st.text(min_size=1, max_size=30), max_size=5),
    everything=st.booleans(),
    reason=st.text(max_size=50),
)
def test_valid_requests_parse_to_what_was_sent(
    cmd: str, names: list[str], everything: bool, reason: str
) -> None:
    """A well-formed request parses to the same command, names (first occurrence order),
    ``all`` and reason."""
    req: dict[str, Any] = {"v": 1, "cmd": cmd, "services": names}
    if cmd != "status":
        req["all"] = everything
        req["reason"] = reason
        if bool(names) == everything:
            return  # exactly one of names / all is required
    parsed = parse_request(json.dumps(req).encode())
    assert parsed.cmd == cmd
    assert list(parsed.services) == list(dict.fromkeys(names))
    if cmd != "status":
        assert (parsed.all, parsed.reason) == (everything, reason)


# ---------------------------------------------------------------- against the real daemon


def _write_config(tmp: Path, sock: Path) -> Path:
    (tmp / "healthy").write_text("")
    service = """
[[service]]
name = "{name}"
prefixes = ["{prefix}"]
rise = 1
fall = 1
interval = 0.1
fast_interval = 0.05
drain_seconds = 0.8
[[service.checks]]
type = "file"
path = "{tmp}/healthy"
"""
    text = (
        f'acks = false\nstate_dir = "{tmp}/state"\ncontrol_socket = "{sock}"\n'
        f'maintenance_file = "{tmp}/maintenance"\ninclude = "none/*.toml"\n'
        + service.format(name="web", prefix="192.0.2.10/32", tmp=tmp)
        + service.format(name="dns", prefix="192.0.2.53/32", tmp=tmp)
    )
    path = tmp / "announcer.toml"
    path.write_text(text)
    return path


def _until(fn: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_daemon_handler_drives_a_real_daemon(sock_dir: Path, tmp_path: Path) -> None:
    """Through the socket, a running Daemon reports status, drains (lower, then withdraw),
    answers unknown names without changing anything, undrains, reloads and refuses a
    broken reload; drains are made with the "operator" source."""
    from announcer.daemon import Daemon

    sock = sock_dir / "ctl.sock"
    config = cfg.load(_write_config(tmp_path, sock))
    read_fd, write_fd = os.pipe()
    log = Logger(io.StringIO(), level="debug")
    daemon = Daemon(config, out=io.BytesIO(), inp=os.fdopen(read_fd, "rb"), log=log)
    loop = threading.Thread(target=daemon.run, daemon=True)
    loop.start()
    server = ControlServer(sock, daemon_handler(daemon), group=None, log=log)
    server.start()
    client = ControlClient(sock)
    try:

        def routes() -> dict[str, str]:
            services = client.request("status")["services"]
            return {n: s["route"] for n, s in services.items()}

        _until(lambda: routes() == {"web": "ANNOUNCED", "dns": "ANNOUNCED"})
        assert list(client.request("status", services=["dns"])["services"]) == ["dns"]
        # The typed status the client renders with names exactly what the daemon sends.
        (web,) = client.request("status", services=["web"])["services"].values()
        # fleet_guard appears only with a [fleet] while the guard is at work,
        # drain_waiting while a drain waits to begin, the forwarding keys only with
        # forward_connections, last_event once an immediate check reported one.
        only_sometimes = {
            "fleet_guard",
            "fleet_slot",
            "drain_waiting",
            "forward_connections",
            "forwarding",
            "last_event",
        }
        assert set(web) == set(ServiceStatus.__annotations__) - only_sometimes
        assert set(client.request("status")) == set(DaemonStatus.__annotations__)

        with pytest.raises(ControlRefused) as err:
            client.request("drain", services=["web", "nope"])
        assert err.value.kind == "unknown_service"
        assert "'nope'" in str(err.value) and "known: web, dns" in str(err.value)
        assert routes()["web"] == "ANNOUNCED"  # nothing changed

        web = client.request("drain", services=["web"], reason="kernel")["services"]["web"]
        assert web["changed"] is True
        assert (web["route"], web["drained"], web["drain_sources"]) == (
            "DRAINING",
            True,
            ["operator"],
        )
        assert web["drain_reason"] == "kernel" and 0 < web["drain_left"] <= 0.8
        again = client.request("drain", services=["web"])["services"]["web"]
        assert again["changed"] is False

        assert wait_withdrawn(client, ["web"], timeout=5, err=io.StringIO()) == 0
        assert routes() == {"web": "WITHDRAWN", "dns": "ANNOUNCED"}

        web = client.request("undrain", services=["web"])["services"]["web"]
        assert (web["changed"], web["drained"]) == (True, False)
        _until(lambda: routes()["web"] == "ANNOUNCED")

        both = client.request("drain", all=True)["services"]
        assert sorted(both) == ["dns", "web"]
        assert both["dns"]["drain_reason"] == f"drained by {pwd.getpwuid(os.geteuid()).pw_name}"
        client.request("undrain", all=True)
        _until(lambda: routes() == {"web": "ANNOUNCED", "dns": "ANNOUNCED"})

        reloaded = client.request("reload")
        assert "ok" not in reloaded and sorted(reloaded["changes"]["same"]) == ["dns", "web"]
        config.path.write_text(config.path.read_text() + "\nbogus_key = 1\n")
        with pytest.raises(ControlRefused) as err:
            client.request("reload")
        assert err.value.kind == "refused" and "bogus_key" in str(err.value)
        assert "bogus_key" in (client.request("status").get("config_error") or "")

        assert client.request("ping")["pid"] == os.getpid()
    finally:
        client.close()
        server.close()
        os.close(write_fd)
        loop.join(5)
    assert not loop.is_alive()


def test_daemon_handler_reports_a_stuck_main_loop_as_busy() -> None:
    """If the daemon's main loop does not take the call in time, the reply is "busy"
    with a hint, not an internal error."""

    class Stuck:
        def call(self, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
            raise queue.Empty

        def snapshot(self) -> dict[str, Any]:
            return {}

        def drain(self, name: str, source: str, reason: str = "") -> bool:
            return True

        def undrain(self, name: str, source: str) -> bool:
            return True

        def commit(self) -> str | None:
            return None

        def reload(self) -> dict[str, Any]:
            return {}

    handle = daemon_handler(Stuck(), call_timeout=0.1)
    with pytest.raises(ControlRefused) as err:
        handle(StatusRequest(), Peer(1, 0, 0))
    assert err.value.kind == "busy" and "did not answer within 0.1s" in str(err.value)
    assert handle(PingRequest(), Peer(1, 0, 0))["pong"] is True


def test_a_stop_drain_is_marked_and_validated() -> None:
    """`"stop": true` on a drain makes a stop drain; a non-boolean is refused; undrain and
    status do not take it."""
    req = parse_request(b'{"v": 1, "cmd": "drain", "all": true, "stop": true}')
    assert req.stop is True and req.all is True
    assert parse_request(b'{"v": 1, "cmd": "drain", "services": ["web"]}').stop is False
    for bad in (
        b'{"v": 1, "cmd": "drain", "all": true, "stop": "yes"}',
        b'{"v": 1, "cmd": "undrain", "all": true, "stop": true}',
    ):
        with pytest.raises(ControlError):
            parse_request(bad)


def test_fleet_drain_options_are_validated_and_sent_only_when_set() -> None:
    """force, no_queue and a stop's timeout are checked like every field; the CLI sends
    them only when given, so a daemon without a fleet gets the plain drain call."""
    req = parse_request(
        b'{"v": 1, "cmd": "drain", "all": true, "stop": true, "force": true, "timeout": 50}'
    )
    assert (req.force, req.timeout, req.no_queue) == (True, 50.0, False)
    for bad in (
        b'{"v": 1, "cmd": "drain", "all": true, "timeout": 0}',
        b'{"v": 1, "cmd": "drain", "all": true, "timeout": true}',
        b'{"v": 1, "cmd": "drain", "all": true, "no_queue": 1}',
    ):
        with pytest.raises(ControlError):
            parse_request(bad)
    calls: list[dict[str, object]] = []

    class Fake:
        def drain(self, name: str, source: DrainSource, reason: str = "", **how: object) -> bool:
            calls.append(how)
            return True

    plain = parse_request(b'{"v": 1, "cmd": "drain", "services": ["web"]}')
    plain.apply(Fake(), "web", DrainSource.OPERATOR, "")  # type: ignore[attr-defined]
    req.apply(Fake(), "web", DrainSource.STOP, "")  # type: ignore[attr-defined]
    assert calls == [{}, {"force": True, "patience": 50.0}]
