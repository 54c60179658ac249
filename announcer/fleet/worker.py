"""The fleet's threads: every etcd call happens here, never on the daemon's loop.

``fleet``: takes jobs (a record to publish, a question to decide) in order, and shows
the group's view every ``poll`` seconds; answers and views go back to the daemon's
queue as messages (:class:`~announcer.messages.FleetAnswer`,
:class:`~announcer.messages.FleetView`). ``fleet-watch`` keeps a copy of the group's
keys (:mod:`announcer.fleet.watch`): the view comes from it, after a one-key probe that
etcd still answers, and from a read of the whole group only while the copy is not
known good. ``fleet-lease``: keeps the lease alive (a third of its TTL apart); an
expired lease is replaced and every record written again. etcd being slow or gone
delays only these threads.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable

from announcer import messages as msg
from announcer.fleet.etcd import EtcdError
from announcer.fleet.records import Record
from announcer.fleet.slots import Slots, holders_of
from announcer.fleet.store import FleetStore, view_of
from announcer.fleet.watch import GroupWatch
from announcer.log import Logger

POLL = 1.0
"""Seconds between reads of the group's view (how soon a held guard hears of peers)."""


Job = Callable[[], None]
"""Work for the fleet thread, done in the order given."""


class FleetWorker:
    def __init__(
        self,
        store: FleetStore,
        post: Callable[[msg.Message], None],
        log: Logger,
        *,
        poll: float = POLL,
    ) -> None:
        self.store, self.post, self.log, self.poll = store, post, log, poll
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._unwritten: dict[str, Record] = {}
        """Records that could not be written yet (etcd away): tried again each poll."""
        self.slots = Slots(store.client, store.keys, store.node)
        self._waiting: dict[str, Job] = {}
        """Drains waiting for a slot: tried again at each poll."""
        self._unreleased: set[str] = set()
        self._stop = threading.Event()
        self.watch = GroupWatch(store.client, store.keys, self._stop)
        # Not the watch's thread: it sits in a read of up to IDLE seconds, and a stop must
        # not wait for it (it ends by itself; its copy is no longer read).
        self._threads: list[threading.Thread] = []
        self.reachable: bool | None = None

    def start(self) -> FleetWorker:
        self.watch.start()
        for name, target in (("fleet", self._run), ("fleet-lease", self._keep_lease)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def publish(self, service: str, record: Record) -> None:
        self._jobs.put(lambda: self._publish(service, record))

    def ask(self, service: str, record: Record, minimum: int) -> None:
        self._jobs.put(lambda: self._decide(service, record, minimum))

    def take_slot(
        self, service: str, reason: str, maximum: int, *, force: bool, queue: bool
    ) -> None:
        self._jobs.put(lambda: self._take(service, reason, maximum, force=force, queue=queue))

    def release_slot(self, service: str) -> None:
        self._jobs.put(lambda: self._release_one(service))

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the threads and give the lease back (peers then see us gone at once)."""
        self._stop.set()
        self._jobs.put(None)
        for t in self._threads:
            t.join(timeout)
        self.store.close()
        self.store.client.close()

    # ------------------------------------------------------------ threads

    def _run(self) -> None:
        next_view = 0.0
        while not self._stop.is_set():
            try:
                job = self._jobs.get(timeout=max(0.0, next_view - time.monotonic()))
            except queue.Empty:
                job = None
            if job is not None:
                self._safely(job)
            if time.monotonic() >= next_view and not self._stop.is_set():
                for work in (self._flush, self._release, *self._waiting.values(), self._view):
                    self._safely(work)
                next_view = time.monotonic() + self.poll

    def _safely(self, work: Job) -> None:
        # The fleet thread must outlive a surprise: the daemon's questions would go
        # unanswered (each then times out as unknown) and the lease would expire.
        try:
            work()
        except Exception as err:  # noqa: BLE001 - logged, and the thread goes on
            self.log.error("fleet_thread_error", error=f"{type(err).__name__}: {err}")

    def _publish(self, service: str, record: Record) -> None:
        self._unwritten[service] = record
        self._flush()

    def _decide(self, service: str, record: Record, minimum: int) -> None:
        self._unwritten.pop(service, None)  # the txn writes this service's record
        try:
            d = self.store.decide(service, record, minimum)
        except Exception as err:
            self.post(msg.FleetAnswer(service, None, 0, 0.0, f"{type(err).__name__}: {err}"))
            raise
        self.post(msg.FleetAnswer(service, d.allowed, d.announcing, d.latency, d.why))

    def _relet(self) -> None:
        with contextlib.suppress(EtcdError):  # else the next keepalive says so again
            self.store.ensure_lease()
            self.store.republish()

    def _take(self, service: str, reason: str, maximum: int, *, force: bool, queue: bool) -> None:
        try:
            if self.store.ensure_lease():
                self.store.republish()
        except EtcdError as err:
            self.post(msg.FleetSlot(service, None, why=str(err)))
            return
        got = self.slots.take(service, reason, maximum, self.store.lease, force=force, queue=queue)
        if got.granted is False and queue:
            self._waiting[service] = lambda: self._take(
                service, reason, maximum, force=False, queue=True
            )
        else:
            self._waiting.pop(service, None)
        self.post(msg.FleetSlot(service, got.granted, got.holders, got.ahead, got.forced, got.why))

    def _release_one(self, service: str) -> None:
        self._waiting.pop(service, None)
        self._unreleased.add(service)
        self._release()

    def _release(self) -> None:
        for service in list(self._unreleased):
            try:
                self.slots.release(service)
            except EtcdError:
                return  # again at the next poll; the lease frees it at worst
            self._unreleased.discard(service)

    def _flush(self) -> None:
        for service, record in list(self._unwritten.items()):
            try:
                self.store.publish(service, record)
            except EtcdError as err:
                self._unreachable(str(err))
                return
            if self._unwritten.get(service) is record:
                del self._unwritten[service]

    def _view(self) -> None:
        kvs = self.watch.snapshot()
        try:
            if kvs is not None:
                # One key, read with quorum: etcd still answers, so the copy is current
                # (a watch on a dead connection hears nothing, and says nothing either).
                self.store.client.get(self.store.keys.group_root)
                view, slots = view_of(self.store.keys, kvs), holders_of(self.store.keys, kvs)
            else:
                view, slots = self.store.view(), self.slots.holders()
        except EtcdError as err:
            self.watch.invalidate()
            self._unreachable(str(err))
            self.post(msg.FleetView(None, str(err)))
            return
        if self.reachable is not True:
            self.log.info("fleet_etcd", reachable=True, endpoint=self.store.client.endpoint)
        self.reachable = True
        self.post(msg.FleetView(view, slots=slots))

    def _unreachable(self, why: str) -> None:
        if self.reachable is not False:
            self.log.warning("fleet_etcd", reachable=False, why=why)
        self.reachable = False

    def _keep_lease(self) -> None:
        while not self._stop.wait(self.store.lease_seconds / 3):
            self._safely(self._keepalive)

    def _keepalive(self) -> None:
        with contextlib.suppress(EtcdError):  # reported by the view's reads
            if self.store.lease and not self.store.keepalive():
                # Leases change on the fleet thread only: two threads would grant two.
                self.log.warning("fleet_lease_expired", why="records written again")
                self._jobs.put(self._relet)
