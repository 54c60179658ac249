"""Watching the router's kernel FIB in the background, to time route changes to a few ms.

A :class:`FibWatcher` polls ``ip route show exact PREFIX`` in the router namespace
every ``period`` seconds (5 ms by default) and records every change of the set of
nodes a prefix is routed to, with the time of the last poll that still saw the old
set and the first poll that saw the new one: the change happened in between.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType

from .client import ClientResult
from .lab import Lab
from .waiting import LabError, WaitTimeout


@dataclass(frozen=True)
class FibChange:
    """The router's FIB for ``prefix`` went from ``before`` to ``after`` (node names, sorted)."""

    prefix: str
    before: tuple[str, ...]
    after: tuple[str, ...]
    last_before: float
    """Wall-clock time (``time.time()``) the last poll that still saw ``before`` began."""
    first_after: float
    """Wall-clock time the first poll that saw ``after`` ended (the change is in between)."""
    seen: float
    """``time.monotonic()`` of that first poll (to time against other monotonic stamps)."""

    def overlaps(self, result: ClientResult) -> bool:
        """True if the request was in flight at some moment the change may have happened."""
        return result.started <= self.first_after and result.started + result.elapsed >= (
            self.last_before
        )


class FibWatcher:
    """Polls the FIB of ``prefixes`` in a thread until stopped (bounded by ``max_seconds``)."""

    def __init__(
        self,
        lab: Lab,
        prefixes: Iterable[str],
        *,
        period: float = 0.005,
        max_seconds: float = 120.0,
    ) -> None:
        self.lab = lab
        self.prefixes = tuple(prefixes)
        self.period = period
        self.max_seconds = max_seconds
        self._changes: list[FibChange] = []
        self._current: dict[str, tuple[str, ...]] = {}
        self._seen_at: dict[str, float] = {}
        self._polls = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.crashed: BaseException | None = None

    def start(self) -> FibWatcher:
        """Take a first reading of every prefix (so :meth:`current` is set), then poll."""
        for prefix in self.prefixes:
            self._seen_at[prefix] = time.time()
            self._current[prefix] = tuple(self.lab.fib_nodes(prefix))
        self._thread = threading.Thread(target=self._run, name="FibWatcher", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                began = time.monotonic()
                for prefix in self.prefixes:
                    asked = time.time()
                    nodes = tuple(self.lab.fib_nodes(prefix))
                    wall, mono = time.time(), time.monotonic()
                    with self._cond:
                        old = self._current[prefix]
                        if nodes != old:
                            change = FibChange(
                                prefix, old, nodes, self._seen_at[prefix], wall, mono
                            )
                            self._changes.append(change)
                            self._current[prefix] = nodes
                        # `ip` read the table somewhere between `asked` and `wall`
                        self._seen_at[prefix] = asked
                        self._polls += 1
                        self._cond.notify_all()
                self._stop.wait(max(0.0, self.period - (time.monotonic() - began)))
        except BaseException as exc:  # reported by wait_for/stop
            self.crashed = exc
            with self._cond:
                self._cond.notify_all()

    def current(self, prefix: str) -> tuple[str, ...]:
        """The nodes the FIB routed ``prefix`` to at the last poll."""
        with self._cond:
            return self._current[prefix]

    def changes(self, prefix: str | None = None) -> list[FibChange]:
        """Every change seen so far (of ``prefix`` only, if given), in order."""
        with self._cond:
            return [c for c in self._changes if prefix is None or c.prefix == prefix]

    @property
    def polls(self) -> int:
        """How many FIB readings the thread made."""
        with self._cond:
            return self._polls

    def wait_for(
        self, prefix: str, nodes: Sequence[str], timeout: float, *, after: int = 0
    ) -> FibChange:
        """Wait for the change (the ``after``-th or later) that routes ``prefix`` to ``nodes``."""
        wanted = tuple(sorted(nodes))
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [c for c in self._changes[after:] if c.prefix == prefix]
                for change in found:
                    if change.after == wanted:
                        return change
                if self.crashed is not None:
                    raise LabError(f"FIB watcher failed: {self.crashed!r}") from self.crashed
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.running:
                    raise WaitTimeout(
                        f"FIB for {prefix} never changed to {list(wanted)} within {timeout:.1f} s "
                        f"(now {list(self._current[prefix])}; changes {found})"
                    )
                self._cond.wait(min(remaining, 0.1))

    def mark(self) -> int:
        """The number of changes so far (pass as ``after`` to wait only for later ones)."""
        with self._cond:
            return len(self._changes)

    @property
    def running(self) -> bool:
        """True while the polling thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> list[FibChange]:
        """Stop polling; return every change seen."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
        if self.crashed is not None:
            raise LabError(f"FIB watcher failed: {self.crashed!r}") from self.crashed
        return self.changes()

    def __enter__(self) -> FibWatcher:
        return self.start() if self._thread is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)


def cut_by_rehash(result: ClientResult, changes: Iterable[FibChange]) -> bool:
    """True if a failed request was a connection reset while the FIB changed under it.

    When the router's next-hop set changes, the kernel re-hashes every packet, so
    a connection in flight at that instant can land on the other node, which
    answers with a reset. Routing alone cannot prevent that; anything else
    (refused, timeout, an HTTP error, a reset outside a change) is a real failure.
    """
    if result.ok or "reset" not in (result.error or "").lower():
        return False
    return any(change.overlaps(result) for change in changes)
