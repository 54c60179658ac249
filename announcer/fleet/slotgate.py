"""Drain slots on the daemon's side (the :class:`~announcer.drains.SlotGate` of the
drains): a first drain of a service with ``max_drained`` waits in line for a slot,
taken on the fleet thread (announcer.fleet.slots); on the main thread, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from announcer import messages as msg
from announcer import state as sm
from announcer.drains import DrainWish
from announcer.fleet.settings import FleetSettings
from announcer.log import Level, Logger
from announcer.protocol import ControlRefused
from announcer.runtime import ServiceRuntime

if TYPE_CHECKING:
    from announcer.fleet.worker import FleetWorker
    from announcer.services import Services


class SlotGate:
    def __init__(
        self,
        settings: FleetSettings,
        services: Services,
        worker: FleetWorker,
        log: Logger,
        clock: Callable[[], float],
    ) -> None:
        self.settings, self.services, self.worker, self.log = settings, services, worker, log
        self.clock = clock
        self.held: Mapping[str, list[str]] = {}
        """Who holds each service's slots, as last read from etcd."""
        self.waiting: dict[str, tuple[sm.DrainSource, str, float | None]] = {}
        """Drains waiting for a slot: their source, reason and, for a stop, until when."""
        self.holding: set[str] = set()
        """Services whose drain slot this node holds (asked for, or granted)."""

    def adopt(self, rt: ServiceRuntime) -> None:
        """A service already drained at start (kept in the state file): it holds a slot,
        whatever the queue says (its previous process's slot may be gone with its lease)."""
        if rt.state.drained and rt.service.max_drained is not None:
            self.holding.add(rt.name)
            self.worker.take_slot(
                rt.name, rt.state.drain_reason, rt.service.max_drained, force=True, queue=False
            )

    def stepped(self, rt: ServiceRuntime) -> None:
        """An undrained service gives its slot back."""
        if rt.name in self.holding and not rt.state.drained and rt.name not in self.waiting:
            self.holding.discard(rt.name)
            self.worker.release_slot(rt.name)

    def request(self, rt: ServiceRuntime, wish: DrainWish) -> bool:
        """A first drain: start now (False) or wait for a drain slot (True). A stop waits
        at most until its ``patience`` (its whole timeout) leaves exactly drain_seconds."""
        source, reason, force, queue = wish.source, wish.reason, wish.force, wish.queue
        maximum = rt.service.max_drained
        if rt.name in self.waiting:
            return True  # asked again (the maintenance file's poll): still in line
        if maximum is None or source is sm.DrainSource.REMOVED or rt.name in self.holding:
            return False
        until = None
        if source is sm.DrainSource.STOP:
            # A shutdown never hangs: it waits for a slot only while its timeout leaves
            # drain_seconds, else (no timeout given) takes one, free or not (logged).
            spare = (wish.patience or 0.0) - rt.service.drain_seconds
            force = force or spare <= 0
            until = self.clock() + spare
        holders = [n for n in self.held.get(rt.name, []) if n != self.settings.node]
        if force:
            self.holding.add(rt.name)
            self.worker.take_slot(rt.name, reason, maximum, force=True, queue=False)
            if len(holders) >= maximum:
                self.log.warning(
                    "drain_slot_forced",
                    service=rt.name,
                    source=str(source),
                    holders=",".join(holders),
                    max_drained=maximum,
                )
            return False
        if not queue and len(holders) >= maximum:
            raise ControlRefused(
                f"{rt.name}: no free drain slot: held by {', '.join(holders)} "
                f"(max_drained {maximum}); not queued (--no-queue)",
                "refused",
            )
        self.waiting[rt.name] = (source, reason, until)
        self.holding.add(rt.name)
        rt.slot_note = "waiting for a drain slot"
        self.log.info("drain_slot_wait", service=rt.name, source=str(source))
        self.worker.take_slot(rt.name, reason, maximum, force=False, queue=True)
        return True

    def cancel(self, rt: ServiceRuntime, source: sm.DrainSource) -> None:
        wait = self.waiting.get(rt.name)
        if wait is None or wait[0] is not source:
            return
        del self.waiting[rt.name]
        rt.slot_note = ""
        if not rt.drain_sources:
            self.holding.discard(rt.name)
            self.worker.release_slot(rt.name)
        self.log.info("drain_slot_cancelled", service=rt.name, source=str(source))

    def _start(self, rt: ServiceRuntime, why: str, level: Level = "info") -> None:
        """The drain that waited for a slot starts now."""
        source, reason, _ = self.waiting.pop(rt.name)
        rt.slot_note = ""
        self.log.event(level, "drain_slot", service=rt.name, granted=why)
        self.services.drains.drain(rt, source, reason, self.clock(), granted=True)

    def overdue(self) -> None:
        """Stops that waited as long as their timeout allows drain anyway."""
        now = self.clock()
        for name, (_, _, until) in list(self.waiting.items()):
            rt = self.services.runtimes.get(name)
            if rt is not None and until is not None and now >= until:
                self._start(rt, "no: the stop's timeout leaves only drain_seconds", "warning")

    def on_slot(self, slot: msg.FleetSlot) -> None:
        rt = self.services.runtimes.get(slot.service)
        if rt is None or slot.service not in self.waiting:
            return
        if slot.granted:
            self._start(rt, "yes")
            return
        if slot.granted is None and self.settings.on_unknown == "local":
            self._start(rt, "unknown (etcd unreachable), on_unknown = local", "warning")
            return
        who = ", ".join(slot.holders) or "?"
        rt.slot_note = (
            f"waiting for a drain slot: held by {who}, {slot.ahead} ahead"
            if slot.granted is False
            else f"waiting for a drain slot: etcd unreachable ({slot.why})"
        )
