"""Plugs the fleet guard into a daemon that has a ``[fleet]``: the etcd client, the
store, the fleet's threads and the daemon-side guard with its message handlers. Kept
out of daemon.py, which calls :func:`attach` and nothing else of the fleet."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from announcer import messages as msg
from announcer.fleet.etcd import EtcdClient
from announcer.fleet.guard import FleetGuard
from announcer.fleet.records import Keys
from announcer.fleet.settings import FleetSettings
from announcer.fleet.store import FleetStore
from announcer.fleet.worker import FleetWorker

if TYPE_CHECKING:
    from announcer.daemon import Daemon
    from announcer.log import Logger

WorkerFactory = Callable[[FleetSettings, Callable[[msg.Message], None], "Logger"], FleetWorker]


def make_worker(
    settings: FleetSettings, post: Callable[[msg.Message], None], log: Logger
) -> FleetWorker:
    client = EtcdClient(
        settings.endpoints,
        timeout=settings.timeout,
        ca_file=settings.ca_file,
        user=settings.user,
        password=settings.password,
    )
    keys = Keys(settings.key_prefix, settings.group)
    store = FleetStore(client, keys, settings.node, settings.lease_seconds)
    return FleetWorker(store, post, log)


def attach(
    daemon: Daemon, settings: FleetSettings, factory: WorkerFactory | None = None
) -> FleetGuard:
    """The guard, its threads started and its handlers in ``daemon.handlers``
    (``factory``: tests give a fleet thread of their own; default :func:`make_worker`)."""
    metrics = None
    if daemon.metrics is not None:
        from announcer.fleet.metrics import FleetMetrics

        metrics = FleetMetrics(daemon.metrics.registry)
    worker = (factory or make_worker)(settings, daemon.post, daemon.log)
    guard = FleetGuard(
        settings, daemon.services, daemon.wire, worker, daemon.log, metrics, daemon.clock
    )
    daemon.handlers.update(guard.handlers(daemon.handlers[msg.StdinLine]))
    forwarding = daemon.config.settings.forwarding
    if forwarding is not None:
        from announcer.forwarding.forwarder import attach as forward

        forward(daemon, guard, forwarding)
    worker.start()
    daemon.log.info(
        "fleet",
        group=settings.group,
        node=settings.node,
        endpoints=len(settings.endpoints),
        on_unknown=settings.on_unknown,
    )
    return guard
