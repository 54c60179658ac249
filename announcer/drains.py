"""Drains: the sources that hold a service drained, maintenance files, and the
connection counts of a draining service.

A service is drained while any source holds it (an operator, a maintenance file, a
stop, its removal from the config); the state machine sees one Drain when the first
source comes and one Undrain when the last goes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from announcer import state as sm
from announcer.config import Settings
from announcer.connections import count_established
from announcer.log import Logger
from announcer.runtime import ServiceRuntime
from announcer.timers import TimerKind, Timers

if TYPE_CHECKING:  # only types: prometheus_client is imported when metrics are on
    from announcer.metrics import Metrics

MAINTENANCE_POLL = 0.5
"""Seconds between looks at the maintenance files (and the state file)."""
IDLE_POLL = 1.0
"""Seconds between connection counts of a draining service (the first one after this too)."""

Step = Callable[[ServiceRuntime, sm.Event], None]


class Drains:
    def __init__(self, step: Step, timers: Timers, log: Logger, metrics: Metrics | None) -> None:
        self._step = step
        self._timers = timers
        self.log = log
        self.metrics = metrics

    def drain(self, rt: ServiceRuntime, source: sm.DrainSource, reason: str, now: float) -> bool:
        """Add a drain source; True if this started a drain."""
        first = not rt.drain_sources
        if self.metrics is not None and source not in rt.drain_sources:
            self.metrics.drain(rt.name, source)
        rt.drain_sources.add(source)
        if first:
            self._step(rt, sm.Drain(now, reason or source))
        return first

    def undrain(self, rt: ServiceRuntime, source: sm.DrainSource, now: float) -> bool:
        """Remove a drain source; True if the service is no longer drained."""
        if source not in rt.drain_sources:
            return False
        rt.drain_sources.discard(source)
        if not rt.drain_sources:
            self._step(rt, sm.Undrain(now))
            return True
        return False

    def poll_maintenance(
        self, settings: Settings, services: Iterable[ServiceRuntime], now: float
    ) -> None:
        glob_file = settings.maintenance_file
        global_on = glob_file is not None and os.path.lexists(glob_file)
        for rt in services:
            own = rt.service.maintenance_file
            on = global_on or (own is not None and os.path.lexists(own))
            active = sm.DrainSource.MAINTENANCE in rt.drain_sources
            if on and not active:
                path = glob_file if global_on else own
                self.log.info("maintenance", service=rt.name, file=str(path), present=True)
                self.drain(rt, sm.DrainSource.MAINTENANCE, f"maintenance file {path}", now)
            elif active and not on:
                self.log.info("maintenance", service=rt.name, present=False)
                self.undrain(rt, sm.DrainSource.MAINTENANCE, now)

    def watch(self, rt: ServiceRuntime, now: float) -> None:
        """Count connections while draining (the first count after :data:`IDLE_POLL`)."""
        if rt.state.route is sm.Route.DRAINING and rt.next_idle_poll is None:
            rt.next_idle_poll = now + IDLE_POLL
            self._timers.at(rt.next_idle_poll, TimerKind.IDLE, rt.name)

    def poll_idle(self, rt: ServiceRuntime, now: float) -> None:
        """Count connections while draining (shown in status); with ``drain_until_idle``,
        withdraw once the prefixes have no (or few enough) connections left."""
        rt.next_idle_poll = None
        if rt.state.route is not sm.Route.DRAINING:
            if self.metrics is not None:
                self.metrics.connections(rt.name, None)
            return
        rt.connections = count_established(rt.service.prefixes)
        if self.metrics is not None:
            self.metrics.connections(rt.name, rt.connections)
        if (
            rt.service.drain_until_idle
            and rt.connections is not None
            and rt.connections <= rt.service.drain_idle_threshold
        ):
            self.log.info("drain_idle", service=rt.name, connections=rt.connections)
            self._step(rt, sm.DrainIdle(now))
            return
        self.watch(rt, now)
