"""What the checks that run on an event loop share: connecting, timing, and a blocking ``run``.

The HTTP, TCP and DNS checks are coroutines (``arun``) so that the daemon runs
them all on one :mod:`asyncio` loop thread (:mod:`announcer.runner`) instead of a
thread each. Their blocking ``run`` (the ``announcer check`` command, tests)
runs the same coroutine on a private loop kept per calling thread, so there is
one implementation of every check, not two.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from announcer.checks._text import unexpected
from announcer.checks.base import CheckResult, Clock

__all__ = ["addresses", "budget", "open_socket", "run_blocking", "timed_arun"]

_private = threading.local()


def _private_loop() -> asyncio.AbstractEventLoop:
    """This thread's loop for blocking runs; kept so a check's kept-alive connection lives on."""
    loop: asyncio.AbstractEventLoop | None = getattr(_private, "loop", None)
    if loop is None or loop.is_closed():
        loop = _private.loop = asyncio.new_event_loop()
    return loop


def run_blocking(coroutine: Callable[[], Coroutine[Any, Any, CheckResult]]) -> CheckResult:
    """Run ``coroutine()`` to its end on this thread's private loop; never raises."""
    if asyncio._get_running_loop() is not None:
        # run_until_complete cannot nest: say so rather than raise (run() never raises).
        return CheckResult(False, "unexpected RuntimeError: run() called inside an event loop", 0.0)
    return _private_loop().run_until_complete(coroutine())


async def timed_arun(
    clock: Clock,
    body: Callable[[float], Awaitable[tuple[bool, str]]],
    translate: Callable[[Exception], str | None],
    start: float | None = None,
) -> CheckResult:
    """:func:`announcer.checks.base.timed_run` for a coroutine: time ``body(start)`` and turn
    any exception into a failed result (cancellation, the runner's shutdown, passes through).
    ``start``: when the run began, if before now (a run that goes on in a coroutine)."""
    if start is None:
        start = clock()
    try:
        ok, reason = await body(start)
    except Exception as exc:  # noqa: BLE001 - last line of defence: a check never raises
        ok, reason = False, translate(exc) or unexpected(exc)
    return CheckResult(ok=ok, reason=reason, duration=max(0.0, clock() - start))


def budget(clock: Clock, start: float, timeout: float) -> asyncio.Timeout:
    """``async with`` this: a TimeoutError once what is left of a run's budget, counted on
    the check's clock from ``start``, is spent."""
    return asyncio.timeout(max(0.0, start + timeout - clock()))


async def addresses(host: str, port: int, kind: socket.SocketKind) -> list[tuple[Any, ...]]:
    """``getaddrinfo`` for ``host``: at once for an address (no I/O, no thread), else through
    the loop's resolver thread (the OS resolver blocks and knows no timeout)."""
    try:
        return socket.getaddrinfo(host, port, type=kind, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass
    loop = asyncio.get_running_loop()
    return await loop.getaddrinfo(host, port, type=kind)


async def open_socket(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket to the first of ``host``'s addresses that accepts
    (as :func:`socket.create_connection` tries them); the last error if none does."""
    loop = asyncio.get_running_loop()
    error: OSError | None = None
    for family, kind, proto, _, address in await addresses(host, port, socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:  # cancelled (timeout, shutdown): the socket must not leak
            sock.close()
            raise
        return sock
    raise error or OSError(f"no address for {host!r}")
