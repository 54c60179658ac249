"""Drain forwarding on the daemon's side (main thread): the standing part at start (and
after a reload, for the prefixes then forwarding), the moving part from each fleet view,
everything removed at stop.

What a node publishes for a service with ``forward_connections`` (its record's
``underlay``, ``connections`` and ``forward_until``) comes from :meth:`Forwarder.fields`;
what it does with its peers' records is :func:`announcer.forwarding.plan.targets`,
applied through the :class:`~announcer.forwarding.kernel.Kernel`. Kernel calls are a
few netlink messages, made only when the plan changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any

from announcer import messages as msg
from announcer import state as sm
from announcer.drains import DrainWish
from announcer.fleet.records import ANNOUNCING_ROUTES, Record
from announcer.forwarding import plan
from announcer.forwarding.kernel import Kernel, KernelError, NetKernel
from announcer.forwarding.settings import ForwardingSettings
from announcer.log import Logger
from announcer.runtime import ServiceRuntime

if TYPE_CHECKING:
    from announcer.daemon import Daemon
    from announcer.fleet.guard import FleetGuard
    from announcer.fleet.store import Peer

UNDELAYED = (sm.DrainSource.STOP, sm.DrainSource.REMOVED)
"""Drains that never wait for the peers: a stop or a removal must not hang on them."""
Start = Callable[[ServiceRuntime, DrainWish], None]
Publish = Callable[[ServiceRuntime], None]


class Forwarder:
    def __init__(
        self,
        settings: ForwardingSettings,
        node: str,
        services: Callable[[], Iterable[ServiceRuntime]],
        kernel: Kernel,
        log: Logger,
        clock: Callable[[], float],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings, self.node, self.services = settings, node, services
        self.kernel, self.log, self.clock, self.wall = kernel, log, clock, wall
        self.pending: dict[str, tuple[DrainWish, float]] = {}
        """Drains waiting for the peers to forward: the wish, and until when (clock)."""
        self.start_drain: Start = lambda rt, wish: None
        self.publish: Publish = lambda rt: None
        self.routes: dict[IPv4Network, IPv4Address] = {}
        self.chosen: dict[str, plan.Target] = {}
        self.problem = ""
        """Why the standing part is not in place (empty: it is)."""
        self.installed = False
        self.prefixes: tuple[IPv4Network, ...] = ()
        """The prefixes the standing part marks packets for (as installed)."""
        self._asked: tuple[IPv4Network, ...] = ()
        """The prefixes last set up for (a failed update is retried by a reload, not by
        every fleet view)."""
        self._unapplied = ""
        """Why the last update of the prefixes failed (status says so until one works)."""
        self._settled = False
        """The forwarding table has had its first routes (until then: the start's blackholes)."""
        self._drained_at: dict[str, float] = {}
        self._mismatched: dict[str, tuple[tuple[str, str], ...]] = {}
        """Draining peers not forwarded to: their tunnel type is not this node's."""

    def _forwarding(self) -> list[ServiceRuntime]:
        return [rt for rt in self.services() if rt.service.forward_connections]

    def _prefixes(self) -> tuple[IPv4Network, ...]:
        """The forwarding services' prefixes, each once, in a stable order."""
        found = {p for rt in self._forwarding() for p in rt.service.prefixes}
        return tuple(sorted(p for p in found if isinstance(p, IPv4Network)))

    def start(self) -> None:
        """Install the standing part for every service that forwards (none: nothing)."""
        self._asked = self._prefixes()
        if not self._asked:
            return
        for what in self.kernel.missing():
            self.log.warning("forwarding_missing", what=what)
        self._install(self._asked)

    def _install(self, prefixes: tuple[IPv4Network, ...]) -> None:
        try:
            self.kernel.install(prefixes)
        except KernelError as err:
            self.problem = f"not set up: {err}"
            self.log.error("forwarding", installed=False, why=str(err))
        else:
            self.installed, self.prefixes, self.problem = True, prefixes, ""
            self.log.info(
                "forwarding",
                installed=True,
                device=self.settings.device,
                underlay=str(self.settings.underlay),
                prefixes=len(prefixes),
            )
        self._notes()

    def reconfigure(self) -> None:
        """After a reload: the standing part follows the services that forward now:
        installed for the first (or again, if the kernel refused before), its set of
        prefixes replaced in one transaction when they changed (nothing else is touched:
        what is being forwarded goes on), removed with the last; the forwarding table
        follows at once. The ``[forwarding]`` table itself needs a restart (reload.py)."""
        self._release()
        prefixes = self._asked = self._prefixes()
        if not prefixes:
            self.close()
        elif not self.installed:
            self.start()
        elif prefixes != self.prefixes:
            try:
                self.kernel.update(prefixes)
            except KernelError as err:
                self.problem = self._unapplied = f"prefixes not updated: {err}"
                self.log.error("forwarding", updated=False, why=str(err))
            else:
                self.prefixes, self.problem, self._unapplied = prefixes, "", ""
                self.log.info("forwarding", updated=True, prefixes=len(prefixes))
        if self.installed and self._settled:
            self._route(self._wanted(), self.chosen)
        self._notes()
        for rt in self.services():
            self.publish(rt)  # the records' forwarding fields follow the services'

    def _release(self) -> None:
        """Drains waiting for the peers of services that no longer forward start now
        (nobody passes their packets any more: there is nothing to wait for)."""
        for name, (wish, _) in list(self.pending.items()):
            rt = next((r for r in self.services() if r.name == name), None)
            if rt is not None and rt.service.forward_connections and self.installed:
                continue
            del self.pending[name]
            if rt is not None:
                rt.peers_awaited = False
                self.log.info("forwarding_ready", service=name, ready=False, late="not forwarding")
                self.start_drain(rt, wish)

    # ------------------------------------------------------------ what this node publishes

    def fields(self, rt: ServiceRuntime) -> dict[str, Any]:
        """The record's forwarding fields for ``rt`` (none without forward_connections)."""
        if not rt.service.forward_connections or not self.installed:
            return {}
        out: dict[str, Any] = {
            "underlay": str(self.settings.underlay),
            "tunnel": self.settings.tunnel,
        }
        target = self.chosen.get(rt.name)
        if target is not None:
            out["forwarding_to"] = target.node
        if rt.state.drained or rt.name in self.pending:
            began = self._drained_at.setdefault(rt.name, self.wall())
            out["forward_until"] = began + self.settings.max_seconds
            out["connections"] = rt.connections if rt.state.drained else None
        else:
            self._drained_at.pop(rt.name, None)
        return out

    # ------------------------------------------------------------ a drain waits for the peers

    def request(self, rt: ServiceRuntime, wish: DrainWish) -> bool:
        """A first drain: True if it waits until the peers forward (started later)."""
        if rt.name in self.pending:
            return True
        if not rt.service.forward_connections or not self.installed or wish.source in UNDELAYED:
            return False
        self.pending[rt.name] = (wish, self.clock() + self.settings.ready_seconds)
        self.log.info("forwarding_ready_wait", service=rt.name, source=str(wish.source))
        self._notes()
        self.publish(rt)  # forward_until: the peers' cue
        return True

    def cancel(self, rt: ServiceRuntime, source: sm.DrainSource) -> None:
        waiting = self.pending.get(rt.name)
        if waiting is not None and waiting[0].source is source:
            del self.pending[rt.name]
            self.log.info("forwarding_ready_cancelled", service=rt.name)
            self._notes()
            self.publish(rt)

    def _ready(self, records: Mapping[str, Mapping[str, Record]], *, known: bool = True) -> None:
        """Start the waiting drains whose announcing peers all forward to this node (or
        whose ``ready_seconds`` have passed)."""
        now = self.clock()
        waiting = len(self.pending)
        for name, (wish, until) in list(self.pending.items()):
            rt = next((r for r in self._forwarding() if r.name == name), None)
            if rt is None:
                del self.pending[name]
                continue
            peers = {node: r for node, r in records.get(name, {}).items() if node != self.node}
            # Every peer whose route carries traffic (announcing or not as the guard
            # counts it): one that does not forward yet would reset what it receives.
            late = sorted(
                n
                for n, r in peers.items()
                if r.route in ANNOUNCING_ROUTES and r.forwarding_to != self.node
            )
            if (late or not known) and now < until:
                continue
            del self.pending[name]
            if late or not known:
                late_text = ",".join(late) or "unknown (etcd unreachable)"
                self.log.warning("forwarding_ready", service=name, ready=False, late=late_text)
            else:
                self.log.info("forwarding_ready", service=name, ready=True, peers=len(peers))
            self.start_drain(rt, wish)
        if len(self.pending) != waiting:
            self._notes()  # status: no longer waiting, whether the routes apply or not

    # ------------------------------------------------------------ what it does for peers

    def on_view(self, view: Mapping[str, Mapping[str, Peer]] | None) -> None:
        """Route each service's unknown packets to its draining peer, if any (``None``:
        etcd unreachable: the routes stay, waiting drains start at their deadline)."""
        if self.installed and self._prefixes() != self._asked:
            self.reconfigure()  # a service a reload removed has retired since
        if not self.installed:
            return
        if view is None:
            self._ready({}, known=False)
            if not self._settled:
                self._apply(self.routes)  # etcd away at start: the start's blackholes go
            return
        wanted = self._wanted()
        records: dict[str, dict[str, Record]] = {
            service: {node: peer.record for node, peer in nodes.items()}
            for service, nodes in view.items()
        }
        now, tunnel = self.wall(), self.settings.tunnel
        chosen = plan.targets(self.node, wanted, records, now, tunnel)
        self._tunnels(plan.mismatched(plan.asking(self.node, wanted, records, now), tunnel))
        self._ready(records)
        self._route(wanted, chosen)

    def _tunnels(self, mismatched: dict[str, tuple[tuple[str, str], ...]]) -> None:
        """Log each draining peer this node cannot reach (its tunnel type is another)
        once, when it starts asking: it loses the connections the router moves here."""
        for service, peers in mismatched.items():
            for node, theirs in set(peers) - set(self._mismatched.get(service, ())):
                self.log.error(
                    "forwarding_tunnel_mismatch",
                    service=service,
                    node=node,
                    tunnel=theirs,
                    ours=self.settings.tunnel,
                )
        self._mismatched = mismatched

    def _wanted(self) -> dict[str, plan.Wanted]:
        return {
            rt.name: plan.Wanted(
                [p for p in rt.service.prefixes if isinstance(p, IPv4Network)],
                rt.state.drained or rt.name in self.pending,
            )
            for rt in self._forwarding()
        }

    def _route(self, wanted: Mapping[str, plan.Wanted], chosen: Mapping[str, plan.Target]) -> None:
        """Route ``chosen`` (services no longer wanted dropped) unless the table holds it."""
        chosen = {s: t for s, t in chosen.items() if s in wanted and not wanted[s].drained_here}
        routes = plan.routes(wanted, chosen)
        if (routes != self.routes or not self._settled) and not self._apply(routes):
            return
        self._log_changes(chosen)
        self.chosen = chosen
        self._notes()

    def _apply(self, routes: dict[IPv4Network, IPv4Address]) -> bool:
        """Make the forwarding table hold ``routes``; False (logged, in status) if refused."""
        try:
            self.kernel.route(routes)
        except KernelError as err:
            self.problem = str(err)
            self.log.error("forwarding_routes", why=str(err))
            self._notes()
            return False
        self.routes, self.problem, self._settled = routes, self._unapplied, True
        return True

    def _log_changes(self, chosen: Mapping[str, plan.Target]) -> None:
        for service in sorted(set(chosen) | set(self.chosen)):
            new, old = chosen.get(service), self.chosen.get(service)
            if new is not None and (old is None or old.node != new.node):
                self.log.info(
                    "forwarding_to",
                    service=service,
                    node=new.node,
                    underlay=str(new.underlay),
                    connections=new.connections,
                    also_drained=",".join(new.others),
                )
            elif new is None and old is not None:
                self.log.info("forwarding_stopped", service=service, node=old.node)

    def _notes(self) -> None:
        for rt in self.services():
            rt.peers_awaited = rt.name in self.pending
            target = self.chosen.get(rt.name)
            if not rt.service.forward_connections:
                rt.forward_note = ""
            elif self.problem:
                rt.forward_note = self.problem
            elif rt.name in self.pending:
                rt.forward_note = "waiting for the peers to pass this node's connections"
            elif target is not None:
                left = "?" if target.connections is None else target.connections
                rt.forward_note = (
                    f"passing unknown connections to {target.node} ({target.underlay}), "
                    f"{left} left there"
                )
            else:
                rt.forward_note = ""

    def close(self) -> None:
        """Take the standing part and the routes away (at stop, or once no service
        forwards: a later one installs it again, blackholes until the next view)."""
        if self.installed:
            self.kernel.remove()
            self.installed = False
            self.log.info("forwarding", installed=False)
        self.prefixes, self.routes, self.chosen = (), {}, {}
        self.problem, self._unapplied, self._settled = "", "", False


def attach(
    daemon: Daemon,
    guard: FleetGuard,
    settings: ForwardingSettings,
    kernel: Kernel | None = None,
) -> Forwarder:
    """The forwarder, its standing part installed, fed by the fleet's views."""
    forwarder = Forwarder(
        settings,
        guard.settings.node,
        lambda: daemon.services,
        kernel or NetKernel(settings),
        daemon.log,
        daemon.clock,
    )
    forwarder.start()
    daemon.configs.reloaded.append(forwarder.reconfigure)
    guard.more_fields = forwarder.fields
    guard.closing.append(forwarder.close)
    drains = daemon.services.drains
    drains.prepare = forwarder

    def start(rt: ServiceRuntime, wish: DrainWish) -> None:
        drains.drain(
            rt, wish.source, wish.reason, daemon.clock(), force=wish.force, granted=True, ready=True
        )

    forwarder.start_drain, forwarder.publish = start, guard.stepped
    on_view = daemon.handlers[msg.FleetView]

    def forward_then_view(view: msg.FleetView) -> None:
        # First: the records published while handling the view (guard.on_view's refresh)
        # then say where this node forwards.
        forwarder.on_view(view.services)
        on_view(view)

    daemon.handlers[msg.FleetView] = forward_then_view
    return forwarder
