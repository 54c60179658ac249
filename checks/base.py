"""The contract every health check keeps.

A check is built once from its validated spec and then run many times, each run
bounded by a timeout. ``run`` never raises: library and OS errors are translated
into a failed :class:`CheckResult` at the edge of this package, so the scheduler
never has to know what ``requests`` or ``socket`` can throw.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from announcer.checks._text import unexpected

Clock = Callable[[], float]
"""A monotonic clock in seconds; injected so tests can control time."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Outcome of one run of one check.

    ``reason`` is a short human text: why it failed, or what was seen when it
    passed (e.g. ``"HTTP 200"``). ``duration`` is in seconds.
    """

    ok: bool
    reason: str
    duration: float


OnDone = Callable[[CheckResult], None]
"""Told a check run's result, once, from whichever thread ran it."""


class Check(Protocol):
    """A runnable health check."""

    @property
    def name(self) -> str:
        """Short label used in logs and status, e.g. ``http GET http://127.0.0.1/health``."""
        ...

    def run(self, timeout: float) -> CheckResult:
        """Run once, finishing within ``timeout`` seconds where the OS allows. Never raises."""
        ...

    def close(self) -> None:
        """Release kept resources (sessions, sockets). Safe to call twice."""
        ...


class LoopCheck(Check, Protocol):
    """A check that can also run as a coroutine on an :mod:`asyncio` loop (HTTP, TCP, DNS):
    :class:`announcer.runner.CheckRunner` runs these on its one loop thread. One that can
    also begin a run as loop callbacks, without a Task, says so with an optional
    ``start(timeout, on_done) -> bool`` (see :meth:`announcer.checks.http.HttpCheck.start`)."""

    async def arun(self, timeout: float) -> CheckResult:
        """``run`` as a coroutine on the running loop. Never raises (but may be cancelled)."""
        ...


monotonic: Clock = time.monotonic
"""The default clock (the function itself: a wrapper would cost a call twice per check)."""


def timed_run(
    clock: Clock,
    body: Callable[[float], tuple[bool, str]],
    translate: Callable[[Exception], str | None] | None = None,
) -> CheckResult:
    """Run ``body(start)`` and time it; the one place exceptions become failed results.

    ``translate`` words the exceptions a check expects (timeouts, socket errors);
    anything else is reported by its type name, so ``run`` never raises.
    """
    start = clock()
    try:
        ok, reason = body(start)
    except Exception as exc:  # noqa: BLE001 - last line of defence: run() never raises
        ok, reason = False, (translate(exc) if translate else None) or unexpected(exc)
    return CheckResult(ok=ok, reason=reason, duration=max(0.0, clock() - start))
