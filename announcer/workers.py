"""The threads that run checks: a small pool, cheaper per job than ``ThreadPoolExecutor``.

The daemon hands a job to the pool for every check it runs, up to a thousand
times a second, and never looks at a job's result through the pool (a job posts
its own result to the daemon's queue). ``ThreadPoolExecutor`` builds a
``Future`` with its own condition variable for every job; at that rate that was
a measurable share of the controller's CPU (docs/benchmarks.md, P3). This pool
keeps only what the daemon uses: ``submit`` and a ``shutdown`` that does not wait.

Threads start as jobs need them, up to ``limit``, and then stay; a job that
hangs holds its thread and no other. A job must not raise (the daemon's does
not: it turns every exception into a failed check); if one does, the error is
printed by :func:`threading.excepthook` and the thread goes on with the next job.

With ``overflow`` above ``limit``, a queue that stalls (its oldest job waiting
``stall`` seconds, every thread busy) gets more threads, up to ``overflow``: one at
the next submit, two more each time a job that waited is taken while others still
wait, and one of its own for an ``urgent`` job (see :meth:`Workers.submit`); they end once
no job has waited for ``idle_exit`` seconds (or after that long without work).
Checks that sit out their timeouts (a thousand against a server that never
answers) would otherwise hold every thread and make every other service's checks
late, then failed (docs/reliability.md, 7f).
"""

from __future__ import annotations

import itertools
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["Workers"]

_Job = tuple[Callable[..., object], tuple[Any, ...]] | None


class Workers:
    """Runs ``fn(*args)`` on up to ``limit`` daemon threads named ``<name>-<n>``."""

    def __init__(
        self,
        limit: int,
        name: str,
        *,
        overflow: int | None = None,
        stall: float = 0.05,
        idle_exit: float = 10.0,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.overflow = max(limit, overflow or limit)
        """Threads at most while the queue stalls (see the module docstring)."""
        self._stall = stall
        self._idle_exit = idle_exit
        self._name = name
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._waiting = 0  # threads blocked for a job in the queue
        self._queued: deque[float] = deque()  # when the jobs not taken yet were submitted
        self._stalled_at = -float("inf")  # when a job last had to wait for a thread
        self._numbers = itertools.count()
        self._closed = False

    @property
    def threads(self) -> int:
        """Threads started so far."""
        return len(self._threads)

    @property
    def _idle(self) -> int:
        """Threads with nothing to do: waiting for a job that is not in the queue yet."""
        with self._lock:
            return max(0, self._waiting - len(self._queued))

    def _free(self) -> int:
        """Threads that will be free for one more job (the lock held)."""
        return self._waiting - len(self._queued)

    def submit(self, fn: Callable[..., object], *args: Any, urgent: bool = False) -> bool:
        """Queue ``fn(*args)``; False (and nothing queued) once shut down.

        ``urgent``: a job expected to be quick (a check that answered at once last time).
        While the queue stalls it does not wait behind it: it gets a thread of its own at
        once (up to ``overflow``), so one service's check never waits out a thousand
        other checks' timeouts.
        """
        with self._lock:
            if self._closed:
                return False
            now = time.monotonic()
            stalled = bool(self._queued) and now - self._queued[0] >= self._stall
            if stalled:
                self._stalled_at = now
            busy = self._free() <= 0 and len(self._threads) >= self.limit
            if busy and stalled and len(self._threads) < self.overflow:
                self._start(extra=True)  # for the queue
                if urgent and len(self._threads) < self.overflow:
                    self._start(extra=True, job=(fn, args))
                    return True
            free = self._free()
            self._jobs.put((fn, args))
            self._queued.append(now)
            if free <= 0 and len(self._threads) < self.limit:
                self._start(extra=False)
        return True

    def _start(self, *, extra: bool, job: _Job = None) -> None:
        """Start one more thread, running ``job`` first if given (the caller holds the lock)."""
        thread = threading.Thread(
            target=self._work, args=(extra, job), name=f"{self._name}-{next(self._numbers)}"
        )
        thread.daemon = True
        self._threads.append(thread)
        thread.start()

    def shutdown(self) -> list[tuple[Callable[..., object], tuple[Any, ...]]]:
        """Drop queued jobs and let every thread end after its current job; does not wait.

        Returns the dropped jobs as ``(fn, args)``, so a caller that promised an answer for
        each (:class:`announcer.runner.CheckRunner`) can still give one."""
        dropped: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
        with self._lock:
            self._closed = True
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    dropped.append(job)
            self._queued.clear()
            for _ in self._threads:
                self._jobs.put(None)
        return dropped

    def _take(self, extra: bool) -> _Job | bool:
        """The next job from the queue; None to end (shutdown), False to ask again."""
        with self._lock:
            self._waiting += 1
        try:
            job = self._jobs.get(timeout=self._idle_exit) if extra else self._jobs.get()
        except queue.Empty:
            with self._lock:
                self._waiting -= 1
                if self._closed or not self._jobs.empty():
                    return False
                # An overflow thread idle for idle_exit seconds ends.
                self._threads.remove(threading.current_thread())
                return None
        with self._lock:
            self._waiting -= 1
            if job is None:
                return None
            now = time.monotonic()
            waited = now - self._queued.popleft() if self._queued else 0.0
            if waited >= self._stall:
                self._stalled_at = now
                # Every thread was busy: if more jobs wait behind this one, start two more
                # threads now (each does the same, so a backlog of a thousand gets its
                # threads in about ten steps, not one per submit).
                if self._free() < 0:
                    room = self.overflow - len(self._threads)
                    for _ in range(min(2, len(self._queued), room)):
                        self._start(extra=True)
        return job

    def _work(self, extra: bool, first: _Job = None) -> None:
        while True:
            job: _Job | bool
            if first is not None:
                job, first = first, None  # handed over by submit: never in the queue
            else:
                job = self._take(extra)
                if job is False:
                    continue
            if job is None or job is True:
                return
            fn, args = job
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - report it and keep the thread
                exc_type, exc, tb = sys.exc_info()
                threading.excepthook(
                    threading.ExceptHookArgs((exc_type, exc, tb, threading.current_thread()))
                )
            # An idle thread must not keep its last job alive (a retired check's socket).
            del job, fn, args
            if extra and self._calm():
                with self._lock:
                    # Light work spread over many threads would keep each one busy
                    # enough never to sit idle for idle_exit: end once nothing waits.
                    self._threads.remove(threading.current_thread())
                return

    def _calm(self) -> bool:
        """No job waited for a thread in the last ``idle_exit`` seconds."""
        return time.monotonic() - self._stalled_at >= self._idle_exit
