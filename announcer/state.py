"""The per-service state machine: pure, no I/O, no clock, no logging.

Inputs are observations stamped with a time (a check outcome, an operator's
drain or undrain, the passing of time); the output of :func:`step` is the new
:class:`ServiceState`, the list of effects (:class:`Announce`,
:class:`Withdraw`) to put on the wire and typed notes of what changed (for the one
observer that logs and counts them). Every transition lives in this module, the
health transitions as a table (:data:`HEALTH_TABLE`).

Two dimensions are tracked:

* health, from check outcomes with hysteresis::

      INIT ──ok──> RISING ──ok x rise──> UP ──fail──> FALLING ──fail x fall──> DOWN
                     │ fail                ^              │ ok                   │ ok
                     └──────> DOWN         └──────────────┘                      └──> RISING

  (with rise = 1 or fall = 1 the intermediate state is skipped).

* route, what this node asks ExaBGP to announce::

      WITHDRAWN   nothing announced
      ANNOUNCED   announced with the ``announce`` attributes (health UP)
      LOWERED     announced with the ``down`` attributes (health DOWN, on_down = lower)
      DRAINING    announced with the ``drain`` attributes until ``drain_deadline``

Rules: UP and not drained announces; DOWN withdraws (or lowers); INIT, RISING
and FALLING leave the wire alone. A drain lowers the route now and withdraws it
at the deadline, or at once if the service goes DOWN meanwhile. Checks keep
running while drained, so an undrain returns straight to what health says.

Flap dampening (optional, :class:`Dampening`): a service whose route changes
too often because of its health is held withdrawn (or lowered) for a penalty
that grows with each repeat; operator drains are never counted.

The address guard (``Policy.guard``) keeps a prefix off the wire while the kernel
would not deliver it here: :class:`Present` says which of the service's prefixes are
locally deliverable. A prefix that goes absent is withdrawn at once, whatever the
route (a drain would only send clients to an address nobody here answers); one that
comes back waits for the next passing check. The route itself is not changed: the
guard works per prefix, on what the route puts on the wire (:func:`held`).

The fleet guard (optional, ``Policy.min_announcing``): a withdraw the node decides
on its own (health, dampening, a drain's end) first needs the fleet's permission.
The machine emits :class:`AskWithdraw` and keeps the route up; a
:class:`GuardAnswer` allows the withdraw, or holds the route announced (LOWERED
with the ``down`` attributes, a drain stays DRAINING) until a
:class:`FleetChanged` asks again. A certain local failure (:class:`LocalFault`,
e.g. no BGP session, or an :class:`EventFailure`: the process died), a forced drain
and a shutdown are never held; an absent address is withdrawn prefix by prefix,
without asking.

Effects are derived by comparing what should be on the wire with what is
(``wire_prefixes`` and ``wire_attributes``), so an input that changes nothing
on the wire emits nothing, and a new policy (reload) re-announces only what
changed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

# Re-exported: the state machine takes and gives RouteAttributes.
from announcer.attributes import RouteAttributes as RouteAttributes  # noqa: PLC0414
from announcer.errors import IllegalTransition


class Health(enum.Enum):
    """What the checks say about the service."""

    INIT = "INIT"
    RISING = "RISING"
    UP = "UP"
    FALLING = "FALLING"
    DOWN = "DOWN"


class Route(enum.Enum):
    """What this node announces for the service's prefixes."""

    WITHDRAWN = "WITHDRAWN"
    ANNOUNCED = "ANNOUNCED"
    DRAINING = "DRAINING"
    LOWERED = "LOWERED"


class DrainSource(enum.StrEnum):
    """What asked for a drain; a service stays drained while any source holds it.

    A StrEnum: the value is what logs, status (``drain_sources``) and the
    ``announcer_drains_total`` metric show."""

    OPERATOR = "operator"
    """``announcer drain`` on the control socket: kept in the state file across restarts."""
    MAINTENANCE = "maintenance"
    """The maintenance file exists (the global one or the service's own)."""
    STOP = "stop"
    """``announcer drain --stop`` (the unit's ExecStop): never kept, so a restarted node
    announces again once healthy."""
    REMOVED = "removed"
    """The service left the config on a reload: drained, then forgotten once withdrawn."""


class OnDown(enum.Enum):
    """What a DOWN service does to its route."""

    WITHDRAW = "withdraw"
    LOWER = "lower"


@dataclass(frozen=True, slots=True)
class Dampening:
    """Flap dampening: more than ``changes`` health-driven route changes within
    ``window`` seconds hold the route withdrawn (or lowered, with on_down = lower)
    for ``penalty`` seconds, doubling on each repeat up to ``max_penalty``. The
    repeat count starts again once a service has stayed out of trouble for
    ``max_penalty`` seconds after a hold.

    The defaults here are the built-in defaults: the configuration takes its own from them.
    """

    changes: int = 6
    window: float = 120.0
    penalty: float = 60.0
    max_penalty: float = 900.0


_ANNOUNCE = RouteAttributes(med=100)
_DRAIN = RouteAttributes(med=1000, communities=("65535:0",))  # GRACEFUL_SHUTDOWN (RFC 8326)
_DOWN = RouteAttributes(med=1000)
GUARD_TIMEOUT = 5.0
"""Seconds a question to the fleet may stay unanswered before it counts as unknown
(the fleet thread answers sooner; this covers a thread that never does)."""


@dataclass(frozen=True, slots=True)
class Policy:
    """The parts of a service's configuration the state machine needs.

    The defaults here are the built-in defaults: :mod:`announcer.config` takes its own
    from them (``BUILTIN_ATTRIBUTES`` and the other per-service settings).
    """

    prefixes: tuple[str, ...]
    rise: int = 3
    fall: int = 3
    on_down: OnDown = OnDown.WITHDRAW
    drain_seconds: float = 30.0
    announce: RouteAttributes = _ANNOUNCE
    drain: RouteAttributes = _DRAIN
    down: RouteAttributes = _DOWN
    dampening: Dampening | None = None
    guard: bool = True
    """The address guard: announce only the prefixes :class:`Present` says are local."""
    min_announcing: int | None = None
    """Peers that must still announce for this node to withdraw; None: no fleet guard."""
    hold_when_unknown: bool = False
    """What an unknown answer (etcd unreachable) means: hold (True) or withdraw."""
    guard_timeout: float = GUARD_TIMEOUT

    def attributes_for(self, route: Route) -> RouteAttributes | None:
        """The attributes a route state carries, or None when withdrawn."""
        if route is Route.ANNOUNCED:
            return self.announce
        if route is Route.DRAINING:
            return self.drain
        if route is Route.LOWERED:
            return self.down
        return None


@dataclass(frozen=True)
class ServiceState:
    """Everything the machine remembers about one service.

    Not slotted: every step makes at least one changed copy, and a copy of the instance
    dict (:func:`replace`) costs an eighth of :func:`dataclasses.replace` (P3).
    """

    health: Health = Health.INIT
    route: Route = Route.WITHDRAWN
    count: int = 0
    """Consecutive outcomes counted toward rise (in RISING) or fall (in FALLING)."""
    drained: bool = False
    drain_reason: str = ""
    drain_deadline: float | None = None
    updated: float = 0.0
    """Time of the last input; inputs must not go back in time."""
    health_since: float = 0.0
    route_since: float = 0.0
    wire_prefixes: tuple[str, ...] = ()
    wire_attributes: RouteAttributes | None = None
    changes: tuple[float, ...] = ()
    """Times of recent health-driven route changes (for dampening)."""
    held_until: float | None = None
    """While set, dampening holds the route withdrawn (or lowered)."""
    strikes: int = 0
    last_hold_end: float | None = None
    absent: frozenset[str] = frozenset()
    """Prefixes the kernel would not deliver here, as the last :class:`Present` said
    (nothing is known absent before the first one)."""
    returning: frozenset[str] = frozenset()
    """Prefixes whose address came back: held until the next passing check."""
    wire_certain: bool = True
    """False after a takeover: ExaBGP may hold any of ``wire_prefixes``, with any
    attributes (the state file may be stale, or unreadable). Nothing is sent until
    the route is decided (health UP or DOWN, a drain, a shutdown); then the whole
    wanted state is asserted: an announce of every wanted prefix (ExaBGP drops an
    identical one, so a healthy node does not flap) and a withdraw of every other
    prefix that may be there (harmless when it is not)."""
    guard_deadline: float | None = None
    """A question to the fleet guard is out (:class:`AskWithdraw`) until this time."""
    guard_held: bool = False
    """The fleet refused a withdraw: the route is kept up until it allows one."""
    guard_announcing: int = 0
    """Peers announcing, as the fleet's last answer counted them."""
    local_fault: str = ""
    """A certain local failure (e.g. no BGP session): a withdraw is never held."""
    drain_forced: bool = False
    """The drain was forced: its withdraw does not ask the fleet."""
    steady_for: Policy | None = field(default=None, init=False, compare=False, repr=False)
    """The policy under which :func:`passed` made this state (steady under it): the next
    pass under the same policy need not look again. Any other step clears it, and so does
    :func:`dataclasses.replace` (not an ``__init__`` field)."""


if TYPE_CHECKING:
    from dataclasses import replace as replace  # noqa: PLC0414 - mypy checks each call
else:

    def replace(state: ServiceState, /, **changes: Any) -> ServiceState:
        """:func:`dataclasses.replace` for a :class:`ServiceState`, without its per-field
        work (a frozen dataclass's ``__init__`` sets each of the 24 fields by a call)."""
        new = object.__new__(ServiceState)
        fields = new.__dict__
        fields.update(state.__dict__)
        fields.update(changes)
        return new


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class _Input:
    """An input, stamped with when it happened."""

    now: float


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """The service's checks, combined per its ``require`` rule, passed or failed."""

    ok: bool
    now: float


@dataclass(frozen=True, slots=True)
class EventFailure:
    """A check's event (an ``immediate`` check: the process it watches died) failed, and
    with the other checks' latest results the service's ``require`` fails: DOWN at once,
    without waiting for ``fall`` rounds (:data:`EVENT_TABLE`). Only the way down is
    short-circuited: rising again still takes ``rise`` passing rounds, and dampening
    counts the change like any other."""

    now: float


@dataclass(frozen=True, slots=True)
class Drain:
    """An operator (or a maintenance file, or a stop) asks to drain."""

    now: float
    reason: str = ""
    force: bool = False
    """Withdraw at the end without asking the fleet guard."""


@dataclass(frozen=True, slots=True)
class GuardAnswer:
    """The fleet's answer to :class:`AskWithdraw`: allowed (True), refused (False), or
    unknown (None: etcd could not be reached, ``Policy.hold_when_unknown`` decides)."""

    now: float
    allowed: bool | None
    announcing: int = 0
    """Peers the fleet counted as announcing."""


class FleetChanged(_Input):
    """The peers' state changed: a held withdraw asks again."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class LocalFault:
    """A certain local failure began (``reason``) or ended (``""``)."""

    now: float
    reason: str


class Undrain(_Input):
    """An operator ends a drain."""

    __slots__ = ()


class Tick(_Input):
    """Time has passed; deadlines up to ``now`` take effect."""

    __slots__ = ()


class DrainIdle(_Input):
    """A draining service has no connections left: withdraw before the deadline."""

    __slots__ = ()


class Reconfigure(_Input):
    """The policy passed with this input replaces the old one (a reload)."""

    __slots__ = ()


class Shutdown(_Input):
    """The controller stops (SIGTERM): withdraw everything that may be on the wire."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Present:
    """Which of the service's prefixes the kernel would deliver here now (an address
    on an interface, or a local route covering it); the others are absent."""

    now: float
    prefixes: frozenset[str]


Event = (
    CheckOutcome
    | EventFailure
    | Drain
    | Undrain
    | Tick
    | DrainIdle
    | Reconfigure
    | Shutdown
    | GuardAnswer
    | FleetChanged
    | LocalFault
    | Present
)


# ---------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class Announce:
    """Announce ``prefixes`` with ``attributes`` (replacing any earlier attributes)."""

    prefixes: tuple[str, ...]
    attributes: RouteAttributes
    route: Route


@dataclass(frozen=True, slots=True)
class Withdraw:
    """Withdraw ``prefixes``, last announced with ``attributes`` (None: not known, e.g.
    prefixes a previous run may have left; rendered without them)."""

    prefixes: tuple[str, ...]
    attributes: RouteAttributes | None = None


@dataclass(frozen=True, slots=True)
class AskWithdraw:
    """Ask the fleet guard whether this node may withdraw; a :class:`GuardAnswer` follows."""

    drain: bool
    """The withdraw ends a drain (else health or dampening asked for it)."""


WireEffect = Announce | Withdraw
Effect = WireEffect | AskWithdraw


# ---------------------------------------------------------------- notes


@dataclass(frozen=True, slots=True)
class Changed:
    """The health moved (both sides a :class:`Health`) or the route did (a :class:`Route`)."""

    before: Health | Route
    after: Health | Route


@dataclass(frozen=True, slots=True)
class DrainExpired:
    """A drain's deadline passed: the lowered route was withdrawn."""


@dataclass(frozen=True, slots=True)
class DrainChanged:
    """The drain, or its deadline, changed: what a restart must keep (the state file)."""

    drained: bool
    deadline: float | None


@dataclass(frozen=True, slots=True)
class Dampened:
    """Dampening started holding the route for ``hold`` seconds (the state counts strikes)."""

    hold: float


@dataclass(frozen=True, slots=True)
class DampeningReleased:
    """A dampening hold ended."""


class HoldReason(enum.StrEnum):
    """Why the address guard keeps a prefix off the wire (status, logs)."""

    ABSENT = "no local address or local route for it"
    RETURNING = "address back: waiting for a passing check"


@dataclass(frozen=True, slots=True)
class Held:
    """The address guard started holding ``prefixes`` back (withdrawn if they were on
    the wire), for ``why``."""

    prefixes: tuple[str, ...]
    why: HoldReason


@dataclass(frozen=True, slots=True)
class Released:
    """The address guard stopped holding ``prefixes``."""

    prefixes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GuardHeld:
    """The fleet guard refused a withdraw: ``announcing`` peers, fewer than the minimum."""

    announcing: int


@dataclass(frozen=True, slots=True)
class GuardReleased:
    """A withdraw the guard held is allowed now, or no longer wanted."""


Note = (
    Changed
    | Dampened
    | DampeningReleased
    | DrainExpired
    | DrainChanged
    | GuardHeld
    | GuardReleased
    | Held
    | Released
)


class Stepped(NamedTuple):
    """What :func:`step` returns: the new state, what to send, and what happened."""

    state: ServiceState
    effects: list[Effect]
    notes: list[Note]


@dataclass(frozen=True, slots=True)
class Restored:
    """What a previous run of the controller left behind (for a hitless restart).

    ``route`` is what that run believed; ``prefixes`` what may be on the wire.
    With ``certain`` false (a takeover under the same ExaBGP, or a state file that
    could not be read) the wire is re-asserted once the route is decided, see
    :attr:`ServiceState.wire_certain`.
    """

    route: Route
    prefixes: tuple[str, ...]
    attributes: RouteAttributes | None = None
    drained: bool = False
    drain_reason: str = ""
    drain_deadline: float | None = None
    certain: bool = False


# ---------------------------------------------------------------- machine


def initial(now: float, restored: Restored | None = None) -> ServiceState:
    """The state of a service the controller has just started to look after.

    With ``restored`` (what our previous run left), its route is the starting
    belief and its drain is kept: nothing is withdrawn until the checks (or an
    operator) decide, and an uncertain wire is then asserted whole.
    """
    if restored is None:
        return ServiceState(updated=now, health_since=now, route_since=now)
    return ServiceState(
        route=restored.route,
        drained=restored.drained,
        drain_reason=restored.drain_reason if restored.drained else "",
        drain_deadline=restored.drain_deadline if restored.route is Route.DRAINING else None,
        updated=now,
        health_since=now,
        route_since=now,
        wire_prefixes=restored.prefixes,
        wire_attributes=restored.attributes if restored.route is not Route.WITHDRAWN else None,
        wire_certain=restored.certain,
    )


def shown_route(state: ServiceState) -> str:
    """The route as status and metrics show it: ``UNKNOWN`` while the wire is uncertain
    (never claim a state the wire may not have)."""
    return state.route.value if state.wire_certain else UNKNOWN_ROUTE


UNKNOWN_ROUTE = "UNKNOWN"
"""Shown instead of the route while :attr:`ServiceState.wire_certain` is false."""


def step(policy: Policy, state: ServiceState, event: Event) -> Stepped:
    """Apply one input. Raises :class:`IllegalTransition` (state unchanged) on a refused input."""
    if type(event) is CheckOutcome and event.ok:
        new = passed(policy, state, event.now)
        if new is not None:
            return Stepped(new, [], [])
    return step_in_full(policy, state, event)


def passed(policy: Policy, state: ServiceState, now: float) -> ServiceState | None:
    """A passing round's step when it changes nothing but the time: the new state, with no
    effects, no notes and no deadline (:func:`step` answers the same with empty lists).
    None when it does more, or is refused: take :func:`step` then.

    Nearly every step is this one, a healthy service passing again: the same as
    step_in_full's answer (a property test holds them equal), without its dozens of calls,
    and the daemon, told so, skips acting on nothing (P3)."""
    if state.steady_for is policy:  # made by a pass under this policy: steady still
        return replace(state, updated=now) if now >= state.updated else None
    # Steady: UP and announced, nothing pending (no drain, hold, guard, held address or
    # count), the wire exactly as wanted.
    steady = (
        state.health is _UP
        and state.route is _ANNOUNCED
        and state.count == 0
        and state.wire_certain
        and not state.drained
        and state.drain_deadline is None
        and state.held_until is None
        and state.guard_deadline is None
        and not state.guard_held
        and not state.absent
        and not state.returning
        and state.wire_prefixes == policy.prefixes
        and (state.wire_attributes is policy.announce or state.wire_attributes == policy.announce)
    )
    if not steady or now < state.updated:
        return None
    new = replace(state, updated=now)
    new.__dict__["steady_for"] = policy  # a field outside __init__: set as replace sets
    return new


_OUTCOMES = (CheckOutcome, EventFailure)
# Read per step: on Python 3.11 a member read (``Health.UP``) costs 0.1 us, a global 0.02.
_UP, _ANNOUNCED, _DRAINING = Health.UP, Route.ANNOUNCED, Route.DRAINING
_ROUND_ENDS = (CheckOutcome, EventFailure, Reconfigure)  # a tuple: a union is built per call


def step_in_full(policy: Policy, state: ServiceState, event: Event) -> Stepped:
    """:func:`step` for any input, taking no shortcut (tests hold the two equal)."""
    if event.now < state.updated:
        raise IllegalTransition(f"time went backwards: {event.now} < {state.updated}")
    new = replace(state, updated=event.now)
    new.__dict__["steady_for"] = None  # not steady until a pass finds it so again
    new = _expire(policy, new, event.now)
    expired = state.route is Route.DRAINING and new.route is Route.WITHDRAWN
    decided = False
    answer: bool | None = None  # the fleet's answer this step, resolved (None: none)
    if state.guard_deadline is not None and event.now >= state.guard_deadline:
        new, answer = _answered(policy, new, None, new.guard_announcing)

    if isinstance(event, _OUTCOMES):
        new = _on_outcome(policy, new, event)
    elif isinstance(event, Drain):
        new = _on_drain(policy, new, event)
    elif isinstance(event, Undrain):
        new = _on_undrain(policy, new, event)
    elif isinstance(event, DrainIdle):
        # Judged on the state passed in: a DrainIdle racing the deadline is
        # still legal (the expiry above may already have withdrawn).
        if state.route is not Route.DRAINING:
            raise IllegalTransition(f"not draining (route is {state.route.value})")
        new = _set_route(new, Route.WITHDRAWN, event.now)
        new = replace(new, drain_deadline=None)
    elif isinstance(event, Reconfigure) and not new.drained:
        if policy.dampening is None and new.held_until is not None:
            new = replace(new, held_until=None, last_hold_end=event.now)
        new = _set_route(new, _desired(policy, new), event.now)
    elif isinstance(event, Shutdown):
        new = replace(_set_route(new, Route.WITHDRAWN, event.now), drain_deadline=None)
        new = replace(new, guard_held=False, guard_deadline=None)  # a stop is never held
        decided = True
    elif isinstance(event, Present):
        new = _on_present(policy, new, event.prefixes)
    elif isinstance(event, GuardAnswer) and new.guard_deadline is not None:
        new, answer = _answered(policy, new, event.allowed, event.announcing)
    elif isinstance(event, LocalFault):
        new = replace(new, local_fault=event.reason)
    # Tick, FleetChanged, a stale GuardAnswer: nothing beyond the expiry above.
    if isinstance(event, _ROUND_ENDS):
        new = _guard_round(policy, new, passed=isinstance(event, CheckOutcome) and event.ok)
    asks: list[Effect] = []
    if policy.min_announcing is not None:
        if not isinstance(event, Shutdown):
            new, asks = _guard(policy, state, new, event, answer)
    elif new.guard_held or new.guard_deadline is not None:  # the guard was configured away
        new = _set_route(
            replace(new, guard_held=False, guard_deadline=None), _wanted(policy, new), event.now
        )
    expired = expired and new.route is Route.WITHDRAWN
    new, effects = _sync_wire(policy, new, decided=decided)
    notes = _notes(state, new, event.now, expired=expired)
    notes.extend(_guard_notes(policy, state, new))
    return Stepped(new, [*effects, *asks], notes)


def _notes(before: ServiceState, after: ServiceState, now: float, *, expired: bool) -> list[Note]:
    """The one comparison of before and after: what an observer logs and counts."""
    notes: list[Note] = []
    if after.health is not before.health:
        notes.append(Changed(before.health, after.health))
    if after.route is not before.route:
        notes.append(Changed(before.route, after.route))
    if expired:
        notes.append(DrainExpired())
    if after.held_until is not None and before.held_until is None:
        notes.append(Dampened(after.held_until - now))
    elif after.held_until is None and before.held_until is not None:
        notes.append(DampeningReleased())
    if after.guard_held and not before.guard_held:
        notes.append(GuardHeld(after.guard_announcing))
    elif before.guard_held and not after.guard_held:
        notes.append(GuardReleased())
    if after.drained is not before.drained or after.drain_deadline != before.drain_deadline:
        notes.append(DrainChanged(after.drained, after.drain_deadline))
    return notes


def held(policy: Policy, state: ServiceState) -> dict[str, HoldReason]:
    """The prefixes the address guard keeps off the wire, and why (status shows it)."""
    if not policy.guard:
        return {}
    out = dict.fromkeys(sorted(state.returning), HoldReason.RETURNING)
    out.update(dict.fromkeys(sorted(state.absent), HoldReason.ABSENT))
    return out


def _guard_notes(policy: Policy, before: ServiceState, after: ServiceState) -> list[Note]:
    if before.absent is after.absent and before.returning is after.returning:
        return []  # the common case: no address changed
    old, new = held(policy, before), held(policy, after)
    notes: list[Note] = []
    for why in HoldReason:
        now_held = tuple(p for p, w in new.items() if w is why and old.get(p) is not why)
        if now_held:
            notes.append(Held(now_held, why))
    released = tuple(p for p in old if p not in new)
    if released:
        notes.append(Released(released))
    return notes


def next_deadline(state: ServiceState) -> float | None:
    """When this state next changes by itself (a drain ending, a hold released), if ever."""
    held, guard = state.held_until, state.guard_deadline
    drain = state.drain_deadline if state.route is _DRAINING else None
    if held is None and guard is None and drain is None:
        return None  # nearly every state, asked after every step
    return min(t for t in (held, guard, drain) if t is not None)


# ---------------------------------------------------------------- helpers


def _expire(policy: Policy, state: ServiceState, now: float) -> ServiceState:
    if (
        state.route is Route.DRAINING
        and state.drain_deadline is not None
        and now >= state.drain_deadline
    ):
        state = replace(_set_route(state, Route.WITHDRAWN, now), drain_deadline=None)
    if state.held_until is not None and now >= state.held_until:
        state = replace(state, held_until=None, last_hold_end=now, changes=())
        if not state.drained:
            state = _set_route(state, _desired(policy, state), now)
    return state


HEALTH_TABLE: Mapping[tuple[Health, bool], Health] = {
    # (health, the check passed) -> next health. Entering RISING or FALLING starts a
    # count at 1; staying there adds 1; reaching ``rise`` (``fall``) gives UP (DOWN).
    (Health.INIT, True): Health.RISING,
    (Health.INIT, False): Health.DOWN,
    (Health.RISING, True): Health.RISING,
    (Health.RISING, False): Health.DOWN,
    (Health.UP, True): Health.UP,
    (Health.UP, False): Health.FALLING,
    (Health.FALLING, True): Health.UP,
    (Health.FALLING, False): Health.FALLING,
    (Health.DOWN, True): Health.RISING,
    (Health.DOWN, False): Health.DOWN,
}
"""Every health transition. A route still announced from our previous run keeps its
place in INIT instead: see :data:`CARRIED_TABLE`."""

CARRIED_TABLE: Mapping[bool, Health] = {True: Health.UP, False: Health.FALLING}
"""INIT with a route carried over from our previous run (ANNOUNCED or DRAINING): a
passing check keeps it, a failing one gets the full fall count."""


EVENT_TABLE: Mapping[Health, Health] = {
    # health -> next health on an EventFailure: every state goes DOWN at once (the count
    # starts again), a route carried over from our previous run included.
    Health.INIT: Health.DOWN,
    Health.RISING: Health.DOWN,
    Health.UP: Health.DOWN,
    Health.FALLING: Health.DOWN,
    Health.DOWN: Health.DOWN,
}
"""Every health transition an event's failure makes (:class:`EventFailure`)."""


def _next_health(policy: Policy, state: ServiceState, ok: bool) -> tuple[Health, int]:
    carried = state.health is Health.INIT and state.route in (Route.ANNOUNCED, Route.DRAINING)
    target = CARRIED_TABLE[ok] if carried else HEALTH_TABLE[state.health, ok]
    if target is Health.RISING or target is Health.FALLING:
        count = state.count + 1 if target is state.health else 1
        limit, done = (
            (policy.rise, Health.UP) if target is Health.RISING else (policy.fall, Health.DOWN)
        )
        return (done, 0) if count >= limit else (target, count)
    return target, 0


def _health_route(policy: Policy, health: Health, current: Route) -> Route:
    """Where an undrained service's route goes for a given health."""
    if health is Health.UP:
        return Route.ANNOUNCED
    if health is Health.DOWN:
        return Route.LOWERED if policy.on_down is OnDown.LOWER else Route.WITHDRAWN
    # INIT, RISING, FALLING change nothing on the wire, except that a route
    # lowered for a drain goes back to normal attributes when undrained.
    if current is Route.DRAINING:
        return Route.ANNOUNCED
    return current


def _desired(policy: Policy, state: ServiceState) -> Route:
    """Where an undrained service's route goes, dampening included."""
    if state.held_until is not None:
        return Route.LOWERED if policy.on_down is OnDown.LOWER else Route.WITHDRAWN
    return _health_route(policy, state.health, state.route)


def _count_change(policy: Policy, state: ServiceState, now: float) -> ServiceState:
    """Record a health-driven route change; start a hold when there were too many."""
    d = policy.dampening
    if d is None or d.changes <= 0:
        return state
    recent = (*(t for t in state.changes if t > now - d.window), now)
    if len(recent) <= d.changes:
        return replace(state, changes=recent)
    strikes = state.strikes
    if state.last_hold_end is not None and now - state.last_hold_end > d.max_penalty:
        strikes = 0
    penalty = min(d.max_penalty, d.penalty * 2**strikes)
    return replace(state, changes=(), held_until=now + penalty, strikes=strikes + 1)


def _on_outcome(
    policy: Policy, state: ServiceState, event: CheckOutcome | EventFailure
) -> ServiceState:
    if isinstance(event, EventFailure):
        health, count = EVENT_TABLE[state.health], 0
    else:
        health, count = _next_health(policy, state, event.ok)
    new = state
    if health is not state.health:
        new = replace(new, health=health, health_since=event.now, count=count)
    elif count != state.count:  # a passing check of a healthy service changes nothing here
        new = replace(new, count=count)
    if new.drained:
        if health is Health.DOWN and new.route in (Route.DRAINING, Route.LOWERED, Route.ANNOUNCED):
            new = replace(_set_route(new, Route.WITHDRAWN, event.now), drain_deadline=None)
        return new
    guarding = new.guard_held or new.guard_deadline is not None
    if new.held_until is None and _desired(policy, new) is not new.route and not guarding:
        new = _count_change(policy, new, event.now)
    return _set_route(new, _desired(policy, new), event.now)


def _on_drain(policy: Policy, state: ServiceState, event: Drain) -> ServiceState:
    if state.drained:
        raise IllegalTransition("already drained")
    new = replace(state, drained=True, drain_reason=event.reason, drain_forced=event.force)
    deadline = event.now + policy.drain_seconds
    if new.route is Route.ANNOUNCED and deadline > event.now:  # not reached already
        new = _set_route(new, Route.DRAINING, event.now)
        return replace(new, drain_deadline=deadline)
    if new.route is Route.DRAINING:  # restored mid-drain: keep its deadline
        return new
    # Nothing announced, a DOWN service's lowered route, or no drain period: withdraw now.
    return replace(_set_route(new, Route.WITHDRAWN, event.now), drain_deadline=None)


def _on_undrain(policy: Policy, state: ServiceState, event: Undrain) -> ServiceState:
    if not state.drained:
        raise IllegalTransition("not drained")
    new = replace(state, drained=False, drain_reason="", drain_deadline=None, drain_forced=False)
    return _set_route(new, _desired(policy, new), event.now)


def _on_present(policy: Policy, state: ServiceState, present: frozenset[str]) -> ServiceState:
    """A prefix that leaves is absent; one that comes back waits for a passing check."""
    keep = set(policy.prefixes)
    absent = frozenset(p for p in policy.prefixes if p not in present)
    back = frozenset(p for p in state.absent if p in present and p in keep)
    returning = frozenset(p for p in state.returning if p in keep and p not in absent) | back
    if absent == state.absent and returning == state.returning:
        return state
    return replace(state, absent=absent, returning=returning)


def _guard_round(policy: Policy, state: ServiceState, *, passed: bool) -> ServiceState:
    """A passing check releases the returning prefixes; a new policy forgets the
    prefixes it no longer has."""
    if not state.absent and not state.returning:
        return state
    keep = set(policy.prefixes)
    returning = frozenset() if passed else state.returning & keep
    absent = state.absent & keep
    if absent == state.absent and returning == state.returning:
        return state
    return replace(state, absent=absent, returning=returning)


def _guarded(policy: Policy, state: ServiceState, prefixes: tuple[str, ...]) -> tuple[str, ...]:
    """``prefixes`` less what the address guard holds back (the same tuple when nothing
    is held, so the common comparison stays O(1))."""
    if not policy.guard or not (state.absent or state.returning):
        return prefixes
    return tuple(p for p in prefixes if p not in state.absent and p not in state.returning)


# ---------------------------------------------------------------- the fleet guard

_CARRYING = (Route.ANNOUNCED, Route.LOWERED, Route.DRAINING)
"""Routes that carry traffic: leaving one for WITHDRAWN is what the guard decides."""


def _answered(
    policy: Policy, state: ServiceState, allowed: bool | None, announcing: int
) -> tuple[ServiceState, bool]:
    """Take the fleet's answer (None: unknown, resolved by ``hold_when_unknown``)."""
    ok = (not policy.hold_when_unknown) if allowed is None else allowed
    return replace(state, guard_deadline=None, guard_announcing=announcing), ok


def _wanted(policy: Policy, state: ServiceState) -> Route:
    """Where the route of a service the guard is holding goes, the guard aside."""
    if state.drained:
        return Route.WITHDRAWN  # only a drain's final withdraw (or a DOWN drained) asks
    return _desired(policy, state)


def _guard(
    policy: Policy,
    before: ServiceState,
    new: ServiceState,
    event: Event,
    answer: bool | None,
) -> tuple[ServiceState, list[Effect]]:
    """Let a withdraw through, or keep the route up and ask the fleet (see the module
    docstring). ``answer``: the fleet's answer taken in this step, if any."""
    now = event.now
    active = new.guard_held or new.guard_deadline is not None or answer is not None
    if not active and not (new.route is Route.WITHDRAWN and before.route in _CARRYING):
        return new, []
    target = _wanted(policy, new) if active else Route.WITHDRAWN
    free = replace(new, guard_held=False, guard_deadline=None)
    if target is not Route.WITHDRAWN:  # healthy again, undrained: nothing to ask
        return _set_route(free, target, now), []
    # Certain local failures are never held: a dead process (an event), a fault such
    # as no BGP session. Keeping those announced is a sure blackhole.
    certain = isinstance(event, EventFailure) or bool(new.local_fault)
    if answer or certain or (new.drained and new.drain_forced):
        return _set_route(replace(free, drain_deadline=None), Route.WITHDRAWN, now), []
    held = new.guard_held or answer is False
    if new.drained:
        keep = Route.DRAINING
    elif held or before.route is Route.DRAINING:
        keep = Route.LOWERED
    else:
        keep = before.route  # asking: nothing changes on the wire yet
    new = replace(_set_route(new, keep, now), guard_held=held, drain_deadline=None)
    ask = new.guard_deadline is None and (not held or isinstance(event, FleetChanged))
    if not ask:
        return new, []
    new = replace(new, guard_deadline=now + policy.guard_timeout)
    return new, [AskWithdraw(drain=new.drained)]


def _set_route(state: ServiceState, route: Route, now: float) -> ServiceState:
    if route is state.route:
        return state
    return replace(state, route=route, route_since=now)


def _decided(state: ServiceState) -> bool:
    """Whether the route no longer rests on the previous run's belief."""
    return state.drained or state.health in (Health.UP, Health.DOWN)


def _sync_wire(
    policy: Policy, state: ServiceState, *, decided: bool = False
) -> tuple[ServiceState, list[Effect]]:
    """Compare what should be on the wire with what is; emit the difference."""
    attrs = policy.attributes_for(state.route)
    want = _guarded(policy, state, policy.prefixes) if attrs is not None else ()
    effects: list[Effect] = []
    if not state.wire_certain:
        if not (decided or _decided(state)):
            return state, effects
        # Assert the whole wanted state: the wire is whatever ExaBGP kept.
        wanted = set(want)
        possible = dict.fromkeys((*state.wire_prefixes, *policy.prefixes))
        stale = tuple(p for p in possible if p not in wanted)
        if stale:
            effects.append(Withdraw(stale, state.wire_attributes))
        if attrs is not None:
            effects.append(Announce(want, attrs, state.route))
        certain = replace(state, wire_prefixes=want, wire_attributes=attrs, wire_certain=True)
        return certain, effects
    if want == state.wire_prefixes:  # the common case, and O(1) when it is the same tuple
        gone: tuple[str, ...] = ()
        fresh: tuple[str, ...] = ()
    else:
        # Sets, not tuple scans: a service may hold tens of thousands of prefixes.
        wanted, on_wire = set(want), set(state.wire_prefixes)
        gone = tuple(p for p in state.wire_prefixes if p not in wanted)
        fresh = tuple(p for p in want if p not in on_wire)
    if gone:
        effects.append(Withdraw(gone, state.wire_attributes))
    if attrs is not None:
        if attrs != state.wire_attributes:
            effects.append(Announce(want, attrs, state.route))
        elif fresh:
            effects.append(Announce(fresh, attrs, state.route))
    if not effects:
        return state, effects
    return replace(state, wire_prefixes=want, wire_attributes=attrs), effects
