"""The fleet's Prometheus metrics, in the daemon's registry; created only with a
``[fleet]``, so a node without one exports exactly what it did before."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram

TXN_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
RESULTS = {True: "allowed", False: "refused", None: "unknown"}


_GAUGES = {
    # name: (help, labels)
    "announcer_fleet_announcing": (
        "Nodes of the group announcing the service, as last read from etcd.",
        ("service",),
    ),
    "announcer_fleet_guard_holding": (
        "1 while the fleet guard keeps this node's failed route announced (lowered).",
        ("service",),
    ),
    "announcer_fleet_drain_waiting": (
        "1 while a drain of this node waits in line for a drain slot.",
        ("service",),
    ),
    "announcer_fleet_etcd_reachable": (
        "1 while etcd answers this node; 0 while on_unknown decides.",
        (),
    ),
}


class FleetMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        g = {
            name: Gauge(name, text, labels, registry=registry)
            for name, (text, labels) in _GAUGES.items()
        }
        self._announcing = g["announcer_fleet_announcing"]
        self._holding = g["announcer_fleet_guard_holding"]
        self._waiting = g["announcer_fleet_drain_waiting"]
        self._reachable = g["announcer_fleet_etcd_reachable"]
        self._txn = Histogram(
            "announcer_fleet_decision_seconds",
            "Time the guard's decision took (reads and transaction), by result.",
            ["result"],
            buckets=TXN_BUCKETS,
            registry=registry,
        )
        for result in RESULTS.values():
            self._txn.labels(result)

    def decision(self, seconds: float, allowed: bool | None) -> None:
        self._txn.labels(RESULTS[allowed]).observe(max(0.0, seconds))

    def reachable(self, ok: bool) -> None:
        self._reachable.set(1 if ok else 0)

    def service(self, service: str, *, announcing: int, held: bool, waiting: bool) -> None:
        self._announcing.labels(service).set(announcing)
        self._holding.labels(service).set(1 if held else 0)
        self._waiting.labels(service).set(1 if waiting else 0)
