"""The state machine's EventFailure input (an immediate check's event failed the service):
DOWN at once from every health, by table; the way up keeps rise and dampening."""

from __future__ import annotations

from typing import Any

import pytest

from announcer import state as sm
from announcer.state import (
    Announce,
    CheckOutcome,
    Dampening,
    Drain,
    EventFailure,
    Health,
    OnDown,
    Policy,
    Restored,
    Route,
    Withdraw,
    initial,
    step,
)
from tests.unit.test_state import (
    ANNOUNCED,
    DOWN,
    DRAINING,
    FALLING,
    INIT,
    LOWERED,
    RISING,
    T0,
    T1,
    UP,
    WITHDRAWN,
    make,
)

PREFIXES = ("192.0.2.1/32",)
BASE = Policy(prefixes=PREFIXES, rise=3, fall=3)


def test_the_event_table_is_down_from_everywhere() -> None:
    """EVENT_TABLE has a row for every health, and every row goes DOWN."""
    assert set(sm.EVENT_TABLE) == set(Health)
    assert set(sm.EVENT_TABLE.values()) == {DOWN}


EVENT_ROWS = [
    # policy overrides, health, count, route, extra state -> health, route, effects
    pytest.param({}, UP, 0, ANNOUNCED, {}, DOWN, WITHDRAWN, "W", id="UP-withdrawn-at-once"),
    pytest.param({}, FALLING, 1, ANNOUNCED, {}, DOWN, WITHDRAWN, "W", id="FALLING1-withdrawn"),
    pytest.param({}, RISING, 2, WITHDRAWN, {}, DOWN, WITHDRAWN, "", id="RISING2-to-DOWN"),
    pytest.param({}, INIT, 0, WITHDRAWN, {}, DOWN, WITHDRAWN, "", id="INIT-to-DOWN"),
    pytest.param({}, DOWN, 0, WITHDRAWN, {}, DOWN, WITHDRAWN, "", id="DOWN-stays"),
    pytest.param(
        {"on_down": OnDown.LOWER}, UP, 0, ANNOUNCED, {}, DOWN, LOWERED, "L", id="UP-lowered"
    ),
    pytest.param(
        {},
        UP,
        0,
        DRAINING,
        {"drained": True, "deadline": T0 + 30},
        DOWN,
        WITHDRAWN,
        "W",
        id="DRAINING-withdrawn-at-once",
    ),
    pytest.param(
        {"fall": 1}, UP, 0, ANNOUNCED, {}, DOWN, WITHDRAWN, "W", id="fall1-same-as-a-round"
    ),
]


@pytest.mark.parametrize(
    ("pol_kw", "health", "count", "route", "extra", "want_health", "want_route", "effects"),
    EVENT_ROWS,
)
def test_event_failure_rows(
    pol_kw: dict[str, Any],
    health: Health,
    count: int,
    route: Route,
    extra: dict[str, Any],
    want_health: Health,
    want_route: Route,
    effects: str,
) -> None:
    """Every row: an EventFailure takes the service DOWN in one step, whatever ``fall``
    and the count say, with the route a DOWN service gets (withdrawn, or lowered)."""
    pol = Policy(prefixes=PREFIXES, **{"rise": 3, "fall": 3, **pol_kw})
    s0 = make(pol, health, route, count=count, **extra)
    new, got, _ = step(pol, s0, EventFailure(T1))
    assert (new.health, new.route, new.count) == (want_health, want_route, 0)
    want: list[sm.Effect] = []
    if effects == "W":
        want = [Withdraw(PREFIXES, s0.wire_attributes)]
    elif effects == "L":
        want = [Announce(PREFIXES, pol.down, LOWERED)]
    assert got == want


def test_a_carried_route_is_withdrawn_at_once() -> None:
    """A route carried over from our previous run (INIT, ANNOUNCED) is not given the fall
    count an event does not wait for: it is withdrawn at once."""
    s0 = initial(T0, Restored(ANNOUNCED, PREFIXES, BASE.announce, certain=True))
    new, got, _ = step(BASE, s0, EventFailure(T1))
    assert (new.health, new.route) == (DOWN, WITHDRAWN)
    assert got == [Withdraw(PREFIXES, BASE.announce)]


def test_rising_after_an_event_still_needs_rise() -> None:
    """After an event's DOWN, passing rounds announce only at the rise-th (rise = 3)."""
    s = make(BASE, UP, ANNOUNCED)
    s, _, _ = step(BASE, s, EventFailure(T1))
    sent = []
    for i in range(3):
        s, got, _ = step(BASE, s, CheckOutcome(True, T1 + 1 + i))
        sent.append(bool(got))
    assert sent == [False, False, True]
    assert s.route is ANNOUNCED


def test_events_are_dampened_like_rounds() -> None:
    """A process that dies and comes back again and again: its route changes count toward
    dampening (2 changes in 120 s allowed), so the third change is held, not sent."""
    pol = Policy(prefixes=PREFIXES, rise=1, fall=3, dampening=Dampening(changes=2, window=120.0))
    s = make(pol, UP, ANNOUNCED)
    s, first, _ = step(pol, s, EventFailure(T1))  # change 1: withdraw
    s, second, _ = step(pol, s, CheckOutcome(True, T1 + 1))  # change 2: announce
    s, third, _ = step(pol, s, EventFailure(T1 + 2))  # change 3: withdraw, held
    assert first and second and third
    assert s.held_until is not None
    s, fourth, _ = step(pol, s, CheckOutcome(True, T1 + 3))
    assert fourth == [] and s.route is WITHDRAWN  # no flap back while held


def test_a_drain_after_an_event_withdraws_nothing_more() -> None:
    """An event's DOWN then a drain: nothing is on the wire, nothing is sent."""
    s, _, _ = step(BASE, make(BASE, UP, ANNOUNCED), EventFailure(T1))
    s, got, _ = step(BASE, s, Drain(T1 + 1))
    assert got == [] and s.route is WITHDRAWN
