"""The daemon's timers: when each service's next round, round deadline, state deadline
(a drain ending, a dampening hold released) and connection count are due.

Nothing is ever cancelled. Every change of what a timer watches arms a new one, and
:func:`superseded` tells, when a timer comes up, whether it still does anything: a
superseded timer is skipped, and never becomes live again.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Callable, Iterator

from announcer import state as sm
from announcer.runtime import ServiceRuntime


class TimerKind(enum.Enum):
    RUN = "run"
    """Start the service's next round of checks."""
    DEADLINE = "deadline"
    """Close a round whose checks did not all answer in time."""
    STATE = "state"
    """A deadline of the state machine (:func:`announcer.state.next_deadline`)."""
    IDLE = "idle"
    """Count a draining service's connections."""


# Module-level names for the members the hot paths compare with: on Python 3.11 reading
# ``TimerKind.RUN`` costs about 0.13 us, a global about 0.02 us, and these run per check.
_RUN, _DEADLINE, _STATE = TimerKind.RUN, TimerKind.DEADLINE, TimerKind.STATE


def superseded(when: float, kind: TimerKind, rt: ServiceRuntime | None) -> bool:
    """Whether a timer can never do anything, whenever it comes up."""
    if rt is None:
        return True  # the service is gone
    if kind is _RUN:
        return rt.next_run != when
    if kind is _DEADLINE:
        return rt.round is None or rt.round.deadline != when
    if kind is _STATE:
        return sm.next_deadline(rt.state) != when
    return rt.next_idle_poll != when


class Timers:
    """A heap of buckets, each the services' names armed for one (time, kind), judged by
    :func:`superseded` when they come up.

    Services checked at the same interval and started together stay in step (rounds run
    at a fixed rate), so most timers share their time and kind with many others: one
    heap entry per bucket, not per timer, keeps a thousand services' timers off the heap
    (two pushes and two pops per check, measured as a tenth of the controller's work per
    check at N = 2,000, P3). Timers come up in time order; at the same time, in the
    order their buckets were first armed.
    """

    def __init__(self, lookup: Callable[[str], ServiceRuntime | None]) -> None:
        self._lookup = lookup
        self._heap: list[tuple[float, int, TimerKind, list[str]]] = []
        # The buckets still on the heap, by time: (kind, names) pairs, nearly always one.
        self._open: dict[float, list[tuple[TimerKind, list[str]]]] = {}
        self._seq = itertools.count()

    def at(self, when: float, kind: TimerKind, name: str) -> None:
        buckets = self._open.get(when)
        if buckets is None:
            buckets = self._open[when] = []
        for bucket_kind, names in buckets:
            if bucket_kind is kind:
                names.append(name)
                return
        names = [name]
        buckets.append((kind, names))
        heapq.heappush(self._heap, (when, next(self._seq), kind, names))

    def _pop(self) -> tuple[float, TimerKind, list[str]]:
        """Take the earliest bucket off the heap; a timer armed for its time and kind from
        now on starts a new bucket."""
        when, _, kind, names = heapq.heappop(self._heap)
        buckets = self._open[when]
        if len(buckets) == 1:
            del self._open[when]
        else:
            buckets.remove((kind, names))
        return when, kind, names

    def due(self, now: float) -> Iterator[tuple[TimerKind, ServiceRuntime]]:
        """Pop the live timers due by ``now``, in time order."""
        heap, lookup = self._heap, self._lookup
        while heap and heap[0][0] <= now:
            when, kind, names = self._pop()
            for name in names:
                rt = lookup(name)
                if rt is None or superseded(when, kind, rt):
                    continue
                # A run due while its round is still open is skipped: the round's close
                # re-arms it (``Services.close_round``).
                if kind is not _RUN or rt.round is None:
                    yield kind, rt

    def next_wakeup(self) -> float | None:
        """When the earliest live timer is due; None without one."""
        # Drop dead timers at the head (a round that closed early leaves its deadline
        # behind): waking up for them was a third of the wake-ups of a fast check.
        heap, lookup = self._heap, self._lookup
        while heap:
            when, _, kind, names = heap[0]
            dead = 0
            for name in names:
                if not superseded(when, kind, lookup(name)):
                    break
                dead += 1
            if dead < len(names):
                del names[:dead]  # each dead timer is looked at once more, at most
                return when
            self._pop()
        return None
