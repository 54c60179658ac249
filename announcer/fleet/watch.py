"""The group's keys, kept up to date by an etcd watch (thread ``fleet-watch``).

The fleet thread shows the group's view each second (``announcer fleet``, the guard's
"peers changed", drain forwarding's plan). Reading the whole group for it each second
costs etcd and every node in proportion to the group: about 6 cores of etcd at 200
nodes of 10 services (docs/benchmarks.md, P6b). Here the keys are read once, then
only their changes arrive. While the copy is not known good (at start, after an error
or a compaction, or when the fleet thread's probe of etcd failed) :meth:`snapshot`
says so and the fleet thread reads the group itself, as before.
"""

from __future__ import annotations

import threading

import tenacity

from announcer.fleet.etcd import EtcdClient, EtcdError, KeyValue
from announcer.fleet.records import Keys

IDLE = 10.0
"""Seconds a quiet watch stream is kept before it is opened again (from the revision it
had reached, so nothing is read twice): bounds how long a connection that died without
a word goes unnoticed by this thread."""


class GroupWatch:
    def __init__(
        self, client: EtcdClient, keys: Keys, stop: threading.Event, *, idle: float = IDLE
    ) -> None:
        self.client, self.root, self.idle = client, keys.group_root, idle
        self._stop = stop
        self._lock = threading.Lock()
        self._kvs: dict[str, KeyValue] = {}
        self._good = False
        self._revision = 0
        self.thread = threading.Thread(target=self._run, name="fleet-watch", daemon=True)

    def start(self) -> GroupWatch:
        self.thread.start()
        return self

    def snapshot(self) -> list[KeyValue] | None:
        """Every key of the group as of the last change seen; None while not known good."""
        with self._lock:
            return list(self._kvs.values()) if self._good else None

    def invalidate(self) -> None:
        """Do not trust the copy until it is read again (etcd did not answer a probe)."""
        with self._lock:
            self._good = False

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(EtcdError),
            wait=tenacity.wait_exponential(multiplier=0.2, max=5.0),
            stop=tenacity.stop_when_event_set(self._stop),
            sleep=self._pause,
        )
        try:
            retrying(self._follow)
        except (tenacity.RetryError, EtcdError):
            pass  # stopping: the fleet is closing
        except Exception:  # noqa: BLE001 - a closed session at exit; the copy is not used
            self.invalidate()

    def _pause(self, seconds: float) -> None:
        self._stop.wait(seconds)  # a stop ends the pause at once

    def _follow(self) -> None:
        """Read the group, then follow its changes until stopped; raises EtcdError."""
        try:
            while not self._stop.is_set():
                with self._lock:
                    good = self._good
                if not good:
                    kvs, revision = self.client.range(self.root, prefix=True)
                    with self._lock:
                        self._kvs = {kv.key: kv for kv in kvs}
                        self._revision, self._good = revision, True
                last = self.client.watch(self.root, self._revision + 1, self._apply, self.idle)
                self._revision = max(self._revision, last)
        except EtcdError:
            self.invalidate()  # Compacted included: read everything again
            raise

    def _apply(self, kv: KeyValue, deleted: bool) -> None:
        with self._lock:
            if deleted:
                self._kvs.pop(kv.key, None)
            else:
                self._kvs[kv.key] = kv
