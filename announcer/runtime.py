"""A service as the daemon runs it: its config, checks, state and what was last seen.

Shared by the daemon's parts (:mod:`~announcer.rounds`, :mod:`~announcer.timers`,
:mod:`~announcer.wire`, :mod:`~announcer.status`); only the daemon's loop changes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from announcer import state as sm
from announcer.checks import Check, CheckResult
from announcer.config import Service

_FAST = (sm.Health.INIT, sm.Health.RISING, sm.Health.FALLING)
"""Healths checked at ``fast_interval`` (built once: on Python 3.11 each member read costs
about 0.1 us, and this runs twice per check)."""


@dataclass(slots=True)
class Round:
    """One run of all of a service's checks."""

    number: int
    started: float
    deadline: float
    results: list[CheckResult | None]


@dataclass
class EventSeen:
    """The last event of an ``immediate`` check (status, logs and metrics show it)."""

    check: str
    reason: str
    at: float
    """When the check saw it (the daemon's clock)."""
    down: bool
    """With the other checks' latest results it failed the service's ``require``."""
    route: str = ""
    """The route change it set off (e.g. ``ANNOUNCED -> WITHDRAWN``), "" for none."""
    written: float | None = None
    """Seconds from the event to that change's command being written to ExaBGP."""


@dataclass(slots=True)
class ServiceRuntime:
    """A service as the daemon runs it (slotted: each check reads a dozen of its fields,
    and a thousand services' instance dicts do not stay in the CPU's caches)."""

    service: Service
    policy: sm.Policy
    checks: list[Check]
    state: sm.ServiceState
    next_run: float
    round: Round | None = None
    rounds: int = 0
    busy: list[bool] = field(default_factory=list)
    """Per check: a run is still executing (maybe past its round)."""
    drain_sources: set[sm.DrainSource] = field(default_factory=set)
    last_ok: bool | None = None
    last_reason: str = ""
    last_duration: float = 0.0
    last_results: list[CheckResult] = field(default_factory=list)
    transitions: int = 0
    check_failures: int = 0
    connections: int | None = None
    next_idle_poll: float | None = None
    retiring: bool = False
    """Removed from the config by a reload: drained, then dropped once withdrawn."""
    slot_note: str = ""
    """With a fleet: why a drain waits for a drain slot (shown in status)."""
    forward_note: str = ""
    """With forward_connections: where this node passes a draining peer's packets, or
    why it cannot (shown in status)."""
    peers_awaited: bool = False
    """With forward_connections: a drain asked for waits until the peers pass this
    node's connections (the service is not drained yet)."""
    last_event: EventSeen | None = None
    name: str = field(init=False)
    """The service's name (a reload keeps it): a field, read four times per check."""

    def __post_init__(self) -> None:
        self.name = self.service.name

    @property
    def interval(self) -> float:
        fast = self.state.health in _FAST
        return self.service.fast_interval if fast else self.service.interval

    def close_checks(self) -> None:
        for check in self.checks:
            check.close()
