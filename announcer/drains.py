"""Drains: the sources that hold a service drained, maintenance files, and the
connection counts of a draining service.

A service is drained while any source holds it (an operator, a maintenance file, a
stop, its removal from the config); the state machine sees one Drain when the first
source comes and one Undrain when the last goes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from announcer import state as sm
from announcer.config import Settings
from announcer.connections import count_open
from announcer.log import Logger
from announcer.runtime import ServiceRuntime
from announcer.timers import TimerKind, Timers

if TYPE_CHECKING:  # only types: prometheus_client is imported when metrics are on
    from announcer.metrics import Metrics

MAINTENANCE_POLL = 0.5
"""Seconds between looks at the maintenance files (and the state file)."""
IDLE_POLL = 1.0
"""Seconds between connection counts of a draining service (the first one after this too)."""

_DRAINING = sm.Route.DRAINING  # read per step: a global is 6x quicker than the member on 3.11

Step = Callable[[ServiceRuntime, sm.Event], None]


@dataclass(frozen=True)
class DrainWish:
    """A first drain as the fleet's drain slots see it."""

    source: sm.DrainSource
    reason: str
    force: bool = False
    """Take a slot even if none is free."""
    queue: bool = True
    """Wait in line for a slot (else refuse)."""
    patience: float | None = None
    """A stop's whole timeout: a slot is waited for while drain_seconds remain."""


class SlotGate(Protocol):
    """The fleet's drain slots (announcer.fleet.slotgate): a drain may wait its turn."""

    def request(self, rt: ServiceRuntime, wish: DrainWish) -> bool:
        """True: the drain waits for a slot (the gate starts it later)."""
        ...

    def cancel(self, rt: ServiceRuntime, source: sm.DrainSource) -> None: ...


class Drains:
    def __init__(self, step: Step, timers: Timers, log: Logger, metrics: Metrics | None) -> None:
        self._step = step
        self._timers = timers
        self.log = log
        self.metrics = metrics
        self.gate: SlotGate | None = None
        self.prepare: SlotGate | None = None
        """With drain forwarding: a drain waits until the peers pass its connections'
        packets (announcer.forwarding), after its slot and before the route moves."""
        self._file_seen = False
        """A maintenance file was present at the last poll: the next one looks at every
        service (one may be drained, or wait to be, by a file now gone)."""

    def drain(
        self,
        rt: ServiceRuntime,
        source: sm.DrainSource,
        reason: str,
        now: float,
        *,
        force: bool = False,
        queue: bool = True,
        granted: bool = False,
        ready: bool = False,
        patience: float | None = None,
    ) -> bool:
        """Add a drain source; True if this started a drain. With a fleet, a first drain
        may wait for a drain slot (``granted``: the gate has one for it now), then with
        drain forwarding for the peers (``ready``: they forward now)."""
        first = not rt.drain_sources
        wish = DrainWish(source, reason, force, queue, patience)
        gate, prepare = self.gate, self.prepare
        if first and not granted and gate is not None and gate.request(rt, wish):
            return False  # waits for a drain slot: the gate starts it
        if first and not ready and prepare is not None and prepare.request(rt, wish):
            return False  # waits for the peers to forward: the forwarder starts it
        if self.metrics is not None and source not in rt.drain_sources:
            self.metrics.drain(rt.name, source)
        rt.drain_sources.add(source)
        if first:
            rt.connections = None  # a count of an earlier drain would tell peers "none left"
            self._step(rt, sm.Drain(now, reason or source, force=force))
        return first

    def undrain(self, rt: ServiceRuntime, source: sm.DrainSource, now: float) -> bool:
        """Remove a drain source; True if the service is no longer drained."""
        for gate in (self.gate, self.prepare):
            if gate is not None:
                gate.cancel(rt, source)  # it may be waiting for a slot, or for the peers
        if source not in rt.drain_sources:
            return False
        rt.drain_sources.discard(source)
        if not rt.drain_sources:
            self._step(rt, sm.Undrain(now))
            return True
        return False

    def poll_maintenance(
        self,
        settings: Settings,
        services: Iterable[ServiceRuntime],
        own_files: Iterable[ServiceRuntime],
        now: float,
    ) -> None:
        """Drain the services a maintenance file is present for, undrain the others.
        ``own_files``: those of ``services`` with a file of their own. Only they are looked
        at while the shared file is absent and no file was present at the last poll (no
        fleet): nothing else can change then, and a look at every service twice a second
        cost 2 % of the controller's CPU at N = 2,000 (P3)."""
        glob_file = settings.maintenance_file
        global_on = glob_file is not None and os.path.lexists(glob_file)
        maintenance, gate = sm.DrainSource.MAINTENANCE, self.gate  # looked up once, not per service
        whole = global_on or self._file_seen or gate is not None
        seen = False
        for rt in services if whole else own_files:
            own = rt.service.maintenance_file
            on = global_on or (own is not None and os.path.lexists(own))
            seen |= on
            active = maintenance in rt.drain_sources
            if on and not active:
                path = glob_file if global_on else own
                self.log.info("maintenance", service=rt.name, file=str(path), present=True)
                self.drain(rt, maintenance, f"maintenance file {path}", now)
            elif active and not on:
                self.log.info("maintenance", service=rt.name, present=False)
                self.undrain(rt, maintenance, now)
            elif not on and gate is not None:
                gate.cancel(rt, maintenance)  # gone while waiting
        self._file_seen = seen

    @staticmethod
    def counting(rt: ServiceRuntime) -> bool:
        """Connections are counted while draining, and with ``forward_connections`` for as
        long as the service is drained: peers pass its connections' packets to it after
        the withdraw too, until the count it publishes reaches 0."""
        if rt.state.route is _DRAINING:
            return True
        return rt.service.forward_connections and rt.state.drained

    def watch(self, rt: ServiceRuntime, now: float) -> None:
        """Count connections while :meth:`counting` (the first count after :data:`IDLE_POLL`)."""
        if self.counting(rt) and rt.next_idle_poll is None:
            rt.next_idle_poll = now + IDLE_POLL
            self._timers.at(rt.next_idle_poll, TimerKind.IDLE, rt.name)

    def poll_idle(self, rt: ServiceRuntime, now: float) -> None:
        """Count connections while draining (shown in status); with ``drain_until_idle``,
        withdraw once the prefixes have no (or few enough) connections left."""
        rt.next_idle_poll = None
        if not self.counting(rt):
            if self.metrics is not None:
                self.metrics.connections(rt.name, None)
            return
        rt.connections = count_open(rt.service.prefixes)
        if self.metrics is not None:
            self.metrics.connections(rt.name, rt.connections)
        if (
            rt.service.drain_until_idle
            and rt.state.route is sm.Route.DRAINING
            and rt.connections is not None
            and rt.connections <= rt.service.drain_idle_threshold
        ):
            self.log.info("drain_idle", service=rt.name, connections=rt.connections)
            self._step(rt, sm.DrainIdle(now))
        self.watch(rt, now)
