"""The HTTP requests' time limits: one loop timer for all of them (checks/http_protocol.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from announcer.checks.http_protocol import SWEEP_SLACK, Deadlines, HttpConnection, Pending


class Handle:
    def __init__(self, at: float, callback: Callable[[], None]) -> None:
        self.at, self.callback, self.cancelled = at, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """The two calls Deadlines makes of a loop, on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0
        self.handles: list[Handle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, at: float, callback: Callable[[], None]) -> Handle:
        handle = Handle(at, callback)
        self.handles.append(handle)
        return handle

    def armed(self) -> list[float]:
        return [h.at for h in self.handles if not h.cancelled]

    def run_until(self, until: float) -> None:
        """Fire the live timers due by ``until``, in time order, as a loop would."""
        while True:
            live = [h for h in self.handles if not h.cancelled and h.at <= until]
            if not live:
                self.now = until
                return
            first = min(live, key=lambda h: h.at)
            self.handles.remove(first)
            self.now = max(self.now, first.at)
            first.callback()


class Request:
    """A connection with one request in flight: ``answer`` forgets it, as the real one does."""

    def __init__(self, deadlines: Deadlines, limit: float, expired: list[str], name: str) -> None:
        self.name, self.expired, self.deadlines = name, expired, deadlines
        self.pending: Pending | None = deadlines.add(cast(HttpConnection, self), limit)

    def answer(self) -> None:
        self.pending = None
        self.deadlines.done()

    def expire(self) -> None:
        self.expired.append(self.name)
        self.answer()


def deadlines() -> tuple[FakeLoop, Deadlines]:
    loop = FakeLoop()
    return loop, Deadlines(cast(Any, loop))


def test_an_unanswered_request_expires_at_its_limit_and_an_answered_one_never() -> None:
    """A request with no answer is expired when its limit is up; one answered before then is
    not, and its entry costs no expiry."""
    loop, table = deadlines()
    expired: list[str] = []
    late = Request(table, 1.0, expired, "late")
    quick = Request(table, 1.0, expired, "quick")
    quick.answer()
    loop.run_until(100.999)
    assert expired == []
    loop.run_until(101.0)
    assert expired == ["late"]
    loop.run_until(110.0)
    assert expired == ["late"]
    assert late.pending is None


def test_one_timer_serves_every_request_and_answered_ones_are_dropped_in_passing() -> None:
    """A thousand requests begun together set one timer, not a thousand; with all of them
    answered but one begun later, the timer's one pass drops the thousand and sets
    itself for that one, which expires at its own limit."""
    loop, table = deadlines()
    expired: list[str] = []
    requests = [Request(table, 1.0, expired, f"r{i}") for i in range(1000)]
    assert loop.armed() == [101.0]
    loop.now += 0.5
    Request(table, 1.0, expired, "later")
    for request in requests:
        request.answer()
    loop.run_until(101.0)
    assert expired == []
    assert loop.armed() == [101.5]
    loop.run_until(101.5)
    assert expired == ["later"]
    assert loop.armed() == []


def test_with_nothing_left_waiting_the_timer_is_cancelled() -> None:
    """A lone request answered long before its limit leaves no timer behind: no wake-up
    for an entry that can no longer expire."""
    loop, table = deadlines()
    expired: list[str] = []
    request = Request(table, 1.0, expired, "lone")
    assert loop.armed() == [101.0]
    request.answer()
    assert loop.armed() == []
    again = Request(table, 1.0, expired, "next")
    assert loop.armed() == [101.0]
    again.answer()
    loop.run_until(110.0)
    assert expired == []


def test_requests_with_different_limits_each_expire_at_their_own() -> None:
    """Limits of 2 s and 0.5 s begun in that order: the shorter one expires first, each at
    its own time (the earlier deadline re-arms the timer)."""
    loop, table = deadlines()
    expired: list[str] = []
    Request(table, 2.0, expired, "two")
    Request(table, 0.5, expired, "half")
    assert loop.armed() == [100.5]
    loop.run_until(100.5)
    assert expired == ["half"]
    loop.run_until(101.99)
    assert expired == ["half"]
    loop.run_until(102.0)
    assert expired == ["half", "two"]


def test_after_an_expiry_the_next_pass_waits_at_least_the_slack() -> None:
    """Requests whose deadlines follow each other closely are expired together, at most
    SWEEP_SLACK after their own deadline: one wake-up serves them all."""
    loop, table = deadlines()
    expired: list[str] = []
    Request(table, 1.0, expired, "a")
    loop.now += SWEEP_SLACK / 4
    Request(table, 1.0, expired, "b")
    loop.now += SWEEP_SLACK / 4
    Request(table, 1.0, expired, "c")
    loop.run_until(101.0)
    assert expired == ["a"]
    assert loop.armed() == [101.0 + SWEEP_SLACK]
    loop.run_until(101.0 + SWEEP_SLACK)
    assert expired == ["a", "b", "c"]
    assert loop.armed() == []


def test_a_request_begun_after_a_pass_sets_the_timer_again() -> None:
    """Once every queue has emptied, the next request sets a timer of its own."""
    loop, table = deadlines()
    expired: list[str] = []
    Request(table, 0.2, expired, "first")
    loop.run_until(101.0)
    Request(table, 0.3, expired, "second")
    assert loop.armed() == [101.3]
    loop.run_until(101.3)
    assert expired == ["first", "second"]
