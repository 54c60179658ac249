"""This node's side of the group in etcd: its lease, its records, the group's view and
the guard's transaction. Blocking calls: run on the fleet thread, never the main loop.

The guard's question (:meth:`FleetStore.decide`): read the service's keys, count the
peers announcing; too few: refused. Enough: one transaction that writes this node's
new record only if ``min_announcing`` of the counted peer keys (those changed least
recently) still have the mod_revision read (a key gone since compares unequal), so two
nodes deciding at once cannot both take the last place; the loser reads again and
counts again. Comparing every counted peer would be no safer and fails in a large
group: etcd refuses a transaction of more than 128 operations (--max-txn-ops). A
transaction whose answer is lost is never sent again: this node's key is read back,
and the ``seq`` in it tells whether the write applied.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from announcer.fleet.etcd import EtcdClient, EtcdError, KeyValue, Uncertain
from announcer.fleet.records import ANNOUNCING_ROUTES, Keys, Record

DECIDE_ATTEMPTS = 5
"""Reads-and-transactions one decision may take while peers keep changing; then it is
refused for now and asked again when the peers change."""

PauseHook = Callable[[str, int], None]
"""Tests only: called with (service, attempt) between reading the peers and the txn."""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool | None
    """None: unknown (etcd could not be reached, or the outcome could not be read back)."""
    announcing: int
    """Peers counted as announcing."""
    latency: float = 0.0
    why: str = ""


@dataclass(frozen=True, slots=True)
class Peer:
    record: Record
    mod_revision: int
    lease: int


class FleetStore:
    def __init__(self, client: EtcdClient, keys: Keys, node: str, lease_seconds: int) -> None:
        self.client, self.keys, self.node = client, keys, node
        self.lease_seconds = lease_seconds
        self.lease = 0
        self.records: dict[str, Record] = {}
        """What this node last wrote (or means to write) per service."""
        self._seq = int(time.time() * 1000)  # grows across restarts too
        self._lock = threading.Lock()  # the records and the lease: fleet and lease threads
        self.pause: PauseHook | None = None

    def _stamp(self, record: Record) -> Record:
        with self._lock:
            self._seq += 1
            return replace(record, seq=self._seq, node=self.node)

    # ------------------------------------------------------------ lease

    def ensure_lease(self) -> bool:
        """Grant a lease if there is none; True if a new one was granted (every record
        must then be written again: the old lease's keys are gone). Raises EtcdError."""
        if self.lease:
            return False
        self.lease = self.client.grant(self.lease_seconds)
        return True

    def keepalive(self) -> bool:
        """Renew the lease; False if it had expired (a new one is needed). Raises EtcdError."""
        if not self.lease:
            return False
        if self.client.keepalive(self.lease) > 0:
            return True
        self.lease = 0
        return False

    def republish(self) -> None:
        """Write every record again (under a new lease). Raises EtcdError."""
        with self._lock:
            services = list(self.records)
        for service in services:
            self.publish(service, self.records[service], force=True)

    def close(self) -> None:
        """Give the lease back, so that peers see this node gone at once (best effort)."""
        if self.lease:
            with contextlib.suppress(EtcdError):  # else it expires on its own
                self.client.revoke(self.lease)
            self.lease = 0

    # ------------------------------------------------------------ records

    def publish(self, service: str, record: Record, *, force: bool = False) -> bool:
        """Write this node's record if it changed; True if written. Raises EtcdError."""
        if not force and record.same(self.records.get(service)) and self.lease:
            return False
        if self.ensure_lease():
            self.republish_others(service)
        stamped = self._stamp(record)
        self.client.put(self.keys.node(service, self.node), stamped.encode(), self.lease)
        with self._lock:
            self.records[service] = stamped
        return True

    def republish_others(self, service: str) -> None:
        with self._lock:
            others = [(s, r) for s, r in self.records.items() if s != service]
        for name, record in others:
            self.client.put(self.keys.node(name, self.node), record.encode(), self.lease)

    def peers(self, service: str) -> list[Peer]:
        """The other nodes' records for a service. Raises EtcdError."""
        kvs, _ = self.client.range(self.keys.service(service), prefix=True)
        return _peers(self.keys, kvs, self.node)

    def view(self) -> dict[str, dict[str, Peer]]:
        """Every service's nodes (this one included): service -> node -> peer."""
        kvs, _ = self.client.range(self.keys.services_root, prefix=True)
        return view_of(self.keys, kvs)

    # ------------------------------------------------------------ the guard

    def decide(self, service: str, record: Record, minimum: int) -> Decision:
        """May this node withdraw (and write ``record``, its state after the withdraw)?
        Never raises."""
        start = time.monotonic()
        counted: list[Peer] = []
        for attempt in range(DECIDE_ATTEMPTS):
            try:
                peers = self.peers(service)
                counted = [p for p in peers if counts(p.record)]
                if len(counted) < minimum:
                    return self._done(start, False, len(counted), "too few announcing")
                if self.pause is not None:
                    self.pause(service, attempt)
                if self.ensure_lease():
                    self.republish_others(service)
                # Compare only the peers relied on (the least recently changed): a
                # peer that changed without mattering does not fail the txn, and etcd
                # refuses a txn of more than --max-txn-ops (128) operations.
                relied = sorted(counted, key=lambda p: p.mod_revision)[:minimum]
                applied = self._txn(service, record, relied)
            except EtcdError as err:  # Unreachable included: no answer is an unknown
                return self._done(start, None, len(counted), str(err))
            if applied is None:
                return self._done(start, None, len(counted), "outcome unknown")
            if applied:
                return self._done(start, True, len(counted))
        return self._done(start, False, len(counted), "peers kept changing")

    def _txn(self, service: str, record: Record, relied: list[Peer]) -> bool | None:
        """The guard's transaction: True applied, False a relied-on peer changed, None
        unknown. Safe with only ``minimum`` peers compared: etcd orders transactions, so
        at each withdraw's commit those peers still announced; two nodes relying on each
        other cannot both commit (the first one's write changes the second's compare)."""
        stamped = self._stamp(record)
        own = self.keys.node(service, self.node)
        unchanged = {self.keys.node(service, p.record.node): p.mod_revision for p in relied}
        try:
            result = self.client.txn(unchanged, {own: stamped.encode()}, self.lease)
        except Uncertain:
            # Never resent: read our own key back; our seq there means it applied.
            try:
                kv = self.client.get(own)
            except EtcdError:
                return None
            back = Record.decode(kv.value) if kv is not None else None
            applied = back is not None and back.seq == stamped.seq
        else:
            applied = result.succeeded
        if applied:
            with self._lock:
                self.records[service] = stamped
        return applied

    @staticmethod
    def _done(start: float, allowed: bool | None, count: int, why: str = "") -> Decision:
        return Decision(allowed, count, time.monotonic() - start, why)


def view_of(keys: Keys, kvs: Iterable[KeyValue]) -> dict[str, dict[str, Peer]]:
    """service -> node -> peer, from the group's keys (others are skipped)."""
    out: dict[str, dict[str, Peer]] = {}
    for kv in kvs:
        where = keys.parse(kv.key)
        record = Record.decode(kv.value)
        if where is None or record is None:
            continue
        out.setdefault(where[0], {})[where[1]] = Peer(record, kv.mod_revision, kv.lease)
    return out


def _peers(keys: Keys, kvs: list[KeyValue], node: str) -> list[Peer]:
    out = []
    for kv in kvs:
        where = keys.parse(kv.key)
        record = Record.decode(kv.value)
        if where is None or record is None or where[1] == node:
            continue
        # The node named by the key, not the one in the value: the key is what is compared.
        out.append(Peer(replace(record, node=where[1]), kv.mod_revision, kv.lease))
    return out


def counts(record: Record) -> bool:
    """Whether a record counts toward min_announcing."""
    return record.announcing and record.route in ANNOUNCING_ROUTES and not record.drained
