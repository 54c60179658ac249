"""Drain forwarding (announcer/forwarding) without root: the config's rules, the pure
plan, and the daemon's side on a fake clock with a fake kernel and fleet thread: what
is installed, routed and published, and when a drain moves the route."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from announcer import config as cfg
from announcer import messages as msg
from announcer import state as sm
from announcer.client import _done, _progress
from announcer.errors import ConfigError
from announcer.fleet import wiring
from announcer.fleet.records import Record
from announcer.fleet.store import Peer
from announcer.forwarding import forwarder, kernel, plan
from announcer.forwarding.settings import ForwardingSettings, tunnel_mac
from tests.unit.loop import Loop, ScriptedCheck
from tests.unit.test_fleet_loop import DRAINING, FakeWorker

NET = IPv4Network("192.0.2.10/32")
ANN = "announce route 192.0.2.10/32 next-hop self med 100"
LATER = time.time() + 3600


# ---------------------------------------------------------------- config

FLEET = '[fleet]\nendpoints = ["http://127.0.0.1:2379"]\ngroup = "edge"\nnode = "n1"\n'
FORWARDING = '[forwarding]\nunderlay = "10.0.1.2"\n'


def write(tmp: Path, top: str, service: str) -> Path:
    path = tmp / "announcer.toml"
    path.write_text(
        f'state_dir = "{tmp / "state"}"\ninclude = ""\n'
        "[defaults]\ninterval = 1.0\nfast_interval = 0.5\nrise = 1\nfall = 1\n"
        "timeout = 0.2\ndrain_seconds = 10\n"
        + top
        + '[[service]]\nname = "web"\nprefixes = ["192.0.2.10/32"]\n'
        + service
        + '[[service.checks]]\ntype = "file"\npath = "web"\n'
    )
    return path


@pytest.mark.parametrize(
    ("top", "service", "why"),
    [
        (
            FORWARDING,
            "forward_connections = true\n",
            "service 'web': forward_connections: needs a [fleet] table",
        ),
        (
            FLEET,
            "forward_connections = true\nmax_drained = 1\n",
            "service 'web': forward_connections: needs a [forwarding] table",
        ),
        (
            FLEET + FORWARDING,
            "forward_connections = true\n",
            "service 'web': max_drained: must be 1 with forward_connections (is None)",
        ),
        (
            FLEET + FORWARDING,
            "forward_connections = true\nmax_drained = 2\n",
            "service 'web': max_drained: must be 1 with forward_connections (is 2)",
        ),
        (
            FLEET + FORWARDING,
            'forward_connections = true\nmax_drained = 1\nmanage_addresses = "lo"\n',
            "service 'web': manage_addresses: cannot go with forward_connections",
        ),
        (
            FLEET + '[forwarding]\nunderlay = "10.0.1.2"\nrule_priority = 100\n',
            "",
            "forwarding: rule_priority (100) must be below local_priority (100)",
        ),
        (FLEET + '[forwarding]\nunderlay = "2001:db8::1"\n', "", "forwarding.underlay: "),
    ],
)
def test_forwarding_config_mistakes_are_named(
    tmp_path: Path, top: str, service: str, why: str
) -> None:
    """forward_connections needs [fleet], [forwarding] and max_drained = 1 (a node has
    one place to send a packet it does not know), and keeps its address; each refusal
    names the file, the service and the field."""
    path = write(tmp_path, top, service)
    with pytest.raises(ConfigError) as err:
        cfg.load(path)
    assert any(p.startswith(f"{path}: ") and why in p for p in err.value.problems), err.value


def test_forwarding_is_off_by_default_and_on_where_asked(tmp_path: Path) -> None:
    """Without forward_connections a service does not forward; [forwarding] fills its
    defaults (VXLAN, port 4789, MTU 1500, rules 90 and 100)."""
    off = cfg.load(write(tmp_path, FLEET, ""))
    assert off.settings.forwarding is None and not off.service("web").forward_connections
    on = cfg.load(
        write(tmp_path, FLEET + FORWARDING, "forward_connections = true\nmax_drained = 1\n")
    )
    fwd = on.settings.forwarding
    assert fwd is not None and on.service("web").forward_connections
    assert (fwd.tunnel, fwd.port, fwd.mtu, fwd.rule_priority, fwd.local_priority) == (
        "vxlan",
        4789,
        1500,
        90,
        100,
    )


# ---------------------------------------------------------------- the plan


def rec(node: str, **kw: object) -> Record:
    return Record(node=node, route="WITHDRAWN", health="UP", **kw)  # type: ignore[arg-type]


def asking(node: str, connections: int | None = 5, until: float = LATER) -> Record:
    return rec(
        node, drained=True, underlay="10.0.2.2", connections=connections, forward_until=until
    )


WANTED = {"web": plan.Wanted([NET], drained_here=False)}


@pytest.mark.parametrize(
    ("record", "target"),
    [
        (asking("n2"), "n2"),
        (asking("n2", connections=None), "n2"),
        (asking("n2", connections=0), None),
        (asking("n2", until=1.0), None),
        (rec("n2", drained=True, connections=5, forward_until=LATER), None),
        (rec("n2", underlay="10.0.2.2"), None),
    ],
    ids=["asks", "not-counted-yet", "no-connection-left", "past-max", "no-underlay", "not-asking"],
)
def test_a_peer_gets_the_packets_while_it_asks_and_has_connections(
    record: Record, target: str | None
) -> None:
    """A peer's packets are forwarded while its record asks (underlay, forward_until to
    come) and its count is not 0; never to this node itself."""
    chosen = plan.targets("n1", WANTED, {"web": {"n1": asking("n1"), "n2": record}}, time.time())
    assert (chosen["web"].node if "web" in chosen else None) == target
    if target:
        assert plan.routes(WANTED, chosen) == {NET: IPv4Address("10.0.2.2")}


def test_a_drained_node_forwards_nothing_and_two_askers_are_reported() -> None:
    """This node drained itself: it holds the connections, it forwards nothing; two
    peers asking (a forced drain): the first by name, the other reported."""
    view = {"web": {"n2": asking("n2"), "n3": asking("n3")}}
    drained = {"web": plan.Wanted([NET], drained_here=True)}
    assert plan.targets("n1", drained, view, time.time()) == {}
    chosen = plan.targets("n1", WANTED, view, time.time())
    assert chosen["web"].node == "n2" and chosen["web"].others == ("n3",)


def test_the_ruleset_marks_unknown_non_syn_packets_to_the_prefixes() -> None:
    """The nftables table: the prefixes' set, tunnel packets left alone, the mark on
    non-SYN packets conntrack calls invalid; the tunnel MAC is the underlay's bytes."""
    settings = ForwardingSettings(underlay=IPv4Address("10.0.1.2"))
    text = kernel.nft_ruleset(settings, [NET])
    assert "elements = { 192.0.2.10/32 }" in text
    assert 'iifname "anc-fwd" return' in text
    assert "tcp flags & syn == 0 ct state invalid meta mark set 0x414e" in text
    assert tunnel_mac(IPv4Address("10.0.1.2")) == "02:a5:0a:00:01:02"


def test_drain_wait_ends_when_forwarded_connections_have_ended() -> None:
    """``drain --wait``: a forwarding service is done once withdrawn with 0 connections
    (unknown counts as not done); others once withdrawn."""
    assert _done({"route": "WITHDRAWN"})
    assert not _done({"route": "DRAINING"})
    assert not _done({"route": "WITHDRAWN", "forward_connections": True, "connections": 3})
    assert not _done({"route": "WITHDRAWN", "forward_connections": True, "connections": None})
    assert _done({"route": "WITHDRAWN", "forward_connections": True, "connections": 0})
    note = "waiting for the peers to pass this node's connections"
    shown = _progress("web", {"route": "ANNOUNCED", "connections": 3, "forwarding": note})
    assert shown == f"web: ANNOUNCED, 3 connections, {note}"


# ---------------------------------------------------------------- the daemon's side


@dataclass
class FakeKernel:
    missing_now: list[str] = field(default_factory=list)
    installed: list[list[IPv4Network]] = field(default_factory=list)
    updated: list[list[IPv4Network]] = field(default_factory=list)
    routed: list[dict[IPv4Network, IPv4Address]] = field(default_factory=list)
    removed: int = 0
    refuse: str = ""

    def missing(self) -> list[str]:
        return list(self.missing_now)

    def install(self, prefixes: Sequence[IPv4Network]) -> None:
        if self.refuse:
            raise kernel.KernelError(self.refuse)
        self.installed.append(list(prefixes))

    def update(self, prefixes: Sequence[IPv4Network]) -> None:
        if self.refuse:
            raise kernel.KernelError(self.refuse)
        self.updated.append(list(prefixes))

    def route(self, routes: Mapping[IPv4Network, IPv4Address]) -> None:
        self.routed.append(dict(routes))

    def remove(self) -> None:
        self.removed += 1


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeWorker]:
    fake = FakeWorker()
    monkeypatch.setattr(wiring, "make_worker", lambda settings, post, log: fake)
    yield fake


@pytest.fixture
def fake_kernel(monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    fake = FakeKernel(missing_now=["CAP_NET_ADMIN: not in this process's capabilities"])
    monkeypatch.setattr(forwarder, "NetKernel", lambda settings: fake)
    return fake


@pytest.fixture
def loop(tmp_path: Path, worker: FakeWorker, fake_kernel: FakeKernel) -> Loop:
    path = write(
        tmp_path,
        FLEET + '[forwarding]\nunderlay = "10.0.1.2"\nready_seconds = 5.0\n',
        "forward_connections = true\nmax_drained = 1\nmin_announcing = 1\n",
    )
    lp = Loop(path, {"web": ScriptedCheck()})
    lp.run_for(0.6)
    return lp


def view(loop: Loop, *records: Record) -> None:
    loop.daemon.post(msg.FleetView({"web": {r.node: Peer(r, 1, 7) for r in records}}))
    loop.turn()


def peer(node: str, **kw: object) -> Record:
    return Record(node=node, route="ANNOUNCED", health="UP", announcing=True, **kw)  # type: ignore[arg-type]


def last(worker: FakeWorker) -> Record:
    return worker.published[-1][1]


def test_standing_part_at_start_what_is_missing_logged_removed_at_stop(
    loop: Loop, fake_kernel: FakeKernel, worker: FakeWorker
) -> None:
    """At start the standing part is installed for the forwarding services' prefixes,
    what the kernel lacks is logged; the record carries the underlay; stop removes it."""
    assert fake_kernel.installed == [[NET]]
    assert 'event=forwarding_missing what="CAP_NET_ADMIN' in loop.log.getvalue()
    assert last(worker).underlay == "10.0.1.2" and last(worker).forward_until == 0.0
    loop.daemon.close()
    assert fake_kernel.removed == 1


def test_a_standing_part_the_kernel_refuses_shows_in_status(
    tmp_path: Path, worker: FakeWorker, fake_kernel: FakeKernel
) -> None:
    """The kernel refuses (no CAP_NET_ADMIN): status says forwarding is not set up, the
    records ask nothing of the peers and a drain goes at once, as without forwarding."""
    fake_kernel.refuse = "policy rules: EPERM"
    path = write(tmp_path, FLEET + FORWARDING, "forward_connections = true\nmax_drained = 1\n")
    lp = Loop(path, {"web": ScriptedCheck()})
    lp.run_for(0.6)
    assert lp.status("web")["forwarding"] == "not set up: policy rules: EPERM"
    assert last(worker).underlay == ""
    lp.daemon.drain("web", sm.DrainSource.OPERATOR, "test")
    lp.daemon.post(msg.FleetSlot("web", True, (), 0))
    lp.turn()
    assert lp.sent[-1] == DRAINING


def test_a_drain_asks_the_peers_first_and_moves_once_they_forward(
    loop: Loop, worker: FakeWorker
) -> None:
    """After its slot, a drain publishes forward_until and keeps the route until every
    announcing peer's record says it forwards here; then the route is lowered, and the
    record carries the connection count."""
    loop.daemon.drain("web", sm.DrainSource.OPERATOR, "test")
    loop.daemon.post(msg.FleetSlot("web", True, (), 0))
    loop.turn()
    assert loop.sent == [ANN]
    assert (
        loop.status("web")["forwarding"] == "waiting for the peers to pass this node's connections"
    )
    assert loop.status("web")["drain_waiting"] is True and not loop.status("web")["drained"]
    assert last(worker).forward_until > time.time()
    view(loop, peer("n2", forwarding_to="n1"), peer("n3"))
    assert loop.sent == [ANN]
    view(loop, peer("n2", forwarding_to="n1"), peer("n3", forwarding_to="n1"))
    assert loop.sent == [ANN, DRAINING]
    assert "drain_waiting" not in loop.status("web") and loop.status("web")["drained"]
    assert "event=forwarding_ready service=web ready=true" in loop.log.getvalue()


def test_a_drain_whose_peers_do_not_answer_goes_after_ready_seconds(
    loop: Loop, worker: FakeWorker
) -> None:
    """A peer that never says it forwards holds the drain ready_seconds at most; then it
    goes, and the log names the late peer."""
    loop.daemon.drain("web", sm.DrainSource.OPERATOR, "test")
    loop.daemon.post(msg.FleetSlot("web", True, (), 0))
    loop.turn()
    view(loop, peer("n2"))
    loop.run_for(4.0)
    view(loop, peer("n2"))
    assert loop.sent == [ANN]
    loop.run_for(1.5)
    view(loop, peer("n2"))
    assert loop.sent == [ANN, DRAINING]
    assert "event=forwarding_ready service=web ready=false late=n2" in loop.log.getvalue()


def test_an_undrain_while_asking_cancels_the_drain(loop: Loop, worker: FakeWorker) -> None:
    """Undrained while waiting for the peers: nothing moves, the record asks no more."""
    loop.daemon.drain("web", sm.DrainSource.OPERATOR, "test")
    loop.daemon.post(msg.FleetSlot("web", True, (), 0))
    loop.turn()
    loop.daemon.undrain("web", sm.DrainSource.OPERATOR)
    loop.turn()
    view(loop, peer("n2", forwarding_to="n1"))
    assert loop.sent == [ANN]
    assert last(worker).forward_until == 0.0 and "forwarding" not in loop.status("web")


def test_a_draining_peer_gets_the_packets_until_its_connections_end(
    loop: Loop, fake_kernel: FakeKernel, worker: FakeWorker
) -> None:
    """A peer asking: its prefixes are routed to its underlay, status and this node's
    record say so; at 0 connections the route goes; an unchanged view changes nothing."""
    draining = {"underlay": "10.0.2.2", "forward_until": LATER, "drained": True}
    view(loop, peer("n2", connections=4, **draining))
    assert fake_kernel.routed == [{NET: IPv4Address("10.0.2.2")}]
    assert loop.status("web")["forwarding"].startswith("passing unknown connections to n2")
    assert last(worker).forwarding_to == "n2"
    view(loop, peer("n2", connections=4, **draining))
    assert len(fake_kernel.routed) == 1
    view(loop, peer("n2", connections=0, **draining))
    assert fake_kernel.routed[-1] == {}
    assert "event=forwarding_stopped service=web node=n2" in loop.log.getvalue()


def test_a_drained_node_keeps_counting_after_the_withdraw(loop: Loop) -> None:
    """With forward_connections, connections are still counted once withdrawn (peers
    forward until the count reaches 0): the idle poll stays armed while drained."""
    loop.daemon.drain("web", sm.DrainSource.OPERATOR, "test")
    loop.daemon.post(msg.FleetSlot("web", True, (), 0))
    loop.turn()
    view(loop)  # no peers: ready at once
    loop.run_for(11)
    loop.daemon.post(msg.FleetAnswer("web", True, 1, 0.001))  # the guard allows the withdraw
    loop.run_for(1.5)
    rt = loop.daemon.services.runtimes["web"]
    assert rt.state.route is sm.Route.WITHDRAWN
    assert rt.next_idle_poll is not None and rt.connections is not None


def test_the_withdraw_the_guard_asks_for_keeps_asking_the_peers_to_forward(
    loop: Loop, worker: FakeWorker
) -> None:
    """The record the fleet guard's transaction writes at a drained node's withdraw
    still carries its underlay, forward_until and connection count: peers that read it
    keep passing its connections' packets (without them, P2L saw a peer stop for a
    second and reset every one of the node's streams)."""
    loop.daemon.drain("web", sm.DrainSource.OPERATOR, "test")
    loop.daemon.post(msg.FleetSlot("web", True, (), 0))
    loop.turn()
    view(loop)  # no peers: ready at once
    loop.run_for(11)
    assert worker.asks, "the withdraw at the drain's end is asked of the guard"
    _, asked, _ = worker.asks[-1]
    assert asked.route == "WITHDRAWN" and asked.drained
    assert asked.underlay == "10.0.1.2"
    assert asked.forward_until > time.time()
    assert asked.connections is not None


def test_check_config_says_what_forwarding_lacks_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config: a valid config is ok (exit 0), and what this host lacks for
    forwarding (capability, binding, module) is listed on stderr."""
    from announcer import cli

    monkeypatch.setattr(kernel.NetKernel, "missing", lambda self: ["kernel module vxlan: gone"])
    path = write(tmp_path, FLEET + FORWARDING, "forward_connections = true\nmax_drained = 1\n")
    assert cli.main(["check-config", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"{path}: forwarding: missing here: kernel module vxlan: gone" in err


def test_announcer_fleet_shows_who_forwards_to_whom(loop: Loop) -> None:
    """``announcer fleet --json``: a draining node's underlay, forward_until and count,
    a peer's forwarding_to; nodes without forwarding get none of these keys."""
    draining = {"underlay": "10.0.2.2", "forward_until": LATER, "drained": True}
    view(loop, peer("n2", connections=4, **draining), peer("n3", forwarding_to="n2"), peer("n4"))
    assert loop.daemon.fleet is not None
    nodes = loop.daemon.fleet.snapshot("web")["services"]["web"]["nodes"]
    assert nodes["n2"]["underlay"] == "10.0.2.2" and nodes["n2"]["connections"] == 4
    assert nodes["n3"]["forwarding_to"] == "n2" and "connections" not in nodes["n3"]
    assert not {"underlay", "forwarding_to", "connections"} & set(nodes["n4"])


@pytest.mark.parametrize("first", ["view", "unreachable"])
def test_the_first_view_replaces_the_starts_blackholes(
    loop: Loop, fake_kernel: FakeKernel, first: str
) -> None:
    """Until the first view the kernel holds the prefixes in blackholes (a restarting
    node does not know who drains): the first view, or etcd found unreachable, sets the
    table once even with nothing to forward; the same view again sets nothing."""
    assert fake_kernel.routed == []
    if first == "view":
        view(loop, peer("n2"))
    else:
        loop.daemon.post(msg.FleetView(None, "refused"))
        loop.turn()
    assert fake_kernel.routed == [{}]
    view(loop, peer("n2"))
    assert fake_kernel.routed == [{}]
