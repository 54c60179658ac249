"""The daemon's timers (announcer.timers): buckets per time and kind, come up in time
order, and dead timers neither come up nor wake the loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from announcer import state as sm
from announcer.runtime import Round, ServiceRuntime
from announcer.timers import TimerKind, Timers

RUN, DEADLINE, STATE, IDLE = TimerKind.RUN, TimerKind.DEADLINE, TimerKind.STATE, TimerKind.IDLE


@dataclass
class Fake:
    """What :func:`announcer.timers.superseded` reads of a service."""

    name: str
    next_run: float = 0.0
    round: Round | None = None
    state: sm.ServiceState = field(default_factory=sm.ServiceState)
    next_idle_poll: float | None = None


class World:
    def __init__(self, *names: str) -> None:
        self.services = {n: Fake(n) for n in names}
        self.timers = Timers(lambda name: cast(ServiceRuntime | None, self.services.get(name)))

    def run(self, name: str, when: float) -> None:
        self.services[name].next_run = when
        self.timers.at(when, RUN, name)

    def deadline(self, name: str, when: float) -> None:
        self.services[name].round = Round(1, when - 1, when, [None])
        self.timers.at(when, DEADLINE, name)

    def due(self, now: float) -> list[tuple[str, str]]:
        return [(kind.value, rt.name) for kind, rt in self.timers.due(now)]


def test_timers_come_up_in_time_order_and_in_arming_order_at_one_time() -> None:
    """Earlier times first; at one time and kind, in the order armed; at one time, a
    kind's timers in the order that kind was first armed there."""
    w = World("a", "b", "c", "d")
    w.run("d", 2.0)
    w.run("b", 1.0)
    w.deadline("c", 1.0)
    w.run("a", 1.0)
    assert w.due(5.0) == [("run", "b"), ("run", "a"), ("deadline", "c"), ("run", "d")]
    assert w.timers.next_wakeup() is None


def test_only_timers_due_come_up() -> None:
    """A timer later than now stays for a later call, and sets the next wake-up."""
    w = World("a", "b")
    w.run("a", 1.0)
    w.run("b", 3.0)
    assert w.due(2.0) == [("run", "a")]
    assert w.timers.next_wakeup() == 3.0
    assert w.due(3.0) == [("run", "b")]


def test_a_run_moved_comes_up_at_its_new_time_only() -> None:
    w = World("a", "b")
    w.run("a", 1.0)
    w.run("b", 1.0)
    w.run("a", 3.0)  # re-armed: the one at 1.0 is superseded
    assert w.due(2.0) == [("run", "b")]
    assert w.due(3.0) == [("run", "a")]


def test_the_deadline_of_a_round_closed_early_does_not_come_up() -> None:
    w = World("a", "b")
    w.deadline("a", 1.5)
    w.deadline("b", 1.5)
    w.services["a"].round = None
    assert w.due(2.0) == [("deadline", "b")]


def test_a_service_gone_has_no_timers() -> None:
    w = World("a", "b")
    w.run("a", 1.0)
    w.run("b", 1.0)
    del w.services["a"]
    assert w.due(1.0) == [("run", "b")]


def test_a_run_due_while_its_round_is_open_is_skipped() -> None:
    """The round's close re-arms it (stale, not superseded: it still wakes the loop)."""
    w = World("a")
    w.run("a", 1.0)
    w.services["a"].round = Round(1, 0.5, 5.0, [None])
    assert w.timers.next_wakeup() == 1.0
    assert w.due(1.0) == []


def test_a_bucket_of_dead_timers_does_not_wake_the_loop() -> None:
    """Rounds that all closed early leave their deadlines behind: the next wake-up is
    the next live timer's, not theirs."""
    w = World("a", "b", "c")
    for name in "abc":
        w.deadline(name, 1.5)
    w.run("a", 2.0)
    w.services["a"].round = None
    w.services["b"].round = None
    assert w.timers.next_wakeup() == 1.5  # c's round is still open
    w.services["c"].round = None
    assert w.timers.next_wakeup() == 2.0
    assert w.due(2.0) == [("run", "a")]


def test_a_live_timer_behind_dead_ones_in_its_bucket_still_comes_up() -> None:
    w = World("a", "b")
    w.deadline("a", 1.0)
    w.deadline("b", 1.0)
    w.services["a"].round = None
    assert w.timers.next_wakeup() == 1.0
    assert w.due(1.0) == [("deadline", "b")]


def test_a_timer_armed_for_the_time_being_run_comes_up_in_the_same_call() -> None:
    """Arming (time, kind) while that bucket's timers are being handed out starts a new
    bucket, which the same call hands out after them."""
    w = World("a", "b")
    w.run("a", 1.0)
    got = []
    for kind, rt in w.timers.due(1.0):
        got.append((kind.value, rt.name))
        if rt.name == "a":
            w.run("b", 1.0)
    assert got == [("run", "a"), ("run", "b")]


def test_every_kind_is_judged_by_its_own_field() -> None:
    """STATE follows the state machine's next deadline; IDLE the next connection count."""
    w = World("a", "b")
    w.services["a"].state = sm.ServiceState(held_until=4.0)
    w.timers.at(4.0, STATE, "a")
    w.timers.at(3.0, STATE, "b")  # b's state has no deadline: superseded
    w.services["b"].next_idle_poll = 4.0
    w.timers.at(4.0, IDLE, "b")
    w.timers.at(3.5, IDLE, "a")  # a counts nothing: superseded
    assert w.timers.next_wakeup() == 4.0
    assert w.due(4.0) == [("state", "a"), ("idle", "b")]
