"""A simulated fleet for P6b and P6c: many nodes' fleet clients without ExaBGP.

Each simulated node is announcer's own :class:`~announcer.fleet.store.FleetStore` (its
lease, its records written on change, the guard's transaction) driven by simulated
health instead of checks and a state machine. What a node does follows the daemon:

- a check result that changes nothing is compared with the last record written and
  costs no etcd request (the daemon's :meth:`FleetGuard.stepped`);
- a failure of an announced service asks the guard (:meth:`FleetStore.decide`):
  allowed, or unknown with ``on_unknown = "local"``, withdraws (the transaction wrote
  the record, or the record is written after); refused, the node holds the route
  lowered (still announcing) and writes that record;
- a held service asks again when a peer's key changed, seen by a read of the
  service's keys every :data:`POLL` seconds (the daemon's fleet thread reads the
  whole group's view that often: its cost is measured apart, see
  :func:`view_cost`);
- the lease is renewed every third of its TTL (the ``fleet-lease`` thread).

The nodes share a few ``requests`` sessions (:class:`EtcdClient` is thread-safe) and
a small pool of threads; one node's etcd jobs run one at a time, in order, as on its
single fleet thread. A shared :class:`Counts` follows, per service, how many nodes
announce by their own decisions (the guards' view of the fleet).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import random
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

from announcer.fleet.etcd import EtcdClient, EtcdError, b64, prefix_end, unb64
from announcer.fleet.records import Keys, Record
from announcer.fleet.store import FleetStore, counts

POLL = 1.0
"""Seconds between a held node's reads of its service's keys (the worker's view poll)."""

ANNOUNCED, LOWERED, WITHDRAWN = "ANNOUNCED", "LOWERED", "WITHDRAWN"
_NO_ANSWERS = {"allowed": 0, "refused": 0, "unknown": 0}


# --------------------------------------------------------------------------- etcd's counters

COUNTERS = {
    "proposals": "etcd_server_proposals_committed_total",
    "puts": "etcd_mvcc_put_total",
    "txns": "etcd_mvcc_txn_total",
    "ranges": "etcd_mvcc_range_total",
    "renewals": "etcd_debugging_lease_renewed_total",
    "grants": "etcd_debugging_lease_granted_total",
    "fsyncs": "etcd_disk_wal_fsync_duration_seconds_count",
    "cpu": "process_cpu_seconds_total",
}
SUMMED = {"ranges", "renewals", "fsyncs", "cpu"}
"""Counted where served (a range, a renewal on the leader) or per member (its own fsyncs,
its CPU): summed over members. The others are applied by every member: the largest."""


def etcd_counters(urls: Sequence[str]) -> dict[str, float]:
    """etcd's own counters from each member's ``/metrics``, over the cluster."""
    per: list[dict[str, float]] = []
    for url in urls:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as reply:  # noqa: S310 - loopback
            text = reply.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            for key, metric in COUNTERS.items():
                if name == metric:
                    values[key] = float(value)
        per.append(values)
    return {key: (sum if key in SUMMED else max)(p.get(key, 0.0) for p in per) for key in COUNTERS}


def rates(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Per second between two :func:`etcd_counters` (``cpu``: cores of etcd, all members)."""
    return {k: (after[k] - before[k]) / seconds for k in COUNTERS}


def own_cpu() -> float:
    """CPU seconds of this process (every simulated node and the driver)."""
    return time.process_time()


# --------------------------------------------------------------------------- the nodes


@dataclass
class Counts:
    """How many nodes announce each service by their own decisions; the lowest seen."""

    services: Sequence[str]
    now: dict[str, int] = field(default_factory=dict)
    lowest: dict[str, int] = field(default_factory=dict)
    routes: int = 0
    """Route changes so far (announced, lowered, withdrawn), every node."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def change(self, service: str, delta: int) -> None:
        with self.lock:
            now = self.now[service] = self.now.get(service, 0) + delta
            self.lowest[service] = min(self.lowest.get(service, now), now)

    def reset_lowest(self) -> None:
        with self.lock:
            self.lowest = dict(self.now)


@dataclass
class Svc:
    name: str
    healthy: bool = True
    route: str = WITHDRAWN
    sent: Record | None = None
    busy: bool = False
    """An etcd job for it is queued or running (a question out, a write pending)."""
    seen: dict[str, int] | None = None
    """Held: the peers' mod_revisions at the last read."""


class SimNode:
    def __init__(
        self,
        name: str,
        client: EtcdClient,
        keys: Keys,
        lease_seconds: int,
        services: Iterable[str],
        minimum: int,
        counts_: Counts,
    ) -> None:
        self.name, self.minimum, self.counts = name, minimum, counts_
        self.store = FleetStore(client, keys, name, lease_seconds)
        self.svcs = {s: Svc(s) for s in services}
        self.lock = threading.Lock()  # one job at a time: the node's single fleet thread
        self.decisions: dict[str, int] = dict(_NO_ANSWERS)
        self.unknown: dict[str, int] = {}
        """Why the unknown answers were unknown (etcd's message), how many of each."""
        self.errors = 0

    def record(self, s: Svc) -> Record:
        return Record(
            node=self.name,
            route=s.route,
            health="UP" if s.healthy else "DOWN",
            announcing=s.route in (ANNOUNCED, LOWERED),
            since=time.time(),
        )

    def wanted(self, s: Svc) -> str | None:
        """After a check result: the etcd job it needs ("publish", "ask"), or None."""
        if s.busy:
            return None
        if s.healthy and s.route != ANNOUNCED:
            return "up"
        if not s.healthy and s.route == ANNOUNCED:
            return "ask"
        return None if self.record(s).same(s.sent) else "publish"

    def run(self, service: str, job: str) -> None:
        """One etcd job, on a pool thread, never two of a node's at once."""
        with self.lock:
            s = self.svcs[service]
            try:
                if job == "up":
                    self._route(s, ANNOUNCED)
                    self._publish(s)
                elif job == "ask":
                    self._ask(s)
                elif job == "reask":
                    if s.route == LOWERED and not s.healthy:
                        self._ask(s)
                else:
                    self._publish(s)
            except EtcdError:
                self.errors += 1
            finally:
                s.busy = False

    def _route(self, s: Svc, route: str) -> None:
        was = s.route in (ANNOUNCED, LOWERED)
        if s.route != route:
            with self.counts.lock:
                self.counts.routes += 1
        s.route = route
        now = route in (ANNOUNCED, LOWERED)
        if was != now:
            self.counts.change(s.name, 1 if now else -1)

    def _publish(self, s: Svc) -> None:
        record = self.record(s)
        self.store.publish(s.name, record)
        s.sent = record

    def _ask(self, s: Svc) -> None:
        after = Record(node=self.name, route=WITHDRAWN, health="DOWN", since=time.time())
        decision = self.store.decide(s.name, after, self.minimum)
        if decision.allowed is False:
            self.decisions["refused"] += 1
            self._route(s, LOWERED)  # held: announcing, lowered
            self._publish(s)
            return
        self.decisions["allowed" if decision.allowed else "unknown"] += 1
        if decision.allowed is None:
            why = decision.why.rsplit(": ", 1)[-1]  # without the endpoint's URL
            self.unknown[why] = self.unknown.get(why, 0) + 1
        self._route(s, WITHDRAWN)  # allowed, or unknown and on_unknown = "local"
        s.sent = after if decision.allowed else None
        s.seen = None
        if decision.allowed is None:
            self._publish(s)

    def held_changed(self, service: str) -> bool:
        """A held service's peers changed since the last read (a range of its keys)."""
        s = self.svcs[service]
        try:
            seen = {p.record.node: p.mod_revision for p in self.store.peers(service)}
        except EtcdError:
            return False
        changed = seen != s.seen
        s.seen = seen
        return changed

    def keepalive(self) -> None:
        try:
            if not self.store.keepalive():
                with self.lock:
                    self.store.ensure_lease()
                    self.store.republish()
        except EtcdError:
            self.errors += 1


class SimFleet:
    """``nodes`` x ``services`` simulated nodes, their checks every ``interval`` seconds."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        nodes: int,
        services: int,
        group: str,
        minimum: int = 1,
        lease_seconds: int = 10,
        interval: float = 1.0,
        sessions: int = 4,
        threads: int = 12,
        seed: int = 13,
    ) -> None:
        self.urls = list(urls)
        self.keys = Keys("/announcer-bench/", group)
        self.services = [f"svc{i:02d}" for i in range(services)]
        self.counts = Counts(self.services)
        self.clients = [
            EtcdClient(self.urls[i % len(self.urls) :] + self.urls[: i % len(self.urls)])
            for i in range(sessions)
        ]
        self.nodes = [
            SimNode(
                f"n{i:03d}",
                self.clients[i % sessions],
                self.keys,
                lease_seconds,
                self.services,
                minimum,
                self.counts,
            )
            for i in range(nodes)
        ]
        self.interval = interval
        self.checks = 0
        self.random = random.Random(seed)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="simnode")
        self._lease_pool = ThreadPoolExecutor(6, thread_name_prefix="simlease")
        self._stop = threading.Event()
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------ life

    def start(self) -> SimFleet:
        for target, name in ((self._checks, "simchecks"), (self._leases, "simleases")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        self._pool.shutdown(wait=True)
        self._lease_pool.shutdown(wait=True)
        for n in self.nodes:
            n.store.close()
        for c in self.clients:
            c.close()

    def set_health(self, healthy: bool, which: Callable[[SimNode, Svc], bool] | None = None) -> int:
        changed = 0
        for n in self.nodes:
            for s in n.svcs.values():
                if (which is None or which(n, s)) and s.healthy != healthy:
                    s.healthy = healthy
                    changed += 1
        return changed

    def idle(self) -> bool:
        """No etcd job queued or running, and nothing a check would start."""
        if self._inflight:
            return False
        return all(n.wanted(s) is None for n in self.nodes for s in n.svcs.values())

    def settled(self, minimum: int) -> bool:
        """Idle, and every unhealthy service announced by exactly its minimum (or all)."""
        if not self.idle():
            return False
        for svc in self.services:
            failed = sum(1 for n in self.nodes if not n.svcs[svc].healthy)
            up = self.counts.now.get(svc, 0)
            if failed == len(self.nodes) and up != min(minimum, len(self.nodes)):
                return False
        return True

    def wait(self, predicate: Callable[[], bool], timeout: float) -> float | None:
        """Seconds until ``predicate`` holds (checked every 10 ms), None past ``timeout``."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if predicate():
                return time.monotonic() - start
            time.sleep(0.01)
        return None

    def decisions(self) -> dict[str, int]:
        """The guards' answers, every node: allowed, refused, unknown."""
        return _summed(_NO_ANSWERS, (n.decisions for n in self.nodes))

    def unknown(self) -> dict[str, int]:
        """Why answers were unknown, every node."""
        return _summed({}, (n.unknown for n in self.nodes))

    def errors(self) -> int:
        return sum(n.errors for n in self.nodes)

    # ------------------------------------------------------------ threads

    def _submit(self, node: SimNode, s: Svc, job: str) -> None:
        s.busy = True
        with self._inflight_lock:
            self._inflight += 1

        def work() -> None:
            try:
                node.run(s.name, job)
            finally:
                with self._inflight_lock:
                    self._inflight -= 1

        self._pool.submit(work)

    def _checks(self) -> None:
        """Every service of every node checked once per ``interval``, spread over it; and
        each node with a held service reads its keys every :data:`POLL` seconds."""
        pairs = [(n, s) for n in self.nodes for s in n.svcs.values()]
        order = list(range(len(pairs)))
        self.random.shuffle(order)
        polls = [(self.random.uniform(0, POLL), i) for i in range(len(self.nodes))]
        heapq.heapify(polls)
        slices = itertools.cycle(range(20))
        start = time.monotonic()
        while not self._stop.is_set():
            k = next(slices)
            for i in order[k::20]:
                node, s = pairs[i]
                self.checks += 1
                job = node.wanted(s)
                if job is not None:
                    self._submit(node, s, job)
            now = time.monotonic() - start
            while polls and polls[0][0] <= now:
                at, i = heapq.heappop(polls)
                self._poll(self.nodes[i])
                heapq.heappush(polls, (at + POLL, i))
            self._stop.wait(self.interval / 20)

    def _poll(self, node: SimNode) -> None:
        for s in node.svcs.values():
            if s.route == LOWERED and not s.busy and not s.healthy:
                s.busy = True  # the read and the question: on the pool, in order
                with self._inflight_lock:
                    self._inflight += 1

                def work(node: SimNode = node, s: Svc = s) -> None:
                    try:
                        if node.held_changed(s.name):
                            node.run(s.name, "reask")
                        else:
                            s.busy = False
                    finally:
                        with self._inflight_lock:
                            self._inflight -= 1

                self._pool.submit(work)

    def _leases(self) -> None:
        due = [(self.random.uniform(0, 1), i) for i in range(len(self.nodes))]
        heapq.heapify(due)
        start = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic() - start
            while due and due[0][0] <= now:
                at, i = heapq.heappop(due)
                node = self.nodes[i]
                if node.store.lease:
                    self._lease_pool.submit(node.keepalive)
                heapq.heappush(due, (at + node.store.lease_seconds / 3, i))
            self._stop.wait(0.01)


def _summed(start: dict[str, int], parts: Iterable[dict[str, int]]) -> dict[str, int]:
    # Counter.update, not +: a sum of Counters drops the zero counts the report shows.
    total = Counter(start)
    for part in parts:
        total.update(part)
    return dict(total)


def view_cost(fleet: SimFleet, reads: int) -> dict[str, Any]:
    """What each daemon's fleet thread does once a second for the group's view, measured
    here ``reads`` times: etcd's and this process's CPU and the latency of one probe (a
    one-key quorum read: the view then comes from the watched copy,
    announcer/fleet/watch.py), and of one read of the whole group (what it falls back to
    while the copy is not known good, and what it did each second before the watch)."""
    node = fleet.nodes[0]
    client, root = node.store.client, node.store.keys.group_root
    keys = sum(len(v) for v in node.store.view().values())
    out: dict[str, Any] = {"reads": reads, "keys": keys}
    for name, read in (("probe", lambda: client.get(root)), ("full", node.store.view)):
        before, cpu0, t0 = etcd_counters(fleet.urls), own_cpu(), time.monotonic()
        for _ in range(reads):
            read()
        seconds = time.monotonic() - t0
        after, cpu1 = etcd_counters(fleet.urls), own_cpu()
        out[name] = {
            "seconds_per_read": seconds / reads,
            "etcd_cpu_per_read": (after["cpu"] - before["cpu"]) / reads,
            "client_cpu_per_read": (cpu1 - cpu0) / reads,
        }
    return out


def announcing_in_etcd(records: Iterable[Record]) -> int:
    return sum(1 for r in records if counts(r))


def lowest_in_history(url: str, fleet: SimFleet, start: int, end: int) -> dict[str, int]:
    """Per service, the fewest nodes announcing in etcd at any revision from ``start`` to
    ``end``: the keys as they were at ``start``, then every change after it in order,
    replayed from etcd's own history (a watch from ``start + 1``)."""
    root = fleet.keys.services_root
    client = fleet.clients[0]
    state: dict[str, Record] = {}
    answer = client.call(
        "/v3/kv/range", {"key": b64(root), "range_end": prefix_end(root), "revision": str(start)}
    )
    for item in answer.get("kvs", []):
        record = Record.decode(unb64(item.get("value", "")))
        if record is not None:
            state[unb64(item["key"]).decode()] = record
    lowest = {svc: _announcing(state, fleet, svc) for svc in fleet.services}
    if end <= start:
        return lowest
    body = {
        "create_request": {
            "key": b64(root),
            "range_end": prefix_end(root),
            "start_revision": str(start + 1),
        }
    }
    with (
        contextlib.suppress(requests.RequestException),
        requests.post(url + "/v3/watch", json=body, stream=True, timeout=10) as reply,
    ):
        for line in reply.iter_lines():
            events = json.loads(line).get("result", {}).get("events", [])
            revision = 0
            for event in events:
                kv = event["kv"]
                key = unb64(kv["key"]).decode()
                revision = int(kv.get("mod_revision", 0))
                if event.get("type") == "DELETE":
                    state.pop(key, None)
                else:
                    record = Record.decode(unb64(kv.get("value", "")))
                    if record is not None:
                        state[key] = record
                where = fleet.keys.parse(key)
                if where is not None:
                    now = _announcing(state, fleet, where[0])
                    lowest[where[0]] = min(lowest[where[0]], now)
            if revision >= end:
                break
    return lowest


def _announcing(state: dict[str, Record], fleet: SimFleet, service: str) -> int:
    folder = fleet.keys.service(service)
    return announcing_in_etcd(r for k, r in state.items() if k.startswith(folder))


def revision(fleet: SimFleet) -> int:
    return fleet.clients[0].range(fleet.keys.services_root + "~")[1]
