"""Table-driven tests of the pure per-service state machine (:mod:`announcer.state`).

In the style of h11's state tests: each table row is (starting state, input or
inputs, expected state fields, expected effects). Expected effects are written
either as explicit lists or, where they concern all of the policy's prefixes,
as a short code string read by :func:`fx`:

    ""   nothing on the wire
    "A"  announce every prefix with the ``announce`` attributes (route ANNOUNCED)
    "D"  announce every prefix with the ``drain`` attributes (route DRAINING)
    "L"  announce every prefix with the ``down`` attributes (route LOWERED)
    "W"  withdraw every prefix
    "Q"  ask the fleet guard for a health-driven withdraw (``AskWithdraw(drain=False)``)
    "q"  ask the fleet guard for a drain's final withdraw (``AskWithdraw(drain=True)``)

Starting states are built by :func:`make` with a wire that matches the route,
as the machine itself would have left it. A property test at the end drives
random event sequences and checks the invariants that hold after any input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from announcer import state as sm
from announcer.errors import IllegalTransition
from announcer.state import (
    Announce,
    Changed,
    CheckOutcome,
    Drain,
    DrainIdle,
    Effect,
    Event,
    Health,
    OnDown,
    Policy,
    Reconfigure,
    Restored,
    Route,
    RouteAttributes,
    ServiceState,
    Shutdown,
    Tick,
    Undrain,
    Withdraw,
    initial,
    next_deadline,
    step,
)

INIT, RISING, UP, FALLING, DOWN = (
    Health.INIT,
    Health.RISING,
    Health.UP,
    Health.FALLING,
    Health.DOWN,
)
WITHDRAWN, ANNOUNCED, DRAINING, LOWERED = (
    Route.WITHDRAWN,
    Route.ANNOUNCED,
    Route.DRAINING,
    Route.LOWERED,
)

T0 = 100.0
"""Time of the starting state (its ``updated``)."""
T1 = 101.0
"""Time of the first input in most rows."""

P4 = "192.0.2.1/32"
P6 = "2001:db8::1/128"
P_EXTRA = "198.51.100.0/24"
PREFIXES = (P4, P6)

BASE = Policy(prefixes=PREFIXES)  # rise 3, fall 3, on_down withdraw, drain 30 s
LOWER: dict[str, Any] = {"on_down": OnDown.LOWER}
R1F1: dict[str, Any] = {"rise": 1, "fall": 1}

NEW_ANN = RouteAttributes(med=200)
NEW_DRAIN = RouteAttributes(med=2000, communities=("65535:0", "64500:1"))
NEW_DOWN = RouteAttributes(med=1500)

OK, FAIL = True, False

# ---------------------------------------------------------------- helpers


def policy(**kw: Any) -> Policy:
    """BASE with some fields replaced."""
    return dataclasses.replace(BASE, **kw)


def make(
    pol: Policy,
    health: Health = INIT,
    route: Route = WITHDRAWN,
    *,
    count: int = 0,
    drained: bool = False,
    deadline: float | None = None,
    reason: str = "",
    now: float = T0,
) -> ServiceState:
    """A state as the machine would have left it at ``now``: wire matching ``route``."""
    attrs = pol.attributes_for(route)
    return ServiceState(
        health=health,
        route=route,
        count=count,
        drained=drained,
        drain_reason=reason,
        drain_deadline=deadline,
        updated=now,
        health_since=now,
        route_since=now,
        wire_prefixes=pol.prefixes if attrs is not None else (),
        wire_attributes=attrs,
    )


def fx(pol: Policy, spec: str | Sequence[Effect], was: ServiceState | None = None) -> list[Effect]:
    """Expected effects from a code string (see the module docstring) or a list; a
    withdraw carries the attributes the state ``was`` in had on the wire."""
    if not isinstance(spec, str):
        return list(spec)
    out: list[Effect] = []
    for code in spec:
        if code == "W":
            out.append(Withdraw(pol.prefixes, None if was is None else was.wire_attributes))
            continue
        if code in "Qq":
            out.append(sm.AskWithdraw(drain=code == "q"))
            continue
        route = {"A": ANNOUNCED, "D": DRAINING, "L": LOWERED}[code]
        attrs = pol.attributes_for(route)
        assert attrs is not None
        out.append(Announce(pol.prefixes, attrs, route))
    return out


def check(state: ServiceState, fields: Mapping[str, Any], where: str = "") -> None:
    """Assert the named fields of ``state``."""
    for name, want in fields.items():
        got = getattr(state, name)
        assert got == want, f"{where}{name}: {got!r} != {want!r}"


def assert_wire_matches_route(pol: Policy, state: ServiceState) -> None:
    """The wire fields agree with the route under ``pol`` (once the wire is certain)."""
    if not state.wire_certain:
        return
    assert state.wire_attributes == pol.attributes_for(state.route)
    if state.route is WITHDRAWN:
        assert state.wire_prefixes == ()
    else:
        assert set(state.wire_prefixes) == set(pol.prefixes)


Step = tuple[Event, Mapping[str, Any], "str | Sequence[Effect]"]


def run_steps(pol: Policy, state: ServiceState, steps: Sequence[Step]) -> ServiceState:
    """Feed ``steps`` in order, checking each one's fields and effects."""
    for i, (event, fields, effects) in enumerate(steps):
        before = state
        state, got, _ = step(pol, state, event)
        assert got == fx(pol, effects, before), f"step {i} ({event}): effects"
        check(state, fields, f"step {i} ({event}): ")
        assert_wire_matches_route(pol, state)
    return state


def ok(now: float) -> CheckOutcome:
    return CheckOutcome(True, now)


def fail(now: float) -> CheckOutcome:
    return CheckOutcome(False, now)


# ---------------------------------------------------------------- defaults


def test_default_attributes_match_the_drain_convention() -> None:
    """By default a drain lowers preference with MED 1000 and community 65535:0."""
    assert BASE.drain == RouteAttributes(med=1000, communities=("65535:0",))
    assert BASE.attributes_for(WITHDRAWN) is None
    assert BASE.attributes_for(ANNOUNCED) == BASE.announce
    assert BASE.attributes_for(DRAINING) == BASE.drain
    assert BASE.attributes_for(LOWERED) == BASE.down


def test_initial_state_is_init_and_withdrawn() -> None:
    """A fresh service starts INIT, WITHDRAWN, undrained, nothing on the wire."""
    s = initial(T0)
    check(
        s,
        {
            "health": INIT,
            "route": WITHDRAWN,
            "count": 0,
            "drained": False,
            "drain_deadline": None,
            "updated": T0,
            "health_since": T0,
            "route_since": T0,
            "wire_prefixes": (),
            "wire_attributes": None,
        },
    )


# ---------------------------------------------------------------- health

ROUTE_FOR_HEALTH = {
    INIT: WITHDRAWN,
    RISING: WITHDRAWN,
    UP: ANNOUNCED,
    FALLING: ANNOUNCED,
    DOWN: WITHDRAWN,
}

HEALTH_TABLE = [
    # rise, fall, health, count, outcome -> health, count, route, effects
    # ---- rise 3, fall 3
    pytest.param(3, 3, INIT, 0, OK, RISING, 1, WITHDRAWN, "", id="r3f3-INIT-ok-RISING"),
    pytest.param(3, 3, INIT, 0, FAIL, DOWN, 0, WITHDRAWN, "", id="r3f3-INIT-fail-DOWN"),
    pytest.param(3, 3, RISING, 1, OK, RISING, 2, WITHDRAWN, "", id="r3f3-RISING1-ok-RISING2"),
    pytest.param(3, 3, RISING, 2, OK, UP, 0, ANNOUNCED, "A", id="r3f3-RISING2-ok-UP"),
    pytest.param(3, 3, RISING, 1, FAIL, DOWN, 0, WITHDRAWN, "", id="r3f3-RISING1-fail-DOWN"),
    pytest.param(3, 3, RISING, 2, FAIL, DOWN, 0, WITHDRAWN, "", id="r3f3-RISING2-fail-DOWN"),
    pytest.param(3, 3, UP, 0, OK, UP, 0, ANNOUNCED, "", id="r3f3-UP-ok-UP"),
    pytest.param(3, 3, UP, 0, FAIL, FALLING, 1, ANNOUNCED, "", id="r3f3-UP-fail-FALLING"),
    pytest.param(3, 3, FALLING, 1, OK, UP, 0, ANNOUNCED, "", id="r3f3-FALLING1-ok-UP"),
    pytest.param(3, 3, FALLING, 2, OK, UP, 0, ANNOUNCED, "", id="r3f3-FALLING2-ok-UP"),
    pytest.param(3, 3, FALLING, 1, FAIL, FALLING, 2, ANNOUNCED, "", id="r3f3-FALLING1-fail-F2"),
    pytest.param(3, 3, FALLING, 2, FAIL, DOWN, 0, WITHDRAWN, "W", id="r3f3-FALLING2-fail-DOWN"),
    pytest.param(3, 3, DOWN, 0, OK, RISING, 1, WITHDRAWN, "", id="r3f3-DOWN-ok-RISING"),
    pytest.param(3, 3, DOWN, 0, FAIL, DOWN, 0, WITHDRAWN, "", id="r3f3-DOWN-fail-DOWN"),
    # ---- rise 1, fall 1: RISING and FALLING are skipped
    pytest.param(1, 1, INIT, 0, OK, UP, 0, ANNOUNCED, "A", id="r1f1-INIT-ok-UP"),
    pytest.param(1, 1, INIT, 0, FAIL, DOWN, 0, WITHDRAWN, "", id="r1f1-INIT-fail-DOWN"),
    pytest.param(1, 1, UP, 0, OK, UP, 0, ANNOUNCED, "", id="r1f1-UP-ok-UP"),
    pytest.param(1, 1, UP, 0, FAIL, DOWN, 0, WITHDRAWN, "W", id="r1f1-UP-fail-DOWN"),
    pytest.param(1, 1, DOWN, 0, OK, UP, 0, ANNOUNCED, "A", id="r1f1-DOWN-ok-UP"),
    pytest.param(1, 1, DOWN, 0, FAIL, DOWN, 0, WITHDRAWN, "", id="r1f1-DOWN-fail-DOWN"),
    # ---- mixed: rise and fall are independent
    pytest.param(1, 3, UP, 0, FAIL, FALLING, 1, ANNOUNCED, "", id="r1f3-UP-fail-FALLING"),
    pytest.param(1, 3, FALLING, 2, FAIL, DOWN, 0, WITHDRAWN, "W", id="r1f3-FALLING2-fail-DOWN"),
    pytest.param(1, 3, DOWN, 0, OK, UP, 0, ANNOUNCED, "A", id="r1f3-DOWN-ok-UP"),
    pytest.param(3, 1, UP, 0, FAIL, DOWN, 0, WITHDRAWN, "W", id="r3f1-UP-fail-DOWN"),
    pytest.param(3, 1, DOWN, 0, OK, RISING, 1, WITHDRAWN, "", id="r3f1-DOWN-ok-RISING"),
    pytest.param(3, 1, RISING, 2, OK, UP, 0, ANNOUNCED, "A", id="r3f1-RISING2-ok-UP"),
    pytest.param(2, 2, RISING, 1, OK, UP, 0, ANNOUNCED, "A", id="r2f2-RISING1-ok-UP"),
    pytest.param(2, 2, FALLING, 1, FAIL, DOWN, 0, WITHDRAWN, "W", id="r2f2-FALLING1-fail-DOWN"),
]


@pytest.mark.parametrize(
    (
        "rise",
        "fall",
        "health",
        "count",
        "outcome",
        "new_health",
        "new_count",
        "new_route",
        "effects",
    ),
    HEALTH_TABLE,
)
def test_health_transition(
    rise: int,
    fall: int,
    health: Health,
    count: int,
    outcome: bool,
    new_health: Health,
    new_count: int,
    new_route: Route,
    effects: str,
) -> None:
    """Each health state x ok/fail moves per the rise/fall hysteresis; the wire
    changes only when UP or DOWN is reached, and ``health_since`` moves only on a change.
    """
    pol = policy(rise=rise, fall=fall)
    start = make(pol, health, ROUTE_FOR_HEALTH[health], count=count)
    new, got, _ = step(pol, start, CheckOutcome(outcome, T1))
    assert (new.health, new.count, new.route) == (new_health, new_count, new_route)
    assert got == fx(pol, effects, start)
    assert new.updated == T1
    assert new.health_since == (T0 if new_health is health else T1)
    assert new.route_since == (T0 if new_route is start.route else T1)
    assert_wire_matches_route(pol, new)


HEALTH_SEQUENCES = [
    # rise, fall, outcomes from INIT, healths after each, effects after each
    pytest.param(
        3, 3, "+++", [RISING, RISING, UP], ["", "", "A"], id="rise3-announces-on-third-ok"
    ),
    pytest.param(
        3,
        3,
        "++-+++",
        [RISING, RISING, DOWN, RISING, RISING, UP],
        ["", "", "", "", "", "A"],
        id="rise3-a-fail-restarts-the-count",
    ),
    pytest.param(
        1,
        3,
        "+---",
        [UP, FALLING, FALLING, DOWN],
        ["A", "", "", "W"],
        id="fall3-withdraws-on-third",
    ),
    pytest.param(
        1,
        3,
        "+--+---",
        [UP, FALLING, FALLING, UP, FALLING, FALLING, DOWN],
        ["A", "", "", "", "", "", "W"],
        id="fall3-an-ok-restarts-the-count",
    ),
    pytest.param(
        1, 1, "+-+-", [UP, DOWN, UP, DOWN], ["A", "W", "A", "W"], id="rise1-fall1-flaps-each-time"
    ),
    pytest.param(
        3, 3, "----", [DOWN, DOWN, DOWN, DOWN], ["", "", "", ""], id="failing-from-start-is-quiet"
    ),
]


@pytest.mark.parametrize(("rise", "fall", "outcomes", "healths", "effects"), HEALTH_SEQUENCES)
def test_health_sequence(
    rise: int, fall: int, outcomes: str, healths: list[Health], effects: list[str]
) -> None:
    """Runs of outcomes from INIT count toward rise/fall; an opposite outcome resets the count."""
    pol = policy(rise=rise, fall=fall)
    state = initial(T0)
    for i, (sign, want_health, want_fx) in enumerate(zip(outcomes, healths, effects, strict=True)):
        before = state
        state, got, _ = step(pol, state, CheckOutcome(sign == "+", T1 + i))
        assert state.health is want_health, f"outcome {i}"
        assert got == fx(pol, want_fx, before), f"outcome {i}"


# ---------------------------------------------------------------- route

ROUTE_TABLE = [
    # policy overrides, start, input, expected fields, effects
    pytest.param(
        {},
        {"health": RISING, "count": 2},
        ok(T1),
        {"health": UP, "route": ANNOUNCED},
        "A",
        id="WITHDRAWN-to-ANNOUNCED-on-UP",
    ),
    pytest.param(
        {},
        {"health": FALLING, "route": ANNOUNCED, "count": 2},
        fail(T1),
        {"health": DOWN, "route": WITHDRAWN},
        "W",
        id="ANNOUNCED-to-WITHDRAWN-on-DOWN",
    ),
    pytest.param(
        {},
        {"health": UP, "route": ANNOUNCED},
        Drain(T1, "maintenance"),
        {
            "route": DRAINING,
            "drained": True,
            "drain_reason": "maintenance",
            "drain_deadline": T1 + 30,
        },
        "D",
        id="ANNOUNCED-to-DRAINING-on-drain",
    ),
    pytest.param(
        {},
        {"health": FALLING, "route": ANNOUNCED, "count": 1},
        Drain(T1),
        {"health": FALLING, "route": DRAINING, "drained": True, "drain_deadline": T1 + 30},
        "D",
        id="ANNOUNCED-to-DRAINING-on-drain-while-FALLING",
    ),
    pytest.param(
        {},
        {"health": UP, "route": DRAINING, "drained": True, "deadline": T1},
        Tick(T1),
        {"route": WITHDRAWN, "drained": True, "drain_deadline": None},
        "W",
        id="DRAINING-to-WITHDRAWN-at-deadline",
    ),
    pytest.param(
        {},
        {"health": FALLING, "route": DRAINING, "count": 2, "drained": True, "deadline": T0 + 30},
        fail(T1),
        {"health": DOWN, "route": WITHDRAWN, "drained": True, "drain_deadline": None},
        "W",
        id="DRAINING-to-WITHDRAWN-on-DOWN",
    ),
    pytest.param(
        {},
        {"health": UP, "route": DRAINING, "drained": True, "deadline": T0 + 30},
        DrainIdle(T1),
        {"route": WITHDRAWN, "drained": True, "drain_deadline": None},
        "W",
        id="DRAINING-to-WITHDRAWN-on-drain-idle",
    ),
    pytest.param(
        {},
        {"health": UP, "route": DRAINING, "drained": True, "deadline": T0 + 30, "reason": "x"},
        Undrain(T1),
        {"route": ANNOUNCED, "drained": False, "drain_reason": "", "drain_deadline": None},
        "A",
        id="DRAINING-to-ANNOUNCED-on-undrain-while-UP",
    ),
    pytest.param(
        {},
        {"health": UP, "route": DRAINING, "drained": True, "deadline": T0 + 30},
        fail(T1),
        {"health": FALLING, "route": DRAINING, "drain_deadline": T0 + 30},
        "",
        id="DRAINING-stays-on-FALLING",
    ),
    pytest.param(
        {},
        {"health": UP, "route": WITHDRAWN, "drained": True},
        Undrain(T1),
        {"route": ANNOUNCED, "drained": False},
        "A",
        id="WITHDRAWN-drained-to-ANNOUNCED-on-undrain-while-UP",
    ),
    pytest.param(
        LOWER,
        {"health": FALLING, "route": ANNOUNCED, "count": 2},
        fail(T1),
        {"health": DOWN, "route": LOWERED},
        "L",
        id="ANNOUNCED-to-LOWERED-on-DOWN",
    ),
    pytest.param(
        LOWER,
        {},
        fail(T1),
        {"health": DOWN, "route": LOWERED},
        "L",
        id="WITHDRAWN-to-LOWERED-on-INIT-fail",
    ),
    pytest.param(
        LOWER,
        {"health": RISING, "route": LOWERED, "count": 2},
        ok(T1),
        {"health": UP, "route": ANNOUNCED},
        "A",
        id="LOWERED-to-ANNOUNCED-on-UP",
    ),
    pytest.param(
        LOWER,
        {"health": DOWN, "route": LOWERED},
        ok(T1),
        {"health": RISING, "route": LOWERED},
        "",
        id="LOWERED-stays-on-RISING",
    ),
    pytest.param(
        LOWER,
        {"health": DOWN, "route": LOWERED},
        Drain(T1),
        {"route": WITHDRAWN, "drained": True, "drain_deadline": None},
        "W",
        id="LOWERED-to-WITHDRAWN-on-drain",
    ),
    pytest.param(
        LOWER,
        {"health": DOWN, "route": WITHDRAWN, "drained": True},
        Undrain(T1),
        {"route": LOWERED, "drained": False},
        "L",
        id="WITHDRAWN-drained-to-LOWERED-on-undrain-while-DOWN",
    ),
    pytest.param(
        {"drain_seconds": 0.0},
        {"health": UP, "route": ANNOUNCED},
        Drain(T1),
        {"route": WITHDRAWN, "drained": True, "drain_deadline": None},
        "W",
        id="ANNOUNCED-to-WITHDRAWN-on-drain-with-zero-seconds",
    ),
    pytest.param(
        {"drain_seconds": 1e-300},
        {"health": UP, "route": ANNOUNCED},
        Drain(T1),
        {"route": WITHDRAWN, "drained": True, "drain_deadline": None},
        "W",
        id="ANNOUNCED-to-WITHDRAWN-on-drain-whose-deadline-is-already-now",
    ),
    pytest.param(
        {},
        {"health": DOWN},
        Drain(T1),
        {"route": WITHDRAWN, "drained": True, "drain_deadline": None},
        "",
        id="WITHDRAWN-stays-on-drain",
    ),
    pytest.param(
        {},
        {"health": UP, "route": ANNOUNCED},
        Tick(T1),
        {"route": ANNOUNCED},
        "",
        id="ANNOUNCED-stays-on-tick",
    ),
]


@pytest.mark.parametrize(("pol_kw", "start", "event", "fields", "effects"), ROUTE_TABLE)
def test_route_transition(
    pol_kw: dict[str, Any],
    start: dict[str, Any],
    event: Event,
    fields: dict[str, Any],
    effects: str,
) -> None:
    """Every route transition: the new route, drain fields and effects, with
    ``route_since`` moved only when the route changed.
    """
    pol = policy(**pol_kw)
    s0 = make(pol, **start)
    new, got, _ = step(pol, s0, event)
    check(new, fields)
    assert got == fx(pol, effects, s0)
    assert new.route_since == (T0 if new.route is s0.route else event.now)
    assert_wire_matches_route(pol, new)


# ---------------------------------------------------------------- drain timing

DRAIN_TIMING = [
    # policy overrides, inputs after Drain(T0) of an UP, ANNOUNCED service
    pytest.param({}, [(Tick(T0 + 29.999), {"route": DRAINING}, "")], id="tick-before-deadline"),
    pytest.param(
        {},
        [(Tick(T0 + 30), {"route": WITHDRAWN, "drained": True, "drain_deadline": None}, "W")],
        id="tick-exactly-at-deadline",
    ),
    pytest.param({}, [(Tick(T0 + 45), {"route": WITHDRAWN}, "W")], id="tick-after-deadline"),
    pytest.param(
        {},
        [
            (Tick(T0 + 10), {"route": DRAINING}, ""),
            (Tick(T0 + 30), {"route": WITHDRAWN, "route_since": T0 + 30}, "W"),
            (Tick(T0 + 31), {"route": WITHDRAWN, "route_since": T0 + 30}, ""),
        ],
        id="ticks-before-at-and-after-deadline",
    ),
    pytest.param(
        {},
        [(ok(T0 + 29.5), {"route": DRAINING, "health": UP}, "")],
        id="ok-before-deadline",
    ),
    pytest.param(
        {},
        [(ok(T0 + 30), {"route": WITHDRAWN, "health": UP, "drained": True}, "W")],
        id="ok-at-deadline",
    ),
    pytest.param(
        {},
        [(fail(T0 + 31), {"route": WITHDRAWN, "health": FALLING}, "W")],
        id="fail-after-deadline",
    ),
    pytest.param(
        {},
        [(Reconfigure(T0 + 30), {"route": WITHDRAWN}, "W")],
        id="reconfigure-at-deadline",
    ),
    pytest.param(
        {},
        [(DrainIdle(T0 + 30), {"route": WITHDRAWN, "drain_deadline": None}, "W")],
        id="drain-idle-at-deadline",
    ),
    pytest.param(
        {},
        [(Undrain(T0 + 30), {"route": ANNOUNCED, "drained": False}, "A")],
        id="undrain-at-deadline-announces-once-without-withdrawing",
    ),
    pytest.param(
        {},
        [
            (ok(T0 + 10), {"route": DRAINING}, ""),
            (fail(T0 + 20), {"route": DRAINING, "drain_deadline": T0 + 30}, ""),
            (ok(T0 + 25), {"route": DRAINING, "drain_deadline": T0 + 30}, ""),
            (Tick(T0 + 30), {"route": WITHDRAWN}, "W"),
        ],
        id="later-inputs-do-not-move-the-deadline",
    ),
    pytest.param(
        {"drain_seconds": 5.0},
        [
            (Tick(T0 + 4.99), {"route": DRAINING, "drain_deadline": T0 + 5}, ""),
            (Tick(T0 + 5), {"route": WITHDRAWN}, "W"),
        ],
        id="drain-seconds-5",
    ),
    pytest.param(
        {"drain_seconds": 0.5},
        [(Tick(T0 + 0.5), {"route": WITHDRAWN}, "W")],
        id="drain-seconds-fractional",
    ),
]


@pytest.mark.parametrize(("pol_kw", "steps"), DRAIN_TIMING)
def test_drain_timing(pol_kw: dict[str, Any], steps: list[Step]) -> None:
    """A drain announces the drain attributes at once and withdraws when
    now >= drain time + drain_seconds (not before), whichever input brings that time.
    """
    pol = policy(**pol_kw)
    s = make(pol, UP, ANNOUNCED)
    s, got, _ = step(pol, s, Drain(T0, "maint"))
    assert got == fx(pol, "D")
    check(s, {"route": DRAINING, "drained": True, "drain_deadline": T0 + pol.drain_seconds})
    run_steps(pol, s, steps)


def test_next_deadline_is_when_the_drain_withdraws() -> None:
    """next_deadline of a draining state is the drain time plus drain_seconds;
    a Tick at exactly that time withdraws, and after it there is no deadline.
    """
    s = make(BASE, UP, ANNOUNCED)
    s, _, _ = step(BASE, s, Drain(T1))
    when = next_deadline(s)
    assert when == T1 + BASE.drain_seconds
    s, got, _ = step(BASE, s, Tick(when))
    assert got == [Withdraw(PREFIXES, BASE.drain)]
    assert next_deadline(s) is None


ZERO_SECONDS = [
    pytest.param({"health": UP, "route": ANNOUNCED}, "W", id="UP-withdraws-at-once"),
    pytest.param(
        {"health": FALLING, "route": ANNOUNCED, "count": 1}, "W", id="FALLING-withdraws-at-once"
    ),
    pytest.param({"health": DOWN}, "", id="nothing-announced-nothing-to-do"),
]


@pytest.mark.parametrize(("start", "effects"), ZERO_SECONDS)
def test_drain_with_zero_seconds(start: dict[str, Any], effects: str) -> None:
    """With drain_seconds = 0 a drain withdraws at once, never passing through
    DRAINING, and leaves no deadline; an undrain later re-announces per health.
    """
    pol = policy(drain_seconds=0.0)
    s0 = make(pol, **start)
    s, got, _ = step(pol, s0, Drain(T1))
    assert got == fx(pol, effects, s0)
    check(s, {"route": WITHDRAWN, "drained": True, "drain_deadline": None})
    assert next_deadline(s) is None
    s, got, _ = step(pol, s, Tick(T1))
    assert got == []
    s, got, _ = step(pol, s, Undrain(T1 + 1))
    assert got == fx(pol, "A" if s.health is UP else "")


# ---------------------------------------------------------------- on_down

ON_DOWN_TABLE = [
    pytest.param(
        {},
        {"health": FALLING, "route": ANNOUNCED, "count": 2},
        [(fail(T1), {"health": DOWN, "route": WITHDRAWN}, "W")],
        id="withdraw-DOWN-withdraws",
    ),
    pytest.param(
        LOWER,
        {"health": FALLING, "route": ANNOUNCED, "count": 2},
        [(fail(T1), {"health": DOWN, "route": LOWERED}, "L")],
        id="lower-DOWN-announces-down-attributes",
    ),
    pytest.param(
        LOWER,
        {},
        [(fail(T1), {"health": DOWN, "route": LOWERED}, "L")],
        id="lower-INIT-fail-lowers-at-once",
    ),
    pytest.param(
        LOWER,
        {"health": DOWN, "route": LOWERED},
        [
            (fail(T1), {"route": LOWERED}, ""),
            (fail(T1 + 1), {"route": LOWERED}, ""),
        ],
        id="lower-repeated-fail-is-quiet",
    ),
    pytest.param(
        LOWER,
        {"health": DOWN, "route": LOWERED},
        [
            (ok(T1), {"health": RISING, "route": LOWERED}, ""),
            (fail(T1 + 1), {"health": DOWN, "route": LOWERED}, ""),
            (ok(T1 + 2), {"health": RISING, "route": LOWERED}, ""),
            (ok(T1 + 3), {"health": RISING, "route": LOWERED}, ""),
            (ok(T1 + 4), {"health": UP, "route": ANNOUNCED}, "A"),
        ],
        id="lower-RISING-keeps-lowered-until-UP",
    ),
    pytest.param(
        {**LOWER, **R1F1},
        {"health": DOWN, "route": LOWERED},
        [
            (ok(T1), {"health": UP, "route": ANNOUNCED}, "A"),
            (fail(T1 + 1), {"health": DOWN, "route": LOWERED}, "L"),
        ],
        id="lower-rise1-fall1-switches-attributes",
    ),
    pytest.param(
        LOWER,
        {"health": DOWN, "route": LOWERED},
        [
            (Drain(T1), {"route": WITHDRAWN, "drained": True, "drain_deadline": None}, "W"),
            (Tick(T1 + 60), {"route": WITHDRAWN}, ""),
            (fail(T1 + 61), {"route": WITHDRAWN}, ""),
            (Undrain(T1 + 62), {"route": LOWERED, "drained": False}, "L"),
        ],
        id="lower-LOWERED-drain-withdraws-at-once-undrain-lowers",
    ),
    pytest.param(
        LOWER,
        {"health": FALLING, "route": DRAINING, "count": 2, "drained": True, "deadline": T0 + 30},
        [(fail(T1), {"health": DOWN, "route": WITHDRAWN, "drain_deadline": None}, "W")],
        id="lower-DOWN-while-draining-withdraws-not-lowers",
    ),
    pytest.param(
        {**LOWER, **R1F1},
        {"health": UP, "route": WITHDRAWN, "drained": True},
        [(fail(T1), {"health": DOWN, "route": WITHDRAWN}, "")],
        id="lower-DOWN-while-drained-stays-withdrawn",
    ),
]


@pytest.mark.parametrize(("pol_kw", "start", "steps"), ON_DOWN_TABLE)
def test_on_down(pol_kw: dict[str, Any], start: dict[str, Any], steps: list[Step]) -> None:
    """on_down = withdraw withdraws a DOWN service; on_down = lower announces it
    with the down attributes, except while drained, where DOWN always withdraws.
    """
    pol = policy(**pol_kw)
    run_steps(pol, make(pol, **start), steps)


# ---------------------------------------------------------------- health while draining

DRAINING_START: dict[str, Any] = {
    "health": UP,
    "route": DRAINING,
    "drained": True,
    "deadline": T0 + 30,
}

WHILE_DRAINING = [
    pytest.param(
        {},
        [(fail(T1), {"health": FALLING, "count": 1, "route": DRAINING}, "")],
        id="FALLING-keeps-draining",
    ),
    pytest.param(
        {},
        [
            (fail(T1), {"health": FALLING, "route": DRAINING}, ""),
            (fail(T1 + 1), {"health": FALLING, "route": DRAINING}, ""),
            (fail(T1 + 2), {"health": DOWN, "route": WITHDRAWN, "drain_deadline": None}, "W"),
            (Tick(T0 + 30), {"route": WITHDRAWN}, ""),
        ],
        id="DOWN-after-fall3-withdraws-at-once",
    ),
    pytest.param(
        {"fall": 1},
        [(fail(T1), {"health": DOWN, "route": WITHDRAWN, "drained": True}, "W")],
        id="DOWN-fall1-withdraws-at-once",
    ),
    pytest.param(
        {},
        [
            (fail(T1), {"health": FALLING, "route": DRAINING}, ""),
            (ok(T1 + 1), {"health": UP, "route": DRAINING}, ""),
            (Tick(T0 + 30), {"route": WITHDRAWN}, "W"),
        ],
        id="recovery-to-UP-keeps-drain-attributes",
    ),
    pytest.param(
        {},
        [
            (fail(T1), {"health": FALLING}, ""),
            (fail(T1 + 1), {"health": FALLING}, ""),
            (fail(T1 + 2), {"health": DOWN, "route": WITHDRAWN}, "W"),
            (ok(T1 + 3), {"health": RISING, "route": WITHDRAWN}, ""),
            (ok(T1 + 4), {"health": RISING, "route": WITHDRAWN}, ""),
            (ok(T1 + 5), {"health": UP, "route": WITHDRAWN, "drained": True}, ""),
        ],
        id="UP-again-while-drained-stays-withdrawn",
    ),
    pytest.param(
        {},
        [
            (Tick(T0 + 30), {"route": WITHDRAWN}, "W"),
            (fail(T0 + 31), {"health": FALLING, "route": WITHDRAWN}, ""),
            (ok(T0 + 32), {"health": UP, "route": WITHDRAWN}, ""),
        ],
        id="checks-keep-running-after-the-withdraw",
    ),
]


@pytest.mark.parametrize(("pol_kw", "steps"), WHILE_DRAINING)
def test_health_change_while_draining(pol_kw: dict[str, Any], steps: list[Step]) -> None:
    """While draining, DOWN withdraws at once, FALLING keeps DRAINING, recovery
    to UP keeps the drain attributes; health is still tracked while drained.
    """
    pol = policy(**pol_kw)
    run_steps(pol, make(pol, **DRAINING_START), steps)


# ---------------------------------------------------------------- undrain

UNDRAIN_TABLE = [
    # policy overrides, drained start, expected route after undrain, effects
    pytest.param({}, {"health": INIT}, WITHDRAWN, "", id="INIT-stays-withdrawn"),
    pytest.param({}, {"health": RISING, "count": 1}, WITHDRAWN, "", id="RISING-stays-withdrawn"),
    pytest.param({}, {"health": UP}, ANNOUNCED, "A", id="UP-after-drain-ended-announces"),
    pytest.param(
        {},
        {"health": UP, "route": DRAINING, "deadline": T0 + 30},
        ANNOUNCED,
        "A",
        id="UP-mid-drain-restores-announce-attributes",
    ),
    pytest.param(
        {},
        {"health": FALLING, "count": 1, "route": DRAINING, "deadline": T0 + 30},
        ANNOUNCED,
        "A",
        id="FALLING-mid-drain-restores-announce-attributes",
    ),
    pytest.param(
        {},
        {"health": FALLING, "count": 1},
        WITHDRAWN,
        "",
        id="FALLING-after-drain-ended-stays-withdrawn",
    ),
    pytest.param({}, {"health": DOWN}, WITHDRAWN, "", id="DOWN-withdraw-stays-withdrawn"),
    pytest.param(LOWER, {"health": DOWN}, LOWERED, "L", id="DOWN-lower-lowers"),
    pytest.param(
        LOWER, {"health": RISING, "count": 1}, WITHDRAWN, "", id="RISING-lower-stays-withdrawn"
    ),
    pytest.param(LOWER, {"health": UP}, ANNOUNCED, "A", id="UP-lower-announces"),
]


@pytest.mark.parametrize(("pol_kw", "start", "route", "effects"), UNDRAIN_TABLE)
def test_undrain_in_each_health_state(
    pol_kw: dict[str, Any], start: dict[str, Any], route: Route, effects: str
) -> None:
    """An undrain clears the drain and returns to health-driven behaviour:
    UP announces, DOWN withdraws or lowers, INIT/RISING/FALLING leave the wire
    alone (but a route lowered for a drain goes back to the announce attributes).
    """
    pol = policy(**pol_kw)
    s0 = make(pol, drained=True, reason="maint", **start)
    new, got, _ = step(pol, s0, Undrain(T1))
    check(
        new,
        {
            "route": route,
            "health": s0.health,
            "drained": False,
            "drain_reason": "",
            "drain_deadline": None,
        },
    )
    assert got == fx(pol, effects, s0)
    assert next_deadline(new) is None


# ---------------------------------------------------------------- drain with nothing announced

NOTHING_ANNOUNCED = [
    pytest.param({}, {"health": INIT}, id="INIT"),
    pytest.param({}, {"health": RISING, "count": 2}, id="RISING"),
    pytest.param({}, {"health": DOWN}, id="DOWN"),
    pytest.param({}, {"health": FALLING, "count": 1}, id="FALLING-after-undrain"),
    pytest.param(LOWER, {"health": RISING, "count": 1}, id="RISING-lower-withdrawn"),
]


@pytest.mark.parametrize(("pol_kw", "start"), NOTHING_ANNOUNCED)
def test_drain_when_nothing_announced(pol_kw: dict[str, Any], start: dict[str, Any]) -> None:
    """Draining a service with nothing on the wire emits nothing, records the
    drain (reason kept, no deadline) and keeps later health changes off the wire.
    """
    pol = policy(**pol_kw)
    s, got, _ = step(pol, make(pol, **start), Drain(T1, "why"))
    assert got == []
    check(
        s,
        {"route": WITHDRAWN, "drained": True, "drain_reason": "why", "drain_deadline": None},
    )
    assert next_deadline(s) is None
    for i in range(4):  # enough to reach UP from any of the starts
        s, got, _ = step(pol, s, ok(T1 + 1 + i))
        assert got == []
    assert s.health is UP
    assert s.route is WITHDRAWN


# ---------------------------------------------------------------- drain idle

DRAIN_IDLE = [
    pytest.param({"health": UP}, id="UP"),
    pytest.param({"health": FALLING, "count": 2}, id="FALLING"),
]


@pytest.mark.parametrize("start", DRAIN_IDLE)
def test_drain_idle_withdraws_early(start: dict[str, Any]) -> None:
    """DrainIdle while draining withdraws before the deadline; the service stays
    drained, and the old deadline no longer does anything.
    """
    s0 = make(BASE, route=DRAINING, drained=True, deadline=T0 + 30, **start)
    s, got, _ = step(BASE, s0, DrainIdle(T0 + 5))
    assert got == [Withdraw(PREFIXES, BASE.drain)]
    check(
        s,
        {"route": WITHDRAWN, "drained": True, "drain_deadline": None, "route_since": T0 + 5},
    )
    assert next_deadline(s) is None
    s, got, _ = step(BASE, s, Tick(T0 + 30))
    assert got == []


# ---------------------------------------------------------------- illegal inputs

ILLEGAL = [
    # policy overrides, start, input
    pytest.param({}, DRAINING_START, Drain(T1), id="drain-twice-while-draining"),
    pytest.param({}, {"health": UP, "drained": True}, Drain(T1), id="drain-twice-after-withdraw"),
    pytest.param({}, {"health": INIT, "drained": True}, Drain(T1), id="drain-twice-in-INIT"),
    pytest.param({}, {**DRAINING_START, "deadline": T1}, Drain(T1), id="drain-twice-at-deadline"),
    pytest.param({}, {"health": UP, "route": ANNOUNCED}, Undrain(T1), id="undrain-when-UP"),
    pytest.param({}, {}, Undrain(T1), id="undrain-when-INIT"),
    pytest.param({}, {"health": DOWN}, Undrain(T1), id="undrain-when-DOWN"),
    pytest.param(LOWER, {"health": DOWN, "route": LOWERED}, Undrain(T1), id="undrain-when-LOWERED"),
    pytest.param({}, {"health": UP, "route": ANNOUNCED}, DrainIdle(T1), id="idle-when-ANNOUNCED"),
    pytest.param({}, {"health": UP, "drained": True}, DrainIdle(T1), id="idle-when-drain-done"),
    pytest.param({}, {}, DrainIdle(T1), id="idle-when-INIT"),
    pytest.param(LOWER, {"health": DOWN, "route": LOWERED}, DrainIdle(T1), id="idle-when-LOWERED"),
    pytest.param({}, {"health": UP, "route": ANNOUNCED}, ok(T0 - 1), id="backwards-ok"),
    pytest.param({}, {"health": UP, "route": ANNOUNCED}, fail(T0 - 1), id="backwards-fail"),
    pytest.param({}, DRAINING_START, Tick(T0 - 0.001), id="backwards-tick"),
    pytest.param({}, {"health": UP, "route": ANNOUNCED}, Drain(T0 - 1), id="backwards-drain"),
    pytest.param({}, DRAINING_START, Undrain(T0 - 1), id="backwards-undrain"),
    pytest.param({}, DRAINING_START, DrainIdle(T0 - 1), id="backwards-idle"),
    pytest.param({}, {"health": UP}, Reconfigure(T0 - 1), id="backwards-reconfigure"),
]


@pytest.mark.parametrize(("pol_kw", "start", "event"), ILLEGAL)
def test_illegal_input_raises_and_leaves_state(
    pol_kw: dict[str, Any], start: dict[str, Any], event: Event
) -> None:
    """Drain twice, undrain when not drained, DrainIdle when not draining and
    time going backwards raise IllegalTransition; the state passed in is untouched.
    """
    pol = policy(**pol_kw)
    s0 = make(pol, **start)
    snapshot = dataclasses.replace(s0)
    with pytest.raises(IllegalTransition):
        step(pol, s0, event)
    assert s0 == snapshot
    # The caller keeps using the state it had: the next legal input works from it.
    s1, _, _ = step(pol, s0, Tick(T0))
    assert s1.updated == T0


def test_state_is_frozen_and_step_returns_a_new_one() -> None:
    """States are immutable: step returns a new state and leaves its argument as it was."""
    s0 = make(BASE, UP, ANNOUNCED)
    snapshot = dataclasses.replace(s0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s0.route = WITHDRAWN  # type: ignore[misc]
    s1, got, _ = step(BASE, s0, Drain(T1))
    assert s1 is not s0
    assert s0 == snapshot
    assert got == fx(BASE, "D")


def test_same_timestamp_is_not_backwards() -> None:
    """An input stamped with the same time as the last one is accepted."""
    s = make(BASE, UP, ANNOUNCED)
    for event in (ok(T0), Tick(T0), Drain(T0), Tick(T0), Undrain(T0), fail(T0)):
        s, _, _ = step(BASE, s, event)
    assert s.updated == T0


# ---------------------------------------------------------------- no effect on unchanged state

NO_EFFECT = [
    pytest.param(
        {}, {"health": UP, "route": ANNOUNCED}, [ok(T1 + i) for i in range(5)], id="UP-repeated-ok"
    ),
    pytest.param({}, {"health": DOWN}, [fail(T1 + i) for i in range(5)], id="DOWN-repeated-fail"),
    pytest.param(
        LOWER,
        {"health": DOWN, "route": LOWERED},
        [fail(T1 + i) for i in range(5)],
        id="LOWERED-repeated-fail",
    ),
    pytest.param(
        {},
        {"health": UP, "route": ANNOUNCED},
        [Tick(T1 + i) for i in range(3)],
        id="ANNOUNCED-ticks",
    ),
    pytest.param({}, {}, [Tick(T1), Tick(T1 + 100)], id="INIT-ticks"),
    pytest.param(
        {},
        DRAINING_START,
        [Tick(T1), ok(T1 + 1), Tick(T0 + 29)],
        id="DRAINING-before-deadline",
    ),
    pytest.param(
        {},
        {"health": UP, "drained": True},
        [ok(T1), fail(T1 + 1), Tick(T1 + 2), ok(T1 + 3)],
        id="drained-and-withdrawn",
    ),
    pytest.param(
        {},
        {"health": UP, "route": ANNOUNCED},
        [Reconfigure(T1), Reconfigure(T1 + 1)],
        id="ANNOUNCED-reconfigure-same-policy",
    ),
    pytest.param(
        {},
        {"health": UP, "route": ANNOUNCED},
        [fail(T1), fail(T1 + 1), ok(T1 + 2)],
        id="UP-dip-shorter-than-fall",
    ),
]


@pytest.mark.parametrize(("pol_kw", "start", "events"), NO_EFFECT)
def test_no_effect_when_the_wire_does_not_change(
    pol_kw: dict[str, Any], start: dict[str, Any], events: list[Event]
) -> None:
    """Inputs that leave the wire as it is emit no effect (effects only on change)."""
    pol = policy(**pol_kw)
    s = make(pol, **start)
    wire = (s.route, s.wire_prefixes, s.wire_attributes)
    for event in events:
        s, got, _ = step(pol, s, event)
        assert got == [], event
        assert (s.route, s.wire_prefixes, s.wire_attributes) == wire


# ---------------------------------------------------------------- restored (hitless restart)

R_ANNOUNCED = Restored(ANNOUNCED, PREFIXES, BASE.announce)
R_DRAINING = Restored(
    DRAINING, PREFIXES, BASE.drain, drained=True, drain_reason="m", drain_deadline=T0 + 20
)
R_LOWERED = Restored(LOWERED, PREFIXES, BASE.down)

RESTORED_TABLE = [
    pytest.param(
        {},
        R_ANNOUNCED,
        [(ok(T1), {"health": UP, "count": 0, "route": ANNOUNCED, "wire_certain": True}, "A")],
        id="ANNOUNCED-first-ok-keeps-it-without-rise-and-reasserts",
    ),
    pytest.param(
        {"rise": 1},
        R_ANNOUNCED,
        [(ok(T1), {"health": UP, "route": ANNOUNCED}, "A")],
        id="ANNOUNCED-first-ok-rise1",
    ),
    pytest.param(
        {},
        R_ANNOUNCED,
        [
            (fail(T1), {"health": FALLING, "count": 1, "wire_certain": False}, ""),
            (fail(T1 + 1), {"health": FALLING, "count": 2, "route": ANNOUNCED}, ""),
            (fail(T1 + 2), {"health": DOWN, "route": WITHDRAWN}, "W"),
        ],
        id="ANNOUNCED-first-fail-falls-then-withdraws",
    ),
    pytest.param(
        {"fall": 1},
        R_ANNOUNCED,
        [(fail(T1), {"health": DOWN, "route": WITHDRAWN}, "W")],
        id="ANNOUNCED-first-fail-fall1-withdraws",
    ),
    pytest.param(
        {},
        R_ANNOUNCED,
        [
            (fail(T1), {"health": FALLING, "route": ANNOUNCED}, ""),
            (ok(T1 + 1), {"health": UP, "route": ANNOUNCED}, "A"),
        ],
        id="ANNOUNCED-first-fail-then-ok-reasserts-without-a-withdraw",
    ),
    pytest.param(
        LOWER,
        R_ANNOUNCED,
        [
            (fail(T1), {"health": FALLING}, ""),
            (fail(T1 + 1), {"health": FALLING}, ""),
            (fail(T1 + 2), {"health": DOWN, "route": LOWERED}, "L"),
        ],
        id="ANNOUNCED-lower-falls-then-lowers",
    ),
    pytest.param(
        {},
        R_ANNOUNCED,
        [(Drain(T1), {"route": DRAINING, "drain_deadline": T1 + 30}, "D")],
        id="ANNOUNCED-drain-before-first-check",
    ),
    pytest.param(
        {},
        R_DRAINING,
        [
            (
                ok(T1),
                {"health": UP, "route": DRAINING, "drained": True, "drain_deadline": T0 + 20},
                "D",
            ),
            (Tick(T0 + 20), {"route": WITHDRAWN, "drained": True}, "W"),
        ],
        id="DRAINING-first-ok-keeps-drain-and-deadline",
    ),
    pytest.param(
        {},
        R_DRAINING,
        [(fail(T1), {"health": FALLING, "route": DRAINING}, "D")],
        id="DRAINING-first-fail-falls-still-draining",
    ),
    pytest.param(
        {"fall": 1},
        R_DRAINING,
        [(fail(T1), {"health": DOWN, "route": WITHDRAWN}, "W")],
        id="DRAINING-first-fail-fall1-withdraws",
    ),
    pytest.param(
        {},
        dataclasses.replace(R_DRAINING, drain_deadline=T0 - 5),
        [(Tick(T0), {"route": WITHDRAWN, "drained": True, "drain_deadline": None}, "W")],
        id="DRAINING-deadline-passed-first-input-withdraws",
    ),
    pytest.param(
        {},
        R_DRAINING,
        [
            (Undrain(T1), {"route": ANNOUNCED, "drained": False, "wire_certain": False}, ""),
            (ok(T1 + 1), {"route": ANNOUNCED, "health": UP, "wire_certain": True}, "A"),
        ],
        id="DRAINING-undrain-before-first-check-waits-for-health",
    ),
    pytest.param(
        LOWER,
        R_LOWERED,
        [
            (ok(T1), {"health": RISING, "route": LOWERED}, ""),
            (ok(T1 + 1), {"health": RISING, "route": LOWERED}, ""),
            (ok(T1 + 2), {"health": UP, "route": ANNOUNCED}, "A"),
        ],
        id="LOWERED-first-ok-keeps-it-then-rises",
    ),
    pytest.param(
        LOWER,
        R_LOWERED,
        [(fail(T1), {"health": DOWN, "route": LOWERED}, "L")],
        id="LOWERED-first-fail-stays-lowered",
    ),
    pytest.param(
        {},
        Restored(WITHDRAWN, (), drained=True, drain_reason="m", certain=True),
        [
            (ok(T1), {"health": RISING, "route": WITHDRAWN, "drained": True}, ""),
            (Undrain(T1 + 1), {"drained": False, "route": WITHDRAWN}, ""),
        ],
        id="WITHDRAWN-drained-new-exabgp-stays-drained",
    ),
    pytest.param(
        {},
        Restored(WITHDRAWN, PREFIXES, drained=True, drain_reason="m"),
        [(ok(T1), {"health": RISING, "route": WITHDRAWN, "drained": True}, "W")],
        id="WITHDRAWN-drained-same-exabgp-withdraws-whatever-may-be-there",
    ),
    pytest.param(
        {},
        Restored(WITHDRAWN, PREFIXES),
        [
            (ok(T1), {"health": RISING, "wire_certain": False}, ""),
            (ok(T1 + 1), {"health": RISING, "wire_certain": False}, ""),
            (ok(T1 + 2), {"health": UP, "route": ANNOUNCED, "wire_certain": True}, "A"),
        ],
        id="UNKNOWN-healthy-rises-then-asserts-without-a-withdraw",
    ),
    pytest.param(
        {},
        Restored(WITHDRAWN, PREFIXES),
        [(fail(T1), {"health": DOWN, "route": WITHDRAWN, "wire_certain": True}, "W")],
        id="UNKNOWN-first-fail-withdraws-explicitly",
    ),
    pytest.param(
        {},
        Restored(WITHDRAWN, PREFIXES),
        [(Drain(T1), {"drained": True, "route": WITHDRAWN, "wire_certain": True}, "W")],
        id="UNKNOWN-drain-withdraws-explicitly",
    ),
    pytest.param(
        {},
        Restored(WITHDRAWN, PREFIXES),
        [(Shutdown(T1), {"route": WITHDRAWN, "wire_certain": True}, "W")],
        id="UNKNOWN-shutdown-withdraws-explicitly",
    ),
    pytest.param(
        {},
        R_ANNOUNCED,
        [(Shutdown(T1), {"route": WITHDRAWN, "health": INIT}, "W")],
        id="ANNOUNCED-shutdown-withdraws",
    ),
    pytest.param(
        {},
        Restored(ANNOUNCED, PREFIXES, RouteAttributes(med=50)),
        [(ok(T1), {"health": UP, "route": ANNOUNCED}, "A")],
        id="ANNOUNCED-stale-attributes-reannounced-on-first-ok",
    ),
    pytest.param(
        {},
        Restored(ANNOUNCED, (*PREFIXES, P_EXTRA), BASE.announce),
        [
            (
                ok(T1),
                {"health": UP, "wire_prefixes": PREFIXES},
                [Withdraw((P_EXTRA,), BASE.announce), Announce(PREFIXES, BASE.announce, ANNOUNCED)],
            )
        ],
        id="ANNOUNCED-prefix-no-longer-configured-withdrawn-alone",
    ),
]


@pytest.mark.parametrize(("pol_kw", "restored", "steps"), RESTORED_TABLE)
def test_restored(pol_kw: dict[str, Any], restored: Restored, steps: list[Step]) -> None:
    """A restored route is kept while the first checks decide, with nothing sent;
    a passing first check keeps an announced route without rise, a failing one goes
    through fall as usual. Once decided, the whole wanted state is asserted (the file
    may be stale): an announce of every wanted prefix (ExaBGP drops an identical
    one) and a withdraw of every other prefix that may be there.
    """
    pol = policy(**pol_kw)
    s = initial(T0, restored=restored)
    run_steps(pol, s, steps)


def test_initial_takes_the_restored_wire_as_it_is() -> None:
    """initial(restored=...) starts INIT with the restored route, drain and wire, and no deadline
    unless the restored route is DRAINING.
    """
    s = initial(T0, restored=R_DRAINING)
    check(
        s,
        {
            "health": INIT,
            "route": DRAINING,
            "drained": True,
            "drain_reason": "m",
            "drain_deadline": T0 + 20,
            "wire_prefixes": PREFIXES,
            "wire_attributes": BASE.drain,
            "updated": T0,
        },
    )
    assert next_deadline(s) == T0 + 20
    s = initial(T0, restored=dataclasses.replace(R_ANNOUNCED, drain_deadline=T0 + 20))
    check(s, {"route": ANNOUNCED, "drain_deadline": None, "wire_attributes": BASE.announce})
    assert next_deadline(s) is None


# ---------------------------------------------------------------- reconfigure (reload)

RECONFIGURE_TABLE = [
    # old policy overrides, start, new policy overrides, expected fields, effects
    pytest.param(
        {}, {"health": UP, "route": ANNOUNCED}, {}, {"route": ANNOUNCED}, [], id="same-policy"
    ),
    pytest.param(
        {},
        {"health": UP, "route": ANNOUNCED},
        {"announce": NEW_ANN},
        {"wire_attributes": NEW_ANN},
        [Announce(PREFIXES, NEW_ANN, ANNOUNCED)],
        id="announce-med-changed",
    ),
    pytest.param(
        {},
        {"health": UP, "route": ANNOUNCED},
        {"prefixes": (P4,)},
        {"wire_prefixes": (P4,)},
        [Withdraw((P6,), BASE.announce)],
        id="prefix-removed",
    ),
    pytest.param(
        {},
        {"health": UP, "route": ANNOUNCED},
        {"prefixes": (*PREFIXES, P_EXTRA)},
        {"wire_prefixes": (*PREFIXES, P_EXTRA)},
        [Announce((P_EXTRA,), BASE.announce, ANNOUNCED)],
        id="prefix-added",
    ),
    pytest.param(
        {},
        {"health": UP, "route": ANNOUNCED},
        {"prefixes": (P4, P_EXTRA)},
        {"wire_prefixes": (P4, P_EXTRA)},
        [Withdraw((P6,), BASE.announce), Announce((P_EXTRA,), BASE.announce, ANNOUNCED)],
        id="prefix-replaced",
    ),
    pytest.param(
        {},
        {"health": UP, "route": ANNOUNCED},
        {"prefixes": (P4,), "announce": NEW_ANN},
        {"wire_prefixes": (P4,), "wire_attributes": NEW_ANN},
        [Withdraw((P6,), BASE.announce), Announce((P4,), NEW_ANN, ANNOUNCED)],
        id="prefix-removed-and-med-changed",
    ),
    pytest.param(
        {},
        {"health": UP, "route": ANNOUNCED},
        {"drain": NEW_DRAIN, "down": NEW_DOWN},
        {"wire_attributes": BASE.announce},
        [],
        id="attributes-not-on-the-wire-changed",
    ),
    pytest.param(
        {},
        DRAINING_START,
        {"drain": NEW_DRAIN},
        {"route": DRAINING, "drain_deadline": T0 + 30},
        [Announce(PREFIXES, NEW_DRAIN, DRAINING)],
        id="drain-attributes-changed-while-draining",
    ),
    pytest.param(
        {},
        DRAINING_START,
        {"announce": NEW_ANN},
        {"route": DRAINING},
        [],
        id="announce-changed-while-draining",
    ),
    pytest.param(
        {},
        DRAINING_START,
        {"drain_seconds": 5.0},
        {"route": DRAINING, "drain_deadline": T0 + 30},
        [],
        id="drain-seconds-changed-keeps-deadline",
    ),
    pytest.param(
        {},
        {"health": DOWN},
        {"announce": NEW_ANN, "prefixes": (P_EXTRA,)},
        {"route": WITHDRAWN, "wire_prefixes": ()},
        [],
        id="anything-changed-while-withdrawn",
    ),
    pytest.param(
        LOWER,
        {"health": DOWN, "route": LOWERED},
        {**LOWER, "down": NEW_DOWN},
        {"route": LOWERED},
        [Announce(PREFIXES, NEW_DOWN, LOWERED)],
        id="down-attributes-changed-while-lowered",
    ),
    pytest.param(
        LOWER,
        {"health": DOWN, "route": LOWERED},
        {},
        {"route": WITHDRAWN},
        [Withdraw(PREFIXES, BASE.down)],
        id="on-down-lower-to-withdraw-while-DOWN",
    ),
    pytest.param(
        {},
        {"health": DOWN},
        LOWER,
        {"route": LOWERED},
        [Announce(PREFIXES, BASE.down, LOWERED)],
        id="on-down-withdraw-to-lower-while-DOWN",
    ),
    pytest.param(
        {},
        {"health": DOWN, "drained": True},
        LOWER,
        {"route": WITHDRAWN, "drained": True},
        [],
        id="on-down-withdraw-to-lower-while-drained",
    ),
    pytest.param(
        {},
        {"health": RISING, "count": 2},
        {"rise": 2},
        {"health": RISING, "count": 2, "route": WITHDRAWN},
        [],
        id="rise-lowered-acts-on-the-next-check",
    ),
]


@pytest.mark.parametrize(("old_kw", "start", "new_kw", "fields", "effects"), RECONFIGURE_TABLE)
def test_reconfigure(
    old_kw: dict[str, Any],
    start: dict[str, Any],
    new_kw: dict[str, Any],
    fields: dict[str, Any],
    effects: list[Effect],
) -> None:
    """A reload re-announces only what changed: changed attributes once, removed
    prefixes withdrawn, added ones announced, nothing for an unchanged policy.
    """
    old = policy(**old_kw)
    new_pol = policy(**new_kw)
    s0 = make(old, **start)
    s, got, _ = step(new_pol, s0, Reconfigure(T1))
    assert got == effects
    check(s, fields)
    assert_wire_matches_route(new_pol, s)
    # A second reload with the same policy is quiet.
    _, again, _ = step(new_pol, s, Reconfigure(T1 + 1))
    assert again == []


# ---------------------------------------------------------------- next_deadline

NEXT_DEADLINE = [
    pytest.param({}, None, id="INIT"),
    pytest.param({"health": UP, "route": ANNOUNCED}, None, id="ANNOUNCED"),
    pytest.param(DRAINING_START, T0 + 30, id="DRAINING"),
    pytest.param({"health": UP, "drained": True}, None, id="drained-WITHDRAWN"),
    pytest.param({"health": DOWN, "route": LOWERED}, None, id="LOWERED"),
    pytest.param({**DRAINING_START, "deadline": None}, None, id="DRAINING-without-deadline"),
]


@pytest.mark.parametrize(("start", "expected"), NEXT_DEADLINE)
def test_next_deadline(start: dict[str, Any], expected: float | None) -> None:
    """Only a DRAINING state has a deadline of its own; others never change by themselves."""
    assert next_deadline(make(BASE, **start)) == expected


# ---------------------------------------------------------------- property test

PREFIX_POOL = (P4, P6, P_EXTRA)
ATTRS = st.sampled_from(
    [
        RouteAttributes(med=100),
        RouteAttributes(med=200),
        RouteAttributes(med=1000),
        RouteAttributes(med=1000, communities=("65535:0",)),
        RouteAttributes(local_preference=50, as_path_prepend=2),
    ]
)
POLICIES = st.builds(
    Policy,
    prefixes=st.lists(st.sampled_from(PREFIX_POOL), min_size=1, max_size=3, unique=True).map(tuple),
    rise=st.integers(1, 3),
    fall=st.integers(1, 3),
    on_down=st.sampled_from(OnDown),
    drain_seconds=st.sampled_from([0.0, 5.0, 30.0])
    | st.floats(0, 60, allow_nan=False, allow_infinity=False),
    announce=ATTRS,
    drain=ATTRS,
    down=ATTRS,
)
KINDS = st.sampled_from(["ok", "fail", "event", "drain", "undrain", "tick", "idle", "reload"])
DELTAS = st.sampled_from([0.0, 1.0, 5.0, 30.0]) | st.floats(
    0, 40, allow_nan=False, allow_infinity=False
)
STARTS = st.sampled_from(
    [
        "fresh",
        "announced",
        "lowered",
        "draining",
        "withdrawn-drained",
        "takeover-announced",
        "takeover-draining",
        "takeover-unknown",
    ]
)


def _start(kind: str, pol: Policy, offset: float) -> ServiceState:
    if kind == "fresh":
        return initial(T0)
    if kind == "announced":
        return initial(T0, restored=Restored(ANNOUNCED, pol.prefixes, pol.announce, certain=True))
    if kind == "lowered":
        return initial(T0, restored=Restored(LOWERED, pol.prefixes, pol.down, certain=True))
    if kind in ("draining", "takeover-draining"):
        restored = Restored(
            DRAINING,
            pol.prefixes,
            pol.drain,
            drained=True,
            drain_deadline=T0 + offset,
            certain=kind == "draining",
        )
        return initial(T0, restored=restored)
    if kind == "takeover-announced":
        return initial(T0, restored=Restored(ANNOUNCED, pol.prefixes, pol.announce))
    if kind == "takeover-unknown":
        return initial(T0, restored=Restored(WITHDRAWN, pol.prefixes))
    return initial(T0, restored=Restored(WITHDRAWN, (), drained=True, certain=True))


def _event(kind: str, now: float) -> Event:
    if kind in ("ok", "fail"):
        return CheckOutcome(kind == "ok", now)
    if kind == "event":
        return sm.EventFailure(now)
    if kind == "drain":
        return Drain(now)
    if kind == "undrain":
        return Undrain(now)
    if kind == "tick":
        return Tick(now)
    if kind == "idle":
        return DrainIdle(now)
    return Reconfigure(now)


GUARDS = st.fixed_dictionaries(
    {
        "guard": st.booleans(),
        "min_announcing": st.none() | st.integers(0, 2),
        "hold_when_unknown": st.booleans(),
        "dampening": st.none() | st.builds(sm.Dampening, changes=st.integers(0, 3)),
    }
)
MORE_KINDS = KINDS | st.sampled_from(["present", "answer", "fault"])


def _any_event(kind: str, now: float, pol: Policy, which: int) -> Event:
    if kind == "present":
        return sm.Present(now, frozenset(pol.prefixes[: which % (len(pol.prefixes) + 1)]))
    if kind == "answer":
        return sm.GuardAnswer(now, (None, True, False)[which % 3], which)
    if kind == "fault":
        return sm.LocalFault(now, "" if which % 2 else "no BGP session")
    return _event(kind, now)


@settings(max_examples=400, deadline=None)
@given(
    policies=st.lists(POLICIES, min_size=1, max_size=3),
    guards=GUARDS,
    start=STARTS,
    inputs=st.lists(st.tuples(MORE_KINDS, DELTAS, st.integers(0, 5)), max_size=30),
)
def test_step_shortcut_gives_the_full_answer(
    policies: list[Policy],
    guards: dict[str, Any],
    start: str,
    inputs: list[tuple[str, float, int]],
) -> None:
    """step's shortcut for a passing check of a steady service (``passed``) gives exactly
    what the full step gives, in every state any sequence of inputs and reloads reaches
    (address guard, fleet guard and dampening included): no effect, no note, no deadline."""
    policies = [dataclasses.replace(p, **guards) for p in policies]
    pol = policies[0]
    state = _start(start, pol, 5.0)
    for kind, delta, which in [*inputs, ("ok", 1.0, 0)]:
        now = state.updated + delta
        if kind == "reload":
            pol = policies[which % len(policies)]
        passed = CheckOutcome(True, now + 0.5)
        full = sm.step_in_full(pol, state, passed)
        assert step(pol, state, passed) == full
        # What the daemon takes instead of a step: nothing to act on, so it may skip
        # arming a deadline and counting connections.
        quick = sm.passed(pol, state, passed.now)
        if quick is not None:
            assert (full.state, full.effects, full.notes) == (quick, [], [])
            assert sm.next_deadline(quick) is None
            assert quick.route is not sm.Route.DRAINING and not quick.drained
        try:
            state = step(pol, state, _any_event(kind, now, pol, which)).state
        except IllegalTransition:
            continue


def test_step_shortcut_is_taken_and_keeps_time_order() -> None:
    """A healthy announced service's passing check only moves its time (no effect, no
    note); one from the past is refused like any other input."""
    pol = Policy(prefixes=("192.0.2.1/32",), guard=False)
    state = initial(T0)
    for i in range(pol.rise):
        state = step(pol, state, CheckOutcome(True, T0 + i)).state
    assert (state.health, state.route) == (UP, ANNOUNCED)
    new, effects, notes = step(pol, state, CheckOutcome(True, state.updated + 1))
    assert (effects, notes) == ([], [])
    assert new == dataclasses.replace(state, updated=state.updated + 1)
    with pytest.raises(IllegalTransition):
        step(pol, state, CheckOutcome(True, state.updated - 1))
    # A policy whose route differs from the wire's is not steady: the full step re-sends.
    for other in (
        dataclasses.replace(pol, announce=RouteAttributes(med=7)),
        dataclasses.replace(pol, prefixes=("192.0.2.2/32",)),
    ):
        passed = CheckOutcome(True, state.updated + 1)
        assert step(other, state, passed) == sm.step_in_full(other, state, passed)
        assert step(other, state, passed).effects


def test_a_pass_remembers_its_policy_and_any_other_change_forgets_it() -> None:
    """A state passed() made is steady under that policy object (the next pass takes it
    without looking again, and still refuses the past); a full step, an equal but other
    policy object, or dataclasses.replace take the full look again."""
    pol = Policy(prefixes=("192.0.2.1/32",), guard=False)
    state = initial(T0)
    for i in range(pol.rise):
        state = step(pol, state, CheckOutcome(True, T0 + i)).state
    assert state.steady_for is None  # made by full steps
    once = sm.passed(pol, state, state.updated + 1)
    assert once is not None and once.steady_for is pol
    again = sm.passed(pol, once, once.updated + 1)
    assert again is not None and again.steady_for is pol and again.updated == once.updated + 1
    assert again == dataclasses.replace(state, updated=once.updated + 1)  # not compared
    assert sm.passed(pol, once, once.updated - 1) is None  # the past is still refused
    failed = step(pol, once, CheckOutcome(False, once.updated + 1)).state
    assert failed.steady_for is None
    equal = dataclasses.replace(pol)
    assert sm.passed(equal, once, once.updated + 1) == again  # looked at in full: steady
    # A state changed by dataclasses.replace is not taken on trust: this one is drained.
    changed = dataclasses.replace(once, drained=True)
    assert changed.steady_for is None
    assert sm.passed(pol, changed, changed.updated + 1) is None


@settings(max_examples=400, deadline=None)
@given(
    policies=st.lists(POLICIES, min_size=1, max_size=3),
    start=STARTS,
    offset=st.floats(-10, 40, allow_nan=False, allow_infinity=False),
    inputs=st.lists(st.tuples(KINDS, DELTAS, st.integers(0, 2)), max_size=40),
)
def test_invariants_hold_for_any_sequence(
    policies: list[Policy],
    start: str,
    offset: float,
    inputs: list[tuple[str, float, int]],
) -> None:
    """For any sequence of outcomes, drains, undrains, drain-idles, ticks and
    reloads at non-decreasing times: the wire fields match the route and policy,
    the emitted effects replayed on an empty wire give exactly the wire fields,
    effects appear only on a change, a drained route is never ANNOUNCED, no
    route is DRAINING at or past its deadline, and illegal inputs raise with no change.
    After a takeover (an uncertain wire) nothing is sent until the route is
    decided; from then on the same holds, with every prefix that may have been on
    the wire accounted for.
    """
    pol = policies[0]
    state = _start(start, pol, offset)
    wire: dict[str, RouteAttributes | None] = {}
    if state.wire_attributes is not None or not state.wire_certain:
        # Attributes of an uncertain wire are unknown (None here).
        wire = dict.fromkeys(state.wire_prefixes, state.wire_attributes)

    for kind, delta, which in inputs:
        now = state.updated + delta
        if kind == "reload":
            pol = policies[which % len(policies)]
        event = _event(kind, now)
        legal = {
            "drain": not state.drained,
            "undrain": state.drained,
            "idle": state.route is DRAINING,
        }.get(kind, True)
        if not legal:
            snapshot = dataclasses.replace(state)
            with pytest.raises(IllegalTransition):
                step(pol, state, event)
            assert state == snapshot
            continue

        before = state
        state, effects, _ = step(pol, before, event)

        # Replay the effects on the wire model.
        for effect in effects:
            assert effect.prefixes, "an effect always names prefixes"
            if isinstance(effect, Withdraw):
                for p in effect.prefixes:
                    # An uncertain wire is withdrawn whole: a prefix may not be there.
                    assert p in wire or not before.wire_certain, f"withdrawing {p} not announced"
                    wire.pop(p, None)
            else:
                assert effect.route is state.route
                for p in effect.prefixes:
                    wire[p] = effect.attributes

        if not state.wire_certain:
            assert effects == [], "nothing is sent while the route rests on a belief"
            assert state.wire_prefixes == before.wire_prefixes
            continue
        # Wire fields: consistent with the route, the policy and the replayed effects.
        assert (state.wire_attributes is None) == (state.route is WITHDRAWN)
        assert state.wire_attributes == pol.attributes_for(state.route)
        assert set(wire) == set(state.wire_prefixes)
        assert all(a == state.wire_attributes for a in wire.values())
        assert len(state.wire_prefixes) == len(set(state.wire_prefixes))
        if state.route is not WITHDRAWN:
            assert set(state.wire_prefixes) == set(pol.prefixes)

        # Effects only on change.
        changed = (state.wire_prefixes, state.wire_attributes) != (
            before.wire_prefixes,
            before.wire_attributes,
        )
        if before.wire_certain:
            assert bool(effects) == changed

        # Drain rules.
        assert not (state.drained and state.route is ANNOUNCED)
        if state.route is DRAINING:
            assert state.drained
            assert state.drain_deadline is not None
            assert state.updated < state.drain_deadline
        assert (state.drain_deadline is not None) == (state.route is DRAINING)
        assert next_deadline(state) == state.drain_deadline

        # Health rules.
        assert state.updated == now
        if state.health in (RISING, FALLING):
            assert state.count >= 1
        else:
            assert state.count == 0
        if not state.drained and state.health is UP:
            assert state.route is ANNOUNCED
        if state.health is DOWN:
            if state.drained or pol.on_down is OnDown.WITHDRAW:
                assert state.route is WITHDRAWN
            else:
                assert state.route is LOWERED
        if (
            isinstance(event, CheckOutcome)
            and state.health in (RISING, FALLING)
            and before.route is not DRAINING
            and before.wire_certain
        ):
            assert effects == [], "RISING and FALLING change nothing on the wire"


# ---------------------------------------------------------------- the table and the notes


@pytest.mark.parametrize(("health", "ok"), list(sm.HEALTH_TABLE))
def test_step_follows_the_health_table(health: Health, ok: bool) -> None:
    """Every row of HEALTH_TABLE is what step does (rise = fall = 3, a count of 1, nothing
    carried over from a previous run): RISING and FALLING count on, or start at 1."""
    pol = policy(rise=3, fall=3)
    start = make(pol, health, WITHDRAWN if health is not UP else ANNOUNCED, count=1)
    new, _, _ = step(pol, start, CheckOutcome(ok, T1))
    want = sm.HEALTH_TABLE[health, ok]
    assert new.health is want
    if want in (RISING, FALLING):
        assert new.count == (2 if want is health else 1)


def test_step_notes_what_changed() -> None:
    """One step's notes name the health and route changes and the drain; a step that
    changes nothing notes nothing."""
    pol = policy(rise=1, fall=1)
    s0 = make(pol, DOWN, WITHDRAWN)
    s1, _, notes = step(pol, s0, CheckOutcome(True, T1))
    assert notes == [sm.Changed(DOWN, UP), sm.Changed(WITHDRAWN, ANNOUNCED)]
    _, _, notes = step(pol, s1, CheckOutcome(True, T1 + 1))
    assert notes == []
    s2, _, notes = step(pol, s1, Drain(T1 + 2))
    assert notes == [
        sm.Changed(ANNOUNCED, DRAINING),
        sm.DrainChanged(True, T1 + 2 + pol.drain_seconds),
    ]
    _, _, notes = step(pol, s2, Tick(T1 + 2 + pol.drain_seconds))
    assert notes == [
        sm.Changed(DRAINING, WITHDRAWN),
        sm.DrainExpired(),
        sm.DrainChanged(True, None),
    ]


# ---------------------------------------------------------------- the fleet guard

GUARD: dict[str, Any] = {"min_announcing": 1, **R1F1}
GUARD_HOLD: dict[str, Any] = {**GUARD, "hold_when_unknown": True}
ASKED = T1 + sm.GUARD_TIMEOUT
"""The deadline of a question asked at T1."""
NO_BGP = "no BGP session up"


def answer(now: float, allowed: bool | None, announcing: int = 0) -> sm.GuardAnswer:
    return sm.GuardAnswer(now, allowed, announcing)


ASK: Step = (fail(T1), {}, "Q")
"""The first step of most rows: the check fails, the guard is asked."""


def guard_case(
    name: str, *steps: Step, pol: dict[str, Any] = GUARD, start: dict[str, Any] | None = None
) -> Any:
    """One row of GUARD_TABLE: an UP, ANNOUNCED service (unless ``start``) and its steps."""
    return pytest.param(pol, start or {"health": UP, "route": ANNOUNCED}, list(steps), id=name)


GUARD_TABLE = [
    # policy overrides, starting state, steps (input, fields after, effects)
    guard_case(
        "health-withdraw-asks-first-and-changes-nothing-on-the-wire",
        (fail(T1), {"health": DOWN, "route": ANNOUNCED, "guard_deadline": ASKED}, "Q"),
    ),
    guard_case(
        "allowed-withdraws",
        (fail(T1), {"route": ANNOUNCED}, "Q"),
        (answer(T1 + 0.1, True, 2), {"route": WITHDRAWN, "guard_deadline": None}, "W"),
    ),
    guard_case(
        "refused-holds-lowered-and-asks-again-when-peers-change",
        (fail(T1), {"route": ANNOUNCED}, "Q"),
        (
            answer(T1 + 0.1, False, 0),
            {"route": LOWERED, "guard_held": True, "guard_announcing": 0},
            "L",
        ),
        (fail(T1 + 1), {"route": LOWERED, "guard_held": True, "guard_deadline": None}, ""),
        (Tick(T1 + 60), {"route": LOWERED, "guard_held": True}, ""),
        (sm.FleetChanged(T1 + 61), {"guard_deadline": T1 + 61 + sm.GUARD_TIMEOUT}, "Q"),
        (sm.FleetChanged(T1 + 61.5), {"guard_held": True}, ""),
        (answer(T1 + 62, False, 0), {"route": LOWERED, "guard_deadline": None}, ""),
        (sm.FleetChanged(T1 + 63), {"route": LOWERED}, "Q"),
        (answer(T1 + 64, True, 1), {"route": WITHDRAWN, "guard_held": False}, "W"),
    ),
    guard_case(
        "held-service-recovers-and-announces-normally",
        ASK,
        (answer(T1 + 1, False), {"route": LOWERED, "guard_held": True}, "L"),
        (ok(T1 + 2), {"health": UP, "route": ANNOUNCED, "guard_held": False}, "A"),
    ),
    guard_case(
        "recovery-while-asking-cancels-the-question",
        ASK,
        (ok(T1 + 1), {"route": ANNOUNCED, "guard_deadline": None}, ""),
    ),
    guard_case(
        "unknown-with-on-unknown-local-withdraws",
        ASK,
        (answer(T1 + 1, None), {"route": WITHDRAWN}, "W"),
    ),
    guard_case(
        "unknown-with-on-unknown-hold-holds-lowered",
        ASK,
        (answer(T1 + 1, None), {"route": LOWERED, "guard_held": True}, "L"),
        pol=GUARD_HOLD,
    ),
    guard_case(
        "unanswered-question-counts-as-unknown-at-its-deadline-local",
        ASK,
        (Tick(ASKED - 0.01), {"route": ANNOUNCED}, ""),
        (Tick(ASKED), {"route": WITHDRAWN, "guard_deadline": None}, "W"),
    ),
    guard_case(
        "unanswered-question-counts-as-unknown-at-its-deadline-hold",
        ASK,
        (Tick(ASKED), {"route": LOWERED, "guard_held": True}, "L"),
        pol=GUARD_HOLD,
    ),
    guard_case(
        "a-late-second-answer-is-ignored",
        ASK,
        (answer(T1 + 1, True, 1), {"route": WITHDRAWN}, "W"),
        (answer(T1 + 2, False), {"route": WITHDRAWN, "guard_held": False}, ""),
    ),
    guard_case(
        "certain-local-failure-is-never-held",
        (sm.LocalFault(T1, NO_BGP), {"local_fault": NO_BGP, "route": ANNOUNCED}, ""),
        (fail(T1 + 1), {"route": WITHDRAWN, "guard_deadline": None}, "W"),
    ),
    guard_case(
        "local-failure-while-asking-withdraws-at-once",
        ASK,
        (sm.LocalFault(T1 + 1, NO_BGP), {"route": WITHDRAWN}, "W"),
    ),
    guard_case(
        "local-failure-while-held-withdraws-at-once",
        ASK,
        (answer(T1 + 1, False), {"route": LOWERED}, "L"),
        (sm.LocalFault(T1 + 2, NO_BGP), {"route": WITHDRAWN, "guard_held": False}, "W"),
    ),
    guard_case(
        "a-cleared-local-failure-asks-again",
        (sm.LocalFault(T1, NO_BGP), {}, ""),
        (sm.LocalFault(T1 + 1, ""), {"local_fault": ""}, ""),
        (fail(T1 + 2), {"route": ANNOUNCED}, "Q"),
    ),
    guard_case(
        # A process check saw the proxy die: a sure blackhole, never held (issue 13).
        "event-failure-is-never-held",
        (sm.EventFailure(T1), {"health": DOWN, "route": WITHDRAWN, "guard_deadline": None}, "W"),
    ),
    guard_case(
        "event-failure-while-asking-withdraws-at-once",
        ASK,
        (sm.EventFailure(T1 + 1), {"route": WITHDRAWN, "guard_deadline": None}, "W"),
    ),
    guard_case(
        "event-failure-while-held-withdraws-at-once",
        ASK,
        (answer(T1 + 1, False), {"route": LOWERED, "guard_held": True}, "L"),
        (sm.EventFailure(T1 + 2), {"route": WITHDRAWN, "guard_held": False}, "W"),
    ),
    guard_case(
        "shutdown-is-never-held",
        ASK,
        (Shutdown(T1 + 1), {"route": WITHDRAWN, "guard_deadline": None}, "W"),
    ),
    guard_case(
        "drain-final-withdraw-asks",
        (Drain(T1), {"route": DRAINING}, "D"),
        (Tick(T1 + 30), {"route": DRAINING, "drain_deadline": None}, "q"),
        (answer(T1 + 31, True, 1), {"route": WITHDRAWN, "drained": True}, "W"),
    ),
    guard_case(
        "held-drain-stays-draining-until-allowed",
        (Drain(T1), {}, "D"),
        (Tick(T1 + 30), {}, "q"),
        (answer(T1 + 31, False), {"route": DRAINING, "guard_held": True}, ""),
        (Tick(T1 + 90), {"route": DRAINING}, ""),
        (sm.FleetChanged(T1 + 91), {}, "q"),
        (answer(T1 + 92, True, 1), {"route": WITHDRAWN}, "W"),
    ),
    guard_case(
        "undrain-of-a-held-drain-announces",
        (Drain(T1), {}, "D"),
        (Tick(T1 + 30), {}, "q"),
        (answer(T1 + 31, False), {"guard_held": True}, ""),
        (Undrain(T1 + 32), {"route": ANNOUNCED, "guard_held": False}, "A"),
    ),
    guard_case(
        "forced-drain-never-asks",
        (Drain(T1, "maint", force=True), {"drain_forced": True}, "D"),
        (Tick(T1 + 30), {"route": WITHDRAWN}, "W"),
    ),
    guard_case(
        "down-while-draining-asks-too",
        (Drain(T1), {}, "D"),
        (fail(T1 + 1), {"route": DRAINING, "drain_deadline": None}, "q"),
        (answer(T1 + 2, True, 1), {"route": WITHDRAWN}, "W"),
    ),
    guard_case(
        "drain-of-a-held-service-keeps-it-up-draining",
        ASK,
        (answer(T1 + 1, False), {"route": LOWERED, "guard_held": True}, "L"),
        (Drain(T1 + 2), {"route": DRAINING, "guard_held": True}, "D"),
    ),
    guard_case(
        "answers-and-changes-without-a-question-do-nothing",
        (answer(T1, True, 3), {"route": ANNOUNCED, "guard_announcing": 0}, ""),
        (sm.FleetChanged(T1 + 1), {"route": ANNOUNCED, "guard_deadline": None}, ""),
    ),
    guard_case(
        "on-down-lower-never-withdraws-so-never-asks",
        (fail(T1), {"route": LOWERED, "guard_deadline": None}, "L"),
        pol={**GUARD, "on_down": OnDown.LOWER},
    ),
    guard_case(
        "nothing-announced-nothing-to-ask",
        (fail(T1), {"route": WITHDRAWN}, ""),
        (Drain(T1 + 1), {"route": WITHDRAWN}, ""),
        start={"health": DOWN, "route": WITHDRAWN},
    ),
    guard_case(
        "without-a-fleet-withdraws-at-once",
        (fail(T1), {"route": WITHDRAWN, "guard_deadline": None}, "W"),
        pol=R1F1,
    ),
]


@pytest.mark.parametrize(("pol_kw", "start", "steps"), GUARD_TABLE)
def test_fleet_guard(pol_kw: dict[str, Any], start: dict[str, Any], steps: list[Step]) -> None:
    """A withdraw the node decides alone (health, the end of a drain) waits for the
    fleet's permission, keeping the route up; refused, it stays announced lowered (a
    drain stays draining) and asks again when the peers change; a certain local
    failure, a forced drain and a shutdown are never held; an unknown answer, or none
    in time, is decided by on_unknown.
    """
    pol = policy(**pol_kw)
    run_steps(pol, make(pol, **start), steps)


GUARD_NOTES = [
    pytest.param(
        answer(T1 + 1, False, 0), [Changed(ANNOUNCED, LOWERED), sm.GuardHeld(0)], id="held"
    ),
    pytest.param(answer(T1 + 1, True, 1), [Changed(ANNOUNCED, WITHDRAWN)], id="allowed"),
]


@pytest.mark.parametrize(("event", "notes"), GUARD_NOTES)
def test_fleet_guard_notes(event: Event, notes: list[sm.Note]) -> None:
    """The observer hears when the guard starts holding (with the count) and when it lets go."""
    pol = policy(**GUARD)
    s, _, _ = step(pol, make(pol, UP, ANNOUNCED), fail(T1))
    s, _, got = step(pol, s, event)
    assert [n for n in got if not isinstance(n, sm.Changed) or n.after is not DOWN] == notes
    if s.guard_held:
        s, _, got = step(pol, s, ok(T1 + 2))
        assert sm.GuardReleased() in got


def test_guard_question_is_a_deadline() -> None:
    """A question out is a deadline of the state, so the loop wakes to time it out."""
    pol = policy(**GUARD)
    s, _, _ = step(pol, make(pol, UP, ANNOUNCED), fail(T1))
    assert next_deadline(s) == ASKED


def test_held_route_is_not_counted_as_a_flap() -> None:
    """Checks failing while the guard holds the route do not feed flap dampening."""
    pol = policy(**GUARD, dampening=sm.Dampening(changes=1, window=100, penalty=10))
    s, _, _ = step(pol, make(pol, UP, ANNOUNCED), fail(T1))
    s, _, _ = step(pol, s, answer(T1 + 1, False))
    for i in range(5):
        s, _, _ = step(pol, s, fail(T1 + 2 + i))
    assert s.held_until is None
    assert s.route is LOWERED


def test_replace_copies_like_dataclasses_replace() -> None:
    """state.replace (the machine's quick copy) gives what dataclasses.replace gives, for
    every field: equal, hashed alike, the original untouched."""
    import dataclasses

    base = sm.ServiceState(health=sm.Health.UP, route=sm.Route.ANNOUNCED, count=2)
    changes: dict[str, object] = {
        "count": 5,
        "drain_reason": "why",
        "updated": 3.0,
        "wire_prefixes": ("192.0.2.1/32",),
        "absent": frozenset({"x"}),
        "guard_held": True,
    }
    for name, value in changes.items():
        quick = sm.replace(base, **{name: value})
        assert quick == dataclasses.replace(base, **{name: value})  # type: ignore[arg-type]
        assert hash(quick) == hash(dataclasses.replace(base, **{name: value}))  # type: ignore[arg-type]
        assert getattr(quick, name) == value
    assert base == sm.ServiceState(health=sm.Health.UP, route=sm.Route.ANNOUNCED, count=2)
    assert {f.name for f in dataclasses.fields(sm.ServiceState)} >= set(changes)
