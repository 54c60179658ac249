"""The fleet's etcd client and store against a real etcd (Debian's etcd-server), started
on loopback ports by these tests and stopped after. No mock of etcd here."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_harness import Cluster, enable_auth, etcd_binary

from announcer.fleet.etcd import EtcdClient, EtcdError, Unreachable
from announcer.fleet.records import Keys, Record
from announcer.fleet.slots import Slots
from announcer.fleet.store import FleetStore
from tests.lab.waiting import wait_until

WAIT = 30.0
"""Seconds a wait may take: a deadline, never a timing assertion."""

pytestmark = pytest.mark.skipif(
    etcd_binary() is None, reason="needs etcd (apt-get install etcd-server)"
)

PW = "pw"  # a throwaway etcd's


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("etcd")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def group(request: pytest.FixtureRequest) -> Keys:
    """A group of its own per test, so tests sharing the etcd do not see each other."""
    return Keys("/announcer/", request.node.name.replace("[", "-").replace("]", ""))


def client(cluster: Cluster, **kw: object) -> EtcdClient:
    return EtcdClient(cluster.urls, timeout=1.0, **kw)  # type: ignore[arg-type]


def up(node: str) -> Record:
    return Record(node=node, route="ANNOUNCED", health="UP", announcing=True)


def down(node: str) -> Record:
    return Record(node=node, route="WITHDRAWN", health="DOWN")


def store(cluster: Cluster, keys: Keys, node: str, lease: int = 10) -> FleetStore:
    return FleetStore(client(cluster), keys, node, lease)


# ---------------------------------------------------------------- client basics


def test_put_range_and_prefix_round_trip_base64_and_string_numbers(etcd: Cluster) -> None:
    """Keys and values survive base64; revisions come back as integers; a prefix range
    returns only the keys under it."""
    c = client(etcd)
    rev = c.put("/t/basics/a", b"\x00\xffone")
    c.put("/t/basics/b", b"two")
    c.put("/t/basicsX", b"outside")
    kvs, now = c.range("/t/basics/", prefix=True)
    assert [(kv.key, kv.value) for kv in kvs] == [
        ("/t/basics/a", b"\x00\xffone"),
        ("/t/basics/b", b"two"),
    ]
    assert kvs[0].mod_revision == rev and now >= rev
    assert c.get("/t/basics/none") is None


def test_txn_compares_mod_revision_and_a_missing_key_compares_as_zero(etcd: Cluster) -> None:
    """A txn applies only while every compared key is unchanged; 0 means absent, and a
    failed txn (no 'succeeded' field in the JSON) reads as not applied."""
    c = client(etcd)
    assert c.txn({"/t/txn/k": 0}, {"/t/txn/k": b"1"}).succeeded
    assert not c.txn({"/t/txn/k": 0}, {"/t/txn/k": b"2"}).succeeded
    kv = c.get("/t/txn/k")
    assert kv is not None and kv.value == b"1"
    assert c.txn({"/t/txn/k": kv.mod_revision}, {"/t/txn/k": b"3"}).succeeded
    assert not c.txn({"/t/txn/k": kv.mod_revision}, {"/t/txn/k": b"4"}).succeeded


def test_an_expired_lease_takes_its_keys_and_keepalive_says_so(etcd: Cluster) -> None:
    """A key bound to a lease that is not kept alive disappears; keepalive then answers
    TTL 0 (the field omitted) and the store grants a new lease."""
    c = client(etcd)
    lease = c.grant(2)
    assert c.keepalive(lease) > 0
    c.put("/t/lease/k", b"v", lease)
    wait_until(lambda: c.get("/t/lease/k") is None, WAIT, what="the lease to expire")
    assert c.keepalive(lease) == 0


def test_endpoint_failover_and_unreachable(etcd: Cluster, tmp_path: Path) -> None:
    """A dead first endpoint is skipped; with none alive, Unreachable (not a hang)."""
    dead = "http://127.0.0.1:9"  # discard port: nothing listens on loopback here
    c = EtcdClient([dead, *etcd.urls], timeout=1.0)
    c.put("/t/failover", b"ok")
    assert c.endpoint == etcd.urls[0]
    with pytest.raises(Unreachable):
        EtcdClient([dead], timeout=0.5).get("/t/failover")


def test_authentication_token_and_renewal(tmp_path: Path) -> None:
    """With auth on, requests carry a token from /v3/auth/authenticate; a token etcd no
    longer knows is renewed once, transparently; a wrong password is an EtcdError."""
    cluster = Cluster(tmp_path).start()
    try:
        enable_auth(cluster.urls[0], "announcer", PW)
        c = client(cluster, user="announcer", password=PW)
        c.put("/t/auth", b"v")
        c._token = "stale.token"  # noqa: S105 - as if etcd restarted or the token expired
        assert c.get("/t/auth") is not None
        with pytest.raises(EtcdError):
            client(cluster, user="announcer", password=PW + "x").get("/t/auth")
    finally:
        cluster.stop()


# ---------------------------------------------------------------- the store and the guard


def test_records_are_written_on_change_only_and_bound_to_the_lease(
    etcd: Cluster, group: Keys
) -> None:
    """publish writes a record once per change; the view shows it with its lease."""
    s = store(etcd, group, "n1")
    assert s.publish("web", up("n1"))
    assert not s.publish("web", up("n1"))
    assert s.publish("web", down("n1"))
    view = s.view()
    assert view["web"]["n1"].record.route == "WITHDRAWN"
    assert view["web"]["n1"].lease == s.lease
    s.close()
    assert "web" not in s.view()


def test_guard_allows_while_enough_peers_announce_and_refuses_the_last(
    etcd: Cluster, group: Keys
) -> None:
    """Two peers announcing, min 1: the first asker withdraws, the second may not."""
    a, b = store(etcd, group, "a"), store(etcd, group, "b")
    a.publish("web", up("a"))
    b.publish("web", up("b"))
    first = a.decide("web", down("a"), 1)
    assert (first.allowed, first.announcing) == (True, 1)
    second = b.decide("web", down("b"), 1)
    assert (second.allowed, second.announcing) == (False, 0)
    assert a.view()["web"]["a"].record.route == "WITHDRAWN"  # written in the same txn


def test_a_guard_in_a_group_of_200_compares_only_the_peers_it_relies_on(
    etcd: Cluster, group: Keys
) -> None:
    """200 peers announce (more than etcd's 128 operations a transaction takes): the
    guard still decides, allowed, counting all 200; a change of a peer it does not rely
    on (the most recently changed) between its read and its txn does not fail it."""
    writer = client(etcd)
    for i in range(200):
        writer.put(group.node("web", f"p{i:03}"), up(f"p{i:03}").encode())
    a = store(etcd, group, "a")
    a.publish("web", up("a"))
    latest = group.node("web", "p199")  # written last: the one relied on least

    def pause(service: str, attempt: int) -> None:
        if attempt == 0:
            writer.put(latest, Record(node="p199", route="LOWERED", health="DOWN").encode())

    a.pause = pause
    decision = a.decide("web", down("a"), 2)
    assert (decision.allowed, decision.announcing, decision.why) == (True, 200, "")


def test_the_race_two_guards_released_together_exactly_one_withdraws(
    etcd: Cluster, group: Keys
) -> None:
    """Both guards read the peers (each sees the other announcing), are held by a test
    hook, then released together: exactly one transaction applies; the other reads
    again, counts 0 and is refused."""
    a, b = store(etcd, group, "a"), store(etcd, group, "b")
    a.publish("web", up("a"))
    b.publish("web", up("b"))
    both_read = threading.Barrier(2, timeout=30)

    def pause(service: str, attempt: int) -> None:
        if attempt == 0:
            both_read.wait()

    a.pause = b.pause = pause
    results: dict[str, bool | None] = {}
    threads = [
        threading.Thread(
            target=lambda s=s: results.update({s.node: s.decide("web", down(s.node), 1).allowed})
        )
        for s in (a, b)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results.values(), key=str) == [False, True]
    routes = {n: p.record.route for n, p in a.view()["web"].items()}
    assert sorted(routes.values()) == ["ANNOUNCED", "WITHDRAWN"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_many_concurrent_guards_with_random_pauses_never_go_below_the_minimum(
    etcd: Cluster, group: Keys, seed: int
) -> None:
    """Eight nodes fail together (min 3), each pausing a random while between reading
    and its txn: at least 3 stay announcing, and some withdraw."""
    rng = random.Random(seed)
    nodes = [store(etcd, group, f"n{i}") for i in range(8)]
    for s in nodes:
        s.publish("web", up(s.node))
    delays = {s.node: [rng.uniform(0, 0.05) for _ in range(10)] for s in nodes}

    def pause(service: str, attempt: int, node: str) -> None:
        time.sleep(delays[node][attempt])

    for s in nodes:
        s.pause = lambda service, attempt, node=s.node: pause(service, attempt, node)
    allowed: dict[str, bool | None] = {}
    threads = [
        threading.Thread(
            target=lambda s=s: allowed.update({s.node: s.decide("web", down(s.node), 3).allowed})
        )
        for s in nodes
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    announcing = [n for n, p in nodes[0].view()["web"].items() if p.record.announcing]
    assert len(announcing) >= 3
    assert sorted(announcing) == sorted(n for n, ok in allowed.items() if not ok)
    assert any(allowed.values())


def test_quorum_lost_means_unknown_never_a_withdraw(tmp_path: Path) -> None:
    """A 3-member cluster loses 2 members: the guard's answer is unknown (never an
    allowed withdraw on etcd's say-so), reads fail as Unreachable, and once quorum is
    back the guard answers again."""
    cluster = Cluster(tmp_path, size=3).start()
    try:
        keys = Keys("/announcer/", "quorum")
        a, b = store(cluster, keys, "a"), store(cluster, keys, "b")
        a.publish("web", up("a"))
        b.publish("web", up("b"))
        for m in cluster.members[1:]:
            cluster.kill(m)
        decision = a.decide("web", down("a"), 1)
        assert decision.allowed is None
        with pytest.raises(Unreachable):
            a.view()
        for m in cluster.members[1:]:
            cluster.start_member(m, wait=False)
        for m in cluster.members:
            cluster.wait_ready(m)
        wait_until(
            lambda: a.decide("web", down("a"), 1).allowed is not None,
            WAIT,
            what="the guard to answer again",
        )
    finally:
        cluster.stop()


# ---------------------------------------------------------------- drain slots


def slots_for(cluster: Cluster, keys: Keys, node: str) -> tuple[Slots, int]:
    c = client(cluster)
    return Slots(c, keys, node), c.grant(10)


def test_drain_slots_are_taken_in_order_and_given_back(etcd: Cluster, group: Keys) -> None:
    """max_drained 1: a takes the slot; b, then c wait in line; a gives it back: c may
    not jump b's place; b takes it; --force takes one anyway."""
    (a, la), (b, lb), (c, lc) = (slots_for(etcd, group, n) for n in "abc")
    assert a.take("web", "r", 1, la, force=False, queue=True).granted is True
    wait_b = b.take("web", "r", 1, lb, force=False, queue=True)
    assert (wait_b.granted, wait_b.holders, wait_b.ahead) == (False, ("a",), 0)
    wait_c = c.take("web", "r", 1, lc, force=False, queue=True)
    assert (wait_c.granted, wait_c.ahead) == (False, 1)
    assert c.take("web", "r", 1, lc, force=False, queue=False).granted is False
    a.release("web")
    assert c.take("web", "r", 1, lc, force=False, queue=True).granted is False
    assert b.take("web", "r", 1, lb, force=False, queue=True).granted is True
    forced = c.take("web", "r", 1, lc, force=True, queue=False)
    assert (forced.granted, forced.forced) == (True, True)
    assert sorted(a.holders()["web"]) == ["b", "c"]


def test_two_nodes_racing_for_the_last_slot_only_one_gets_it(etcd: Cluster, group: Keys) -> None:
    """Both read one free slot at once; the transaction's compare over the slot range
    lets exactly one take it."""
    for round_ in range(5):
        keys = Keys("/announcer/", f"{group.group}-{round_}")
        contenders = [slots_for(etcd, keys, n) for n in ("a", "b")]
        got: dict[str, bool | None] = {}
        start = threading.Barrier(2, timeout=30)

        def take(
            s: Slots, lease: int, start: threading.Barrier, got: dict[str, bool | None]
        ) -> None:
            start.wait()
            got[s.node] = s.take("web", "r", 1, lease, force=False, queue=False).granted

        threads = [threading.Thread(target=take, args=(*pair, start, got)) for pair in contenders]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(got.values(), key=str) == [False, True], got
