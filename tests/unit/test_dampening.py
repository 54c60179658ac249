"""Flap dampening in the state machine: too many health-driven route changes hold the route."""

from __future__ import annotations

import pytest

from announcer import state as sm

P = ("192.0.2.10/32",)
D = sm.Dampening(changes=4, window=60.0, penalty=10.0, max_penalty=25.0)


def policy(on_down: sm.OnDown = sm.OnDown.WITHDRAW) -> sm.Policy:
    return sm.Policy(prefixes=P, rise=1, fall=1, on_down=on_down, dampening=D)


def run(
    pol: sm.Policy, st: sm.ServiceState, events: list[sm.Event]
) -> tuple[sm.ServiceState, list[sm.Effect]]:
    effects: list[sm.Effect] = []
    for ev in events:
        st, out, _ = sm.step(pol, st, ev)
        effects.extend(out)
    return st, effects


def flap(start: float, n: int, first: bool = True) -> list[sm.Event]:
    """n alternating outcomes one second apart, the first one `first`."""
    return [sm.CheckOutcome((i % 2 == 0) == first, start + i) for i in range(n)]


def test_changes_up_to_the_limit_are_not_dampened() -> None:
    """Exactly `changes` route changes inside the window leave the service undamped."""
    st, effects = run(policy(), sm.initial(0.0), flap(1.0, 4))
    assert st.held_until is None
    assert [type(e) for e in effects] == [sm.Announce, sm.Withdraw, sm.Announce, sm.Withdraw]


def test_one_change_too_many_holds_the_route_withdrawn() -> None:
    """The change that exceeds the limit is suppressed: a recovering service stays withdrawn."""
    st, effects = run(policy(), sm.initial(0.0), flap(1.0, 5))
    assert st.health is sm.Health.UP
    assert st.route is sm.Route.WITHDRAWN
    assert st.held_until == pytest.approx(5.0 + 10.0)
    assert len(effects) == 4  # the fifth change (announce) never reached the wire
    assert sm.next_deadline(st) == pytest.approx(15.0)


def test_hold_release_announces_a_healthy_service() -> None:
    """When the hold ends, an UP service is announced again with no further input than time."""
    st, _ = run(policy(), sm.initial(0.0), flap(1.0, 5))
    st, effects, _ = sm.step(policy(), st, sm.Tick(14.9))
    assert effects == [] and st.route is sm.Route.WITHDRAWN
    st, effects, _ = sm.step(policy(), st, sm.Tick(15.0))
    assert st.held_until is None
    assert effects == [sm.Announce(P, policy().announce, sm.Route.ANNOUNCED)]


def test_hold_with_on_down_lower_keeps_the_lowered_route() -> None:
    """With on_down = lower a held service stays announced with the down attributes."""
    pol = policy(sm.OnDown.LOWER)
    st, _ = run(pol, sm.initial(0.0), flap(1.0, 5))
    assert st.held_until is not None
    assert st.route is sm.Route.LOWERED
    assert st.wire_attributes == pol.down


def test_repeated_holds_double_up_to_the_maximum() -> None:
    """Each repeat doubles the penalty (10, 20), capped at max_penalty (25)."""
    pol = policy()
    st, _ = run(pol, sm.initial(0.0), flap(1.0, 5))
    assert st.held_until == pytest.approx(15.0)
    st, _, _ = sm.step(pol, st, sm.Tick(15.0))  # released: UP, announced again
    st, _ = run(pol, st, flap(16.0, 5, first=False))
    assert st.held_until == pytest.approx(20.0 + 20.0)
    st, _, _ = sm.step(pol, st, sm.Tick(40.0))
    st, _ = run(pol, st, flap(41.0, 5))
    assert st.held_until == pytest.approx(45.0 + 25.0)


def test_strikes_reset_after_a_quiet_period() -> None:
    """After max_penalty seconds of calm since the last hold, the penalty starts small again."""
    pol = policy()
    st, _ = run(pol, sm.initial(0.0), flap(1.0, 5))
    st, _, _ = sm.step(pol, st, sm.Tick(15.0))
    st, _ = run(pol, st, flap(100.0, 5, first=False))
    assert st.held_until == pytest.approx(104.0 + 10.0)


def test_changes_outside_the_window_do_not_count() -> None:
    """Changes spread wider than the window never trigger a hold."""
    pol = policy()
    events = [sm.CheckOutcome(i % 2 == 0, 1.0 + i * 20.0) for i in range(12)]
    st, effects = run(pol, sm.initial(0.0), events)
    assert st.held_until is None
    assert len(effects) == 12


def test_drains_are_not_counted_as_flaps() -> None:
    """Operator drains and undrains never add to the dampening count."""
    pol = policy()
    st, _ = run(pol, sm.initial(0.0), [sm.CheckOutcome(True, 1.0)])
    for i in range(6):
        t = 2.0 + i * 2
        st, _ = run(pol, st, [sm.Drain(t), sm.Undrain(t + 1)])
    assert st.held_until is None
    assert st.route is sm.Route.ANNOUNCED
    assert st.changes == (1.0,)


def test_undrain_during_a_hold_stays_withdrawn() -> None:
    """An undrain while dampened returns to the held route, not to an announcement."""
    pol = policy()
    st, _ = run(pol, sm.initial(0.0), flap(1.0, 5))
    st, _ = run(pol, st, [sm.Drain(6.0), sm.Undrain(7.0)])
    assert st.route is sm.Route.WITHDRAWN
    assert st.wire_prefixes == ()


def test_no_dampening_without_a_policy() -> None:
    """A policy without dampening follows health however often it changes."""
    pol = sm.Policy(prefixes=P, rise=1, fall=1)
    st, effects = run(pol, sm.initial(0.0), flap(1.0, 20))
    assert st.held_until is None
    assert len(effects) == 20
