"""The fleet guard on the daemon's side: on the main thread, no I/O.

It is the :class:`~announcer.services.FleetHook` of the services (questions to ask,
this node's records to publish when they change), handles the fleet thread's messages
(an answer becomes a :class:`~announcer.state.GuardAnswer`, a changed view a
:class:`~announcer.state.FleetChanged` for the services the guard holds), turns a lost
BGP session into a :class:`~announcer.state.LocalFault`, and keeps the group's last
view for ``announcer fleet`` and the metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from announcer import messages as msg
from announcer import state as sm
from announcer.exabgp import MessageKind
from announcer.fleet.etcd import EtcdError
from announcer.fleet.records import Record
from announcer.fleet.settings import FleetSettings
from announcer.fleet.slotgate import SlotGate
from announcer.fleet.store import Peer, counts
from announcer.log import Logger
from announcer.runtime import ServiceRuntime
from announcer.status import guard_text

if TYPE_CHECKING:
    from announcer.fleet.metrics import FleetMetrics
    from announcer.fleet.worker import FleetWorker
    from announcer.services import Services
    from announcer.wire import Wire

NO_SESSION = "no BGP session up"
WallClock = Callable[[], float]


class FleetGuard:
    def __init__(
        self,
        settings: FleetSettings,
        services: Services,
        wire: Wire,
        worker: FleetWorker,
        log: Logger,
        metrics: FleetMetrics | None,
        clock: Callable[[], float],
        wall: WallClock = time.time,
    ) -> None:
        self.settings, self.services, self.wire, self.worker = settings, services, wire, worker
        self.log, self.metrics, self.clock, self.wall = log, metrics, clock, wall
        self.sent: dict[str, Record] = {}
        """What was last handed to the fleet thread per service (writes on change only)."""
        self.view: Mapping[str, Mapping[str, Peer]] = {}
        self.reachable: bool | None = None
        self.error = ""
        self._revisions: dict[str, dict[str, int]] = {}
        self.more_fields: Callable[[ServiceRuntime], dict[str, Any]] = lambda rt: {}
        """More fields of this node's records (drain forwarding's, announcer/forwarding)."""
        self.closing: list[Callable[[], None]] = []
        self.slots = SlotGate(settings, services, worker, log, clock)
        services.fleet = self
        services.drains.gate = self.slots
        for rt in services:
            self.slots.adopt(rt)

    def handlers(self, receive: Callable[[msg.StdinLine], object]) -> dict[type[Any], Any]:
        """The daemon's handlers for the fleet's messages; ``receive`` is the daemon's
        own stdin handler, wrapped so that acks and neighbour changes reach the records."""

        def on_stdin(line: msg.StdinLine) -> None:
            said = receive(line)
            # Not on every ack (50,000 prefixes are 50,000 acks): when a session changes,
            # or ExaBGP has answered everything; the view's refresh each second does the rest.
            if getattr(said, "kind", None) is MessageKind.NEIGHBOR or not self.wire.writer.pending:
                self.refresh()

        return {
            msg.FleetAnswer: self.on_answer,
            msg.FleetView: self.on_view,
            msg.FleetSlot: self.slots.on_slot,
            msg.StdinLine: on_stdin,
        }

    # ------------------------------------------------------------ the services' hook

    def ask(self, rt: ServiceRuntime, effect: sm.AskWithdraw) -> None:
        after = Record(
            node=self.settings.node,
            route=sm.Route.WITHDRAWN.value,
            health=rt.state.health.value,
            drained=rt.state.drained,
            reason=rt.state.drain_reason,
            since=self.wall(),
            # drain forwarding's fields too: without them the peers read, for a moment,
            # a withdrawn node that wants nothing forwarded, and reset its connections
            **self.more_fields(rt),
        )
        minimum = rt.policy.min_announcing or 0
        self.log.info("fleet_ask", service=rt.name, drain=effect.drain, min=minimum)
        self.sent[rt.name] = after  # the transaction writes it if allowed
        self.worker.ask(rt.name, after, minimum)

    def stepped(self, rt: ServiceRuntime) -> None:
        self.slots.stepped(rt)
        if rt.state.guard_deadline is not None:
            return  # a question is out: its transaction writes our record, or the answer says
        record = self.record(rt)
        if record.same(self.sent.get(rt.name)):
            return
        self.sent[rt.name] = record
        self.worker.publish(rt.name, record)

    def record(self, rt: ServiceRuntime) -> Record:
        st = rt.state
        announcing = (
            st.route in (sm.Route.ANNOUNCED, sm.Route.LOWERED)
            and st.wire_certain
            and not st.drained
            and not self.wire.writer.pending_for(rt.name)
            and not self.no_session()
        )
        return Record(
            node=self.settings.node,
            route=sm.shown_route(st),
            health=st.health.value,
            drained=st.drained,
            reason=st.drain_reason,
            announcing=announcing,
            since=self.wall(),
            **self.more_fields(rt),
        )

    def no_session(self) -> bool:
        """Every BGP session ExaBGP told us of is down (none heard of: not known, so no)."""
        states = self.wire.neighbors.values()
        return bool(states) and not any(s == "up" for s in states)

    def refresh(self) -> None:
        """Records and local faults follow acks and sessions, which change without a step."""
        fault = NO_SESSION if self.no_session() else ""
        now = self.clock()
        for rt in self.services:
            if rt.state.local_fault != fault and rt.policy.min_announcing is not None:
                self.services.step(rt, sm.LocalFault(now, fault))  # publishes too
            else:
                self.stepped(rt)

    # ------------------------------------------------------------ the fleet thread's messages

    def on_answer(self, answer: msg.FleetAnswer) -> None:
        rt = self.services.runtimes.get(answer.service)
        if self.metrics is not None:
            self.metrics.decision(answer.latency, answer.allowed)
        if rt is None:
            return
        minimum = rt.policy.min_announcing
        if answer.allowed is False:
            self.log.warning(
                "fleet_guard",
                service=rt.name,
                decision=f"held by the fleet guard: {answer.announcing} announcing, min {minimum}",
                why=answer.why,
            )
        else:
            self.log.info(
                "fleet_guard",
                service=rt.name,
                decision={True: "allowed", None: "unknown"}[answer.allowed],
                announcing=answer.announcing,
                min=minimum,
                why=answer.why,
            )
        if answer.allowed is not True:
            self.sent.pop(rt.name, None)  # etcd holds the old record, or who knows: write again
        self.services.step(rt, sm.GuardAnswer(self.clock(), answer.allowed, answer.announcing))

    def on_view(self, view: msg.FleetView) -> None:
        self.slots.overdue()
        now = self.clock()
        if view.services is None:
            self.reachable, self.error = False, view.error
            self._revisions.clear()  # etcd back: every held service asks again
            for rt in self.services:
                # on_unknown = local: a held withdraw is decided alone now (asked once:
                # the answer is unknown, and local withdraws).
                if self._idle_hold(rt) and not rt.policy.hold_when_unknown:
                    self.services.step(rt, sm.FleetChanged(now))
            self._metrics()
            return
        self.reachable, self.error = True, ""
        self.view = view.services
        self.slots.held = view.slots or {}
        for rt in self.services:
            peers = self.view.get(rt.name, {})
            revisions = {n: p.mod_revision for n, p in peers.items() if n != self.settings.node}
            changed = revisions != self._revisions.get(rt.name)
            self._revisions[rt.name] = revisions
            if changed and self._idle_hold(rt):
                self.services.step(rt, sm.FleetChanged(now))
        self.refresh()
        self._metrics()

    @staticmethod
    def _idle_hold(rt: ServiceRuntime) -> bool:
        """The guard holds the service's withdraw and no question is out."""
        return rt.state.guard_held and rt.state.guard_deadline is None

    def _metrics(self) -> None:
        if self.metrics is None:
            return
        self.metrics.reachable(bool(self.reachable))
        for rt in self.services:
            peers = self.view.get(rt.name, {})
            self.metrics.service(
                rt.name,
                announcing=sum(1 for p in peers.values() if counts(p.record)),
                held=rt.state.guard_held,
                waiting=rt.name in self.slots.waiting,
            )

    # ------------------------------------------------------------ the operator's view

    def snapshot(self, service: str | None = None) -> dict[str, Any]:
        """``announcer fleet``: the group's nodes per service, as last read."""
        services: dict[str, Any] = {}
        for name in sorted(self.view if service is None else [service]):
            nodes = self.view.get(name, {})
            rt = self.services.runtimes.get(name)
            services[name] = {
                "announcing": sum(1 for p in nodes.values() if counts(p.record)),
                "min_announcing": rt.policy.min_announcing if rt else None,
                "max_drained": rt.service.max_drained if rt else None,
                "drained_by": sorted(self.slots.held.get(name, [])),
                "free_slots": (
                    max(0, rt.service.max_drained - len(self.slots.held.get(name, [])))
                    if rt and rt.service.max_drained
                    else None
                ),
                "waiting": rt.slot_note if rt else "",
                "guard": guard_text(rt) if rt else None,
                "nodes": {
                    n: {
                        "route": p.record.route,
                        "health": p.record.health,
                        "drained": p.record.drained,
                        "reason": p.record.reason,
                        "announcing": counts(p.record),
                        "since": p.record.since,
                        "lease": p.lease,
                        **_forwarding(p.record),
                    }
                    for n, p in sorted(nodes.items())
                },
            }
        return {
            "group": self.settings.group,
            "node": self.settings.node,
            "etcd": {"reachable": self.reachable, "error": self.error or None},
            "on_unknown": self.settings.on_unknown,
            "services": services,
        }

    def lease_left(self, snapshot: dict[str, Any], budget: float = 1.5) -> None:
        """Add each node's lease time left to a :meth:`snapshot` (blocking etcd reads: call
        it off the main loop, as the control socket's worker threads do), spending about
        ``budget`` seconds at most."""
        client = self.worker.store.client
        ttls: dict[int, int | None] = {}
        # Best effort within a second or two: the operator's command must answer even
        # while etcd does not (then no lease is shown).
        until = time.monotonic() + budget
        asking = snapshot.get("etcd", {}).get("reachable") is True
        for svc in snapshot.get("services", {}).values():
            for node in svc.get("nodes", {}).values():
                lease = node.get("lease") or 0
                if asking and lease and lease not in ttls:
                    try:
                        ttls[lease] = client.time_to_live(lease, attempts=1)
                    except EtcdError:
                        ttls[lease] = None
                    asking = time.monotonic() < until
                node["lease_left"] = ttls.get(lease)

    def close(self) -> None:
        for done in self.closing:
            done()
        self.worker.stop()


def _forwarding(record: Record) -> dict[str, Any]:
    """A node's drain-forwarding fields, where it has them (docs/drain.md)."""
    fields = {
        "underlay": record.underlay,
        "tunnel": record.tunnel,
        "forwarding_to": record.forwarding_to,
        "forward_until": record.forward_until,
    }
    shown = {k: v for k, v in fields.items() if v}
    if shown and record.forward_until:
        shown["connections"] = record.connections
    return shown
