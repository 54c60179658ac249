"""A stall guard for the main loop: exit if it stops turning, so ExaBGP respawns us.

The main loop calls :meth:`StallGuard.beat` on every iteration (one clock read
and one attribute store). A daemon thread wakes every ``check_every`` seconds;
if no beat came for ``limit`` seconds it calls ``on_stall`` with the time since
the last beat, once per stall (a later beat re-arms it). The daemon passes
:func:`exit_on_stall`, which logs and ends the process with status 70
(``EX_SOFTWARE``); ExaBGP then starts a fresh controller.

This catches a loop that blocks (a deadlock, a write to a full pipe, a call
that never returns). A loop spinning in pure Python is caught too, since the
interpreter hands the GIL to the guard's thread; only C code that holds the
GIL forever is not, nor a process that is frozen as a whole (SIGSTOP, a
cgroup freezer, a debugger), which stops this thread too. systemd's watchdog
is the backstop for those: :func:`systemd_watchdog_timeout` is the timeout the
controller asks systemd for, derived from the same ``stall_limit`` so that the
guard always gets the first chance (ExaBGP keeps the routes while it starts a
new controller) and systemd ends the service only when the guard could not act.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from announcer.log import Logger

Clock = Callable[[], float]

EX_SOFTWARE = 70

CHECK_EVERY_MAX = 1.0
"""The guard looks at least this often (default ``check_every``: ``min(limit / 4, 1)``)."""

SYSTEMD_MARGIN = 5.0
"""Seconds systemd's watchdog allows beyond ``stall_limit``.

The budget, after the main loop's last beat: the guard fires within ``limit +``
:data:`CHECK_EVERY_MAX`; the last ``WATCHDOG=1`` may be up to 1.5 s older than
that beat (:data:`announcer.notify.PING_EVERY` plus the idle loop's 0.5 s
maintenance poll). That leaves 2.5 s for ExaBGP to start a new controller and for
it to send its first ``WATCHDOG=1``; a slower start makes systemd end the
service, the outcome for a frozen controller anyway."""


def systemd_watchdog_timeout(stall_limit: float) -> float:
    """The systemd watchdog timeout (seconds) for a controller with this ``stall_limit``.

    It is also the longest a frozen controller's routes stay announced under
    systemd: nobody pets the watchdog, systemd ends ExaBGP, the BGP session drops.
    The unit's ``WatchdogSec=`` is this value for the default ``stall_limit``.
    """
    if stall_limit <= 0:
        raise ValueError("stall_limit must be positive")
    return stall_limit + SYSTEMD_MARGIN


class StallGuard:
    """Calls ``on_stall(seconds_since_last_beat)`` when :meth:`beat` stops for ``limit`` s.

    ``check_every`` defaults to a quarter of ``limit``, at most
    :data:`CHECK_EVERY_MAX`, so a stall is reported between ``limit`` and
    ``limit + check_every`` after the last beat. The clock is only read, never
    waited on: the thread sleeps in real time, and tests with a fake clock call
    :meth:`check` themselves.
    """

    def __init__(
        self,
        limit: float,
        on_stall: Callable[[float], None],
        clock: Clock = time.monotonic,
        check_every: float | None = None,
    ) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.limit = limit
        if check_every is None:
            check_every = min(limit / 4, CHECK_EVERY_MAX)
        self.check_every = check_every
        if self.check_every <= 0:
            raise ValueError("check_every must be positive")
        self._on_stall = on_stall
        self._clock = clock
        self._last = clock()
        self._fired_for: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> StallGuard:
        """Start the checking thread (a daemon thread); returns self."""
        if self._thread is None:
            self._last = self._clock()
            self._thread = threading.Thread(target=self._run, name="stall-guard", daemon=True)
            self._thread.start()
        return self

    def beat(self) -> None:
        """The loop is alive."""
        self._last = self._clock()

    def check(self) -> bool:
        """Look once; call ``on_stall`` if the loop is stalled and was not reported yet.

        Returns True if ``on_stall`` was called.
        """
        last = self._last
        since = self._clock() - last
        if since < self.limit or self._fired_for == last:
            return False
        self._fired_for = last
        self._on_stall(since)
        return True

    def stop(self, timeout: float | None = None) -> None:
        """Stop checking; waits for the thread up to ``timeout`` seconds."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.check_every):
            self.check()


def exit_on_stall(
    log: Logger, status: int = EX_SOFTWARE, log_grace: float = 1.0
) -> Callable[[float], None]:
    """An ``on_stall`` that logs the stall and ends the process at once with ``status``.

    The log line is written from a helper thread given ``log_grace`` seconds:
    the stuck main thread may be the one holding the logger's lock (blocked
    writing to a full stderr pipe), and the exit must not wait on it.
    ``os._exit`` skips cleanup on purpose, for the same reason.
    """

    def on_stall(seconds: float) -> None:
        fields = {"seconds": round(seconds, 3), "action": "exit", "status": status}
        writer = threading.Thread(
            target=log.error, args=("stalled",), kwargs=fields, name="stall-log", daemon=True
        )
        writer.start()
        writer.join(log_grace)
        os._exit(status)

    return on_stall
