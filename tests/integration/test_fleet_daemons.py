"""Whole daemons (the loop on a fake clock, its checks scripted) with their real fleet
threads against a real etcd: the guard end to end, from a failed check to what each
node sends ExaBGP. etcd is Debian's, started on loopback by the tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from etcd_harness import Cluster, etcd_binary

from tests.unit.loop import Loop, ScriptedCheck

pytestmark = pytest.mark.skipif(
    etcd_binary() is None, reason="needs etcd (apt-get install etcd-server)"
)

ANN = "announce route 192.0.2.10/32 next-hop self med 100"
LOWERED = "announce route 192.0.2.10/32 next-hop self med 1000"
WD = "withdraw route 192.0.2.10/32 next-hop self med 100"


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("etcd")).start()
    yield cluster
    cluster.stop()


def node(
    tmp: Path, urls: list[str], group: str, name: str, check: ScriptedCheck, extra: str = ""
) -> Loop:
    folder = tmp / name
    folder.mkdir()
    path = folder / "announcer.toml"
    endpoints = ", ".join(f'"{u}"' for u in urls)
    path.write_text(
        f'state_dir = "{folder / "state"}"\ninclude = ""\n'
        "[defaults]\ninterval = 1.0\nfast_interval = 0.5\nrise = 1\nfall = 1\ntimeout = 0.2\n"
        "drain_seconds = 2\n"
        f'[fleet]\nendpoints = [{endpoints}]\ngroup = "{group}"\nnode = "{name}"\n'
        f"lease_seconds = 3\ntimeout = 1.0\n{extra}"
        '[[service]]\nname = "web"\nprefixes = ["192.0.2.10/32"]\n'
        '[[service.checks]]\ntype = "file"\npath = "web"\n'
    )
    return Loop(path, {"web": check})


def spin(loops: list[Loop], until: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Turn every loop (fake clocks moving 0.1 s a turn) until ``until``; a deadline, no timing."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for loop in loops:
            loop.run_for(0.1)
        if until():
            return
        time.sleep(0.02)
    raise AssertionError(
        f"timed out waiting for {what}: " + " | ".join(str(lp.sent) for lp in loops)
    )


def fleet_sees(loop: Loop, announcing: int) -> Callable[[], bool]:
    def check() -> bool:
        guard = loop.daemon.fleet
        return (
            guard is not None
            and guard.snapshot("web")["services"]["web"]["announcing"] == announcing
        )

    return check


def test_all_nodes_fail_together_one_keeps_announcing_lowered(
    etcd: Cluster, tmp_path: Path
) -> None:
    """Three nodes, min_announcing 1 (the default), every check fails at once (a shared
    dependency): exactly one node keeps its route (lowered, held by the guard), the
    others withdraw; when one recovers, the held one withdraws."""
    checks = [ScriptedCheck() for _ in range(3)]
    loops = [node(tmp_path, etcd.urls, "all-fail", f"n{i}", c) for i, c in enumerate(checks)]
    try:
        spin(loops, lambda: all(lp.sent == [ANN] for lp in loops), "every node announced")
        spin(loops, fleet_sees(loops[0], 3), "the fleet to count 3 announcing")
        for c in checks:
            c.ok = False
        spin(
            loops,
            lambda: (
                sum(lp.sent[-1] == WD for lp in loops) == 2
                and sum(lp.sent[-1] == LOWERED for lp in loops) == 1
            ),
            "two withdrawn, one held lowered",
        )
        (held,) = [i for i, lp in enumerate(loops) if lp.sent[-1] == LOWERED]
        assert loops[held].status("web")["fleet_guard"].startswith("held by the fleet guard: 0")
        other = (held + 1) % 3
        checks[other].ok = True
        spin(
            loops,
            lambda: loops[other].sent[-1] == ANN and loops[held].sent[-1].startswith("withdraw"),
            "the held node to withdraw once another announces",
        )
    finally:
        for lp in loops:
            lp.daemon.close()


def test_a_node_that_stops_disappears_from_the_others_view(etcd: Cluster, tmp_path: Path) -> None:
    """A node's keys go with its lease: a stopped controller gives it back at once."""
    checks = [ScriptedCheck() for _ in range(2)]
    loops = [node(tmp_path, etcd.urls, "gone", f"n{i}", c) for i, c in enumerate(checks)]
    try:
        spin(loops, fleet_sees(loops[0], 2), "both announcing")
        loops[1].daemon.close()
        spin(loops[:1], fleet_sees(loops[0], 1), "n1 gone from n0's view")
        guard = loops[0].daemon.fleet
        assert guard is not None
        assert list(guard.snapshot("web")["services"]["web"]["nodes"]) == ["n0"]
    finally:
        loops[0].daemon.close()


def test_etcd_losing_quorum_withdraws_nothing_and_on_unknown_decides_the_next_change(
    tmp_path: Path,
) -> None:
    """A 3-member etcd loses 2 members: healthy nodes withdraw nothing and their fleet
    view says etcd is unreachable; the next health change follows on_unknown (local:
    withdraw as without a fleet; hold: keep announcing lowered); quorum back, the
    view is read again."""
    (tmp_path / "etcd").mkdir()
    cluster = Cluster(tmp_path / "etcd", size=3).start()
    checks = [ScriptedCheck() for _ in range(2)]
    loops = [
        node(tmp_path, cluster.urls, "quorum", "local", checks[0]),
        node(tmp_path, cluster.urls, "quorum", "hold", checks[1], 'on_unknown = "hold"\n'),
    ]
    try:
        spin(loops, fleet_sees(loops[0], 2), "both announcing")
        for m in cluster.members[1:]:
            cluster.kill(m)

        def unreachable(loop: Loop) -> bool:
            guard = loop.daemon.fleet
            return guard is not None and guard.snapshot()["etcd"]["reachable"] is False

        spin(loops, lambda: all(unreachable(lp) for lp in loops), "etcd unreachable")
        assert all(lp.sent == [ANN] for lp in loops)
        for c in checks:
            c.ok = False
        spin(
            loops,
            lambda: loops[0].sent[-1] == WD and loops[1].sent[-1] == LOWERED,
            "local withdrawn, hold lowered",
        )
        for m in cluster.members[1:]:
            cluster.start_member(m, wait=False)
        spin(loops, lambda: not unreachable(loops[0]), "etcd back", timeout=60)
    finally:
        for lp in loops:
            lp.daemon.close()
        cluster.stop()
