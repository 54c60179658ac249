"""systemd notifications (``sd_notify``) without libsystemd.

systemd starts ExaBGP (``Type=notify``, ``NotifyAccess=all``) and ExaBGP
starts us, so the environment we inherit names the notify socket and, with
``WatchdogSec=``, the watchdog period and the pid it was meant for: ExaBGP's,
our parent. The watchdog is therefore on when ``WATCHDOG_PID`` is absent, is
our pid, or is our parent's.

With a ``stall_limit`` (``announcer run`` passes the config's) the controller
also sets the watchdog's timeout itself: its first ``WATCHDOG=1`` carries
``WATCHDOG_USEC=`` :func:`~announcer.watchdog.systemd_watchdog_timeout` (systemd
accepts that change at runtime, from any process ``NotifyAccess=all`` admits,
until the service next starts), and pings come every :data:`PING_EVERY` seconds.
The unit's ``WatchdogSec=`` only switches the watchdog on and applies until a
controller sets its own; an operator tunes ``stall_limit``, and both follow.

Messages are single datagrams of ``KEY=VALUE`` lines to ``NOTIFY_SOCKET``, a
filesystem path or, with a leading ``@``, an abstract socket name. Without
``NOTIFY_SOCKET`` every method does nothing. Nothing here raises: the first
failure is logged, later ones are only counted, since a controller must keep
announcing even if systemd cannot be told about it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

from announcer.log import Logger
from announcer.watchdog import systemd_watchdog_timeout

Clock = Callable[[], float]

SEND_TIMEOUT = 1.0
"""Seconds a send may block (systemd reads its socket promptly; this only bounds a hang)."""

PING_EVERY = 1.0
"""With a timeout of our own, the least time between two ``WATCHDOG=1`` (at most
half the timeout). Short, so that the last ping before a stall is recent and the
stall guard's exit plus ExaBGP's respawn fit in the timeout (see
:data:`announcer.watchdog.SYSTEMD_MARGIN`); one datagram a second costs nothing."""


def _address(value: str) -> str | bytes | None:
    """The socket address in ``NOTIFY_SOCKET``, or None if it is not one we can use."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # relative paths and vsock: addresses are not for us


class Notifier:
    """Sends ``READY=1``, ``STATUS=``, ``WATCHDOG=1`` and ``STOPPING=1`` to systemd.

    Build it with :meth:`from_env`; the constructor is for tests and wiring.
    ``watchdog_interval`` is the least time between two ``WATCHDOG=1`` (half of
    ``WATCHDOG_USEC``, as systemd recommends), or None if the watchdog is off.
    ``watchdog_timeout`` (seconds), if set, goes to systemd as ``WATCHDOG_USEC=``
    with the first ``WATCHDOG=1`` that is sent successfully.
    """

    def __init__(
        self,
        address: str | bytes | None,
        *,
        watchdog_interval: float | None = None,
        watchdog_timeout: float | None = None,
        clock: Clock = time.monotonic,
        log: Logger | None = None,
    ) -> None:
        self.address = address
        self.watchdog_interval = watchdog_interval if address is not None else None
        self.watchdog_timeout = watchdog_timeout if self.watchdog_interval is not None else None
        self._timeout_sent = False
        self.errors = 0
        self.sent = 0
        self._clock = clock
        self._log = log
        self._sock: socket.socket | None = None
        self._last_watchdog: float | None = None

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] = os.environ,
        *,
        pid: int | None = None,
        ppid: int | None = None,
        clock: Clock = time.monotonic,
        log: Logger | None = None,
        stall_limit: float | None = None,
    ) -> Notifier:
        """A notifier for what the environment says; a no-op one if there is no socket.

        ``pid`` and ``ppid`` default to ours and our parent's. With ``stall_limit``
        and a watchdog on, the timeout becomes ``systemd_watchdog_timeout(stall_limit)``
        and the pings come every :data:`PING_EVERY` s; with the watchdog off
        (no ``WATCHDOG_USEC``), it stays off.
        """
        raw = environ.get("NOTIFY_SOCKET", "")
        address = _address(raw) if raw else None
        if raw and address is None and log is not None:
            log.warning("notify_disabled", why="NOTIFY_SOCKET is not a path or @name", value=raw)
        interval = None
        usec = environ.get("WATCHDOG_USEC", "")
        if address is not None and usec:
            interval = _watchdog_interval(
                usec,
                environ.get("WATCHDOG_PID", ""),
                os.getpid() if pid is None else pid,
                os.getppid() if ppid is None else ppid,
                log,
            )
        timeout = None
        if interval is not None and stall_limit is not None:
            timeout = systemd_watchdog_timeout(stall_limit)
            interval = min(timeout / 2, PING_EVERY)
            if log is not None:
                log.info(
                    "systemd_watchdog",
                    timeout=timeout,
                    unit_timeout=int(usec) / 1_000_000,
                    ping_every=interval,
                    stall_limit=stall_limit,
                )
        return cls(
            address, watchdog_interval=interval, watchdog_timeout=timeout, clock=clock, log=log
        )

    @property
    def enabled(self) -> bool:
        """True if there is a socket to notify."""
        return self.address is not None

    def ready(self, status: str | None = None) -> None:
        """Startup is done (``READY=1``), optionally with a status line."""
        self._send("READY=1" if status is None else f"READY=1\nSTATUS={_line(status)}")

    def status(self, text: str) -> None:
        """A one-line status shown by ``systemctl status``."""
        self._send(f"STATUS={_line(text)}")

    def stopping(self) -> None:
        """Shutdown has begun (``STOPPING=1``)."""
        self._send("STOPPING=1")

    def watchdog(self) -> None:
        """Pet the watchdog if it is on and due; cheap enough for every loop iteration."""
        interval = self.watchdog_interval
        if interval is None:
            return
        now = self._clock()
        last = self._last_watchdog
        if last is not None and now - last < interval:
            return
        self._last_watchdog = now
        timeout = self.watchdog_timeout
        if timeout is None or self._timeout_sent:
            self._send("WATCHDOG=1")
        elif self._send(f"WATCHDOG=1\nWATCHDOG_USEC={round(timeout * 1_000_000)}"):
            self._timeout_sent = True

    def close(self) -> None:
        """Close the socket (a later send opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, message: str) -> bool:
        """Send one datagram; True if it went out."""
        address = self.address
        if address is None:
            return False
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.settimeout(SEND_TIMEOUT)
                self._sock = sock
            self._sock.sendto(message.encode(), address)
        except OSError as err:
            self.errors += 1
            if self.errors == 1 and self._log is not None:
                shown = address if isinstance(address, str) else "@" + address[1:].decode()
                self._log.warning(
                    "notify_failed",
                    socket=shown,
                    message=message.split("\n", 1)[0],
                    why=str(err),
                    note="further notify errors are not logged",
                )
            return False
        self.sent += 1
        return True


def _line(text: str) -> str:
    return " ".join(text.split())


def _watchdog_interval(
    usec: str, watchdog_pid: str, pid: int, ppid: int, log: Logger | None
) -> float | None:
    try:
        micros = int(usec)
    except ValueError:
        micros = 0
    if micros <= 0:
        if log is not None:
            log.warning("watchdog_disabled", why="WATCHDOG_USEC is not a positive integer")
        return None
    if watchdog_pid:
        try:
            meant_for = int(watchdog_pid)
        except ValueError:
            meant_for = -1
        if meant_for not in (pid, ppid):
            if log is not None:
                log.warning(
                    "watchdog_disabled",
                    why="WATCHDOG_PID is neither us nor our parent",
                    watchdog_pid=watchdog_pid,
                    pid=pid,
                    ppid=ppid,
                )
            return None
    return micros / 2_000_000
