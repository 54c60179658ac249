"""The fleet's etcd watch against a real etcd (Debian's etcd-server) on loopback ports:
the stream of changes, a compacted start, and the group's copy the fleet thread shows
its view from. No mock of etcd here."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator

import pytest
from etcd_harness import Cluster, etcd_binary

from announcer import messages as msg
from announcer.fleet.etcd import Compacted, EtcdClient, KeyValue
from announcer.fleet.records import Keys, Record
from announcer.fleet.slots import holders_of
from announcer.fleet.store import FleetStore, view_of
from announcer.fleet.watch import GroupWatch
from announcer.fleet.worker import FleetWorker
from announcer.log import Logger
from tests.lab.waiting import wait_until

WAIT = 30.0
"""Seconds a wait may take: a deadline, never a timing assertion."""

pytestmark = pytest.mark.skipif(
    etcd_binary() is None, reason="needs etcd (apt-get install etcd-server)"
)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("etcd-watch")).start()
    yield cluster
    cluster.stop()


def up(node: str) -> bytes:
    return Record(node=node, route="ANNOUNCED", health="UP", announcing=True).encode()


def test_a_watch_streams_puts_and_deletes_from_its_revision_and_ends_when_quiet(
    etcd: Cluster,
) -> None:
    """Changes under the prefix after the start revision arrive in order (a delete as
    such, keys outside the prefix not at all); a quiet stream ends after ``idle`` and
    returns the last revision it saw."""
    c = EtcdClient(etcd.urls, timeout=1.0)
    start = c.put("/w1/a", b"1") + 1
    seen: list[tuple[str, bytes, bool]] = []

    def writes() -> None:
        time.sleep(0.3)
        c.put("/w1/b", b"2")
        c.put("/w1x/outside", b"3")
        c.delete("/w1/a")

    threading.Thread(target=writes).start()
    last = c.watch("/w1/", start, lambda kv, gone: seen.append((kv.key, kv.value, gone)), 1.5)
    assert seen == [("/w1/b", b"2", False), ("/w1/a", b"", True)]
    assert last == c.range("/w1x/outside")[0][0].mod_revision + 1


def test_a_watch_from_a_compacted_revision_says_so(etcd: Cluster) -> None:
    """A start revision etcd has compacted away raises Compacted: read everything again."""
    c = EtcdClient(etcd.urls, timeout=1.0)
    c.put("/w2/a", b"1")
    revision = c.put("/w2/a", b"2")
    c.call("/v3/kv/compaction", {"revision": str(revision)})
    with pytest.raises(Compacted):
        c.watch("/w2/", revision - 1, lambda kv, gone: None, 1.0)


def test_the_group_copy_follows_changes_and_is_not_trusted_once_invalidated(
    etcd: Cluster,
) -> None:
    """The copy is read once, then follows puts and deletes (views and slot holders
    made from it equal those read from etcd); invalidated, it says so (None) until it
    has read the group again."""
    c = EtcdClient(etcd.urls, timeout=1.0)
    keys = Keys("/announcer/", "watched")
    c.put(keys.node("web", "n1"), up("n1"))
    stop = threading.Event()
    watch = GroupWatch(c, keys, stop, idle=0.5).start()
    try:
        wait_until(lambda: watch.snapshot() is not None, WAIT, what="the first read")
        c.put(keys.node("web", "n2"), up("n2"))
        c.put(f"{keys.group_root}slots/web/n2", b"{}")
        c.delete(keys.node("web", "n1"))

        def current() -> bool:
            kvs = watch.snapshot()
            live, _ = c.range(keys.group_root, prefix=True)
            return kvs is not None and same(kvs, live, keys)

        wait_until(current, WAIT, what="the copy to follow the changes")
        assert holders_of(keys, watch.snapshot() or []) == {"web": ["n2"]}
        watch.invalidate()
        assert watch.snapshot() is None
        wait_until(lambda: watch.snapshot() is not None, WAIT, what="the copy read again")
    finally:
        stop.set()
        watch.thread.join(5)
    assert not watch.thread.is_alive()


def same(a: list[KeyValue], b: list[KeyValue], keys: Keys) -> bool:
    return view_of(keys, a) == view_of(keys, b) and holders_of(keys, a) == holders_of(keys, b)


def test_the_worker_shows_the_view_from_the_watch_after_a_probe(etcd: Cluster) -> None:
    """With the copy good, the fleet thread's view each poll needs one one-key read, not
    a read of the group, and a peer's change reaches the view."""
    c = EtcdClient(etcd.urls, timeout=1.0)
    keys = Keys("/announcer/", "worker-watched")
    views: list[msg.FleetView] = []
    store = FleetStore(c, keys, "me", 10)
    worker = FleetWorker(
        store,
        lambda m: views.append(m) if isinstance(m, msg.FleetView) else None,
        Logger(io.StringIO()),
        poll=0.2,
    ).start()
    try:
        wait_until(lambda: worker.watch.snapshot() is not None, WAIT, what="the copy")
        c.put(keys.node("web", "peer"), up("peer"))

        def peer_seen() -> bool:
            last = views[-1] if views else None
            return (
                last is not None
                and last.services is not None
                and "peer" in last.services.get("web", {})
            )

        wait_until(peer_seen, WAIT, what="the peer in the view")
        reads: list[str] = []
        real = c.range

        def counting(key: str, *, prefix: bool = False) -> tuple[list[KeyValue], int]:
            reads.append(key + ("*" if prefix else ""))
            return real(key, prefix=prefix)

        c.range = counting  # type: ignore[method-assign]
        count = len(views)
        wait_until(lambda: len(views) >= count + 3, WAIT, what="three more views")
        assert reads and set(reads) == {keys.group_root}, reads  # the probe: one key
    finally:
        worker.stop()
