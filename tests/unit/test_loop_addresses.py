"""The address guard and managed addresses through the daemon's loop (tests/unit/loop.py):
the kernel's picture arrives as a message, addresses are changed through a stand-in for
netlink, and the order against what is written to ExaBGP is what is checked."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from announcer.addresses import Local
from announcer.managed import REMOVE_DELAY
from announcer.messages import LocalChanged, StdinLine
from announcer.state import DrainSource
from tests.unit.loop import Loop, ScriptedCheck

A, B = "192.0.2.10", "192.0.2.20"
ANN_A = f"announce route {A}/32 next-hop self med 100"
ANN_BOTH = f"announce attributes next-hop self med 100 nlri {A}/32 {B}/32"
WD_A = f"withdraw route {A}/32 next-hop self med 100"
WD_DRAINED = f"withdraw attributes next-hop self med 1000 community [ 65535:0 ] nlri {A}/32 {B}/32"


def write_config(tmp: Path, extra: str = "") -> Path:
    path = tmp / "announcer.toml"
    path.write_text(
        f'state_dir = "{tmp / "state"}"\n'
        'include = ""\n'
        "[defaults]\ninterval = 1.0\nfast_interval = 0.5\nrise = 1\nfall = 1\n"
        "timeout = 0.2\ndrain_seconds = 2\n"
        f'[[service]]\nname = "web"\nprefixes = ["{A}/32", "{B}/32"]\n{extra}'
        '[[service.checks]]\ntype = "file"\npath = "web"\n'
    )
    return path


def local(*addresses: str) -> LocalChanged:
    return LocalChanged(Local(frozenset(ipaddress.ip_address(a) for a in addresses)))


@pytest.fixture
def web() -> ScriptedCheck:
    return ScriptedCheck()


def test_guard_withdraws_at_once_and_announces_again_after_a_pass(
    tmp_path: Path, web: ScriptedCheck
) -> None:
    """An address that leaves takes its prefix off the wire at once, the other prefix
    stays; status says which and why; back, it is announced at the next passing round."""
    loop = Loop(write_config(tmp_path), {"web": web})
    loop.daemon.post(local(A, B))
    loop.run_for(0.1)
    assert loop.sent == [ANN_BOTH]
    loop.daemon.post(local(B))
    loop.turn()
    assert loop.sent[-1] == WD_A
    status = loop.status("web")
    assert status["wire_prefixes"] == [f"{B}/32"]
    assert status["route"] == "ANNOUNCED"
    assert status["held"] == {f"{A}/32": "no local address or local route for it"}
    assert "address_guard" in loop.log.getvalue()
    loop.daemon.post(local(A, B))
    loop.turn()
    assert loop.sent[-1] == WD_A  # back, but waiting for a passing round
    assert loop.status("web")["held"] == {f"{A}/32": "address back: waiting for a passing check"}
    loop.run_for(1.0)
    assert loop.sent[-1] == ANN_A
    assert loop.status("web")["held"] == {}


def test_guard_off_announces_what_is_not_local(tmp_path: Path, web: ScriptedCheck) -> None:
    """With address_guard = false the kernel's picture changes nothing."""
    loop = Loop(write_config(tmp_path, "address_guard = false\n"), {"web": web})
    loop.daemon.post(local())
    loop.run_for(0.1)
    assert loop.sent == [ANN_BOTH]
    assert loop.status("web")["held"] == {}


class FakeNetlink:
    """Records address changes, with what had been written to ExaBGP by then."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.calls: list[tuple[str, str, int]] = []
        self.fail = False

    def link_lookup(self, *, ifname: str) -> list[int]:
        return [1] if ifname == "lo" else []

    def addr(self, command: str, **kwargs: Any) -> None:
        if self.fail:
            raise PermissionError("Operation not permitted")
        sent = len(self.loop.recorders[0].lines) if self.loop.recorders else 0
        self.calls.append((command, kwargs["address"], sent))


def managed_loop(tmp_path: Path, web: ScriptedCheck, acks: bool = True) -> tuple[Loop, FakeNetlink]:
    loop = Loop(write_config(tmp_path, 'manage_addresses = "lo"\n'), {"web": web}, acks=acks)
    netlink = FakeNetlink(loop)
    loop.daemon.services.managed._open = lambda: netlink
    loop.daemon.post(local())  # neither address is on the node yet: we add them
    return loop, netlink


def test_managed_address_added_before_announce_removed_after_acked_withdraw(
    tmp_path: Path, web: ScriptedCheck
) -> None:
    """The addresses go on before the first announce is written, and leave only after
    ExaBGP acknowledged the withdraw and REMOVE_DELAY passed."""
    loop, netlink = managed_loop(tmp_path, web)
    loop.run_for(0.1)
    assert netlink.calls == [("add", A, 0), ("add", B, 0)]
    assert loop.sent == [ANN_BOTH]
    loop.daemon.drain("web", DrainSource.OPERATOR)
    loop.run_for(2.0 + REMOVE_DELAY / 2)
    assert WD_DRAINED in loop.sent
    assert [c for c in netlink.calls if c[0] == "del"] == []  # acked, the delay not over
    loop.run_for(REMOVE_DELAY)
    removed = [c for c in netlink.calls if c[0] == "del"]
    assert sorted(a for _, a, _ in removed) == [A, B]
    withdrawn_at = loop.sent.index(WD_DRAINED) + 1
    assert all(sent >= withdrawn_at for _, _, sent in removed)


def test_managed_address_stays_while_exabgp_has_not_answered(
    tmp_path: Path, web: ScriptedCheck
) -> None:
    """Without ExaBGP's ack of the withdraw the address is never taken off."""
    loop, netlink = managed_loop(tmp_path, web, acks=False)
    loop.run_for(0.1)
    web.ok = False
    loop.run_for(5.0)
    assert loop.sent[1].startswith("withdraw")
    assert [c for c in netlink.calls if c[0] == "del"] == []


def test_managed_address_that_cannot_be_added_is_withdrawn(
    tmp_path: Path, web: ScriptedCheck
) -> None:
    """Adding the address fails (no CAP_NET_ADMIN): logged, and the guard withdraws."""
    loop, netlink = managed_loop(tmp_path, web)
    netlink.fail = True
    loop.run_for(0.1)
    assert "address_add_failed" in loop.log.getvalue()
    assert loop.status("web")["wire_prefixes"] == []
    assert loop.sent[-1].startswith("withdraw")


def test_reload_never_sends_a_new_prefix_without_its_address(
    tmp_path: Path, web: ScriptedCheck
) -> None:
    """A reload adding a prefix whose address is not here sends nothing for it; one whose
    address is here is announced at once, like without the guard."""
    path = write_config(tmp_path)
    loop = Loop(path, {"web": web})
    loop.daemon.post(local(A, B, "192.0.2.30"))
    loop.run_for(0.1)
    assert loop.sent == [ANN_BOTH]
    text = path.read_text().replace(f'"{B}/32"]', f'"{B}/32", "192.0.2.30/32", "192.0.2.40/32"]')
    path.write_text(text)
    loop.daemon.reload()
    loop.turn()
    assert loop.sent[1:] == ["announce route 192.0.2.30/32 next-hop self med 100"]
    assert loop.status("web")["held"] == {"192.0.2.40/32": "no local address or local route for it"}


def test_managed_address_stays_when_exabgp_refused_a_command_before_its_ack(
    tmp_path: Path, web: ScriptedCheck
) -> None:
    """An error answer up to the withdraw may be the withdraw's own: the address stays."""
    loop, netlink = managed_loop(tmp_path, web, acks=False)
    loop.run_for(0.1)
    loop.daemon.post(StdinLine("done\n"))
    web.ok = False
    loop.run_for(0.6)
    loop.daemon.post(StdinLine("error\n"))
    loop.run_for(REMOVE_DELAY * 3)
    assert [c for c in netlink.calls if c[0] == "del"] == []
    assert "address_kept" in loop.log.getvalue()


class Kernel:
    """A stand-in for the netlink watcher: counts how often it was started."""

    def __init__(self) -> None:
        self.started = 0

    def __call__(self, post: Any) -> Kernel:
        return self

    def start(self) -> Kernel:
        self.started += 1
        return self


@pytest.mark.parametrize(("extra", "started"), [("", 1), ("address_guard = false\n", 0)])
def test_local_addresses_are_followed_only_for_the_address_guard(
    tmp_path: Path, web: ScriptedCheck, extra: str, started: int
) -> None:
    """The kernel's addresses are followed from the start when a service has the address
    guard, and not at all without one (pyroute2 costs 0.3 s of start and 14 MB)."""
    kernel = Kernel()
    loop = Loop(write_config(tmp_path, extra), {"web": web}, kernel=kernel)
    assert loop.daemon.run() == 0  # stdin is empty: the daemon stops at once
    assert kernel.started == started


def test_a_reload_that_brings_the_address_guard_follows_local_addresses(
    tmp_path: Path, web: ScriptedCheck
) -> None:
    """A reload giving a service the address guard starts following the kernel's
    addresses (once: a later reload does not start a second watcher)."""
    path = write_config(tmp_path, "address_guard = false\n")
    kernel = Kernel()
    loop = Loop(path, {"web": web}, kernel=kernel)
    loop.run_for(0.1)
    loop.daemon.reload()
    assert kernel.started == 0
    path.write_text(path.read_text().replace("address_guard = false\n", ""))
    loop.daemon.reload()
    loop.daemon.reload()
    assert kernel.started == 1
