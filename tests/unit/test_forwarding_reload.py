"""Drain forwarding across a reload (announcer/forwarding/forwarder.py ``reconfigure``,
announcer/reload.py): the standing part follows the services that forward (installed,
its prefixes replaced, removed) without touching what is being forwarded; a change of
``[forwarding]`` itself waits for a restart and says so. A fake kernel and fleet thread
on a fake clock, as in test_forwarding.py."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from announcer import messages as msg
from announcer import state as sm
from tests.unit import test_forwarding as base
from tests.unit.loop import Loop, ScriptedCheck
from tests.unit.test_fleet_loop import DRAINING, FakeWorker
from tests.unit.test_forwarding import ANN, FLEET, LATER, NET, FakeKernel, last, peer, view

# The fixtures of test_forwarding.py: a fake fleet thread and a fake kernel.
worker, fake_kernel = base.worker, base.fake_kernel

NET2 = IPv4Network("192.0.2.20/32")
FORWARDING = '[forwarding]\nunderlay = "10.0.1.2"\n'
ON = "forward_connections = true\nmax_drained = 1\n"
DRAINING_N2 = {"underlay": "10.0.2.2", "forward_until": LATER, "drained": True, "connections": 4}
N2 = IPv4Address("10.0.2.2")


def write(path: Path, *, top: str = FLEET + FORWARDING, **services: str) -> Path:
    """A config with ``services``: name -> its prefixes and options (TOML lines)."""
    text = (
        f'state_dir = "{path.parent / "state"}"\ninclude = ""\n'
        "[defaults]\ninterval = 1.0\nfast_interval = 0.5\nrise = 1\nfall = 1\n"
        "timeout = 0.2\ndrain_seconds = 10\n" + top
    )
    for name, body in services.items():
        text += f'[[service]]\nname = "{name}"\n{body}[[service.checks]]\ntype = "file"\n'
        text += f'path = "{name}"\n'
    path.write_text(text)
    return path


def web(*prefixes: IPv4Network, forward: bool = True) -> str:
    listed = ", ".join(f'"{p}"' for p in prefixes or (NET,))
    return f"prefixes = [{listed}]\n" + (ON if forward else "max_drained = 1\n")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "announcer.toml"


def start(path: Path, **services: str) -> Loop:
    write(path, **services)
    loop = Loop(path, {name: ScriptedCheck() for name in services})
    loop.run_for(0.6)
    return loop


def reload(loop: Loop, path: Path, *, top: str = FLEET + FORWARDING, **services: str) -> str:
    """Rewrite the config, reload; the reload's note ("" for none)."""
    write(path, top=top, **services)
    return str(loop.daemon.reload()["note"] or "")


def test_a_reload_that_adds_a_forwarding_service_installs_the_standing_part(
    path: Path, fake_kernel: FakeKernel, worker: FakeWorker
) -> None:
    """No service forwarded at start (nothing installed); a reload turns
    forward_connections on: the standing part is installed for its prefixes, the
    record carries the underlay, and nothing needs a restart."""
    loop = start(path, web=web(forward=False))
    assert fake_kernel.installed == [] and last(worker).underlay == ""
    assert reload(loop, path, web=web()) == ""
    assert fake_kernel.installed == [[NET]]
    assert last(worker).underlay == "10.0.1.2"
    assert loop.status("web")["forward_connections"] is True


def test_a_reload_that_changes_the_prefixes_replaces_the_set_and_keeps_forwarding(
    path: Path, fake_kernel: FakeKernel, worker: FakeWorker
) -> None:
    """A forwarding service's prefixes change while its packets go to a draining peer:
    only the nftables set is replaced (nothing removed or installed again), the route
    to the peer covers the new prefix at once; the same config again changes nothing."""
    loop = start(path, web=web())
    view(loop, peer("n2", **DRAINING_N2))
    assert fake_kernel.routed == [{NET: N2}]
    reload(loop, path, web=web(NET, NET2))
    assert fake_kernel.updated == [[NET, NET2]]
    assert (fake_kernel.installed, fake_kernel.removed) == ([[NET]], 0)
    assert fake_kernel.routed[-1] == {NET: N2, NET2: N2}
    assert loop.status("web")["forwarding"].startswith("passing unknown connections to n2")
    reload(loop, path, web=web(NET, NET2))
    view(loop, peer("n2", **DRAINING_N2))
    assert len(fake_kernel.updated) == 1 and len(fake_kernel.routed) == 2


def test_a_reload_that_drops_the_last_forwarding_service_removes_the_standing_part(
    path: Path, fake_kernel: FakeKernel, worker: FakeWorker
) -> None:
    """forward_connections turned off for the only forwarding service: routes and
    standing part are removed, status and the record say nothing of forwarding; turned
    on again, it is installed again (blackholes until the next view)."""
    loop = start(path, web=web())
    view(loop, peer("n2", **DRAINING_N2))
    reload(loop, path, web=web(forward=False))
    assert fake_kernel.removed == 1
    assert "forwarding" not in loop.status("web") and last(worker).underlay == ""
    view(loop, peer("n2", **DRAINING_N2))
    assert fake_kernel.routed == [{NET: N2}]  # nothing routed once removed
    reload(loop, path, web=web())
    assert fake_kernel.installed == [[NET], [NET]]
    view(loop, peer("n2", **DRAINING_N2))
    assert fake_kernel.routed[-1] == {NET: N2}


def test_a_removed_forwarding_service_leaves_the_set_once_retired(
    path: Path, fake_kernel: FakeKernel, worker: FakeWorker
) -> None:
    """A forwarding service removed by a reload keeps its prefixes marked while it
    drains (its own connections); once retired, the next fleet view takes them out."""
    loop = start(path, web=web(), api=web(NET2))
    assert fake_kernel.installed == [[NET, NET2]]
    view(loop)
    reload(loop, path, web=web())
    assert fake_kernel.updated == []
    loop.run_for(11)
    loop.daemon.post(msg.FleetAnswer("api", True, 1, 0.001))  # the guard allows the withdraw
    loop.run_for(1.5)
    assert "api" not in loop.daemon.services.runtimes
    view(loop)
    assert fake_kernel.updated == [[NET]]


def test_a_change_of_the_forwarding_table_needs_a_restart(
    path: Path, fake_kernel: FakeKernel, worker: FakeWorker
) -> None:
    """[forwarding] changed (another VNI and underlay): the kernel is left as installed,
    the record keeps the running underlay, and the reload says a restart is needed."""
    loop = start(path, web=web())
    other = '[forwarding]\nunderlay = "10.0.1.9"\nvni = 7\n'
    assert reload(loop, path, top=FLEET + other, web=web()) == "restart needed to apply: forwarding"
    assert (fake_kernel.installed, fake_kernel.updated, fake_kernel.removed) == ([[NET]], [], 0)
    assert last(worker).underlay == "10.0.1.2"
    assert loop.daemon.config.settings.forwarding is not None
    assert loop.daemon.config.settings.forwarding.vni == 4242


def test_forwarding_added_by_a_reload_waits_for_a_restart(
    path: Path, fake_kernel: FakeKernel, worker: FakeWorker
) -> None:
    """No [forwarding] at start (no forwarder runs): a reload adding it and
    forward_connections says a restart is needed, and the service does not claim to
    forward meanwhile (drain --wait would wait for its connections)."""
    write(path, top=FLEET, web=web(forward=False))
    loop = Loop(path, {"web": ScriptedCheck()})
    loop.run_for(0.6)
    assert reload(loop, path, web=web()) == "restart needed to apply: forwarding"
    assert "forward_connections" not in loop.status("web")
    assert fake_kernel.installed == []


def test_a_drain_waiting_for_the_peers_starts_when_a_reload_stops_forwarding(
    path: Path, fake_kernel: FakeKernel, worker: FakeWorker
) -> None:
    """A drain waits for the peers to forward; a reload turns forward_connections off:
    there is nothing to wait for, the drain starts at once (not silently dropped)."""
    loop = start(path, web=web())
    loop.daemon.drain("web", sm.DrainSource.OPERATOR, "test")
    loop.daemon.post(msg.FleetSlot("web", True, (), 0))
    loop.turn()
    assert loop.status("web")["drain_waiting"] is True and loop.sent == [ANN]
    reload(loop, path, web=web(forward=False))
    loop.turn()
    assert loop.sent == [ANN, DRAINING]
    assert loop.status("web")["drained"] and "drain_waiting" not in loop.status("web")


def test_a_refused_update_of_the_prefixes_shows_in_status(
    path: Path, fake_kernel: FakeKernel, worker: FakeWorker
) -> None:
    """The kernel refuses the new prefixes: status says so (also after the next
    routes), the old set stays; the next reload tries again."""
    loop = start(path, web=web())
    fake_kernel.refuse = "nftables: Operation not permitted"
    reload(loop, path, web=web(NET, NET2))
    view(loop, peer("n2", **DRAINING_N2))
    assert loop.status("web")["forwarding"] == (
        "prefixes not updated: nftables: Operation not permitted"
    )
    fake_kernel.refuse = ""
    view(loop, peer("n2", **DRAINING_N2))
    assert fake_kernel.updated == []  # a view does not retry
    reload(loop, path, web=web(NET, NET2))
    assert fake_kernel.updated == [[NET, NET2]]
    assert loop.status("web")["forwarding"].startswith("passing unknown connections to n2")
