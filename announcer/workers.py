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
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Workers"]

_Job = tuple[Callable[..., object], tuple[Any, ...]] | None


class Workers:
    """Runs ``fn(*args)`` on up to ``limit`` daemon threads named ``<name>-<n>``."""

    def __init__(self, limit: int, name: str) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._name = name
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a job that no submit has claimed yet
        self._closed = False

    @property
    def threads(self) -> int:
        """Threads started so far."""
        return len(self._threads)

    def submit(self, fn: Callable[..., object], *args: Any) -> bool:
        """Queue ``fn(*args)``; False (and nothing queued) once shut down."""
        with self._lock:
            if self._closed:
                return False
            self._jobs.put((fn, args))
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self.limit:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        return True

    def shutdown(self) -> None:
        """Drop queued jobs and let every thread end after its current job; does not wait."""
        with self._lock:
            self._closed = True
            while True:
                try:
                    self._jobs.get_nowait()
                except queue.Empty:
                    break
            for _ in self._threads:
                self._jobs.put(None)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args = job
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - report it and keep the thread
                exc_type, exc, tb = sys.exc_info()
                threading.excepthook(
                    threading.ExceptHookArgs((exc_type, exc, tb, threading.current_thread()))
                )
            with self._lock:
                self._idle += 1
