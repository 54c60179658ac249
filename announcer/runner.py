"""Runs the daemon's checks: HTTP, TCP and DNS on one event loop thread, the rest on threads.

A thousand services each checked every second used to be a thousand blocking
runs a second on a thread pool, and switching between those threads cost more
than the checks (docs/benchmarks.md, P3). The checks that only wait on sockets
(:class:`announcer.checks.LoopCheck`: HTTP, TCP, DNS) now run as coroutines on
one :mod:`asyncio` loop in a thread of its own; commands and file checks, which
block in the OS (a child process, a stat on a hung NFS mount), stay on
:class:`announcer.workers.Workers`, whose overflow keeps a quick check from
waiting behind ones that sit out their timeouts.

The daemon runs its own loop on the runner's (``loop``): results then reach it
without a hand-over between threads, which cost more than the state machine's
work at a thousand checks a second (P3). Without one, the runner starts a loop
in a thread of its own (tests, one-off runs). Submitting from another thread
costs one wake-up of the loop per batch, not per check: checks submitted while
the loop has not yet taken the previous ones ride along with them. A check
that can begin a run as callbacks (``start``, as the HTTP check can on its kept
connection) is begun without a Task; the others run as one Task each.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import threading
from collections import deque

from announcer.checks import Check, CheckResult, LoopCheck, OnDone
from announcer.workers import Workers

__all__ = ["STOPPED", "CheckRunner", "run_guarded"]

_Job = tuple[LoopCheck, float, OnDone]

STOPPED = "not run: the check runner is shutting down"
"""The reason given to the checks that shutdown cut short or that came after it."""

BATCH = 32
"""Checks the loop starts per turn (see :meth:`CheckRunner._start`)."""

SHUTDOWN_WAIT = 1.0
"""Seconds :meth:`CheckRunner.shutdown` waits for the loop to cancel its checks and close."""


def _raised(err: Exception) -> CheckResult:
    return CheckResult(False, f"check raised {type(err).__name__}: {err}", 0.0)


def run_guarded(check: Check, timeout: float) -> CheckResult:
    """Run a check on this thread; anything it raises (checks must not) is a failed result."""
    try:
        return check.run(timeout)
    except Exception as err:  # noqa: BLE001 - never lose the worker, never lose a result
        return _raised(err)


def _deliver(on_done: OnDone, result: CheckResult) -> None:
    """Call ``on_done``; one that raises (it must not) is reported, and the runner goes on."""
    try:
        on_done(result)
    except Exception:  # noqa: BLE001 - never lose the loop or a worker to a callback
        _report()


def _report() -> None:
    """Report the exception being handled (an ``on_done`` raised) as a thread's would be."""
    exc_type, exc, tb = sys.exc_info()
    threading.excepthook(threading.ExceptHookArgs((exc_type, exc, tb, threading.current_thread())))


class CheckRunner:
    """Runs each submitted check once and calls its ``on_done`` exactly once with the result.

    ``workers`` and ``overflow`` size the thread pool for checks that cannot run on the
    loop, as :class:`~announcer.workers.Workers` takes them.
    """

    def __init__(
        self, workers: int, *, overflow: int, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        """``loop``: run the checks on this loop, which its owner runs (the daemon, on its
        own thread); None: on a loop of the runner's own, in a thread it starts."""
        self._workers = Workers(workers, "check", overflow=overflow)
        self._loop = loop or asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._inbox: list[_Job] = []  # submitted, not yet taken by the loop
        self._urgent: list[_Job] = []  # the same, to start before those
        self._woken = False  # the loop has been told to take the inbox
        self._closed = False
        self._ready: deque[_Job] = deque()  # taken by the loop, not started yet
        # Started and not answered yet, by key: what shutdown answers STOPPED.
        self._running: dict[int, OnDone] = {}
        self._key = 0
        # Running tasks (the loop itself keeps only weak references).
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None
        if loop is None:
            self._thread = threading.Thread(target=self._serve, name="check-loop", daemon=True)
            self._thread.start()

    def submit(
        self, check: Check, timeout: float, on_done: OnDone, *, urgent: bool = False
    ) -> None:
        """Run ``check`` within ``timeout`` seconds; ``on_done(result)`` follows, from the loop
        or a worker thread (or at once, from this one, after :meth:`shutdown`). ``urgent``:
        it starts before the loop's checks already waiting (see :meth:`Workers.submit`)."""
        if not hasattr(check, "arun"):
            if not self._workers.submit(self._run_blocking, check, timeout, on_done, urgent=urgent):
                _deliver(on_done, CheckResult(False, STOPPED, 0.0))
            return
        with self._lock:
            if not self._closed:
                # An urgent check (it answered at once last time) starts before the ones
                # already waiting their turn: a thousand checks due at once behind it must
                # not make it late (docs/reliability.md, 7f).
                inbox = self._urgent if urgent else self._inbox
                inbox.append((check, timeout, on_done))  # type: ignore[arg-type]  # it has arun (a cast is a call)
                if not self._woken:
                    self._woken = True
                    if self._on_loop():
                        self._loop.call_soon(self._take)  # no self-pipe write: it is our turn
                    else:
                        self._loop.call_soon_threadsafe(self._take)
                return
        _deliver(on_done, CheckResult(False, STOPPED, 0.0))

    def shutdown(self) -> None:
        """Stop taking checks, cancel the loop's (each still gets its ``on_done``), drop the
        pool's queue likewise, and wait up to :data:`SHUTDOWN_WAIT` seconds for the loop to
        close. Commands already running finish on their own; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            waiting, self._inbox = self._inbox + self._urgent, []
            self._urgent = []
            if self._thread is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
        stopped = CheckResult(False, STOPPED, 0.0)
        for _, _, on_done in waiting:
            _deliver(on_done, stopped)
        for _, (_, _, on_done) in self._workers.shutdown():  # jobs are _run_blocking's args
            _deliver(on_done, stopped)
        if self._thread is None:
            if not self._loop.is_running():  # its owner has stopped it: end it here
                self._wind_down()
        elif threading.current_thread() is not self._thread:
            self._thread.join(SHUTDOWN_WAIT)

    def _on_loop(self) -> bool:
        """Called from the thread that runs the loop, in one of its callbacks."""
        return asyncio._get_running_loop() is self._loop

    # ------------------------------------------------------------ the loop thread

    def _serve(self) -> None:
        try:
            self._loop.run_forever()
        finally:
            self._wind_down()

    def _wind_down(self) -> None:
        """After the loop stopped: cancel what runs, close the loop, answer the rest STOPPED."""
        loop = self._loop
        try:
            # Every task, the checks' own too (a retry goes on in one): none outlives the loop.
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        finally:
            loop.close()
            stopped = CheckResult(False, STOPPED, 0.0)
            running, self._running = self._running, {}
            for on_done in running.values():
                _deliver(on_done, stopped)
            while self._ready:
                _deliver(self._ready.popleft()[2], stopped)

    def _take(self) -> None:
        with self._lock:
            jobs, self._inbox = self._inbox, []
            urgent, self._urgent = self._urgent, []
            self._woken = False
        idle = not self._ready  # else a _start is already scheduled
        self._ready.extend(jobs)
        self._ready.extendleft(reversed(urgent))
        if idle:
            self._start()  # now, not a turn of the loop later (each turn costs a poll)

    def _start(self) -> None:
        """Start the next :data:`BATCH` checks, the rest on the loop's next turn: a thousand
        checks due at once then go out in submit order while the first answers are read,
        not as one burst that the servers answer in an order of their own (P3 counted 18 %
        of checks late, by the endpoints' clock, with one burst)."""
        if self._closed:
            return  # shutting down: what is still ready is answered STOPPED when the loop ends
        ready = self._ready
        for _ in range(min(BATCH, len(ready))):
            check, timeout, on_done = ready.popleft()
            key = self._key = self._key + 1
            self._running[key] = on_done
            done = functools.partial(self._finish, key)
            try:
                begun = getattr(check, "start", None)
                if begun is not None and begun(timeout, done):
                    continue
                task = self._loop.create_task(self._one(check, timeout, done))
            except Exception as err:  # noqa: BLE001 - a check's bug must not stop the others
                done(_raised(err))
                continue
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if ready:
            self._loop.call_soon(self._start)

    def _finish(self, key: int, result: CheckResult) -> None:
        on_done = self._running.pop(key, None)
        if on_done is None:
            return  # shutdown has answered it already
        try:
            on_done(result)  # _deliver's work, without its call: this runs per check
        except Exception:  # noqa: BLE001 - never lose the loop to a callback
            _report()

    @staticmethod
    async def _one(check: LoopCheck, timeout: float, done: OnDone) -> None:
        try:
            result = await check.arun(timeout)
        except asyncio.CancelledError:
            return  # shutdown: the loop's end answers it STOPPED
        except Exception as err:  # noqa: BLE001 - checks must not raise; never lose the loop
            result = _raised(err)
        done(result)

    # ------------------------------------------------------------ the pool's threads

    @staticmethod
    def _run_blocking(check: Check, timeout: float, on_done: OnDone) -> None:
        _deliver(on_done, run_guarded(check, timeout))
