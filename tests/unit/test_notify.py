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
from announcer.notify import PING_EVERY, Notifier
from announcer.watchdog import systemd_watchdog_timeout


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


# ---- the watchdog timeout derived from stall_limit (WATCHDOG_USEC= sent to systemd)


def test_stall_limit_sets_the_timeout_with_the_first_ping(
    listener: tuple[socket.socket, str],
) -> None:
    """The unit's 15 s and stall_limit 10: the first WATCHDOG=1 carries WATCHDOG_USEC=15 s,
    later ones do not, and the pings come every PING_EVERY (not every 7.5 s)."""
    sock, path = listener
    clock = FakeClock()
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "15000000", "WATCHDOG_PID": "4000"}
    n = Notifier.from_env(env, pid=4242, ppid=4000, clock=clock, stall_limit=10.0)
    assert n.watchdog_timeout == systemd_watchdog_timeout(10.0) == 15.0
    assert n.watchdog_interval == PING_EVERY == 1.0
    n.watchdog()
    clock.now += 0.99
    n.watchdog()
    assert received(sock) == [b"WATCHDOG=1\nWATCHDOG_USEC=15000000"]
    clock.now += 0.01
    n.watchdog()
    clock.now += 1.0
    n.watchdog()
    assert received(sock) == [b"WATCHDOG=1", b"WATCHDOG=1"]


@pytest.mark.parametrize(
    ("stall_limit", "usec", "interval"),
    [(60.0, b"65000000", 1.0), (2.5, b"7500000", 1.0), (0.1, b"5100000", 1.0)],
)
def test_the_timeout_follows_stall_limit_either_side_of_the_units_value(
    listener: tuple[socket.socket, str], stall_limit: float, usec: bytes, interval: float
) -> None:
    """WatchdogSec= is not a cap: a stall_limit raised to 60 s must not have systemd end
    ExaBGP before the stall guard restarts the controller (at 60 s)."""
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "15000000"}
    n = Notifier.from_env(env, stall_limit=stall_limit)
    assert n.watchdog_interval == interval
    n.watchdog()
    assert received(sock) == [b"WATCHDOG=1\nWATCHDOG_USEC=" + usec]


def test_stall_limit_leaves_a_watchdog_the_unit_turned_off_off(
    listener: tuple[socket.socket, str],
) -> None:
    """No WATCHDOG_USEC (WatchdogSec=0 in a drop-in, or not under systemd): nothing is sent."""
    sock, path = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": path}, stall_limit=10.0)
    assert n.watchdog_interval is None
    assert n.watchdog_timeout is None
    n.watchdog()
    n.ready()
    assert received(sock) == [b"READY=1"]


def test_stall_limit_does_not_enable_a_watchdog_meant_for_another_process(
    listener: tuple[socket.socket, str],
) -> None:
    """WATCHDOG_PID of a stranger: the watchdog stays off, and no timeout is sent either."""
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "15000000", "WATCHDOG_PID": "999"}
    n = Notifier.from_env(env, pid=4242, ppid=4000, stall_limit=10.0, log=Logger(io.StringIO()))
    assert n.watchdog_timeout is None
    n.watchdog()
    assert received(sock) == []


def test_the_timeout_goes_with_pings_until_one_gets_through(tmp_path: Path) -> None:
    """A first ping that failed (socket not there yet) does not lose the timeout."""
    path = tmp_path / "late"
    clock = FakeClock()
    env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "15000000"}
    n = Notifier.from_env(env, clock=clock, log=Logger(io.StringIO()), stall_limit=10.0)
    n.watchdog()
    assert n.errors == 1
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(path))
        clock.now += 1.0
        n.watchdog()
        clock.now += 1.0
        n.watchdog()
        assert received(sock) == [b"WATCHDOG=1\nWATCHDOG_USEC=15000000", b"WATCHDOG=1"]
    finally:
        sock.close()


def test_the_log_says_what_systemd_is_told(listener: tuple[socket.socket, str]) -> None:
    """One info line at start: the timeout asked for, the unit's, the ping period."""
    _, path = listener
    out = io.StringIO()
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "15000000"}
    Notifier.from_env(env, stall_limit=10.0, log=Logger(out))
    line = out.getvalue()
    assert "event=systemd_watchdog timeout=15.0 unit_timeout=15.0 ping_every=1.0" in line


@pytest.mark.parametrize("services", [0, 1])
def test_the_idle_main_loop_turns_often_enough_for_the_pings(tmp_path: Path, services: int) -> None:
    """The loop pings (and beats) on every turn; idle, with no service or one checked
    only every 30 s, it still turns every 0.5 s (the maintenance poll), well within
    PING_EVERY, so WATCHDOG=1 goes out every 1.0-1.5 s."""
    from announcer import config as cfg
    from announcer.daemon import Daemon
    from tests.unit.loop import AtOnce

    flag = tmp_path / "ok"
    flag.touch()
    service = (
        '[[service]]\nname = "web"\nprefixes = ["192.0.2.10/32"]\ninterval = 30.0\n'
        f'checks = [{{ type = "file", path = "{flag}" }}]\n'
    )
    path = tmp_path / "announcer.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        f'maintenance_file = "{tmp_path / "maintenance"}"\n'
        f'control_socket = "{tmp_path / "control.sock"}"\n'
        'include = ""\n' + (service if services else "")
    )
    clock = FakeClock()
    r, w = os.pipe()
    with os.fdopen(w, "wb") as out, os.fdopen(r, "rb") as inp:
        daemon = Daemon(
            cfg.load(path),
            out=out,
            inp=inp,
            log=Logger(io.StringIO()),
            clock=clock,
            runner=AtOnce(),  # results at once: the turns are the test's, not the threads'
        )
        try:
            for _ in range(5):
                daemon.turn(wait=0.0)
                wait = daemon.next_wakeup() - clock.now
                assert 0 < wait <= PING_EVERY / 2
                clock.now += wait
        finally:
            daemon.close()
