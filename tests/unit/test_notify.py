"""systemd notifications over a real AF_UNIX datagram socket."""

from __future__ import annotations

import io
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from announcer.log import Logger
from announcer.notify import Notifier


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound in tmp, standing in for systemd's notify socket."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    yield sock, str(path)
    sock.close()


def received(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on ``sock``."""
    out: list[bytes] = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096))
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2.0)
    return out


def test_messages_arrive_on_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    """ready, status and stopping each send one datagram with the sd_notify wording."""
    sock, path = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.enabled
    n.ready()
    n.status("3 services up,\n1 draining")
    n.ready("all good")
    n.stopping()
    assert received(sock) == [
        b"READY=1",
        b"STATUS=3 services up, 1 draining",
        b"READY=1\nSTATUS=all good",
        b"STOPPING=1",
    ]
    assert n.sent == 4
    assert n.errors == 0
    n.close()


def test_abstract_socket_name_with_at_sign() -> None:
    """NOTIFY_SOCKET=@name addresses the abstract socket "\\0name"."""
    name = f"announcer-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2.0)
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        n.ready()
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_no_notify_socket_is_a_silent_no_op() -> None:
    """Without NOTIFY_SOCKET nothing is sent, nothing is logged, nothing raises."""
    out = io.StringIO()
    n = Notifier.from_env({"WATCHDOG_USEC": "1000000"}, log=Logger(out))
    assert not n.enabled
    assert n.watchdog_interval is None
    n.ready()
    n.status("x")
    n.watchdog()
    n.stopping()
    assert n.sent == 0
    assert n.errors == 0
    assert out.getvalue() == ""


def test_unusable_notify_socket_value_disables_with_a_warning() -> None:
    """A relative path (or vsock:) is not a socket we can use: logged once, then no-op."""
    out = io.StringIO()
    n = Notifier.from_env({"NOTIFY_SOCKET": "relative/notify"}, log=Logger(out))
    assert not n.enabled
    n.ready()
    assert "notify_disabled" in out.getvalue()


def test_watchdog_is_sent_at_most_every_half_period(listener: tuple[socket.socket, str]) -> None:
    """WATCHDOG=1 goes out on the first call, then not again before WATCHDOG_USEC/2."""
    sock, path = listener
    clock = FakeClock()
    n = Notifier.from_env(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}, pid=10, ppid=1, clock=clock
    )
    assert n.watchdog_interval == 1.0
    n.watchdog()
    for _ in range(100):
        clock.now += 0.009
        n.watchdog()
    assert received(sock) == [b"WATCHDOG=1"]
    clock.now += 0.2
    n.watchdog()
    n.watchdog()
    assert received(sock) == [b"WATCHDOG=1"]


@pytest.mark.parametrize(
    ("watchdog_pid", "on"),
    [("", True), ("4242", True), ("4000", True), ("999", False), ("junk", False)],
)
def test_watchdog_pid_may_be_us_or_our_parent(
    listener: tuple[socket.socket, str], watchdog_pid: str, on: bool
) -> None:
    """WATCHDOG_PID absent, ours (4242) or our parent's (ExaBGP, 4000) enables it."""
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"}
    if watchdog_pid:
        env["WATCHDOG_PID"] = watchdog_pid
    out = io.StringIO()
    n = Notifier.from_env(env, pid=4242, ppid=4000, log=Logger(out))
    n.watchdog()
    assert (n.watchdog_interval == 15.0) is on
    assert received(sock) == ([b"WATCHDOG=1"] if on else [])
    assert ("watchdog_disabled" in out.getvalue()) is not on


def test_watchdog_pid_defaults_to_the_real_pids(listener: tuple[socket.socket, str]) -> None:
    """Without injected pids, our real parent's pid is accepted."""
    _, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getppid())}
    assert Notifier.from_env(env).watchdog_interval == 0.5


@pytest.mark.parametrize("usec", ["0", "-5", "soon"])
def test_bad_watchdog_usec_disables_the_watchdog(
    listener: tuple[socket.socket, str], usec: str
) -> None:
    """A WATCHDOG_USEC that is not a positive integer turns the watchdog off, not the rest."""
    sock, path = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": usec})
    assert n.watchdog_interval is None
    n.watchdog()
    n.ready()
    assert received(sock) == [b"READY=1"]


def test_send_errors_never_raise_and_are_logged_once(tmp_path: Path) -> None:
    """A socket path nobody listens on: every call returns, one warning, errors counted."""
    out = io.StringIO()
    clock = FakeClock()
    n = Notifier.from_env(
        {"NOTIFY_SOCKET": str(tmp_path / "gone"), "WATCHDOG_USEC": "1000"},
        clock=clock,
        log=Logger(out),
    )
    n.ready()
    n.status("still here")
    for _ in range(3):
        clock.now += 1
        n.watchdog()
    n.stopping()
    assert n.errors == 6
    assert n.sent == 0
    assert out.getvalue().count("notify_failed") == 1


def test_recovers_when_the_socket_appears(tmp_path: Path) -> None:
    """After failures, a later send to a socket that now exists gets through."""
    path = tmp_path / "late"
    n = Notifier.from_env({"NOTIFY_SOCKET": str(path)}, log=Logger(io.StringIO()))
    n.ready()
    assert n.errors == 1
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(path))
        sock.settimeout(2.0)
        n.ready()
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()
