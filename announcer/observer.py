"""The one observer: turns what the state machine and the check rounds report into log
lines and metrics. Nothing here decides anything."""

from __future__ import annotations

from typing import TYPE_CHECKING

from announcer import state as sm
from announcer.log import Logger
from announcer.rounds import Closed
from announcer.runtime import ServiceRuntime

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

    def stepped(self, rt: ServiceRuntime, notes: list[sm.Note], now: float) -> None:
        """Log and count one step's notes (``rt.state`` is already the new state)."""
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


def _some(prefixes: tuple[str, ...], most: int = 8) -> str:
    """A log line names a few prefixes, not tens of thousands."""
    shown = ",".join(prefixes[:most])
    return shown if len(prefixes) <= most else f"{shown},... ({len(prefixes)} in all)"
