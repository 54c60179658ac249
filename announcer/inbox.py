"""The daemon's inbox: the one queue other threads post to, and the loop's wake-ups.

The daemon's thread runs an :mod:`asyncio` loop (the HTTP, TCP and DNS checks run
on it too). A message posted from another thread wakes it once per batch, not per
message; one posted from the loop's own callbacks (a check's result) only schedules
a turn. A signal handler runs on the loop's thread but outside its callbacks, maybe
inside its wait: it always wakes the loop. A turn also comes when the loop's next
timer is due (:meth:`Inbox.wake_at`). Tests use :meth:`wait` instead, without a loop.
"""

from __future__ import annotations

import asyncio
import queue
import signal
from collections.abc import Callable, Iterator
from typing import Any

from announcer import messages as msg

__all__ = ["Inbox"]


class Inbox:
    """Messages for the loop; ``turn`` is called on the loop when there is work."""

    def __init__(self, loop: asyncio.AbstractEventLoop, turn: Callable[[], None]) -> None:
        self.loop = loop
        self._turn_fn = turn
        self.failure: BaseException | None = None
        """What a turn raised: the loop stops, and the daemon's run raises it again (as a
        loop of its own would have: ExaBGP then starts a fresh controller)."""
        self._queue: queue.SimpleQueue[msg.Message] = queue.SimpleQueue()
        self._woken = False  # a turn is scheduled for what was posted
        self._timer: asyncio.TimerHandle | None = None  # the turn due when nothing arrives
        self._closed = False  # the owner has stopped: no more turns

    def post(self, message: msg.Message) -> None:
        """Hand a message to the loop (from any thread)."""
        self._queue.put(message)
        if not self._woken and self.loop.is_running():
            self._woken = True
            if asyncio._get_running_loop() is self.loop:
                self.loop.call_soon(self.turn)
            else:
                self.loop.call_soon_threadsafe(self.turn)

    def catch_signals(self) -> None:
        """Post SIGTERM, SIGINT and SIGHUP as :class:`~announcer.messages.Signal` (main
        thread only). A handler may run inside the loop's wait: it always wakes the loop."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._queue.put(msg.Signal(signum))
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.turn)

    def arrived(self) -> Iterator[msg.Message]:
        """What has arrived so far; a message posted from now on schedules another turn."""
        self._woken = False
        while True:
            try:
                yield self._queue.get_nowait()
            except queue.Empty:
                return

    def wait(self, timeout: float) -> msg.Message | None:
        """The next message, waiting up to ``timeout`` seconds (tests' turns, no loop)."""
        try:
            return self._queue.get(timeout=timeout) if timeout else self._queue.get_nowait()
        except queue.Empty:
            return None

    def wake_at(self, at: float) -> None:
        """Make sure a turn runs at ``at`` (the loop's clock, monotonic) if nothing comes
        first; a timer already set earlier stays (an early turn only looks and waits)."""
        if self._timer is None or self._timer.when() > at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.turn()

    def close(self) -> None:
        """No more turns, once the owner's loop has ended: the check runner may run the
        loop again to wind its checks down, and a message posted meanwhile (an output
        flush, a signal) must not take a turn there, which would stop that loop again."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def turn(self) -> None:
        """Run the owner's turn; what it raises ends the loop (see :attr:`failure`)."""
        if self._closed:
            return
        try:
            self._turn_fn()
        except BaseException as err:  # noqa: BLE001 - asyncio would log it and go on
            self.failure = err
            self.loop.stop()

    def call(self, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Run ``fn`` on the loop's thread and return its result (from any other thread)."""
        reply: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        self.post(msg.Call(fn, reply))
        ok, value = reply.get(timeout=timeout)
        if not ok:
            raise value
        return value

    @staticmethod
    def answer(call: msg.Call) -> None:
        """Run a :class:`~announcer.messages.Call` (on the loop's thread) and reply."""
        try:
            call.reply.put((True, call.fn()))
        except Exception as err:  # noqa: BLE001 - handed back to the caller
            call.reply.put((False, err))
