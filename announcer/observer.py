"""The one observer: turns what the state machine and the check rounds report into log
lines and metrics. Nothing here decides anything."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from announcer import state as sm
from announcer.log import Logger
from announcer.rounds import Closed
from announcer.runtime import EventSeen, ServiceRuntime

if TYPE_CHECKING:  # only types: prometheus_client is imported when metrics are on
    from announcer.hooks import Hooks
    from announcer.metrics import Metrics


class Observer:
    def __init__(self, log: Logger, metrics: Metrics | None, hooks: Hooks | None = None) -> None:
        self.log = log
        self.metrics = metrics
        self.hooks = hooks

    def round_closed(self, rt: ServiceRuntime, closed: Closed) -> None:
        if self.metrics is not None:
            for spec, r in zip(rt.service.checks, closed.results, strict=False):
                self.metrics.observe_check(rt.name, r.ok, r.reason, r.duration, kind=spec.type)
        if closed.news:
            self.log.event(
                "info" if closed.ok else "warning",
                "check",
                service=rt.name,
                ok=closed.ok,
                reason=closed.reason,
                duration=round(rt.last_duration, 4),
            )

    def event(self, rt: ServiceRuntime, seen: EventSeen) -> None:
        """An ``immediate`` check's event: what it said and what it does."""
        self.log.event(
            "warning" if seen.down else "info",
            "check_event",
            service=rt.name,
            check=seen.check,
            reason=seen.reason,
            action="down at once" if seen.down else "none: the service's require still holds",
        )
        if self.metrics is not None:
            self.metrics.check_event(rt.name, "down" if seen.down else "none")

    def stepped(
        self, rt: ServiceRuntime, notes: list[sm.Note], now: float, cause: str | None = None
    ) -> None:
        """Log and count one step's notes (``rt.state`` is already the new state);
        ``cause``: what set the step off, when it is not a round (``event``)."""
        name, st = rt.name, rt.state
        for note in notes:
            if isinstance(note, sm.Changed) and isinstance(note.after, sm.Health):
                self.log.info(
                    "health",
                    service=name,
                    **{"from": note.before.value, "to": note.after.value},
                    reason=rt.last_reason,
                )
            elif isinstance(note, sm.Changed):
                rt.transitions += 1
                reason = st.drain_reason if st.drained else rt.last_reason
                self.log.info(
                    "route",
                    service=name,
                    **{"from": note.before.value, "to": note.after.value},
                    reason=reason,
                    **({"cause": cause} if cause else {}),
                )
                if self.metrics is not None:
                    self.metrics.transition(name, note.before.value, note.after.value)
                if self.hooks is not None:
                    self.hooks.changed(rt, note, reason)
            elif isinstance(note, sm.Dampened):
                self.log.warning(
                    "dampened", service=name, hold=round(note.hold, 3), strikes=st.strikes
                )
            elif isinstance(note, sm.DampeningReleased):
                self.log.info("dampening_released", service=name)
            elif isinstance(note, sm.Held):
                absent = note.why is sm.HoldReason.ABSENT
                self.log.event(
                    "warning" if absent else "info",
                    "address_guard",
                    service=name,
                    prefixes=_some(note.prefixes),
                    held=len(note.prefixes),
                    why=note.why.value,
                    action="withdrawn at once" if absent else "announced on the next pass",
                )
            elif isinstance(note, sm.Released):
                self.log.info("address_guard_released", service=name, prefixes=_some(note.prefixes))
        if self.metrics is not None:
            self.metrics.set_state(name, st.health.value, sm.shown_route(st))
            self.metrics.dampened(name, st.held_until is not None)
            if st.absent or st.returning or any(isinstance(n, sm.Released) for n in notes):
                self.metrics.held(name, len(st.absent), len(st.returning))


class EventWrites:
    """Route changes an event set off, until the wire says their commands are written: then
    the delay from the event is logged (``event_written``), counted and kept for status.
    A :class:`announcer.wire.FlushListener`, like the hooks (main thread only)."""

    def __init__(self, log: Logger, metrics: Metrics | None, clock: Callable[[], float]) -> None:
        self.log, self.metrics, self.clock = log, metrics, clock
        self.flushes = 0
        self._staged: list[tuple[ServiceRuntime, EventSeen, int]] = []

    def staged(self, rt: ServiceRuntime, seen: EventSeen) -> None:
        """``seen`` changed ``rt``'s route: its commands go out at the next flush."""
        self._staged.append((rt, seen, self.flushes))

    def flushed(self) -> None:
        self.flushes += 1

    def written(self) -> None:
        if not self._staged:
            return
        now = self.clock()
        keep: list[tuple[ServiceRuntime, EventSeen, int]] = []
        for rt, seen, flush in self._staged:
            if flush >= self.flushes:
                keep.append((rt, seen, flush))
                continue
            seen.written = delay = max(0.0, now - seen.at)
            self.log.info(
                "event_written",
                service=rt.name,
                route=seen.route,
                delay=round(delay, 6),
                reason=seen.reason,
            )
            if self.metrics is not None:
                self.metrics.event_written(rt.name, delay)
        self._staged = keep


def _some(prefixes: tuple[str, ...], most: int = 8) -> str:
    """A log line names a few prefixes, not tens of thousands."""
    shown = ",".join(prefixes[:most])
    return shown if len(prefixes) <= most else f"{shown},... ({len(prefixes)} in all)"
