"""The address guard in the pure state machine: :class:`announcer.state.Present` says
which prefixes are local; the wire carries only those, per prefix.

Each row: the policy's extra settings, the starting point (health and route, as the
machine leaves them), then inputs, each with the prefixes expected on the wire after it
and the effects it emits (``+P`` announce, ``-P`` withdraw, ``?`` the fleet guard asked).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from announcer import state as sm
from announcer.errors import IllegalTransition
from announcer.state import (
    CheckOutcome,
    Drain,
    Health,
    HoldReason,
    Policy,
    Present,
    Reconfigure,
    Route,
    ServiceState,
    Shutdown,
    Tick,
    step,
)

A, B = "192.0.2.10/32", "2001:db8::10/128"
BOTH = frozenset({A, B})
POLICY = Policy(prefixes=(A, B), rise=1, fall=1, drain_seconds=30.0)


def up(**kw: Any) -> ServiceState:
    """UP and ANNOUNCED with both prefixes on the wire."""
    st = sm.initial(0.0)
    st = step(POLICY, st, Present(0.0, BOTH)).state
    st = step(POLICY, st, CheckOutcome(True, 0.0)).state
    assert st.wire_prefixes == (A, B)
    return replace(st, **kw)


def fx(effects: list[sm.Effect]) -> list[str]:
    out: list[str] = []
    for e in effects:
        if isinstance(e, sm.AskWithdraw):
            out.append("?")  # the fleet guard is asked
            continue
        sign = "+" if isinstance(e, sm.Announce) else "-"
        out.extend(sign + p for p in e.prefixes)
    return out


GUARD_TABLE: list[tuple[str, dict[str, Any], list[tuple[sm.Event, tuple[str, ...], list[str]]]]] = [
    (
        "an address that leaves is withdrawn at once; the other prefix stays",
        {},
        [(Present(1.0, frozenset({B})), (B,), [f"-{A}"])],
    ),
    (
        "an address that comes back waits for the next passing round",
        {},
        [
            (Present(1.0, frozenset({B})), (B,), [f"-{A}"]),
            (Present(2.0, BOTH), (B,), []),
            (CheckOutcome(True, 3.0), (A, B), [f"+{A}"]),
        ],
    ),
    (
        "a failing round does not release a returning prefix",
        {"fall": 3},
        [
            (Present(1.0, frozenset({B})), (B,), [f"-{A}"]),
            (Present(2.0, BOTH), (B,), []),
            (CheckOutcome(False, 3.0), (B,), []),
            (CheckOutcome(True, 4.0), (A, B), [f"+{A}"]),
        ],
    ),
    (
        "a draining route loses an absent prefix at once, without waiting for the deadline",
        {},
        [
            (Drain(1.0), (A, B), [f"+{A}", f"+{B}"]),
            (Present(2.0, frozenset({A})), (A,), [f"-{B}"]),
            (Tick(31.0), (), [f"-{A}"]),
        ],
    ),
    (
        "every address gone: nothing on the wire, the route still ANNOUNCED",
        {},
        [(Present(1.0, frozenset()), (), [f"-{A}", f"-{B}"])],
    ),
    (
        "a repeated Present changes nothing",
        {},
        [(Present(1.0, BOTH), (A, B), [])],
    ),
    (
        "guard off: absent prefixes are announced anyway",
        {"guard": False},
        [(Present(1.0, frozenset()), (A, B), [])],
    ),
    (
        "shutdown withdraws what is on the wire, held prefixes are not there",
        {},
        [
            (Present(1.0, frozenset({A})), (A,), [f"-{B}"]),
            (Shutdown(2.0), (), [f"-{A}"]),
        ],
    ),
    (
        # Announcing an address the node no longer holds is a sure blackhole: the fleet
        # guard (min_announcing) is never asked about it, unlike a health-driven withdraw.
        "with a fleet guard, an address that leaves is withdrawn at once, not asked about",
        {"min_announcing": 1},
        [(Present(1.0, frozenset({B})), (B,), [f"-{A}"])],
    ),
    (
        "with a fleet guard asking about a failure, an address that leaves goes at once",
        {"min_announcing": 1},
        [
            (CheckOutcome(False, 1.0), (A, B), ["?"]),
            (Present(2.0, frozenset({B})), (B,), [f"-{A}"]),
        ],
    ),
]


@pytest.mark.parametrize(("why", "pol_kw", "steps"), GUARD_TABLE, ids=[r[0] for r in GUARD_TABLE])
def test_guard(why: str, pol_kw: dict[str, Any], steps: list[Any]) -> None:
    """Each row's inputs put exactly the expected prefixes on the wire, with the effects shown."""
    policy = replace(POLICY, **pol_kw)
    st = up()
    for event, wire, effects in steps:
        st, got, _ = step(policy, st, event)
        assert fx(got) == effects, (why, event)
        assert st.wire_prefixes == wire, (why, event)


def test_first_present_at_start_holds_only_the_absent() -> None:
    """Before the first Present nothing is known absent; once it comes, only the absent
    prefix is held and the present one is announced on the first passing round."""
    st = sm.initial(0.0)
    st = step(POLICY, st, Present(0.0, frozenset({A}))).state
    st, effects, _ = step(POLICY, st, CheckOutcome(True, 1.0))
    assert fx(effects) == [f"+{A}"]
    assert sm.held(POLICY, st) == {B: HoldReason.ABSENT}


def test_notes_say_which_prefix_is_held_and_why() -> None:
    """Held and Released notes name the prefixes and the reason, each change once."""
    st = up()
    st, _, notes = step(POLICY, st, Present(1.0, frozenset({B})))
    assert sm.Held((A,), HoldReason.ABSENT) in notes
    st, _, notes = step(POLICY, st, Present(2.0, BOTH))
    assert sm.Held((A,), HoldReason.RETURNING) in notes
    st, _, notes = step(POLICY, st, CheckOutcome(True, 3.0))
    assert sm.Released((A,)) in notes
    assert sm.held(POLICY, st) == {}


def test_reload_forgets_prefixes_no_longer_configured() -> None:
    """A reload that drops a held prefix forgets it; the remaining one is untouched."""
    st = step(POLICY, up(), Present(1.0, frozenset({B}))).state
    smaller = replace(POLICY, prefixes=(B,))
    st, effects, _ = step(smaller, st, Reconfigure(2.0))
    assert st.absent == frozenset()
    assert effects == []
    assert st.wire_prefixes == (B,)


def test_takeover_asserts_without_the_absent_prefix() -> None:
    """After a takeover (wire uncertain) the first decision withdraws the absent prefix
    and announces only the present one."""
    restored = sm.Restored(Route.ANNOUNCED, (A, B), POLICY.announce, certain=False)
    st = sm.initial(0.0, restored)
    st = step(POLICY, st, Present(0.0, frozenset({B}))).state
    st, effects, _ = step(POLICY, st, CheckOutcome(True, 1.0))
    assert fx(effects) == [f"-{A}", f"+{B}"]
    assert st.health is Health.UP
    assert st.wire_prefixes == (B,)


KINDS = st.sampled_from(["ok", "fail", "drain", "undrain", "tick", "present", "reload"])
SUBSETS = st.sets(st.sampled_from([A, B])).map(frozenset)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.tuples(KINDS, SUBSETS, st.sampled_from([0.0, 1.0, 40.0])), max_size=30),
    guard=st.booleans(),
)
def test_the_wire_never_holds_a_held_prefix(
    steps: list[tuple[str, frozenset[str], float]], guard: bool
) -> None:
    """After any sequence of inputs, with the guard on, no absent or returning prefix is
    on the wire, and a prefix is on the wire only while the route announces it."""
    policy = replace(POLICY, guard=guard, fall=2)
    state, now = sm.initial(0.0), 0.0
    for kind, present, delta in steps:
        now += delta
        event: sm.Event = {
            "ok": CheckOutcome(True, now),
            "fail": CheckOutcome(False, now),
            "drain": Drain(now),
            "undrain": sm.Undrain(now),
            "tick": Tick(now),
            "present": Present(now, present),
            "reload": Reconfigure(now),
        }[kind]
        try:
            state = step(policy, state, event).state
        except IllegalTransition:
            continue
        wire = set(state.wire_prefixes)
        if guard:
            assert not wire & (state.absent | state.returning)
        if policy.attributes_for(state.route) is None:
            assert not wire
        assert wire <= set(policy.prefixes)
