"""The fleet guard in the daemon's loop, on a fake clock with a fake fleet thread (no
etcd here: tests/integration/test_fleet_etcd.py has the real one). What is asked,
what reaches ExaBGP, and what status and logs say."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from announcer import messages as msg
from announcer import state as sm
from announcer.client import render_fleet
from announcer.fleet import wiring
from announcer.fleet.records import Record
from announcer.fleet.store import Peer
from announcer.protocol import ControlRefused
from tests.unit.loop import Loop, ScriptedCheck

ANN = "announce route 192.0.2.10/32 next-hop self med 100"
LOWERED = "announce route 192.0.2.10/32 next-hop self med 1000"
WD = "withdraw route 192.0.2.10/32 next-hop self med 100"
WD_LOWERED = "withdraw route 192.0.2.10/32 next-hop self med 1000"


@dataclass
class FakeWorker:
    """The fleet thread, as the daemon sees it: what it was asked to do."""

    asks: list[tuple[str, Record, int]] = field(default_factory=list)
    published: list[tuple[str, Record]] = field(default_factory=list)
    slots: list[tuple[str, bool, bool]] = field(default_factory=list)
    """take_slot calls: service, force, queue."""
    released: list[str] = field(default_factory=list)
    started: bool = False
    stopped: bool = False

    def start(self) -> FakeWorker:
        self.started = True
        return self

    def stop(self) -> None:
        self.stopped = True

    def ask(self, service: str, record: Record, minimum: int) -> None:
        self.asks.append((service, record, minimum))

    def publish(self, service: str, record: Record) -> None:
        self.published.append((service, record))

    def take_slot(
        self, service: str, reason: str, maximum: int, *, force: bool, queue: bool
    ) -> None:
        self.slots.append((service, force, queue))

    def release_slot(self, service: str) -> None:
        self.released.append(service)


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeWorker]:
    fake = FakeWorker()
    monkeypatch.setattr(wiring, "make_worker", lambda settings, post, log: fake)
    yield fake


def config(tmp: Path, fleet: str = "") -> Path:
    path = tmp / "announcer.toml"
    path.write_text(
        f'state_dir = "{tmp / "state"}"\ninclude = ""\n'
        "[defaults]\ninterval = 1.0\nfast_interval = 0.5\nrise = 1\nfall = 1\n"
        "timeout = 0.2\ndrain_seconds = 10\n"
        '[fleet]\nendpoints = ["http://127.0.0.1:2379"]\ngroup = "edge"\nnode = "n1"\n'
        + fleet
        + '[[service]]\nname = "web"\nprefixes = ["192.0.2.10/32"]\nmin_announcing = 2\n'
        f'max_drained = 1\nmaintenance_file = "{tmp / "maint"}"\n'
        '[[service.checks]]\ntype = "file"\npath = "web"\n'
    )
    return path


@pytest.fixture
def web() -> ScriptedCheck:
    return ScriptedCheck()


def make_loop(tmp: Path, web: ScriptedCheck, fleet: str = "") -> Loop:
    return Loop(config(tmp, fleet), {"web": web})


@pytest.fixture
def loop(tmp_path: Path, web: ScriptedCheck, worker: FakeWorker) -> Loop:
    return make_loop(tmp_path, web)


def answer(loop: Loop, allowed: bool | None, announcing: int = 0) -> None:
    loop.daemon.post(msg.FleetAnswer("web", allowed, announcing, 0.001))
    loop.turn()


def peer(node: str, route: str = "ANNOUNCED", revision: int = 1) -> Peer:
    record = Record(node=node, route=route, health="UP", announcing=route == "ANNOUNCED")
    return Peer(record, revision, 7)


def view(loop: Loop, *peers: Peer) -> None:
    loop.daemon.post(msg.FleetView({"web": {p.record.node: p for p in peers}}))
    loop.turn()


def fail(loop: Loop, web: ScriptedCheck) -> None:
    web.ok = False
    loop.run_for(1.0)


def test_the_guard_attaches_and_records_follow_the_route(loop: Loop, worker: FakeWorker) -> None:
    """With [fleet], the fleet thread starts; this node's record is published when it
    changes (announced and acknowledged: announcing), not on every check."""
    assert worker.started and loop.daemon.fleet is not None
    loop.run_for(0.6)
    assert loop.sent == [ANN]
    records = [r for _, r in worker.published]
    assert records[-1].route == "ANNOUNCED" and records[-1].announcing
    before = len(worker.published)
    loop.run_for(10)
    assert len(worker.published) == before


def test_a_health_withdraw_waits_for_the_fleet_and_goes_when_allowed(
    loop: Loop, web: ScriptedCheck, worker: FakeWorker
) -> None:
    """A failed service is not withdrawn on its own say-so: the guard is asked (with
    the record to write if allowed: WITHDRAWN) and nothing is sent until it answers;
    meanwhile no record is published (it would undo the transaction's write)."""
    loop.run_for(0.6)
    published = len(worker.published)
    fail(loop, web)
    assert loop.sent == [ANN]
    assert len(worker.published) == published
    ((service, record, minimum),) = worker.asks
    assert (service, record.route, record.announcing, minimum) == ("web", "WITHDRAWN", False, 2)
    assert loop.status("web")["fleet_guard"] == "asking the fleet guard"
    answer(loop, True, 2)
    assert loop.sent == [ANN, WD]
    assert "fleet_guard" not in loop.status("web")
    assert len(worker.published) == published  # the transaction wrote WITHDRAWN already


def test_refused_holds_lowered_says_why_and_retries_when_peers_change(
    loop: Loop, web: ScriptedCheck, worker: FakeWorker
) -> None:
    """Refused: the route stays, lowered with the down attributes; status and log say
    "held by the fleet guard: 1 announcing, min 2"; a changed peer asks again."""
    loop.run_for(0.6)
    view(loop, peer("n2"))
    fail(loop, web)
    answer(loop, False, 1)
    assert loop.sent == [ANN, LOWERED]
    held = "held by the fleet guard: 1 announcing, min 2"
    assert loop.status("web")["fleet_guard"] == held
    assert held in loop.log.getvalue()
    loop.run_for(30)
    assert len(worker.asks) == 1 and loop.sent == [ANN, LOWERED]
    view(loop, peer("n2"))  # same revision: nothing new
    assert len(worker.asks) == 1
    view(loop, peer("n2"), peer("n3", revision=5))
    assert len(worker.asks) == 2
    answer(loop, True, 2)
    assert loop.sent == [ANN, LOWERED, WD_LOWERED]


def test_no_bgp_session_is_never_held(loop: Loop, web: ScriptedCheck, worker: FakeWorker) -> None:
    """With every BGP session down (ExaBGP's neighbour messages) a withdraw is not
    asked for: holding it would blackhole nothing but help no one either."""
    loop.run_for(0.6)
    loop.daemon.post(msg.StdinLine("neighbor 10.0.0.1 up\n"))
    loop.turn()
    loop.daemon.post(msg.StdinLine("neighbor 10.0.0.1 down\n"))
    loop.turn()
    assert not worker.published[-1][1].announcing
    fail(loop, web)
    assert worker.asks == []
    assert loop.sent[-1] == WD


@pytest.mark.parametrize(
    ("on_unknown", "last"), [("local", WD), ("hold", LOWERED)], ids=["local", "hold"]
)
def test_etcd_unreachable_follows_on_unknown(
    tmp_path: Path, web: ScriptedCheck, worker: FakeWorker, on_unknown: str, last: str
) -> None:
    """An unknown answer (etcd unreachable) withdraws with on_unknown = local and
    holds lowered with on_unknown = hold; so does no answer within the guard's timeout."""
    for how in ("answer", "timeout"):
        sub = tmp_path / how
        sub.mkdir()
        web.ok = True
        loop = make_loop(sub, web, f'on_unknown = "{on_unknown}"\n')
        loop.run_for(0.6)
        fail(loop, web)
        if how == "answer":
            answer(loop, None)
        else:
            loop.run_for(6)
        assert loop.sent[-1] == last, how


def test_etcd_unreachable_alone_changes_nothing(
    loop: Loop, web: ScriptedCheck, worker: FakeWorker
) -> None:
    """etcd going away (views that cannot be read) withdraws nothing while healthy."""
    loop.run_for(0.6)
    for _ in range(5):
        loop.daemon.post(msg.FleetView(None, "no quorum"))
        loop.run_for(1)
    assert loop.sent == [ANN]
    snap = loop.daemon.fleet.snapshot() if loop.daemon.fleet else {}
    assert snap["etcd"] == {"reachable": False, "error": "no quorum"}


def test_fleet_view_for_the_operator(loop: Loop, web: ScriptedCheck) -> None:
    """`announcer fleet` shows the group's nodes per service and who announces."""
    loop.run_for(0.6)
    view(loop, peer("n1"), peer("n2"), peer("n3", route="WITHDRAWN"))
    assert loop.daemon.fleet is not None
    snap: dict[str, Any] = loop.daemon.fleet.snapshot("web")
    assert snap["group"] == "edge" and snap["etcd"]["reachable"] is True
    web_view = snap["services"]["web"]
    assert (web_view["announcing"], web_view["min_announcing"]) == (2, 2)
    assert list(web_view["nodes"]) == ["n1", "n2", "n3"]
    text = render_fleet(snap)
    assert "web: 2 announcing, min 2" in text
    assert any(line.split()[:3] == ["web", "n3", "WITHDRAWN"] for line in text.splitlines())


def test_stop_stops_the_fleet_thread(loop: Loop, worker: FakeWorker) -> None:
    """Closing the daemon stops the fleet thread (which gives the lease back)."""
    loop.daemon.close()
    assert worker.stopped


# ---------------------------------------------------------------- drain slots

DRAINING = "announce route 192.0.2.10/32 next-hop self med 1000 community [ 65535:0 ]"


def slot(loop: Loop, granted: bool | None, *holders: str) -> None:
    loop.daemon.post(msg.FleetSlot("web", granted, holders, len(holders)))
    loop.turn()


def drain(loop: Loop, **how: bool) -> None:
    loop.daemon.drain("web", sm.DrainSource.OPERATOR, "kernel", **how)
    loop.turn()


def test_a_drain_waits_for_a_slot_then_drains_and_gives_it_back(
    loop: Loop, worker: FakeWorker
) -> None:
    """max_drained: a drain first takes a slot (off the loop); until it is granted the
    route stays, and status says who holds the slots and that the drain waits to begin
    (drain --wait waits on); undrained, the slot is released."""
    loop.run_for(0.6)
    drain(loop)
    assert worker.slots == [("web", False, True)]
    assert loop.sent == [ANN]
    assert loop.status("web")["drain_waiting"] is True and not loop.status("web")["drained"]
    slot(loop, False, "n2")
    assert loop.status("web")["fleet_slot"] == "waiting for a drain slot: held by n2, 1 ahead"
    slot(loop, True)
    assert loop.sent == [ANN, DRAINING]
    assert not {"fleet_slot", "drain_waiting"} & set(loop.status("web"))
    loop.daemon.undrain("web", sm.DrainSource.OPERATOR)
    loop.turn()
    assert worker.released == ["web"]


def test_no_queue_refuses_when_the_slots_are_taken(loop: Loop, worker: FakeWorker) -> None:
    """--no-queue: no free slot (as last read) refuses the drain, naming the holders."""
    loop.run_for(0.6)
    loop.daemon.post(msg.FleetView({"web": {}}, slots={"web": ["n2"]}))
    loop.turn()
    with pytest.raises(ControlRefused, match=re.escape("held by n2 (max_drained 1); not queued")):
        drain(loop, queue=False)
    assert worker.slots == [] and loop.sent == [ANN]


def test_force_drains_at_once_and_says_so(loop: Loop, worker: FakeWorker) -> None:
    """--force takes a slot even when none is free (logged) and drains at once; its final
    withdraw does not ask the fleet guard."""
    loop.run_for(0.6)
    loop.daemon.post(msg.FleetView({"web": {}}, slots={"web": ["n2"]}))
    loop.turn()
    drain(loop, force=True)
    assert worker.slots == [("web", True, False)]
    assert loop.sent == [ANN, DRAINING]
    assert "drain_slot_forced" in loop.log.getvalue()
    loop.run_for(11)
    assert worker.asks == [] and loop.sent[-1].startswith("withdraw")


def test_maintenance_file_waits_in_line_and_gives_up_its_place_when_removed(
    tmp_path: Path, loop: Loop, worker: FakeWorker
) -> None:
    """The maintenance file takes a slot like an operator; removed while waiting, it
    leaves the queue and nothing is drained."""
    loop.run_for(0.6)
    (tmp_path / "maint").touch()
    loop.run_for(1)
    assert worker.slots == [("web", False, True)]
    assert loop.sent == [ANN]
    (tmp_path / "maint").unlink()
    loop.run_for(1)
    assert worker.released == ["web"]
    slot(loop, True)  # a late grant for a drain no longer wanted
    assert loop.sent == [ANN]


def test_etcd_unreachable_drains_with_on_unknown_local(loop: Loop, worker: FakeWorker) -> None:
    """A slot that cannot be taken because etcd is away: on_unknown = local drains as
    without a fleet (logged as a warning)."""
    loop.run_for(0.6)
    drain(loop)
    slot(loop, None)
    assert loop.sent == [ANN, DRAINING]


def test_a_stop_waits_for_a_slot_only_while_its_timeout_leaves_drain_seconds(
    loop: Loop, worker: FakeWorker
) -> None:
    """`drain --stop --timeout 50` with drain_seconds 10: it waits in line for at most
    40 s, then drains anyway with a warning, so the stop never hangs."""
    loop.run_for(0.6)
    loop.daemon.drain("web", sm.DrainSource.STOP, "service stop", patience=50.0)
    loop.turn()
    assert worker.slots == [("web", False, True)]
    loop.run_for(39)
    view(loop)
    assert loop.sent == [ANN]
    loop.run_for(1)
    view(loop)
    assert loop.sent == [ANN, DRAINING]
    assert "the stop's timeout leaves only drain_seconds" in loop.log.getvalue()


def test_a_stop_without_time_to_wait_takes_a_slot_at_once(loop: Loop, worker: FakeWorker) -> None:
    """A stop whose timeout is not longer than drain_seconds (or none) does not wait."""
    loop.run_for(0.6)
    loop.daemon.drain("web", sm.DrainSource.STOP, "service stop", patience=10.0)
    loop.turn()
    assert worker.slots == [("web", True, False)]
    assert loop.sent == [ANN, DRAINING]


def test_the_cli_knows_the_fleet_command() -> None:
    """`announcer fleet` is a control command of the CLI (not just of the socket)."""
    from announcer import client

    assert "fleet" in client.CONTROL_COMMANDS


def test_drain_wait_progress_says_why_the_route_does_not_move() -> None:
    """`drain --wait` shows a drain waiting for a slot, or a withdraw the guard holds."""
    from announcer.client import _progress

    waiting = {"route": "ANNOUNCED", "fleet_slot": "waiting for a drain slot: held by n2, 0 ahead"}
    assert _progress("web", waiting) == (  # type: ignore[arg-type]
        "web: ANNOUNCED, waiting for a drain slot: held by n2, 0 ahead"
    )
    held = {"route": "DRAINING", "fleet_guard": "held by the fleet guard: 0 announcing, min 1"}
    assert _progress("web", held).endswith("held by the fleet guard: 0 announcing, min 1")  # type: ignore[arg-type]


def test_a_fleet_added_by_a_reload_waits_for_a_restart(
    tmp_path: Path, web: ScriptedCheck, worker: FakeWorker
) -> None:
    """[fleet] added to a running daemon's config: the reload says a restart is needed
    and the services go on deciding alone (no question nobody would answer)."""
    path = config(tmp_path)
    text = path.read_text()
    start = text.index("[fleet]")
    path.write_text(
        text[:start]
        + text[text.index("[[service]]") :].replace("min_announcing = 2\nmax_drained = 1\n", "")
    )
    loop = Loop(path, {"web": web})
    assert loop.daemon.fleet is None
    loop.run_for(0.6)
    path.write_text(text)
    result = loop.daemon.reload()
    assert "fleet" in (result["note"] or "")
    web.ok = False
    loop.run_for(1)
    assert loop.sent == [ANN, WD] and worker.asks == []


def test_a_held_withdraw_goes_when_etcd_is_lost_with_on_unknown_local(
    loop: Loop, web: ScriptedCheck, worker: FakeWorker
) -> None:
    """Held, then etcd becomes unreachable: with on_unknown = local the node decides
    alone now (asks once more, the answer is unknown, it withdraws)."""
    loop.run_for(0.6)
    fail(loop, web)
    answer(loop, False, 1)
    assert loop.sent == [ANN, LOWERED]
    loop.daemon.post(msg.FleetView(None, "no quorum"))
    loop.turn()
    assert len(worker.asks) == 2
    answer(loop, None)
    assert loop.sent == [ANN, LOWERED, WD_LOWERED]


def test_a_drain_kept_across_a_restart_takes_its_slot_again(
    tmp_path: Path, web: ScriptedCheck, worker: FakeWorker
) -> None:
    """A controller restarted while drained (the drain is in the state file) holds a
    slot again at once: its previous slot may have gone with its previous lease."""
    first = make_loop(tmp_path, web)
    first.run_for(0.6)
    drain(first)
    slot(first, True)
    first.daemon.close()
    worker.slots.clear()
    second = Loop(tmp_path / "announcer.toml", {"web": web})
    assert second.daemon.fleet is not None
    assert worker.slots == [("web", True, False)]


def test_fleet_text_shows_free_slots_and_lease_time_left() -> None:
    """The text of `announcer fleet`: free drain slots in the heading, a LEASE column."""
    result = {
        "group": "edge",
        "node": "n1",
        "etcd": {"reachable": True},
        "on_unknown": "local",
        "services": {
            "web": {
                "announcing": 1,
                "min_announcing": 1,
                "max_drained": 1,
                "free_slots": 0,
                "drained_by": ["n2"],
                "nodes": {
                    "n1": {
                        "route": "ANNOUNCED",
                        "health": "UP",
                        "announcing": True,
                        "lease_left": 7,
                    },
                    "n2": {
                        "route": "WITHDRAWN",
                        "health": "UP",
                        "drained": True,
                        "reason": "kernel",
                    },
                },
            }
        },
    }
    text = render_fleet(result)
    assert "web: 1 announcing, min 1, max drained 1, 0 free; drain slots held by n2" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("web ")]
    assert rows == [
        ["web", "n1", "ANNOUNCED", "UP", "yes", "-", "7s"],
        ["web", "n2", "WITHDRAWN", "UP", "no", "kernel", "-"],
    ]
