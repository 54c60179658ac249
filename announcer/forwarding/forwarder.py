"""Drain forwarding on the daemon's side (main thread): the standing part at start, the
moving part from each fleet view, everything removed at stop.

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
from announcer.fleet.records import Record
from announcer.forwarding import plan
from announcer.forwarding.kernel import Kernel, KernelError, NetKernel
from announcer.forwarding.settings import ForwardingSettings
from announcer.log import Logger
from announcer.runtime import ServiceRuntime

if TYPE_CHECKING:
    from announcer.daemon import Daemon
    from announcer.fleet.guard import FleetGuard
    from announcer.fleet.store import Peer


class Forwarder:
    def __init__(
        self,
        settings: ForwardingSettings,
        node: str,
        services: Callable[[], Iterable[ServiceRuntime]],
        kernel: Kernel,
        log: Logger,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings, self.node, self.services = settings, node, services
        self.kernel, self.log, self.wall = kernel, log, wall
        self.routes: dict[IPv4Network, IPv4Address] = {}
        self.chosen: dict[str, plan.Target] = {}
        self.problem = ""
        """Why the standing part is not in place (empty: it is)."""
        self.installed = False
        self._drained_at: dict[str, float] = {}

    def _forwarding(self) -> list[ServiceRuntime]:
        return [rt for rt in self.services() if rt.service.forward_connections]

    def start(self) -> None:
        """Install the standing part for every service that forwards (none: nothing)."""
        services = self._forwarding()
        if not services:
            return
        prefixes = [p for rt in services for p in rt.service.prefixes if isinstance(p, IPv4Network)]
        missing = self.kernel.missing()
        for what in missing:
            self.log.warning("forwarding_missing", what=what)
        try:
            self.kernel.install(prefixes)
        except KernelError as err:
            self.problem = f"not set up: {err}"
            self.log.error("forwarding", installed=False, why=str(err))
        else:
            self.installed = True
            self.log.info(
                "forwarding",
                installed=True,
                device=self.settings.device,
                underlay=str(self.settings.underlay),
                prefixes=len(prefixes),
            )
        self._notes()

    # ------------------------------------------------------------ what this node publishes

    def fields(self, rt: ServiceRuntime) -> dict[str, Any]:
        """The record's forwarding fields for ``rt`` (none without forward_connections)."""
        if not rt.service.forward_connections or not self.installed:
            return {}
        out: dict[str, Any] = {"underlay": str(self.settings.underlay)}
        if rt.state.drained:
            began = self._drained_at.setdefault(rt.name, self.wall())
            out.update(connections=rt.connections, forward_until=began + self.settings.max_seconds)
        else:
            self._drained_at.pop(rt.name, None)
        return out

    # ------------------------------------------------------------ what it does for peers

    def on_view(self, view: Mapping[str, Mapping[str, Peer]]) -> None:
        """Route each service's unknown packets to its draining peer, if any."""
        if not self.installed:
            return
        wanted = {
            rt.name: plan.Wanted(
                [p for p in rt.service.prefixes if isinstance(p, IPv4Network)], rt.state.drained
            )
            for rt in self._forwarding()
        }
        records: dict[str, dict[str, Record]] = {
            service: {node: peer.record for node, peer in nodes.items()}
            for service, nodes in view.items()
        }
        chosen = plan.targets(self.node, wanted, records, self.wall())
        routes = plan.routes(wanted, chosen)
        if routes != self.routes:
            try:
                self.kernel.route(routes)
            except KernelError as err:
                self.problem = str(err)
                self.log.error("forwarding_routes", why=str(err))
                return
            self.routes, self.problem = routes, ""
        self._log_changes(chosen)
        self.chosen = chosen
        self._notes()

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
        for rt in self._forwarding():
            target = self.chosen.get(rt.name)
            if self.problem:
                rt.forward_note = self.problem
            elif target is not None:
                left = "?" if target.connections is None else target.connections
                rt.forward_note = (
                    f"passing unknown connections to {target.node} ({target.underlay}), "
                    f"{left} left there"
                )
            else:
                rt.forward_note = ""

    def close(self) -> None:
        """Take the standing part and the routes away (at stop)."""
        if self.installed:
            self.kernel.remove()
            self.installed = False
            self.log.info("forwarding", installed=False)


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
    )
    forwarder.start()
    guard.more_fields = forwarder.fields
    guard.closing.append(forwarder.close)
    on_view = daemon.handlers[msg.FleetView]

    def view_then_forward(view: msg.FleetView) -> None:
        on_view(view)
        if view.services is not None:
            forwarder.on_view(guard.view)

    daemon.handlers[msg.FleetView] = view_then_forward
    return forwarder
